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
//! Invariants:
//! 1. `open[i]` counts worker `i`'s connections: incremented when one is handed over, and
//!    decremented when its [`Conn`] is dropped, whichever way it ends.
//! 2. Shutdown is one `watch` channel: the acceptor stops at once, every worker stops waiting
//!    for connections, drains its own, and reports; [`Workers::wait`] returns when the last has
//!    drained.

use axum::Router;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};

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
    stop: watch::Sender<bool>,
    done: mpsc::UnboundedReceiver<std::io::Result<()>>,
    count: usize,
}

type Handoff = (std::net::TcpStream, SocketAddr, OpenGuard);

/// Starts one worker per router in `apps` and the acceptor that feeds them from `listener`.
pub fn start(listener: std::net::TcpListener, apps: Vec<Router>) -> std::io::Result<Workers> {
    let local = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = mpsc::unbounded_channel();
    let open: Arc<[AtomicUsize]> = apps.iter().map(|_| AtomicUsize::new(0)).collect();
    let mut inboxes = Vec::with_capacity(apps.len());
    let count = apps.len();
    for (i, app) in apps.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
        inboxes.push(tx);
        let mut stop_rx = stop_rx.clone();
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("sessiond-http-{i}"))
            .spawn(move || {
                let result = current_thread().and_then(|rt| {
                    rt.block_on(async move {
                        axum::serve(Inbox { rx, local }, app)
                            .with_graceful_shutdown(async move {
                                let _ = stop_rx.wait_for(|s| *s).await;
                            })
                            .await
                    })
                });
                let _ = done_tx.send(result);
            })?;
    }
    let mut stop_rx = stop_rx;
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
                loop {
                    tokio::select! {
                        r = listener.accept() => match r {
                            Ok((stream, peer)) => hand_over(stream, peer, &open, &inboxes),
                            Err(e) => accept_error(e).await,
                        },
                        _ = stop_rx.wait_for(|s| *s) => return,
                    }
                }
            })
        })?;
    if let Err(e) = started
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the acceptor thread ended at start")))
    {
        let _ = stop.send(true);
        return Err(e);
    }
    Ok(Workers { stop, done, count })
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
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

/// As axum's own listener: errors about one connection are that connection's problem; others
/// (out of file descriptors) are logged and retried after a pause instead of spinning.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
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

/// One worker's queue of connections handed over by the acceptor, as an axum listener.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Handoff>,
    local: SocketAddr,
}

impl axum::serve::Listener for Inbox {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            let Some((std, peer, guard)) = self.rx.recv().await else {
                // The acceptor has stopped: only shutdown ends this worker now.
                return std::future::pending().await;
            };
            match tokio::net::TcpStream::from_std(std) {
                Ok(io) => return (Conn { io, _guard: guard }, peer),
                Err(e) => tracing::warn!(error = %e, "cannot register a connection; closing it"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A connection that keeps its worker's count right (invariant 1).
struct Conn {
    io: tokio::net::TcpStream,
    _guard: OpenGuard,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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
    /// Stops accepting and lets in-flight requests finish.
    pub fn drain(&self) {
        let _ = self.stop.send(true);
    }

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

    /// A request through the acceptor and a worker, then a drain that ends both.
    #[test]
    fn serves_and_drains() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = || Router::new().route("/", get(|| async { "ok" }));
        let workers = start(listener, vec![app(), app()]).unwrap();
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
        workers.drain();
        current_thread().unwrap().block_on(workers.wait()).unwrap();
    }
}
