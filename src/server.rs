//! The HTTP workers: one current-thread tokio runtime per worker thread, each serving the
//! connections it is handed to the end, and one acceptor that hands each new connection to the
//! worker with the fewest open ones.
//!
//! Why not one multi-threaded runtime: with work stealing, a connection's readiness is noticed
//! by whichever worker polls the I/O driver and its task often runs on the other, so a request
//! costs a cross-thread wake-up (a futex and a context switch) on top of its two syscalls. Here
//! a connection lives and dies on one thread, as in Redis's event loop.
//!
//! Why an acceptor instead of every worker accepting: gateways hold a few long keep-alive
//! connections, often opened in one burst, and whichever worker wakes first would take most
//! of them, leaving a core idle. `SO_REUSEPORT` would spread them by hash but also let a second
//! daemon started by mistake on the same port silently take half the traffic.
//!
//! Why hyper directly rather than `axum::serve`: each connection carries its own deadlines
//! ([`Conn`]), which needs the connection and the service side by side. hyper's own
//! `header_read_timeout` cannot be used: it runs from the moment a connection starts waiting
//! for a request, so it would also close idle keep-alive connections after a few seconds,
//! racing the gateway's pool.
//!
//! Invariants:
//! 1. `open[i]` counts worker `i`'s connections: incremented when one is handed over, and
//!    decremented when its [`Conn`] is dropped, whichever way it ends.
//! 2. Shutdown is the daemon's one signal (`shutdown::Stop`): when it is set the acceptor stops
//!    at once, every worker stops waiting for connections, drains its own (a request in flight
//!    is answered, an idle connection is closed), and reports; [`Workers::wait`] returns when
//!    the last has drained.
//! 3. A connection is closed when a request's head has not arrived in full
//!    `header_read_timeout` after its first byte (for a new connection: after it was
//!    accepted), or when no request has started for `keepalive_timeout` after the last
//!    response. A request whose head has arrived is never cut by either (its body and
//!    handler are not timed here).
//! 4. At most `max_connections` are open: past it the acceptor accepts and closes new ones at
//!    once with a 503 (so they wait in no queue), counts them, and logs at most one line per
//!    [`LOG_EVERY`]; the open ones keep being served.
//! 5. The accept loop never spins: a failing `accept` pauses [`ACCEPT_PAUSE`] and is logged
//!    at most once per [`LOG_EVERY`], with what to do about it.
//! 6. The request path costs what `axum::serve` did, plus per request one relaxed atomic
//!    store, one load and one clock read (vDSO, no syscall); the timer is per connection and
//!    is re-armed only when it fires or a deadline moves earlier.

use crate::shutdown::Stop;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

/// Refusals and accept failures are logged at most once per this period.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// The pause after an `accept` that failed for a reason other than the connection itself.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What a connection may take (invariants 3 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
}

/// Binds and listens on `addr` (before any worker starts, so that a port in use fails start-up
/// at once). std sets `SO_REUSEADDR`, so a restart is not refused by old connections in
/// TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The running acceptor and HTTP workers.
pub struct Workers {
    done: mpsc::UnboundedReceiver<std::io::Result<()>>,
    count: usize,
}

type Handoff = (std::net::TcpStream, SocketAddr, OpenGuard);

/// Starts one worker per router in `apps` and the acceptor that feeds them from `listener`;
/// they drain and end when `stop` is set (invariant 2).
pub fn start(
    listener: std::net::TcpListener,
    apps: Vec<Router>,
    limits: Limits,
    stop: Stop,
) -> std::io::Result<Workers> {
    let (done_tx, done) = mpsc::unbounded_channel();
    let open: Arc<[AtomicUsize]> = apps.iter().map(|_| AtomicUsize::new(0)).collect();
    let mut inboxes = Vec::with_capacity(apps.len());
    let count = apps.len();
    for (i, app) in apps.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
        inboxes.push(tx);
        let stop = stop.clone();
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("sessiond-http-{i}"))
            .spawn(move || {
                let result =
                    current_thread().map(|rt| rt.block_on(serve_worker(rx, app, limits, stop)));
                let _ = done_tx.send(result);
            })?;
    }
    // The acceptor reports whether it could start, so that start-up fails instead of a daemon
    // that answers nothing.
    let (started_tx, started) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("sessiond-accept".into())
        .spawn(move || {
            let rt = match current_thread() {
                Ok(rt) => rt,
                Err(e) => return drop(started_tx.send(Err(e))),
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return drop(started_tx.send(Err(e))),
                };
                let _ = started_tx.send(Ok(()));
                let mut refused = RateLimited::default();
                let mut failed = RateLimited::default();
                loop {
                    tokio::select! {
                        r = listener.accept() => match r {
                            Ok((stream, peer)) => {
                                if total(&open) >= limits.max_connections {
                                    refuse(stream, limits.max_connections, &mut refused);
                                } else {
                                    hand_over(stream, peer, &open, &inboxes);
                                }
                            }
                            Err(e) => accept_error(e, limits.max_connections, &mut failed).await,
                        },
                        _ = stop.wait() => return,
                    }
                }
            })
        })?;
    // An acceptor that could not start has dropped the workers' inboxes: they end too.
    started
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the acceptor thread ended at start")))?;
    Ok(Workers { done, count })
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn total(open: &[AtomicUsize]) -> usize {
    open.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Gives `stream` to the worker with the fewest open connections (invariant 1).
fn hand_over(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    open: &Arc<[AtomicUsize]>,
    inboxes: &[mpsc::UnboundedSender<Handoff>],
) {
    let i = (0..open.len())
        .min_by_key(|&i| open[i].load(Ordering::Relaxed))
        .expect("at least one worker");
    // Answers are written whole; no reason to let Nagle hold any back.
    let _ = stream.set_nodelay(true);
    let std = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a connection over; closing it");
            return;
        }
    };
    open[i].fetch_add(1, Ordering::Relaxed);
    metrics::gauge!(crate::metrics::HTTP_CONNECTIONS).increment(1.0);
    let guard = OpenGuard {
        open: open.clone(),
        worker: i,
    };
    // A worker that has stopped drops the connection, and the guard with it.
    let _ = inboxes[i].send((std, peer, guard));
}

/// Counts events and says whether one should be logged now (at most one line per
/// [`LOG_EVERY`], carrying how many happened since the last).
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    since: u64,
}

impl RateLimited {
    /// Counts one event; `Some(n)` (events since the last line, this one included) when a
    /// line is due.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// The answer to a connection past the cap (invariant 4).
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: application/json\r\nContent-Length: 120\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"sessiond is at its connection limit (max_connections); retry later\"}}";

/// Closes a connection past the cap at once (invariant 4).
fn refuse(stream: tokio::net::TcpStream, max: usize, log: &mut RateLimited) {
    metrics::counter!(crate::metrics::HTTP_CONNECTIONS_REFUSED).increment(1);
    // Best effort: a fresh socket's send buffer takes this whole, or the peer is gone.
    let _ = stream.try_write(REFUSED);
    drop(stream);
    if let Some(n) = log.tick(Instant::now()) {
        tracing::warn!(
            max_connections = max,
            refused = n,
            "connection limit reached: refusing new connections (503 and close) while the open ones are served; \
             if these are real clients raise --max-connections (and the open-file limit), otherwise look for \
             clients holding idle connections (sessiond_http_connections)"
        );
    }
}

/// As axum's own listener: errors about one connection are that connection's problem; others
/// (out of file descriptors) are logged, rate-limited, and retried after a pause instead of
/// spinning (invariant 5).
async fn accept_error(e: std::io::Error, max: usize, log: &mut RateLimited) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    if let Some(n) = log.tick(Instant::now()) {
        let errno = rustix::io::Errno::from_io_error(&e);
        if matches!(
            errno,
            Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
        ) {
            tracing::error!(
                error = %e,
                failures = n,
                max_connections = max,
                open_file_limit = ?crate::fdlimit::soft(),
                "accept failed: out of file descriptors; new clients wait until some close. Raise the open-file \
                 limit (systemd LimitNOFILE=, docker --ulimit nofile=, ulimit -n) or lower --max-connections \
                 below it"
            );
        } else {
            tracing::error!(error = %e, failures = n, "accept failed; retrying every 100 ms");
        }
    }
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// Decrements its worker's count of open connections when the connection is gone.
struct OpenGuard {
    open: Arc<[AtomicUsize]>,
    worker: usize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open[self.worker].fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::HTTP_CONNECTIONS).decrement(1.0);
    }
}

/// One worker: serves each connection handed over on a task of its own until shutdown, then
/// waits for them to drain (invariant 2).
async fn serve_worker(
    mut rx: mpsc::UnboundedReceiver<Handoff>,
    app: Router,
    limits: Limits,
    stop: Stop,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // Ours ([`Conn`]) starts at a request's first byte; hyper's would also close idle
    // keep-alive connections.
    http.header_read_timeout(None);
    // Each connection task holds a receiver; `closed` resolves when the last is gone.
    let (drained_tx, drained_rx) = watch::channel(());
    loop {
        let handoff = tokio::select! {
            h = rx.recv() => h,
            _ = stop.wait() => break,
        };
        // The acceptor has ended: the shutdown has begun, or it could not start.
        let Some((std, _peer, guard)) = handoff else {
            break;
        };
        let io = match tokio::net::TcpStream::from_std(std) {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register a connection; closing it");
                continue;
            }
        };
        let heads = Arc::new(AtomicU32::new(0));
        let conn = Conn::new(io, guard, heads.clone(), limits);
        let service = Service {
            app: app.clone(),
            heads,
        };
        let conn = http.serve_connection(TokioIo::new(conn), service);
        let stop = stop.clone();
        let drained = drained_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.wait() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            drop(drained);
        });
    }
    drop(drained_rx);
    drained_tx.closed().await;
}

/// The router as a hyper service that counts the request heads it is handed, so that the
/// connection knows a request is in flight (invariant 3).
struct Service {
    app: Router,
    heads: Arc<AtomicU32>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <Router as tower_service::Service<hyper::Request<Incoming>>>::Future;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        // One writer (this connection's task): a plain store, no locked instruction.
        let n = self.heads.load(Ordering::Relaxed);
        self.heads.store(n.wrapping_add(1), Ordering::Relaxed);
        // As `axum::serve` does: a router clone is a reference count.
        tower_service::Service::call(&mut self.app.clone(), req)
    }
}

/// Where a connection stands, as far as its deadlines go (invariant 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request's head is awaited or arriving: `header_read_timeout`.
    Head,
    /// A request's head has arrived and its answer is not written yet: no deadline.
    Busy,
    /// An answer was written and no byte of the next request has come: `keepalive_timeout`.
    Idle,
}

/// A connection that keeps its worker's count right (invariant 1) and its deadlines
/// (invariant 3).
///
/// The phase is followed from the bytes that pass: a read that brings bytes while idle starts
/// a head, a write (the answer) ends the request, and a changed count of request heads (from
/// [`Service`]) means a head was parsed. Deadlines are only checked where they matter, when a
/// read finds nothing to read.
struct Conn {
    io: tokio::net::TcpStream,
    _guard: OpenGuard,
    heads: Arc<AtomicU32>,
    /// The count of heads when the phase was last followed.
    seen: u32,
    phase: Phase,
    /// When the phase's clock started; `None` until it is first needed.
    since: Option<Instant>,
    /// Fires at or before the current deadline (moved later only when it fires).
    timer: Pin<Box<Sleep>>,
    limits: Limits,
}

impl Conn {
    fn new(io: tokio::net::TcpStream, guard: OpenGuard, heads: Arc<AtomicU32>, l: Limits) -> Conn {
        let now = Instant::now();
        Conn {
            io,
            _guard: guard,
            heads,
            seen: 0,
            phase: Phase::Head,
            since: Some(now),
            timer: Box::pin(tokio::time::sleep_until(now + l.header_read_timeout)),
            limits: l,
        }
    }

    /// A read found nothing: `Pending`, or the error that ends the connection when its
    /// deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let heads = self.heads.load(Ordering::Relaxed);
        if heads != self.seen {
            self.seen = heads;
            self.phase = Phase::Busy;
        }
        let (limit, phase) = match self.phase {
            Phase::Busy => return Poll::Pending,
            Phase::Head => (self.limits.header_read_timeout, "header"),
            Phase::Idle => (self.limits.keepalive_timeout, "idle"),
        };
        let deadline = *self.since.get_or_insert_with(Instant::now) + limit;
        if self.arm(cx, deadline).is_pending() {
            return Poll::Pending;
        }
        metrics::counter!(crate::metrics::HTTP_CONNECTIONS_TIMED_OUT, "phase" => phase)
            .increment(1);
        tracing::debug!(
            phase,
            timeout_secs = limit.as_secs_f64(),
            "closing a connection: {}",
            if phase == "header" {
                "a request's head did not arrive in time"
            } else {
                "idle keep-alive timeout"
            }
        );
        Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Makes the timer wake this task at or before `deadline`; `Ready` once it has passed.
    fn arm(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier deadline (a request came since): re-arm.
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Bytes of an answer went out: the request is over, and the keep-alive clock starts.
    /// The timer is armed here, not at the next read: hyper registered its interest in
    /// reading before it wrote, and may not read again until something wakes it.
    fn answered(&mut self, cx: &mut Context<'_>) {
        self.phase = Phase::Idle;
        self.seen = self.heads.load(Ordering::Relaxed);
        let now = Instant::now();
        self.since = Some(now);
        let _ = self.arm(cx, now + self.limits.keepalive_timeout);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending => self.poll_deadline(cx),
            Poll::Ready(Ok(())) => {
                if self.phase == Phase::Idle && buf.filled().len() > before {
                    self.phase = Phase::Head;
                    self.since = None;
                }
                Poll::Ready(Ok(()))
            }
            err => err,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.answered(cx);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.answered(cx);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Workers {
    /// Waits until every worker has drained; the first error any of them met.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let mut first = Ok(());
        for _ in 0..self.count {
            match self.done.recv().await {
                Some(Err(e)) if first.is_ok() => first = Err(e),
                Some(_) => {}
                None => break,
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::{Shutdown, Stage};
    use axum::routing::get;

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
                let (s, peer) = listener.accept().await.unwrap();
                hand_over(s, peer, &open, &txs);
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
                let (s, peer) = listener.accept().await.unwrap();
                hand_over(s, peer, &open, &txs);
            }
            assert_eq!(open[1].load(Ordering::Relaxed), 2);
            assert_eq!(rxs[1].len(), 2);
        });
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
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                "slow"
            }),
        );
        let shutdown = Shutdown::new();
        let workers = start(listener, vec![app], LIMITS, shutdown.at(Stage::Draining)).unwrap();
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

    /// Past the cap a new connection gets a 503 and is closed; the open ones keep being
    /// served, and a closed one frees its place (invariant 4).
    #[test]
    fn connections_past_the_cap_are_refused_at_once() {
        use std::io::{Read, Write};
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
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

    /// A request through the acceptor and a worker, then a drain that ends both.
    #[test]
    fn serves_and_drains() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = || Router::new().route("/", get(|| async { "ok" }));
        let shutdown = Shutdown::new();
        let workers = start(
            listener,
            vec![app(), app()],
            LIMITS,
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
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
        shutdown.advance(Stage::Draining);
        current_thread().unwrap().block_on(workers.wait()).unwrap();
    }
}
