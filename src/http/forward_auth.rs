//! `GET /v1/auth`: the forward-auth endpoint for nginx `auth_request`, Traefik `forwardAuth` and
//! Envoy `ext_authz`. No body; the token comes from the session cookie or
//! `Authorization: Bearer`. A successful check counts as activity (a touch).

use super::AppState;
use super::error::ApiError;
use super::extract::authorize;
use crate::api_keys::Role;
use crate::session::Validation;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Where a token came from: a cookie that the browser holds, or a bearer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Cookie,
    Bearer,
}

/// The token and where it came from (the cookie wins over `Authorization`).
pub fn token_and_origin<'h>(headers: &'h HeaderMap, cookie_name: &str) -> Option<(&'h str, From)> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(s) = value.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((name, val)) = pair.trim().split_once('=')
                && name.trim() == cookie_name
            {
                return Some((val.trim().trim_matches('"'), From::Cookie));
            }
        }
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| (token.trim(), From::Bearer))
}

static X_SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");
static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
static X_ORG_ID: HeaderName = HeaderName::from_static("x-org-id");
static X_EXPIRES_IN: HeaderName = HeaderName::from_static("x-session-expires-in");

/// Takes the whole request rather than a `HeaderMap` extractor, which would copy every header.
pub async fn auth(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers();
    authorize(&st, headers, Role::Gateway)?;
    let Some((token, origin)) = token_and_origin(headers, &st.cookie.name) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "no session cookie or bearer token",
        ));
    };
    let v = st.engine.touch(token);
    st.durable().await?;
    st.metrics.touch(&v);
    match v {
        Validation::Valid(s) => {
            let now = st.engine.now_ms();
            let mut resp = StatusCode::OK.into_response();
            let h = resp.headers_mut();
            h.reserve(4);
            h.insert(
                X_SESSION_ID.clone(),
                HeaderValue::from_str(s.id.hex().as_str()).expect("hex"),
            );
            // Ids have no control characters (session::check_id), so they are valid header values.
            if let Ok(u) = HeaderValue::from_bytes(s.user_id.as_bytes()) {
                h.insert(X_USER_ID.clone(), u);
            }
            if let Some(o) = s
                .org_id
                .as_deref()
                .and_then(|o| HeaderValue::from_bytes(o.as_bytes()).ok())
            {
                h.insert(X_ORG_ID.clone(), o);
            }
            h.insert(
                X_EXPIRES_IN.clone(),
                HeaderValue::from(s.expires_in_secs(now)),
            );
            Ok(resp)
        }
        Validation::Invalid(r) => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!("session is not valid: {}", r.as_str()),
            )
            .into_response();
            // The browser holds a dead cookie: tell gateways that relay refusals to clear it.
            if origin == From::Cookie
                && let Ok(v) = HeaderValue::from_str(&st.cookie.clear())
            {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_then_bearer() {
        fn get<'h>(h: &'h HeaderMap, name: &str) -> Option<(&'h str, From)> {
            token_and_origin(h, name)
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=tok; b=2"),
        );
        assert_eq!(get(&h, "session"), Some(("tok", From::Cookie)));
        assert_eq!(get(&h, "other"), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(get(&h, "other"), Some(("xyz", From::Bearer)));
        assert_eq!(get(&h, "session"), Some(("tok", From::Cookie)));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(get(&h, "session"), None);
    }
}
