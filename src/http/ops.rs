//! Operational endpoints: `/metrics`, `/healthz`, `/readyz` (no authentication: they reveal no
//! session data, and probes and scrapers should not need keys), and `/v1/cluster` (admin: it
//! names the nodes).
//!
//! Invariants:
//! 1. `/healthz` says only that the process answers; `/readyz` says whether it should get
//!    traffic: not before start-up has loaded the state, not once shutdown has begun, not
//!    while another daemon holds the state directory (fenced), and not while a cluster node
//!    is behind the stream (unless NATS has been out of reach past
//!    `--cluster-ready-timeout`: `cluster`, invariant 4).
//! 2. `/metrics` renders the registry and the live session count at the moment of the scrape;
//!    no label carries a token or a user's id.

use super::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;

pub async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.metrics.render(st.engine.len());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /v1/cluster` (admin): this node, the nodes seen recently, how far behind each is.
pub async fn cluster(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, super::error::ApiError> {
    super::extract::authorize(&st, &headers, crate::api_keys::Role::Admin)?;
    match &st.cluster {
        Some(c) => Ok(super::sessions::json_response(
            StatusCode::OK,
            &c.view(st.engine.now_ms()),
        )),
        None => Err(super::error::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "this node runs alone (no --cluster); there is no cluster to show",
        )),
    }
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(st): State<AppState>) -> Response {
    // Another daemon holds the state directory: this one refuses writes (see `persist`).
    let fenced = st.journal.as_ref().is_some_and(|j| j.fenced());
    // A cluster node is ready once it has caught up with the stream (`cluster`, invariant 4).
    let behind = st.cluster.as_ref().is_some_and(|c| !c.ready());
    if st.ready.load(Ordering::Acquire) && !fenced && !behind {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}
