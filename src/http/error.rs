//! The one place errors become HTTP: status + `{"error": {"code": "...", "message": "..."}}`.
//!
//! Invariants:
//! 1. Every refusal the API makes goes through [`ApiError`]; codes are stable strings a client
//!    can branch on, messages are for people and never contain a token.
//! 2. A failure of the machine rather than of the request (the OS random generator) is logged
//!    with its cause and answered 503 with a fixed message: the OS's error text is not sent.

use crate::engine::EngineError;
use crate::policy::PolicyError;
use crate::session::InputError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error: status, stable code, human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The rest of a body that timed out may still come: the connection cannot carry
        // another request after it (`extract`, invariant 6).
        if self.status == StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::bad_request("invalid_field", e.to_string())
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        ApiError::bad_request("invalid_policy", e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::Input(i) => i.into(),
            EngineError::Capacity { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "capacity_exceeded", msg)
            }
            EngineError::UserLimit { .. } => {
                ApiError::new(StatusCode::CONFLICT, "user_session_limit", msg)
            }
            EngineError::Rng(_) => {
                // The OS's words go to the log, not to the client (invariant 2).
                tracing::error!(error = %msg, "cannot mint a session token");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rng_unavailable",
                    "the operating system's random number generator failed; no session was created, retry later",
                )
            }
        }
    }
}

impl From<crate::policy_source::SourceError> for ApiError {
    fn from(e: crate::policy_source::SourceError) -> Self {
        use crate::policy_source::SourceError;
        let msg = e.to_string();
        match e {
            SourceError::FileMode(_) => {
                ApiError::new(StatusCode::CONFLICT, "policy_source_is_file", msg)
            }
            SourceError::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy_source_invalid",
                msg,
            ),
            SourceError::Persist { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state_dir_unwritable", msg)
            }
            SourceError::Engine(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed random generator is a 503 whose body does not carry the OS's words; the
    /// engine's error keeps them as its source, for the log.
    #[test]
    fn rng_failure_is_503_without_the_os_text() {
        let os = getrandom::Error::UNSUPPORTED;
        let engine = EngineError::Rng(os);
        let source = std::error::Error::source(&engine).expect("the OS error is kept");
        assert_eq!(source.to_string(), os.to_string());
        let e = ApiError::from(engine);
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "rng_unavailable");
        assert!(!e.message.contains(&os.to_string()), "{}", e.message);
    }
}
