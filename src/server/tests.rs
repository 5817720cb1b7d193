//! Tests of the workers against real sockets: the hand-over, the deadlines, the cap, the drain.

use super::accept::{Accepted, Handoff, RateLimited, hand_over};
use super::pin::PinWorkers::Off;
use super::*;
use crate::shutdown::{Shutdown, Stage};
use axum::Router;
use axum::routing::get;
use std::sync::atomic::Ordering;
use tokio::time::Instant;

/// Connections go to the least-loaded worker, and a closed one frees its place.
#[test]
fn connections_are_spread_evenly_and_counted_until_closed() {
    let open: Arc<[AtomicUsize]> = (0..3).map(|_| AtomicUsize::new(0)).collect();
    let (txs, mut rxs): (Vec<_>, Vec<_>) =
        (0..3).map(|_| mpsc::unbounded_channel::<Handoff>()).unzip();
    let rt = current_thread().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..7 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (s, _) = listener.accept().await.unwrap();
            hand_over(Accepted::Tcp(s), &open, &txs);
        }
        let counts: Vec<usize> = open.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(counts, [3, 2, 2]);
        // Worker 1's connections end: the next two go there.
        while let Ok(h) = rxs[1].try_recv() {
            drop(h);
        }
        assert_eq!(open[1].load(Ordering::Relaxed), 0);
        for _ in 0..2 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (s, _) = listener.accept().await.unwrap();
            hand_over(Accepted::Tcp(s), &open, &txs);
        }
        assert_eq!(open[1].load(Ordering::Relaxed), 2);
        assert_eq!(rxs[1].len(), 2);
    });
}

/// A listener on a free loopback port, and its address.
fn bind_tcp() -> (Listener, std::net::SocketAddr) {
    let (l, file) = bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()), 0).unwrap();
    assert!(file.is_none());
    let Listener::Tcp(t) = &l else {
        unreachable!("a TCP address binds a TCP listener")
    };
    let addr = t.local_addr().unwrap();
    (l, addr)
}

/// The same workers serve a Unix socket: a request is answered, and the drain ends them.
#[test]
fn serves_over_a_unix_socket() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("sessiond-server-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let (listener, file) = bind(&Listen::Unix(path.clone()), 0o600).unwrap();
    let app = Router::new().route("/", get(|| async { "ok over unix" }));
    let shutdown = Shutdown::new();
    let workers = serve_one(listener, app, &shutdown);
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok over unix"), "{answer}");
    shutdown.advance(Stage::Draining);
    let rt = current_thread().unwrap();
    rt.block_on(workers.wait()).unwrap();
    drop(file);
    assert!(!path.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_secs(1),
    keepalive_timeout: Duration::from_secs(1),
    max_connections: 1_000,
};

/// Reads until the peer closes; `Err` if it is still open after `within`.
fn read_to_close(s: &mut std::net::TcpStream, within: Duration) -> Result<String, String> {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => Ok(String::from_utf8_lossy(&got).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Ok(String::from_utf8_lossy(&got).into_owned())
        }
        Err(e) => Err(format!("still open ({e}) after {got:?}")),
    }
}

/// A slow head is cut at the header timeout, an idle keep-alive connection at the idle
/// one, while a request whose handler outlasts both is answered (invariant 3).
#[test]
fn slow_heads_and_idle_connections_are_closed_but_slow_handlers_are_not() {
    use std::io::{Read, Write};
    let (listener, addr) = bind_tcp();
    let app = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            "slow"
        }),
    );
    let shutdown = Shutdown::new();
    let workers = serve_one(listener, app, &shutdown);
    let t0 = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 17];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK\r\n");
    let mut busy = std::net::TcpStream::connect(addr).unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let slow_writer = std::thread::spawn(move || {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
            if slow.write_all(&[*b]).is_err() {
                return slow;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        slow
    });
    let answer = read_to_close(&mut busy, Duration::from_secs(5)).unwrap();
    assert!(answer.ends_with("slow"), "{answer}");
    assert!(t0.elapsed() >= Duration::from_millis(2_500));
    assert_eq!(
        read_to_close(&mut silent, Duration::from_secs(1)).unwrap(),
        ""
    );
    let rest = read_to_close(&mut idle, Duration::from_secs(1)).unwrap();
    assert!(rest.ends_with("ok"), "{rest}");
    let mut slow = slow_writer.join().unwrap();
    assert_eq!(
        read_to_close(&mut slow, Duration::from_secs(1)).unwrap(),
        ""
    );
    shutdown.advance(Stage::Draining);
    current_thread().unwrap().block_on(workers.wait()).unwrap();
}

/// A client that shuts down its side right after its request still gets the answer, from a
/// slow handler too (invariant 12), and the connection is closed after it.
#[test]
fn a_request_is_answered_after_the_client_half_closes() {
    use std::io::Write;
    let (listener, addr) = bind_tcp();
    let app = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "slow"
        }),
    );
    let shutdown = Shutdown::new();
    let workers = serve_one(listener, app, &shutdown);
    for (path, body) in [("/", "ok"), ("/slow", "slow")] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let answer = read_to_close(&mut s, Duration::from_secs(3)).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with(body),
            "{path}: {answer:?}"
        );
    }
    shutdown.advance(Stage::Draining);
    current_thread().unwrap().block_on(workers.wait()).unwrap();
}

/// Past the cap a new connection gets a 503 and is closed; the open ones keep being
/// served, and a closed one frees its place (invariant 4).
#[test]
fn connections_past_the_cap_are_refused_at_once() {
    use std::io::{Read, Write};
    let (listener, addr) = bind_tcp();
    let app = Router::new().route("/", get(|| async { "ok" }));
    let limits = Limits {
        max_connections: 2,
        ..LIMITS
    };
    let shutdown = Shutdown::new();
    let workers = start(
        listener,
        vec![app.clone(), app],
        limits,
        Off,
        true,
        shutdown.at(Stage::Draining),
    )
    .unwrap();
    let get = |s: &mut std::net::TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut a = std::net::TcpStream::connect(addr).unwrap();
    let mut b = std::net::TcpStream::connect(addr).unwrap();
    assert!(get(&mut a).starts_with("HTTP/1.1 200"));
    assert!(get(&mut b).starts_with("HTTP/1.1 200"));
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let refused = read_to_close(&mut c, Duration::from_secs(2)).unwrap();
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("too_many_connections"),
        "{refused}"
    );
    let (head, body) = refused.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{refused}"
    );
    assert!(get(&mut a).starts_with("HTTP/1.1 200"));
    drop(b);
    let mut d = None;
    for _ in 0..100 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            d = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.is_some(), "the closed connection's place was never freed");
    shutdown.advance(Stage::Draining);
    current_thread().unwrap().block_on(workers.wait()).unwrap();
}

#[test]
fn refusals_are_logged_at_most_once_per_period() {
    let mut r = RateLimited::default();
    let t = Instant::now();
    assert_eq!(r.tick(t), Some(1));
    assert_eq!(r.tick(t + Duration::from_secs(1)), None);
    assert_eq!(r.tick(t + Duration::from_secs(9)), None);
    assert_eq!(r.tick(t + LOG_EVERY), Some(3));
    assert_eq!(r.tick(t + LOG_EVERY * 2), Some(1));
}

/// A request through the acceptor and a worker, then a drain that ends both; with the write
/// gate and without it (invariant 13).
#[test]
fn serves_and_drains() {
    for write_gate in [true, false] {
        let (listener, addr) = bind_tcp();
        // The handler runs on the worker's thread: it tells whether a gate runs there.
        let app = || {
            Router::new().route(
                "/",
                get(|| async { format!("gate {}", super::gate::running()) }),
            )
        };
        let shutdown = Shutdown::new();
        let workers = start(
            listener,
            vec![app(), app()],
            LIMITS,
            Off,
            write_gate,
            shutdown.at(Stage::Draining),
        )
        .unwrap();
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with(&format!("gate {write_gate}")),
            "write gate {write_gate}: {answer}"
        );
        shutdown.advance(Stage::Draining);
        current_thread().unwrap().block_on(workers.wait()).unwrap();
    }
}

/// One worker serving `app` with the default limits, unpinned, until `shutdown` drains it.
fn serve_one(listener: Listener, app: Router, shutdown: &Shutdown) -> Workers {
    start(
        listener,
        vec![app],
        LIMITS,
        Off,
        true,
        shutdown.at(Stage::Draining),
    )
    .unwrap()
}
