//! `sessiond --probe`: asks a running sessiond whether it is ready, for container health checks
//! in images that carry no curl (`HEALTHCHECK CMD ["sessiond", "--probe"]`).
//!
//! Invariants:
//! 1. It connects to the configured `--listen` address (an unspecified address such as
//!    `0.0.0.0` is probed on the loopback of the same family; a `unix:` socket at its path),
//!    sends `GET /readyz`, and
//!    succeeds only on a 200 within the timeout: a daemon that is starting, loading or draining
//!    answers 503.
//! 2. Of the configuration it reads only the listen address ([`listen_address`]), with the
//!    precedence of `Config::load` (flag, then `SESSIOND_LISTEN`, then the file's `listen`,
//!    then the default), before anything else is loaded: a configuration that has gone wrong
//!    elsewhere since the daemon started does not make the health check of a healthy daemon
//!    fail.

use crate::config::{ConfigError, Settings, parse_listen};
use crate::server::Listen;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// The listen address of the configuration `cli` names (invariant 2); the same messages as
/// `Config::load` for an unreadable file or a bad address.
pub fn listen_address(cli: &Settings) -> Result<Listen, ConfigError> {
    /// Only the key the probe needs: any other key, good or bad, is not looked at.
    #[derive(serde::Deserialize)]
    struct ListenOnly {
        listen: Option<String>,
    }
    let listen = match (&cli.listen, &cli.config) {
        (Some(l), _) => Some(l.clone()),
        (None, None) => None,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(vec![format!(
                    "cannot read config file {}: {e}",
                    path.display()
                )])
            })?;
            toml::from_str::<ListenOnly>(&text)
                .map_err(|e| ConfigError(vec![format!("config file {}: {e}", path.display())]))?
                .listen
        }
    };
    parse_listen(listen).map_err(|e| ConfigError(vec![e]))
}

/// The address to probe for a daemon listening on `listen`.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// A connected socket of either kind.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Why the daemon is not ready, as the probe saw it. `main` prints it with `{}` (one line for
/// the health check's log), so the socket's error is in the message as well as the `source`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{addr}: {source}")]
    Io {
        /// The address probed, or `unix:PATH`.
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: /readyz answered {line:?}")]
    NotReady { addr: String, line: String },
}

/// `Ok(())` if the daemon at `listen` answers `/readyz` with 200 within `timeout`.
pub fn probe(listen: &Listen, timeout: Duration) -> Result<(), ProbeError> {
    let (addr, connected) = match listen {
        Listen::Tcp(a) => {
            let addr = target(*a);
            let s = TcpStream::connect_timeout(&addr, timeout).and_then(|s| {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Ok(Box::new(s) as Box<dyn ReadWrite>)
            });
            (addr.to_string(), s)
        }
        Listen::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).and_then(|s| {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Ok(Box::new(s) as Box<dyn ReadWrite>)
            });
            (listen.to_string(), s)
        }
    };
    let io = |source| ProbeError::Io {
        addr: addr.clone(),
        source,
    };
    let mut s = connected.map_err(io)?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: sessiond\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(io(e)),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        Err(ProbeError::NotReady {
            addr,
            line: line.lines().next().unwrap_or("").to_owned(),
        })
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

    /// The flag wins over the file; the file's `listen` is read even when the rest of the file
    /// would not load; without either, the daemon's default.
    #[test]
    fn the_listen_address_is_read_alone_with_the_daemons_precedence() {
        let dir = std::env::temp_dir().join(format!("sessiond-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sessiond.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9999\"\nshards = 3\nno_such_key = 1\n",
        )
        .unwrap();
        let cli = |listen: Option<&str>, config: Option<&std::path::Path>| Settings {
            listen: listen.map(Into::into),
            config: config.map(Into::into),
            ..Settings::default()
        };
        assert!(crate::config::Config::load(cli(None, Some(&file))).is_err());
        let addr = |c: Settings| listen_address(&c).map(|a| a.to_string());
        assert_eq!(addr(cli(None, Some(&file))).unwrap(), "127.0.0.1:9999");
        assert_eq!(
            addr(cli(Some("127.0.0.1:7"), Some(&file))).unwrap(),
            "127.0.0.1:7"
        );
        let default = crate::config::Config::load(cli(None, None)).unwrap().listen;
        assert_eq!(addr(cli(None, None)).unwrap(), default.to_string());
        assert!(addr(cli(Some("nope"), None)).is_err());
        std::fs::write(&file, "listen = [").unwrap();
        assert!(addr(cli(None, Some(&file))).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_closed_port_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(probe(&Listen::Tcp(addr), Duration::from_secs(1)).is_err());
        let e = probe(
            &Listen::Unix("/nonexistent/sessiond.sock".into()),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unix:/nonexistent/sessiond.sock: "),
            "{e}"
        );
    }
}
