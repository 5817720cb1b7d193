//! `sessiond --probe`: asks a running sessiond whether it is ready, for container health checks
//! in images that carry no curl (`HEALTHCHECK CMD ["sessiond", "--probe"]`).
//!
//! It connects to the configured `--listen` address (an unspecified address such as `0.0.0.0`
//! is probed on the loopback of the same family), sends `GET /readyz`, and succeeds only on a
//! 200 within the timeout: a daemon that is starting, loading or draining answers 503.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// The address to probe for a daemon listening on `listen`.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `Ok(())` if the daemon at `listen` answers `/readyz` with 200 within `timeout`.
pub fn probe(listen: SocketAddr, timeout: Duration) -> Result<(), String> {
    let addr = target(listen);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: sessiond\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        Err(format!(
            "{addr}: /readyz answered {:?}",
            line.lines().next().unwrap_or("")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let t = |s: &str| target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(t("[::]:8080"), "[::1]:8080");
        assert_eq!(t("10.1.2.3:9"), "10.1.2.3:9");
    }

    #[test]
    fn a_closed_port_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(probe(addr, Duration::from_secs(1)).is_err());
    }
}
