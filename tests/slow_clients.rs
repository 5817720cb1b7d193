//! Slow and silent clients (issue 22, section 5): a client that sends its head a byte at a
//! time, or nothing at all, is disconnected after the header read timeout; an idle keep-alive
//! connection after the keep-alive timeout; past the connection cap (derived from the
//! open-file limit, raised to the hard one at start) new clients are refused at once with a
//! log line, and served again as soon as the slow ones are cut.

use crate::common::{Daemon, eventually, request};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// Whether the daemon has closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Whether the daemon has closed `s` by now (what it sent first is read and ignored).
fn closed_now(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// A client that writes its head one byte every 200 ms, stopping when the daemon hangs up.
fn slow_writer(addr: SocketAddr) -> std::thread::JoinHandle<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    std::thread::spawn(move || {
        for b in GET.iter().cycle().take(200) {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    })
}

#[test]
fn slow_and_silent_clients_are_cut_while_others_are_served() {
    let d = Daemon::start(&[
        "--no-persist",
        "--header-read-timeout",
        "1",
        "--keepalive-timeout",
        "2",
    ]);
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(d.addr).unwrap();
    let slow = slow_writer(d.addr);
    let mut keepalive = TcpStream::connect(d.addr).unwrap();
    keepalive.write_all(GET).unwrap();
    let mut head = [0u8; 15];
    keepalive.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK");
    // Meanwhile everyone else is answered.
    while t0.elapsed() < Duration::from_millis(1_500) {
        assert_eq!(d.call("GET", "/healthz", None).status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        closed_within(&mut silent, Duration::from_secs(1)),
        "a silent client is still connected after {:?}",
        t0.elapsed()
    );
    let mut slow = slow.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "the slow writer was never cut off"
    );
    assert!(closed_within(&mut slow, Duration::from_secs(1)));
    assert!(
        closed_within(&mut keepalive, Duration::from_secs(2)),
        "an idle keep-alive connection is still open after {:?}",
        t0.elapsed()
    );
    assert!(d.metric("sessiond_http_connections_timed_out_total{phase=\"header\"}") >= 2.0);
    assert!(d.metric("sessiond_http_connections_timed_out_total{phase=\"idle\"}") >= 1.0);
    assert_eq!(d.call("GET", "/healthz", None).status, 200);
}

/// Starts `prlimit --nofile=<limits> -- sessiond <args>` and waits until it is ready.
fn start_under_prlimit(limits: &str, args: &[&str]) -> Daemon {
    let nofile = format!("--nofile={limits}");
    let mut all = vec!["--no-persist"];
    all.extend_from_slice(args);
    Daemon::start_wrapped(&["prlimit", &nofile, "--"], &all)
}

/// Under a soft open-file limit of 64 (hard 128) the daemon raises the soft limit to 128 and
/// caps connections at 64: 90 silent clients lock nobody out for longer than the header
/// timeout, and the refusals are logged once, not once per connection.
#[test]
fn past_the_cap_new_clients_are_refused_and_served_once_slow_ones_are_cut() {
    let d = start_under_prlimit(
        "64:128",
        &["--http-workers", "2", "--header-read-timeout", "2"],
    );
    let start = d.drain_logs().join("\n");
    assert!(
        start.contains("soft_before=Some(64) soft=Some(128) hard=Some(128)"),
        "{start}"
    );
    assert!(start.contains("max_connections=64"), "{start}");

    let t0 = Instant::now();
    let silent: Vec<TcpStream> = (0..90)
        .map(|_| TcpStream::connect(d.addr).unwrap())
        .collect();
    // The ones past the cap were answered 503 and closed at once.
    std::thread::sleep(Duration::from_millis(300));
    let refused = silent.iter().filter(|s| closed_now(s)).count();
    assert!(
        (20..=30).contains(&refused),
        "{refused} of 90 refused at a cap of 64"
    );
    let r = request(d.addr, "GET", "/healthz", &[], None);
    assert!(r.status == 503 || r.status == 0, "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "too slow to test the cap"
    );
    // Once the silent ones are cut, everyone is served again.
    eventually(5, "a normal client to be served", || {
        request(d.addr, "GET", "/healthz", &[], None).status == 200
    });
    assert!(t0.elapsed() >= Duration::from_secs(2));
    let logs = d.drain_logs();
    let cap_lines = logs
        .iter()
        .filter(|l| l.contains("connection limit reached"))
        .count();
    assert_eq!(cap_lines, 1, "{}", logs.join("\n"));
    assert!(
        !logs.iter().any(|l| l.contains("Too many open files")),
        "{}",
        logs.join("\n")
    );
    assert!(d.metric("sessiond_http_connections_refused_total") >= 20.0);
}

/// A client that sends a head and only part of its body (any client when the daemon runs
/// without keys; a gateway's key otherwise) is answered 408 and cut once the header read
/// timeout has passed, instead of holding its connection for ever: enough of them held every
/// connection the cap allows.
#[test]
fn a_body_that_stops_coming_is_answered_408_and_its_connection_closed() {
    let d = Daemon::start(&[
        "--no-persist",
        "--header-read-timeout",
        "1",
        "--keepalive-timeout",
        "30",
    ]);
    let t0 = Instant::now();
    let stuck: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(d.addr).unwrap();
            s.write_all(
                b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                  Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .unwrap();
            s
        })
        .collect();
    for mut s in stuck {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = String::new();
        // The answer, then the end of the connection: read_to_string returns at EOF.
        if let Err(e) = s.read_to_string(&mut answer) {
            panic!("no answer and close within 5 s: {e}; read so far: {answer:?}");
        }
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"request_timeout\""), "{answer}");
        assert!(answer.contains("--header-read-timeout"), "{answer}");
    }
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "cut before the header read timeout: {:?}",
        t0.elapsed()
    );
    assert_eq!(d.call("GET", "/healthz", None).status, 200);
}
