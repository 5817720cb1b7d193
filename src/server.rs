//! The HTTP workers: one current-thread tokio runtime per worker thread, all accepting from one
//! listening socket, each serving its connections to the end.
//!
//! Why not one multi-threaded runtime: with work stealing, a connection's readiness is noticed
//! by whichever worker polls the I/O driver and its task often runs on the other, so a request
//! costs a cross-thread wake-up (a futex and a context switch) on top of its two syscalls. Here
//! a connection lives and dies on the thread that accepted it, as in Redis's event loop.
//!
//! Invariants:
//! 1. Every worker accepts from a `dup` of the same socket, so there is one port and one accept
//!    queue, and no `SO_REUSEPORT` (which would let a second daemon started by mistake on the
//!    same port silently take half the traffic). A busy worker accepts less, an idle one more.
//! 2. Shutdown is one `watch` channel: every worker stops accepting at once, drains its own
//!    connections, and reports; [`Workers::wait`] returns when the last has drained.

use axum::Router;
use std::net::SocketAddr;
use tokio::sync::watch;

/// The running HTTP workers.
pub struct Workers {
    stop: watch::Sender<bool>,
    done: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<()>>,
    count: usize,
}

/// Binds and listens on `addr` (before any worker starts, so that a port in use fails start-up
/// at once). std sets `SO_REUSEADDR`, so a restart is not refused by old connections in
/// TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Starts one worker per router in `apps`, all serving on `listener`.
pub fn start(listener: std::net::TcpListener, apps: Vec<Router>) -> std::io::Result<Workers> {
    let n = apps.len();
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = tokio::sync::mpsc::unbounded_channel();
    for (i, app) in apps.into_iter().enumerate() {
        let listener = listener.try_clone()?;
        let mut stop_rx = stop_rx.clone();
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("sessiond-http-{i}"))
            .spawn(move || {
                let result = (|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        use axum::serve::ListenerExt;
                        // Answers are written whole; no reason to let Nagle hold any back.
                        let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|s| {
                            let _ = s.set_nodelay(true);
                        });
                        axum::serve(listener, app)
                            .with_graceful_shutdown(async move {
                                let _ = stop_rx.wait_for(|s| *s).await;
                            })
                            .await
                    })
                })();
                let _ = done_tx.send(result);
            })?;
    }
    Ok(Workers {
        stop,
        done,
        count: n,
    })
}

impl Workers {
    /// Stops accepting everywhere and lets in-flight requests finish.
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
