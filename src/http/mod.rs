//! The HTTP surface: axum router and shared state; every route is wrapped in [`track`], and
//! the gateway's per-request routes are answered before the router ([`hot`]).
//!
//! Invariants:
//! 1. Every route's role is checked first thing in its handler ([`extract::authorize`], which
//!    without keys also refuses browser pages; `/v1/auth` uses
//!    [`extract::authorize_forward_auth`], which does not, since gateways pass the browser's
//!    `Host` and `Origin` on). The operational routes (`/healthz`, `/readyz`, `/metrics`) take
//!    no key and no `Host` rule: probes and scrapers name the daemon as they like, and the
//!    answers hold no session data.
//! 2. Metrics label requests by the matched route template, never the raw path (which holds
//!    user and org ids); unmatched requests are labelled `unmatched`.
//! 3. No handler logs or returns a token except `POST /v1/sessions`, which hands it out once.

pub mod error;
pub mod extract;
mod forward_auth;
mod hot;
mod ops;
mod policy;
mod session_json;
mod sessions;
mod track;

use crate::api_keys::ApiKeys;
use crate::engine::Engine;
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::ApiError;
pub use hot::App;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What every handler can reach: one pointer, so that the per-request clone axum makes is one
/// reference-count increment. Each HTTP worker gets its own copy ([`AppState::for_worker`]), so
/// that increment never bounces a cache line between cores.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }

    /// A copy with a reference count of its own, pointing at the same engine, metrics, etc.
    pub fn for_worker(&self) -> AppState {
        AppState::new(Shared::clone(&self.0))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`]: handles to the daemon's shared pieces.
#[derive(Clone)]
pub struct Shared {
    pub engine: Arc<Engine>,
    pub policies: Arc<crate::policy_source::PolicyManager>,
    pub metrics: Arc<Metrics>,
    /// `None`: no keys configured, every caller is admin (loopback only, or --insecure-no-auth).
    pub keys: Option<Arc<ApiKeys>>,
    /// The session cookie's name and attributes.
    pub cookie: Arc<crate::cookie::CookieSettings>,
    /// False until the daemon is ready to serve (answers `/readyz`).
    pub ready: Arc<AtomicBool>,
    /// False while sessions are loaded from the state directory: session routes answer 503.
    pub loaded: Arc<AtomicBool>,
    /// The session journal, when sessions are persisted.
    pub journal: Option<Arc<crate::persist::journal::Journal>>,
    /// The cluster this node is part of, if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// How long a request body may keep the handler waiting (`--header-read-timeout`;
    /// `extract`, invariant 6).
    pub body_read_timeout: std::time::Duration,
}

impl Shared {
    /// Under `--fsync always`, waits until the change this request made is on disk; refuses
    /// while another daemon holds the state directory (see `persist::journal`).
    pub async fn durable(&self) -> Result<(), ApiError> {
        match &self.journal {
            Some(j) => j.wait_durable().await.map_err(|e| {
                let code = match e {
                    crate::persist::journal::JournalError::Fenced(_) => "state_dir_taken",
                    _ => "not_durable",
                };
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    e.to_string(),
                )
            }),
            None => Ok(()),
        }
    }

    /// Under `--cluster-ack sync`, waits until the change this request made is in the
    /// cluster's stream (`cluster`, invariant 3).
    pub async fn replicated(&self) -> Result<(), ApiError> {
        match &self.cluster {
            Some(c) => c.replicated().await.map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "not_replicated",
                    e.to_string(),
                )
            }),
            None => Ok(()),
        }
    }

    /// Before a revocation answers that there was nothing to revoke: whether to look again
    /// (caught up with the cluster's stream), or a 503 when this node could not catch up, so
    /// that a logout is never acknowledged for a session another node may still hold.
    pub async fn caught_up_for_write(&self) -> Result<bool, ApiError> {
        match &self.cluster {
            None => Ok(false),
            Some(c) if c.catch_up().await => Ok(true),
            Some(_) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "not_replicated",
                "this node does not know the session and cannot reach the cluster's stream to look for it; nothing was revoked: retry",
            )),
        }
    }

    /// After a lookup of a well-formed token missed: whether to look again, because this node
    /// has now applied the cluster's stream up to its head (`cluster`, invariant 2).
    pub async fn caught_up_after_miss(&self) -> bool {
        match &self.cluster {
            // Boxed: taken only on a miss in a cluster, and otherwise ~380 bytes of every
            // handler's future (see `Journal::wait_durable`).
            Some(c) => Box::pin(c.catch_up()).await,
            None => false,
        }
    }
}

/// The full router.
pub fn router(state: AppState) -> Router {
    let sessions = Router::new()
        .route("/v1/sessions", post(sessions::create))
        .route(hot::VALIDATE, post(sessions::validate))
        .route(hot::TOUCH, post(sessions::touch))
        .route("/v1/sessions/revoke", post(sessions::revoke))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_one).delete(sessions::delete_one),
        )
        .route(
            "/v1/users/{user_id}/sessions",
            get(sessions::list_user).delete(sessions::revoke_user),
        )
        .route(
            "/v1/orgs/{org_id}/sessions",
            axum::routing::delete(sessions::revoke_org),
        )
        .route(hot::AUTH, get(forward_auth::auth))
        // Envoy's ext_authz HTTP service appends the original request path to its path_prefix.
        .route(hot::AUTH_SLASH, get(forward_auth::auth))
        .route(hot::AUTH_PATH, get(forward_auth::auth))
        .route_layer(track::TrackLayer::gated(state.loaded.clone()));
    let api = Router::new()
        .route("/v1/policy", get(policy::get_app).put(policy::put_app))
        .route("/v1/policy/reload", post(policy::reload))
        .route("/v1/cluster", get(ops::cluster))
        .route(
            "/v1/orgs/{org_id}/policy",
            get(policy::get_org)
                .put(policy::put_org)
                .patch(policy::patch_org)
                .delete(policy::delete_org),
        )
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route_layer(track::TrackLayer::metrics())
        .merge(sessions);
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    crate::metrics::http_request("unmatched", 404, None);
    ApiError::not_found(format!(
        "no such endpoint: {} {}",
        req.method(),
        shown_path(req.uri().path())
    ))
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>();
    crate::metrics::http_request(route.map_or("unmatched", |r| r.as_str()), 405, None);
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            req.method(),
            shown_path(req.uri().path())
        ),
    )
    .into_response()
}

/// A path as an error may show it: a segment of 40 characters or more (a session token is
/// 43; the routes' own segments are shorter) is left out, so that a token put in a path by
/// mistake is not sent back in an answer a gateway may log.
fn shown_path(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg.len() {
            0..40 => seg,
            _ => "{...}",
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests;
