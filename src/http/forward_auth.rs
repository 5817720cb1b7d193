//! `GET /v1/auth`: the forward-auth endpoint for nginx `auth_request`, Traefik `forwardAuth` and
//! Envoy `ext_authz`. No body; the token comes from the session cookie or
//! `Authorization: Bearer`. A successful check counts as activity (a touch).
//!
//! Invariants:
//! 1. The gateway's key is checked first (`authorize_forward_auth`, role gateway; no `Host` or
//!    `Origin` check: gateways pass the browser's on).
//! 2. Cookie before bearer: the first pair named exactly like the session cookie, in any
//!    `Cookie` header, is the token (surrounding spaces and quotes removed), even if its value
//!    is empty or malformed; only without one is `Authorization: Bearer <token>` (scheme in any
//!    case) read. Neither: 401 `unauthenticated`, without `Set-Cookie`.
//! 3. A 200 means a live session, touched, and (under `fsync = always`) the touch on disk; it
//!    carries the identity headers ([`IDENTITY_HEADERS`]) and never a cookie.
//! 4. A session that is not valid is a 401 `unauthenticated` naming the reason; it clears the
//!    cookie (`Set-Cookie` with the cookie's clearing value) only when the token came from the
//!    cookie ([`TokenTokenFrom::Cookie`]), never when it came from a bearer header.
//! 5. No request body is read, and the headers are read as bytes (no UTF-8 check here: the
//!    token parser refuses anything that is not base64url).
//! 6. Every 401 of a request carrying `X-Original-URI` (the URI the browser asked the gateway
//!    for; nginx sends `$request_uri`) also carries `X-Login-Next`: that URI percent-encoded for
//!    a query value, every byte but `A-Z a-z 0-9 - . _ ~ /` as `%XX`, for the gateway's redirect
//!    to the login page (`?next=`). Only a local path is carried ([`login_next`]: one leading
//!    `/`, then neither `/` nor `\`, visible ASCII only, at most [`MAX_LOGIN_NEXT`] bytes
//!    encoded), so the header never names another site; otherwise it is left out. Read only on
//!    a refusal: a 200 costs nothing more.

use super::AppState;
use super::error::ApiError;
use super::extract::authorize_forward_auth;
use crate::api_keys::Role;
use crate::session::{Identity, Invalid};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Where a token came from: a cookie that the browser holds, or a bearer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFrom {
    Cookie,
    Bearer,
}

/// The token and where it came from (the cookie wins over `Authorization`: invariant 2), as bytes:
/// [`SessionId::from_token`](crate::token::SessionId::from_token) refuses anything that is not
/// base64url, so a UTF-8 check here would only be paid twice.
///
/// Works on the header's bytes: this runs on every request through the gateway, and a
/// `to_str` of the whole `Cookie` header (every other cookie of the site included) only to
/// find one pair would cost more than the rest of the parse.
pub fn token_and_origin<'h>(
    headers: &'h HeaderMap,
    cookie_name: &str,
) -> Option<(&'h [u8], TokenFrom)> {
    let name = cookie_name.as_bytes();
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let Some(rest) = pair.trim_ascii_start().strip_prefix(name) else {
                continue;
            };
            let Some(val) = rest.trim_ascii_start().strip_prefix(b"=") else {
                continue;
            };
            let val = val.trim_ascii();
            let val = val
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(val);
            return Some((val, TokenFrom::Cookie));
        }
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = auth.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&auth[..space], &auth[space + 1..]);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| (token.trim_ascii(), TokenFrom::Bearer))
}

/// Takes the whole request rather than a `HeaderMap` extractor, which would copy every header.
pub async fn auth(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers();
    authorize_forward_auth(&st, headers, Role::Gateway)?;
    let Some((token, origin)) = token_and_origin(headers, &st.cookie.name) else {
        return Ok(refusal(headers, "no session cookie or bearer token".into()));
    };
    // The values are made while the shard's read lock is held (a few short copies); the
    // answer around them after it is released.
    let mut values = st.engine.touch_identity(token, identity_values);
    // A token made on another node a moment ago (`cluster`, invariant 2).
    if matches!(values, Err(Invalid::NotFound)) && st.caught_up_after_miss().await {
        values = st.engine.touch_identity(token, identity_values);
    }
    st.durable().await?;
    st.metrics.touch_outcome(values.as_ref().err().copied());
    match values {
        Ok(values) => {
            // In the request's own map, emptied (`sessions::json_body_in`).
            let mut h = req.into_parts().0.headers;
            h.clear();
            for (name, value) in IDENTITY_HEADERS.iter().zip(values) {
                if let Some(v) = value {
                    h.insert(name.clone(), v);
                }
            }
            let mut resp = Response::new(axum::body::Body::empty());
            *resp.headers_mut() = h;
            Ok(resp)
        }
        Err(r) => {
            let mut resp = refusal(headers, format!("session is not valid: {}", r.as_str()));
            // The browser holds a dead cookie: tell gateways that relay refusals to clear it.
            if origin == TokenFrom::Cookie
                && let Ok(v) = HeaderValue::from_str(&st.cookie.clear())
            {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
    }
}

/// The URI the browser asked the gateway for (invariant 6).
static ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
/// That URI, encoded for the login page's `?next=` (invariant 6).
static LOGIN_NEXT: HeaderName = HeaderName::from_static("x-login-next");
/// The longest `X-Login-Next` value: nginx reads a subrequest's answer head into one 4 KiB
/// buffer (`proxy_buffer_size`, one memory page: 4 KiB on x86-64), which a longer value would
/// overflow into an error.
pub const MAX_LOGIN_NEXT: usize = 2048;

/// A 401 `unauthenticated`, with `X-Login-Next` when the gateway sent `X-Original-URI`.
fn refusal(headers: &HeaderMap, message: String) -> Response {
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).into_response();
    if let Some(next) = headers
        .get(&ORIGINAL_URI)
        .and_then(|v| login_next(v.as_bytes()))
    {
        resp.headers_mut().insert(LOGIN_NEXT.clone(), next);
    }
    resp
}

/// `original` percent-encoded for a query value, or `None` when it is not a local path or is
/// too long (invariant 6). `//host/...` and `/\host/...` are refused because browsers follow
/// both to another site; control characters because browsers drop tabs and line breaks from
/// a URL, which could turn `/<tab>/host` into `//host` after the application decodes it.
pub fn login_next(original: &[u8]) -> Option<HeaderValue> {
    if original.first() != Some(&b'/') || matches!(original.get(1), Some(b'/' | b'\\')) {
        return None;
    }
    let mut out = Vec::with_capacity(original.len() + 16);
    for &b in original {
        if !b.is_ascii_graphic() {
            return None;
        }
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        if out.len() > MAX_LOGIN_NEXT {
            return None;
        }
    }
    HeaderValue::from_bytes(&out).ok()
}

/// The headers of a 200, in the order of [`identity_values`]: `X-Session-Id`, `X-User-Id`,
/// `X-Org-Id` (when there is an org) and `X-Session-Expires-In`.
static IDENTITY_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("x-session-id"),
    HeaderName::from_static("x-user-id"),
    HeaderName::from_static("x-org-id"),
    HeaderName::from_static("x-session-expires-in"),
];

/// The values of [`IDENTITY_HEADERS`] for `who`; `None` for a header left out. Ids have no
/// control characters (`session::check_id`), so they are valid header values; one that were
/// not would be left out rather than fail the request.
///
/// Each value is its own exact-size copy (`HeaderValue::from_bytes`): hyper copies the head
/// into its write buffer and drops the values on the same thread, so a value costs one
/// thread-cached allocation and its free, and no atomic instruction. Values sliced out of a
/// shared buffer cost a reference-count increment and decrement each, and those locked
/// instructions cost more than the allocations (perf: `split_to`'s `lock inc` alone took
/// 1.5% of the daemon's samples when the values were slices of a per-worker arena).
fn identity_values(who: &Identity<'_>) -> [Option<HeaderValue>; 4] {
    let hex = who.id.hex();
    let [id, user, org] = [
        Some(hex.as_str().as_bytes()),
        Some(who.user_id.as_bytes()),
        who.org_id.map(str::as_bytes),
    ]
    .map(|b| b.and_then(|b| HeaderValue::from_bytes(b).ok()));
    // Digits are always a valid value: http writes them without a check.
    [
        id,
        user,
        org,
        Some(HeaderValue::from(who.expires_in_secs())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'h>(h: &'h HeaderMap, name: &str) -> Option<(&'h str, TokenFrom)> {
        token_and_origin(h, name).map(|(t, f)| (std::str::from_utf8(t).unwrap(), f))
    }

    #[test]
    fn cookie_then_bearer() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=tok; b=2"),
        );
        assert_eq!(get(&h, "session"), Some(("tok", TokenFrom::Cookie)));
        assert_eq!(get(&h, "other"), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(get(&h, "other"), Some(("xyz", TokenFrom::Bearer)));
        assert_eq!(get(&h, "session"), Some(("tok", TokenFrom::Cookie)));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(get(&h, "session"), None);
    }

    #[test]
    fn cookie_pairs_are_matched_by_whole_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sessionx=no;xsession=no; session_id=no"),
        );
        assert_eq!(get(&h, "session"), None);
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1;  session = \"tok\" ;b=2"),
        );
        assert_eq!(get(&h, "session"), Some(("tok", TokenFrom::Cookie)));
        assert_eq!(get(&h, "b"), Some(("2", TokenFrom::Cookie)));
        assert_eq!(get(&h, "session_id"), Some(("no", TokenFrom::Cookie)));
    }

    #[test]
    fn login_next_encodes_a_local_path_for_a_query_value() {
        let next = |s: &str| login_next(s.as_bytes()).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(next("/").as_deref(), Some("/"));
        assert_eq!(
            next("/a/b-c_d.e~f?q=a%26b+c&x=1#y").as_deref(),
            Some("/a/b-c_d.e~f%3Fq%3Da%2526b%2Bc%26x%3D1%23y")
        );
        // Never another site, never a byte a browser would drop or a header could not carry.
        for bad in [
            "",
            "dash",
            "//evil.example/",
            "/\\evil.example/",
            "http://evil.example/",
        ] {
            assert_eq!(next(bad), None, "{bad:?}");
        }
        for bad in [
            &b"/a\tb"[..],
            b"/a b",
            b"/a\x7f",
            b"/caf\xc3\xa9",
            b"/a\r\nX-Evil: 1",
        ] {
            assert_eq!(login_next(bad), None, "{bad:?}");
        }
        // The longest value carried is MAX_LOGIN_NEXT bytes, encoded.
        let fits = format!("/{}", "a".repeat(MAX_LOGIN_NEXT - 1));
        assert_eq!(next(&fits).map(|v| v.len()), Some(MAX_LOGIN_NEXT));
        assert_eq!(next(&format!("{fits}a")), None);
        let encoded = format!("/{}", "&".repeat((MAX_LOGIN_NEXT - 1) / 3 + 1));
        assert_eq!(next(&encoded), None, "the limit counts the encoded bytes");
    }

    fn who(org: Option<&str>, expires_in_ms: u64) -> Identity<'_> {
        Identity {
            id: crate::token::SessionId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            user_id: "josé",
            org_id: org,
            last_activity_at_ms: 1_000_000,
            expires_at_ms: 1_000_000 + expires_in_ms,
        }
    }

    #[test]
    fn identity_values_carry_the_session() {
        let get =
            |v: &[Option<HeaderValue>; 4], i: usize| v[i].as_ref().map(|v| v.as_bytes().to_vec());
        let v = identity_values(&who(Some("acme"), 1_800_999));
        assert_eq!(get(&v, 0).unwrap(), b"0123456789abcdef0011223344556677");
        assert_eq!(get(&v, 1).unwrap(), "josé".as_bytes());
        assert_eq!(get(&v, 2).unwrap(), b"acme");
        assert_eq!(get(&v, 3).unwrap(), b"1800", "whole seconds, rounded down");
        let v = identity_values(&who(None, 0));
        assert_eq!(get(&v, 2), None);
        assert_eq!(get(&v, 3).unwrap(), b"0");
        let names: Vec<&str> = IDENTITY_HEADERS.iter().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x-session-id",
                "x-user-id",
                "x-org-id",
                "x-session-expires-in"
            ]
        );
    }
}
