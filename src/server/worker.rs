//! One HTTP worker: a current-thread runtime that serves every connection it is handed to the
//! end, each on a task of its own, through hyper's HTTP/1 driver.
//!
//! Invariants (numbered as in `server`):
//! 2. When the shutdown signal is set the worker stops taking connections, lets each of its
//!    own finish the request in flight (an idle one is closed), and returns once all are gone.
//!    Its connection tasks are told through `drain`, not by each polling the shutdown signal.
//! 3. Each connection's [`Service`] counts the request heads hyper hands it: the connection
//!    (`conn::Conn`) reads that count to know a request is in flight.
//! 6. Per request: one relaxed load and store of that count, the lag probe's two thread-local
//!    writes (`lag`), then the [`App`]'s `call`.
//! 12. No read of the socket while a request is in flight (hyper's `half_close`).
//! 13. A worker runs its write gate (`gate`) for as long as it serves.
//! 17. And its lag probe (`lag`).

use super::Limits;
use super::accept::{Handoff, OpenGuard, Stream};
use super::conn::Conn;
use super::drain;
use crate::shutdown::Stop;
use axum::Router;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::{mpsc, watch};

/// What a worker serves: a router, or one that answers some routes before it (`http::App`).
pub trait App: Clone + Send + 'static {
    type Future: Future<Output = Result<Response, Infallible>> + Send + 'static;
    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future;
}

impl App for Router {
    type Future = <Router as tower_service::Service<hyper::Request<Incoming>>>::Future;
    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        // As `axum::serve` does: a router clone is a reference count.
        tower_service::Service::call(&mut self.clone(), req)
    }
}

/// One worker: serves each connection handed over on a task of its own until shutdown, then
/// waits for them to drain (invariant 2).
pub(super) async fn serve<A: App>(
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Handoff>,
    app: A,
    limits: Limits,
    write_gate: bool,
    stop: Stop,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    let http = &mut http;
    // Ours ([`Conn`]) starts at a request's first byte; hyper's would also close idle
    // keep-alive connections.
    http.header_read_timeout(None);
    // Invariant 12. Otherwise hyper reads the socket while a request is in flight, to see an
    // end of stream early; the read buffer then still holds that request's head, so every
    // request cost a fresh 8 KiB buffer (~400 instructions with its free) instead of reusing it.
    http.half_close(true);
    // Each connection task holds a receiver; `closed` resolves when the last is gone.
    let (drained_tx, drained_rx) = watch::channel(());
    // Invariant 13: this worker's answers of one pass go out together (unless turned off: a
    // thread without a running gate holds nothing).
    let gate = write_gate.then(|| tokio::spawn(super::gate::run()));
    // Invariant 17: how late this worker runs, for `/metrics`.
    let lag = tokio::spawn(super::lag::run(index));
    loop {
        let handoff = tokio::select! {
            h = rx.recv() => h,
            _ = stop.wait() => break,
        };
        // The acceptor has ended: the shutdown has begun, or it could not start.
        let Some((std, guard)) = handoff else {
            break;
        };
        let spawned = match std {
            Stream::Tcp(s) => tokio::net::TcpStream::from_std(s)
                .map(|io| spawn(http, io, guard, &app, limits, &drained_rx)),
            Stream::Unix(s) => tokio::net::UnixStream::from_std(s)
                .map(|io| spawn(http, io, guard, &app, limits, &drained_rx)),
        };
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot register a connection; closing it");
        }
    }
    drain::begin();
    drop(drained_rx);
    drained_tx.closed().await;
    if let Some(gate) = gate {
        gate.abort(); // releases anything still held (invariant 14)
    }
    lag.abort();
}

/// Serves one connection on a task of its own until it ends or the shutdown drains it.
fn spawn<S, A: App>(
    http: &hyper::server::conn::http1::Builder,
    io: S,
    guard: OpenGuard,
    app: &A,
    limits: Limits,
    drained: &watch::Receiver<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let heads = Arc::new(AtomicU32::new(0));
    let conn = Conn::new(io, guard, heads.clone(), limits);
    let service = Service {
        app: app.clone(),
        heads,
    };
    let conn = http.serve_connection(TokioIo::new(conn), service);
    let drained = drained.clone();
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let mut member = drain::Member::default();
        let result = std::future::poll_fn(|cx| {
            if member.told(cx) {
                conn.as_mut().graceful_shutdown();
            }
            conn.as_mut().poll(cx)
        })
        .await;
        if let Err(e) = result {
            tracing::trace!(error = %e, "connection ended with an error");
        }
        drop(drained);
    });
}

/// The app as a hyper service that counts the request heads it is handed, so that the
/// connection knows a request is in flight (invariant 3).
struct Service<A> {
    app: A,
    heads: Arc<AtomicU32>,
}

impl<A: App> hyper::service::Service<hyper::Request<Incoming>> for Service<A> {
    type Response = Response;
    type Error = Infallible;
    type Future = A::Future;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        super::lag::request(); // invariant 17
        // One writer (this connection's task): a plain store, no locked instruction.
        let n = self.heads.load(Ordering::Relaxed);
        self.heads.store(n.wrapping_add(1), Ordering::Relaxed);
        self.app.call(req)
    }
}
