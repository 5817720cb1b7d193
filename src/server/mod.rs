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
//! (`conn::Conn`), which needs the connection and the service side by side. hyper's own
//! `header_read_timeout` cannot be used: it runs from the moment a connection starts waiting
//! for a request, so it would also close idle keep-alive connections after a few seconds,
//! racing the gateway's pool.
//!
//! Invariants:
//! 1. `open[i]` counts worker `i`'s connections: incremented when one is handed over, and
//!    decremented when its connection (`conn::Conn`) is dropped, whichever way it ends.
//! 2. Shutdown is the daemon's one signal (`shutdown::Stop`): when it is set the acceptor stops
//!    at once, every worker stops waiting for connections, drains its own (a request in flight
//!    is answered, an idle connection is closed), and reports; [`Workers::wait`] returns when
//!    the last has drained.
//! 3. A connection is closed when a request's head has not arrived in full
//!    `header_read_timeout` after its first byte (for a new connection: after it was
//!    accepted), or when no request has started for `keepalive_timeout` after the last
//!    response. A request whose head has arrived is never cut by either (its handler is not
//!    timed here; its body's read is, by the handler: `http::extract`, invariant 6).
//! 4. At most `max_connections` are open: past it the acceptor accepts and closes new ones at
//!    once with a 503 (so they wait in no queue), counts them, and logs at most one line per
//!    [`LOG_EVERY`]; the open ones keep being served.
//! 5. The accept loop never spins: a failing `accept` pauses [`ACCEPT_PAUSE`] and is logged
//!    at most once per [`LOG_EVERY`], with what to do about it.
//! 6. The request path costs what `axum::serve` did, plus per request one relaxed atomic
//!    store, one load, one clock read (vDSO, no syscall) and the lag probe's two thread-local
//!    writes; the timer is per connection and is re-armed only when it fires or a deadline
//!    moves earlier.
//!
//! 7-10. Where it listens (TCP or a Unix socket) and the socket file's life: see `listen`.
//! 11. Each worker is pinned to its core, if any (`pin`), before it serves anything; [`start`]
//!     returns once every worker has tried, and fails if one could not be pinned under `on`.
//! 12. A request in flight is answered even if the client shuts down its side (a half-close)
//!     meanwhile: the socket is not read while a request is in flight, and an end of stream is
//!     seen at the next read, after the answer (`worker`).
//! 13. The answers a worker makes in one pass over its ready connections are written together
//!     at the pass's end, not each as it is made (`gate`): a client on the same host is then
//!     woken once per pass, not once per answer. A held answer waits at most one pass. With
//!     `--write-gate false` no worker runs a gate, and each answer is written as it is made.
//! 14. No answer stays held: a worker that stops releases every held write (`gate`).
//! 15-16. How a worker tells its connections that the drain has begun, at one flag read per
//!     wake-up: see `drain`.
//! 17-18. Each worker records how late its event loop runs, every 10 ms, in
//!     `sessiond_http_worker_delay_seconds` (`lag`).
//!
//! Files: `listen` (the address or socket path, binding, the socket file), `accept` (the
//! acceptor: hand-over to the least-loaded worker, refusal past the cap, accept errors),
//! `worker` (a worker's loop and the app as a hyper service), `conn` (a connection with its
//! deadlines), `gate` (a pass's answers written together), `drain` (connections told that the
//! shutdown began), `lag` (how late each worker runs), `pin` (which core each worker runs on),
//! `tests`.

mod accept;
mod conn;
mod drain;
mod gate;
mod lag;
pub mod listen;
pub mod pin;
#[cfg(test)]
mod tests;
mod worker;

use crate::shutdown::Stop;
pub use listen::{BindError, Listen, Listener, SocketFile, bind};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::sync::mpsc;
pub use worker::App;

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

/// The running acceptor and HTTP workers.
pub struct Workers {
    done: mpsc::UnboundedReceiver<std::io::Result<()>>,
    count: usize,
}

/// Starts one worker per app in `apps` (a router, or `http::App`), pinned as `pinning` says
/// (invariant 11), each with a write gate if `write_gate` (invariant 13), and the acceptor that
/// feeds them from `listener`; they drain and end when `stop` is set (invariant 2).
pub fn start<A: App>(
    listener: Listener,
    apps: Vec<A>,
    limits: Limits,
    pinning: pin::PinWorkers,
    write_gate: bool,
    stop: Stop,
) -> std::io::Result<Workers> {
    let (done_tx, done) = mpsc::unbounded_channel();
    let open: Arc<[AtomicUsize]> = apps.iter().map(|_| AtomicUsize::new(0)).collect();
    let mut inboxes = Vec::with_capacity(apps.len());
    let count = apps.len();
    let cores = pin::plan_here(pinning, count).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read which cores the daemon may use; the HTTP workers are not pinned");
        None
    });
    let (pinned_tx, pinned) = std::sync::mpsc::channel::<(usize, usize, std::io::Result<()>)>();
    for (i, app) in apps.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<accept::Handoff>();
        inboxes.push(tx);
        let stop = stop.clone();
        let done_tx = done_tx.clone();
        let core = cores.as_ref().map(|c| c[i]);
        let pinned_tx = pinned_tx.clone();
        std::thread::Builder::new()
            .name(format!("sessiond-http-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    let _ = pinned_tx.send((i, core, pin::pin_current_thread(core)));
                }
                drop(pinned_tx);
                let result = current_thread()
                    .map(|rt| rt.block_on(worker::serve(i, rx, app, limits, write_gate, stop)));
                let _ = done_tx.send(result);
            })?;
    }
    drop(pinned_tx);
    // Every worker has reported once the channel closes (invariant 11, and 3 of `pin`).
    for (i, core, r) in pinned {
        if let Err(e) = r {
            if pinning == pin::PinWorkers::On {
                return Err(std::io::Error::other(format!(
                    "cannot pin HTTP worker {i} to core {core} (--pin-workers on): {e}"
                )));
            }
            tracing::warn!(worker = i, core, error = %e, "cannot pin an HTTP worker; it runs unpinned");
        }
    }
    if let Some(cores) = &cores {
        tracing::info!(cores = ?cores, "HTTP workers pinned");
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
                let listener = match accept::Accepting::new(listener) {
                    Ok(l) => l,
                    Err(e) => return drop(started_tx.send(Err(e))),
                };
                let _ = started_tx.send(Ok(()));
                accept::run(listener, &open, &inboxes, limits, &stop).await;
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
