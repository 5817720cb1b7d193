//! Request parsing with our error body: bounded JSON bodies, path ids, and API-key checks.
//!
//! Invariants:
//! 1. A body is read only up to [`MAX_BODY_BYTES`]; anything longer is a 413, never buffered.
//! 2. JSON errors (syntax, wrong types, unknown fields) are 400 `invalid_json` with serde's
//!    message, which names the field and position.

use super::AppState;
use super::error::ApiError;
use crate::api_keys::Role;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Reads a whole body, refusing oversized ones (invariant 1).
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        })
}

/// Parses JSON that may borrow from `bytes` (invariant 2).
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "request body is empty; expected a JSON object",
        ));
    }
    // Every body this API takes is an object; serde would also take a struct as an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_json",
            "invalid JSON body: expected a JSON object ({...})",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

/// Checks the `X-API-Key` header against the configured keys (no keys: everything allowed).
pub fn authorize(state: &AppState, headers: &HeaderMap, needed: Role) -> Result<(), ApiError> {
    let Some(keys) = &state.keys else {
        return Ok(());
    };
    let Some(value) = headers.get("x-api-key") else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing X-API-Key header",
        ));
    };
    let Some((_, role)) = value.to_str().ok().and_then(|k| keys.lookup(k)) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown API key",
        ));
    };
    if !role.allows(needed) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this API key has the gateway role; this endpoint needs an admin key",
        ));
    }
    Ok(())
}

/// Checks a user or org id taken from the path.
pub fn path_id(field: &'static str, value: &str) -> Result<(), ApiError> {
    crate::session::check_id(field, value).map_err(Into::into)
}

/// A single path parameter whose rejection uses our error body.
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

/// Reads `?dry_run=true|false` (also `1|0`) from a policy write's query string. Any other
/// parameter is refused: a misspelt `dryrun=true` must not turn a preview into a real write.
pub fn dry_run_param(uri: &axum::http::Uri) -> Result<bool, ApiError> {
    let mut dry = false;
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "dry_run" {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown query parameter {k:?}; the only one accepted here is dry_run=true"
                ),
            ));
        }
        dry = match v {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("dry_run must be true or false, not {other:?}"),
                ));
            }
        };
    }
    Ok(dry)
}

#[cfg(test)]
mod tests {
    use super::dry_run_param;

    #[test]
    fn dry_run_query() {
        let q = |s: &str| dry_run_param(&s.parse().unwrap()).map_err(|e| e.message);
        assert_eq!(q("/v1/policy"), Ok(false));
        assert_eq!(q("/v1/policy?dry_run=true"), Ok(true));
        assert_eq!(q("/v1/policy?dry_run=1"), Ok(true));
        assert_eq!(q("/v1/policy?dry_run=false"), Ok(false));
        assert!(
            q("/v1/policy?dry_run=yes")
                .unwrap_err()
                .contains("true or false")
        );
        assert!(q("/v1/policy?dryrun=true").unwrap_err().contains("dryrun"));
        assert!(q("/v1/policy?dry_run").is_err());
    }
}
