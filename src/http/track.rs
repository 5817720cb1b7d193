//! The one layer every route passes through: route metrics (count by status, duration), and,
//! on session routes, the loading gate.
//!
//! It is a plain tower [`Service`] rather than `axum::middleware::from_fn`, because it runs on
//! every request and `from_fn` costs a boxed future, a boxed clone of the inner route and a
//! second boxed service per call; this one allocates nothing. With it, and the hot handlers
//! taking the `Request` instead of copying its `HeaderMap`, the daemon's user-space CPU per
//! `GET /v1/auth` fell from 3.3 to 3.0 us (`/proc/PID/stat` over 4 s of load, three runs each).
//!
//! Invariants:
//! 1. Every request a route answers is counted once, with the status it got, labelled by the
//!    matched route template (never the raw path, which holds user and org ids).
//! 2. While `loaded` is false a gated route answers 503 `loading` without running its handler:
//!    "unknown session" before the sessions are loaded would sign people out.
//! 3. The hot routes answered before the router (`hot`) go through the same future
//!    ([`TrackFuture::hot`]): gated, counted and labelled alike, their template given as text.

use super::error::ApiError;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// Wraps each route (use it with `Router::route_layer`).
#[derive(Clone)]
pub struct TrackLayer {
    gate: Option<Arc<AtomicBool>>,
}

impl TrackLayer {
    /// Metrics only.
    pub fn metrics() -> TrackLayer {
        TrackLayer { gate: None }
    }

    /// Metrics, and 503 `loading` until `loaded` is true (invariant 2).
    pub fn gated(loaded: Arc<AtomicBool>) -> TrackLayer {
        TrackLayer { gate: Some(loaded) }
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// The service [`TrackLayer`] builds around a route.
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    gate: Option<Arc<AtomicBool>>,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = match req.extensions().get::<MatchedPath>() {
            Some(m) => Route::Matched(m.clone()),
            None => Route::Static("unmatched"),
        };
        TrackFuture::start(route, self.gate.as_deref(), || self.inner.call(req))
    }
}

impl<F> TrackFuture<F> {
    /// A gated route's answer from `run`, labelled `route` (invariant 3).
    pub fn hot(route: &'static str, loaded: &AtomicBool, run: impl FnOnce() -> F) -> Self {
        TrackFuture::start(Route::Static(route), Some(loaded), run)
    }

    /// The answer of `run`, or `loading` without running it while `gate` is shut (invariant 2).
    fn start(route: Route, gate: Option<&AtomicBool>, run: impl FnOnce() -> F) -> Self {
        let start = Instant::now();
        let state = match gate {
            Some(loaded) if !loaded.load(Ordering::Acquire) => State::Answered(Some(loading())),
            _ => State::Running(run()),
        };
        TrackFuture {
            state,
            route,
            start,
        }
    }
}

/// A route's label: the router's matched template, or one given as text.
enum Route {
    Matched(MatchedPath),
    Static(&'static str),
}

fn loading() -> Response {
    let mut resp = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "loading",
        "sessiond is loading its sessions from the state directory; retry shortly",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

enum State<F> {
    Running(F),
    /// Answered without the handler (the gate); taken when polled.
    Answered(Option<Response>),
}

/// The route's answer, counted when it is ready (invariant 1).
pub struct TrackFuture<F> {
    state: State<F>,
    route: Route,
    start: Instant,
}

impl<F> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let resp = match &mut this.state {
            State::Running(f) => ready!(Pin::new(f).poll(cx))?,
            State::Answered(r) => r.take().expect("TrackFuture polled after it completed"),
        };
        crate::metrics::http_request(
            match &this.route {
                Route::Matched(m) => m.as_str(),
                Route::Static(s) => s,
            },
            resp.status().as_u16(),
            Some(this.start.elapsed().as_secs_f64()),
        );
        Poll::Ready(Ok(resp))
    }
}
