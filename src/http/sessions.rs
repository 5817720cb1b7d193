//! Session endpoints: create, validate, touch, revoke (gateway) and the admin views.
//!
//! Invariants:
//! 1. Every endpoint checks its key before it reads a body: the gateway's role for create,
//!    validate, touch and revoke, the admin's for the rest.
//! 2. A write is answered only once it is on disk as the fsync policy asks (`durable`); create,
//!    revoke and the admin revocations also wait until the cluster has it (`replicated`).
//!    A touch does not: activity only slides this node's idle deadline sooner or later
//!    elsewhere (docs/cluster.md).
//! 3. A token or id this node does not know is looked up again once the node has caught up
//!    with the cluster's stream, so a session made on another node a moment ago is found; a
//!    revoke never answers for a session it could not look for.
//! 4. Validate and touch answer 200 with `valid` true or false and the reason: an unknown or
//!    expired token is an answer, not an error. A malformed body is a 4xx (`error.rs`).
//! 5. The admin views show live sessions only (deadline after now), swept or not.
//! 6. A revoke is idempotent: 204 whether or not the token named a session, with the
//!    `Set-Cookie` that clears the browser's cookie.
//! 7. **A logout reaches every node.** On a cluster node, a revoke of a well-formed token, or
//!    a delete of an id, that this node does not hold even once caught up (invariant 3) is
//!    still sent to the other nodes as that session's revocation (engine invariant 7), once
//!    per call, and answered once replicated (invariant 2): each node evicts by its own view,
//!    so another may still hold it. A malformed token sends nothing; the delete still answers
//!    404 (this node holds no such session). A single node sends and writes nothing for it.

use super::AppState;
use super::error::ApiError;
use super::extract::{
    Members, PathParam, authorize, no_query, parse_json, path_id, read_json_body,
};
use super::session_json::{self, SessionJson};
use crate::api_keys::Role;
use crate::engine::Engine;
use crate::session::{Invalid, Metadata, NewSession, SessionView};
use crate::token::SessionId;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    // A session answer is ~400 bytes: one allocation instead of a chain of doublings.
    let mut body = Vec::with_capacity(512);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

/// The preamble of the gateway's JSON endpoints (create, validate, touch, revoke): the key
/// for the gateway role, then the body, bounded, for `parse_json`; and the request's header
/// map, for the answer ([`json_body_in`]).
async fn gateway_body(st: &AppState, req: Request) -> Result<(Bytes, HeaderMap), ApiError> {
    // The rest of the head is done with before the body is awaited, so the handlers' futures
    // do not hold it (~130 bytes; see `Journal::wait_durable` on glibc's per-thread cache).
    let (headers, body) = {
        let (parts, body) = req.into_parts();
        authorize(st, &parts.headers, Role::Gateway)?;
        let body = read_json_body(&parts.headers, body, st.body_read_timeout);
        (parts.headers, body)
    };
    Ok((body.await?, headers))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    user_id: String,
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    metadata: Option<Members<String>>,
}

#[derive(Serialize)]
struct CreateResponse<'a> {
    token: &'a str,
    session: SessionJson<'a>,
    /// The complete `Set-Cookie` value for the browser.
    cookie: String,
}

pub async fn create(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (bytes, _) = gateway_body(&st, req).await?;
    let req: CreateRequest = parse_json(&bytes)?;
    let metadata = req.metadata.map(|m| Metadata::new(m.0)).transpose()?;
    let created = match st.engine.create(NewSession {
        user_id: req.user_id,
        org_id: req.org_id,
        metadata,
    }) {
        Ok(c) => c,
        Err(e) => {
            let reason = match e {
                crate::engine::EngineError::Capacity { .. } => "capacity",
                crate::engine::EngineError::UserLimit { .. } => "user_limit",
                _ => "invalid",
            };
            metrics::counter!(crate::metrics::CREATE_REFUSED, "reason" => reason).increment(1);
            return Err(e.into());
        }
    };
    st.durable().await?;
    st.replicated().await?;
    st.metrics.created.increment(1);
    if created.displaced > 0 {
        st.metrics.revoked.increment(created.displaced as u64);
    }
    let now = created.session.created_at_ms;
    let s = &created.session;
    // Persistent: the browser keeps the cookie until the absolute deadline; else a session cookie.
    let max_age = s
        .persistent
        .then(|| s.absolute_expires_at_ms.saturating_sub(now) / 1_000);
    Ok(json_response(
        StatusCode::CREATED,
        &CreateResponse {
            token: created.token.expose(),
            session: SessionJson::new(s, now),
            cookie: st.cookie.issue(created.token.expose(), max_age),
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
}

/// A validate or touch answer: the session's body already written, or why not.
fn validation_response(headers: HeaderMap, v: Result<Bytes, Invalid>) -> Response {
    let body = v.unwrap_or_else(session_json::invalid_body);
    json_body_in(headers, StatusCode::OK, body)
}

/// A JSON answer already written.
fn json_body(status: StatusCode, body: Bytes) -> Response {
    json_body_in(HeaderMap::new(), status, body)
}

/// A JSON answer already written, its headers in `headers` emptied: the request's own map, on
/// the gateway's routes. hyper hands an answer's map back as the next request's, so those
/// routes then allocate no header map (two allocations a request; the black-box test
/// `hot_routes_answer_with_their_own_headers_only` holds that nothing of the request's
/// remains). The header value is static: from a `&str`, axum would copy it into an
/// allocation of its own.
fn json_body_in(mut headers: HeaderMap, status: StatusCode, body: Bytes) -> Response {
    headers.clear();
    let json = axum::http::HeaderValue::from_static("application/json");
    headers.insert(header::CONTENT_TYPE, json);
    let mut resp = Response::new(axum::body::Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// The token of validate, touch and revoke: the common shape without serde, anything else
/// (and every error) through it (`session_json`, invariant 3).
fn token_request(bytes: &Bytes) -> Result<Cow<'_, [u8]>, ApiError> {
    if let Some(token) = session_json::token_fast(bytes) {
        return Ok(Cow::Borrowed(token));
    }
    Ok(match parse_json::<TokenRequest>(bytes)?.token {
        Cow::Borrowed(t) => Cow::Borrowed(t.as_bytes()),
        Cow::Owned(t) => Cow::Owned(t.into_bytes()),
    })
}

pub async fn validate(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (bytes, headers) = gateway_body(&st, req).await?;
    let token = token_request(&bytes)?;
    // The answer is written from the session borrowed under the shard's read lock.
    let answer = || st.engine.validate_with(&token, session_json::valid_body);
    let mut v = answer();
    if v == Err(Invalid::NotFound) && st.caught_up_after_miss().await {
        v = answer();
    }
    st.metrics.validation_outcome(v.as_ref().err().copied());
    Ok(validation_response(headers, v))
}

pub async fn touch(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (bytes, headers) = gateway_body(&st, req).await?;
    let token = token_request(&bytes)?;
    let answer = || st.engine.touch_with(&token, session_json::valid_body);
    let mut v = answer();
    if v == Err(Invalid::NotFound) && st.caught_up_after_miss().await {
        v = answer();
    }
    st.durable().await?;
    st.metrics.touch_outcome(v.as_ref().err().copied());
    Ok(validation_response(headers, v))
}

pub async fn revoke(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (bytes, _) = gateway_body(&st, req).await?;
    let token = token_request(&bytes)?;
    // A malformed token names no session: nothing to revoke, nothing to send.
    if let Some(id) = SessionId::from_token(&token) {
        // A logout right after a login on another node: look again once caught up; never
        // answer "done" for a session this node could not look for (invariant 3).
        if !st.engine.holds(id) {
            st.caught_up_for_write().await?;
        }
        // Sent to the other nodes even if this node does not hold it (invariant 7).
        if st.engine.revoke_id(id) {
            st.metrics.revoked.increment(1);
        }
    }
    st.durable().await?;
    st.replicated().await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&st.cookie.clear()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

fn parse_session_id(id: &str) -> Result<SessionId, ApiError> {
    SessionId::parse_hex(id).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            "session id must be 32 hexadecimal digits (the \"id\" of a session, not its token)",
        )
    })
}

pub async fn get_one(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    no_query(&uri)?;
    authorize(&st, &headers, Role::Admin)?;
    let id = parse_session_id(&id)?;
    let mut found = st.engine.get(id);
    if found.is_none() && st.caught_up_after_miss().await {
        found = st.engine.get(id);
    }
    let now = st.engine.now_ms();
    match found {
        Some(v) if v.expires_at_ms > now => Ok(json_body(
            StatusCode::OK,
            session_json::session_body(&v, now),
        )),
        _ => Err(ApiError::not_found("no live session has this id")),
    }
}

pub async fn delete_one(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    no_query(&uri)?;
    authorize(&st, &headers, Role::Admin)?;
    let id = parse_session_id(&id)?;
    if !st.engine.holds(id) {
        st.caught_up_for_write().await?;
    }
    // Sent to the other nodes even if this node does not hold it (invariant 7).
    let revoked = st.engine.revoke_id(id);
    if revoked || st.cluster.is_some() {
        st.durable().await?;
        st.replicated().await?;
    }
    if revoked {
        st.metrics.revoked.increment(1);
        Ok(StatusCode::NO_CONTENT.into_response())
    } else if st.cluster.is_some() {
        Err(ApiError::not_found(
            "no session has this id on this node; its revocation was sent to the other nodes",
        ))
    } else {
        Err(ApiError::not_found("no session has this id"))
    }
}

#[derive(Serialize)]
struct SessionList<'a> {
    sessions: Vec<SessionJson<'a>>,
}

pub async fn list_user(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    PathParam(user): PathParam,
) -> Result<Response, ApiError> {
    no_query(&uri)?;
    authorize(&st, &headers, Role::Admin)?;
    path_id("user_id", &user)?;
    let now = st.engine.now_ms();
    let views: Vec<SessionView> = st
        .engine
        .list_user(&user)
        .into_iter()
        .filter(|v| v.expires_at_ms > now)
        .collect();
    let sessions = views.iter().map(|v| SessionJson::new(v, now)).collect();
    Ok(json_response(StatusCode::OK, &SessionList { sessions }))
}

#[derive(Serialize)]
struct Revoked {
    revoked: usize,
}

pub async fn revoke_user(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    PathParam(user): PathParam,
) -> Result<Response, ApiError> {
    no_query(&uri)?;
    let n = revoke_all(&st, &headers, "user_id", &user, Engine::revoke_user).await?;
    Ok(json_response(StatusCode::OK, &Revoked { revoked: n }))
}

pub async fn revoke_org(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    PathParam(org): PathParam,
) -> Result<Response, ApiError> {
    no_query(&uri)?;
    let n = revoke_all(&st, &headers, "org_id", &org, Engine::revoke_org).await?;
    // Debug-quoted, as everywhere: an id may hold spaces and `=` (`x revoked=5000`).
    tracing::info!(org_id = ?org, revoked = n, "revoked all sessions of an org");
    Ok(json_response(StatusCode::OK, &Revoked { revoked: n }))
}

/// Revokes every session of one user or org (`field` names the path id in errors): admin key,
/// a valid id, the revocation, on disk if `fsync = always`, counted.
async fn revoke_all(
    st: &AppState,
    headers: &HeaderMap,
    field: &'static str,
    id: &str,
    revoke: fn(&Engine, &str) -> usize,
) -> Result<usize, ApiError> {
    authorize(st, headers, Role::Admin)?;
    path_id(field, id)?;
    let n = revoke(&st.engine, id);
    st.durable().await?;
    st.replicated().await?;
    st.metrics.revoked.increment(n as u64);
    Ok(n)
}
