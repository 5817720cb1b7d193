//! The routes a gateway calls on every request its users make, answered before the router:
//! `GET /v1/auth` (and Envoy's `/v1/auth/...`), `POST /v1/sessions/validate` and
//! `POST /v1/sessions/touch`.
//!
//! Why: axum's router costs about ten allocations per request on top of the handler's (the
//! matched path in a per-request extensions map, a boxed clone of the route's service, boxed
//! futures around it and the handler). These routes run the same handlers in one boxed
//! future instead: ~4,700 fewer user-space instructions per auth and per validate (callgrind,
//! `docs/performance.md`), 11 allocations instead of 22 per validate.
//!
//! Invariants:
//! 1. A request is taken here only when its method and path are exactly those of a hot route
//!    (the catch-all `/v1/auth/{*original_path}` included); anything else, `HEAD` included,
//!    goes to the router unchanged, so every other answer (404, 405, the other routes) is the
//!    router's.
//! 2. A hot route answers as it would through the router: the same handler with the same
//!    state, the same loading gate, and the same metrics under the same route template
//!    (`track`, invariant 3).

use super::{AppState, forward_auth, router, sessions};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The router, and the hot routes before it.
#[derive(Clone)]
pub struct App {
    router: Router,
    state: AppState,
}

impl App {
    pub fn new(state: AppState) -> App {
        App {
            router: router(state.clone()),
            state,
        }
    }
}

/// The hot routes' templates, which the router registers too (one spelling for both).
pub const AUTH: &str = "/v1/auth";
pub const AUTH_SLASH: &str = "/v1/auth/";
pub const AUTH_PATH: &str = "/v1/auth/{*original_path}";
pub const VALIDATE: &str = "/v1/sessions/validate";
pub const TOUCH: &str = "/v1/sessions/touch";

/// Which hot route a request is for, and its template (invariant 1).
fn hot_route(method: &Method, path: &str) -> Option<(Hot, &'static str)> {
    match *method {
        Method::GET if path == AUTH => Some((Hot::Auth, AUTH)),
        Method::GET if path == AUTH_SLASH => Some((Hot::Auth, AUTH_SLASH)),
        Method::GET if path.starts_with(AUTH_SLASH) => Some((Hot::Auth, AUTH_PATH)),
        Method::POST if path == VALIDATE => Some((Hot::Validate, VALIDATE)),
        Method::POST if path == TOUCH => Some((Hot::Touch, TOUCH)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hot {
    Auth,
    Validate,
    Touch,
}

type Boxed = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// A hot route's answer or the router's.
pub enum AppFuture {
    Hot(super::track::TrackFuture<Boxed>),
    Router(<Router as crate::server::App>::Future),
}

impl Future for AppFuture {
    type Output = Result<Response, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            AppFuture::Hot(f) => Pin::new(f).poll(cx),
            AppFuture::Router(f) => Pin::new(f).poll(cx),
        }
    }
}

impl crate::server::App for App {
    type Future = AppFuture;

    fn call(&self, req: hyper::Request<Incoming>) -> AppFuture {
        let Some((hot, template)) = hot_route(req.method(), req.uri().path()) else {
            return AppFuture::Router(crate::server::App::call(&self.router, req));
        };
        let st = self.state.clone();
        let req = req.map(Body::new);
        let loaded = &self.state.loaded;
        AppFuture::Hot(super::track::TrackFuture::hot(
            template,
            loaded,
            move || {
                // One box per handler, each the size of its own future: `map`, not an `async`
                // block, which would keep the state and the request beside the handler's
                // future that holds them too (~250 bytes; touch's box was then at glibc's
                // per-thread cache limit, see `Journal::wait_durable`).
                let answer = |r: Result<Response, super::error::ApiError>| Ok(r.into_response());
                match hot {
                    Hot::Auth => Box::pin(forward_auth::auth(State(st), req).map(answer)) as Boxed,
                    Hot::Validate => Box::pin(sessions::validate(State(st), req).map(answer)),
                    Hot::Touch => Box::pin(sessions::touch(State(st), req).map(answer)),
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_hot_routes_are_taken_before_the_router() {
        let get = &Method::GET;
        let post = &Method::POST;
        assert_eq!(hot_route(get, "/v1/auth"), Some((Hot::Auth, "/v1/auth")));
        assert_eq!(hot_route(get, "/v1/auth/"), Some((Hot::Auth, "/v1/auth/")));
        assert_eq!(
            hot_route(get, "/v1/auth/app/page"),
            Some((Hot::Auth, "/v1/auth/{*original_path}"))
        );
        assert_eq!(
            hot_route(post, "/v1/sessions/validate"),
            Some((Hot::Validate, "/v1/sessions/validate"))
        );
        assert_eq!(
            hot_route(post, "/v1/sessions/touch"),
            Some((Hot::Touch, "/v1/sessions/touch"))
        );
        for (m, p) in [
            (&Method::HEAD, "/v1/auth"),
            (post, "/v1/auth"),
            (get, "/v1/authx"),
            (get, "/v1/sessions/validate"),
            (post, "/v1/sessions/validate/"),
            (post, "/v1/sessions"),
            (post, "/v1/sessions/revoke"),
            (get, "/healthz"),
        ] {
            assert_eq!(hot_route(m, p), None, "{m} {p}");
        }
    }
}
