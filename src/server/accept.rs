//! The acceptor: takes each new connection (TCP or Unix socket, `listen`) and hands it to the
//! worker with the fewest open ones, or refuses it past the cap.
//!
//! Invariants (numbered as in `server`):
//! 1. A worker's count is incremented here when a connection is handed to it, and decremented
//!    by the connection's [`OpenGuard`] when it is dropped, whichever way it ends.
//! 4. Past `max_connections` a new connection is answered 503 and closed at once, counted, and
//!    logged at most once per [`LOG_EVERY`].
//! 5. A failing `accept` pauses [`ACCEPT_PAUSE`] and is logged at most once per [`LOG_EVERY`].

use super::listen::Listener;
use super::{ACCEPT_PAUSE, LOG_EVERY, Limits};
use crate::shutdown::Stop;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A connection on its way to a worker.
pub(super) type Handoff = (Stream, OpenGuard);

/// A connection as it travels between threads (a plain socket, registered with no runtime).
pub(super) enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// The listening socket, registered with the acceptor's runtime.
pub(super) enum Accepting {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// A connection just accepted, on the acceptor's runtime.
pub(super) enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Accepting {
    /// Registers `l` with the current runtime.
    pub(super) fn new(l: Listener) -> std::io::Result<Accepting> {
        Ok(match l {
            Listener::Tcp(l) => Accepting::Tcp(tokio::net::TcpListener::from_std(l)?),
            Listener::Unix(l) => Accepting::Unix(tokio::net::UnixListener::from_std(l)?),
        })
    }

    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Accepting::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
            Accepting::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

impl Accepted {
    /// Best effort: a fresh socket's send buffer takes a short answer whole, or the peer is
    /// gone.
    fn try_write(&self, b: &[u8]) {
        let _ = match self {
            Accepted::Tcp(s) => s.try_write(b),
            Accepted::Unix(s) => s.try_write(b),
        };
    }

    /// Out of this runtime, to be handed to a worker's.
    fn into_std(self) -> std::io::Result<Stream> {
        Ok(match self {
            Accepted::Tcp(s) => {
                // Answers are written whole; no reason to let Nagle hold any back.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s.into_std()?)
            }
            Accepted::Unix(s) => Stream::Unix(s.into_std()?),
        })
    }
}

/// Accepts until `stop` is set: each connection is handed to a worker, or refused past the
/// cap (invariant 4); a failing `accept` pauses (invariant 5).
pub(super) async fn run(
    listener: Accepting,
    open: &Arc<[AtomicUsize]>,
    inboxes: &[mpsc::UnboundedSender<Handoff>],
    limits: Limits,
    stop: &Stop,
) {
    let mut refused = RateLimited::default();
    let mut failed = RateLimited::default();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(stream) => {
                    if total(open) >= limits.max_connections {
                        refuse(stream, limits.max_connections, &mut refused);
                    } else {
                        hand_over(stream, open, inboxes);
                    }
                }
                Err(e) => accept_error(e, limits.max_connections, &mut failed).await,
            },
            _ = stop.wait() => return,
        }
    }
}

fn total(open: &[AtomicUsize]) -> usize {
    open.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// Gives `stream` to the worker with the fewest open connections (invariant 1).
pub(super) fn hand_over(
    stream: Accepted,
    open: &Arc<[AtomicUsize]>,
    inboxes: &[mpsc::UnboundedSender<Handoff>],
) {
    let i = (0..open.len())
        .min_by_key(|&i| open[i].load(Ordering::Relaxed))
        .expect("at least one worker");
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
    let _ = inboxes[i].send((std, guard));
}

/// Counts events and says whether one should be logged now (at most one line per
/// [`LOG_EVERY`], carrying how many happened since the last).
#[derive(Default)]
pub(super) struct RateLimited {
    last: Option<Instant>,
    since: u64,
}

impl RateLimited {
    /// Counts one event; `Some(n)` (events since the last line, this one included) when a
    /// line is due.
    pub(super) fn tick(&mut self, now: Instant) -> Option<u64> {
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
fn refuse(stream: Accepted, max: usize, log: &mut RateLimited) {
    metrics::counter!(crate::metrics::HTTP_CONNECTIONS_REFUSED).increment(1);
    stream.try_write(REFUSED);
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
pub(super) struct OpenGuard {
    open: Arc<[AtomicUsize]>,
    worker: usize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open[self.worker].fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::HTTP_CONNECTIONS).decrement(1.0);
    }
}
