//! `GET /v1/auth`: the forward-auth endpoint for nginx `auth_request`, Traefik `forwardAuth` and
//! Envoy `ext_authz`. No body; the token comes from the session cookie or
//! `Authorization: Bearer`. A successful check counts as activity (a touch).

use super::AppState;
use super::error::ApiError;
use super::extract::authorize;
use crate::api_keys::Role;
use crate::session::{SessionView, Validation};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;

/// Where a token came from: a cookie that the browser holds, or a bearer header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Cookie,
    Bearer,
}

/// The token and where it came from (the cookie wins over `Authorization`), as bytes:
/// [`SessionId::from_token`](crate::token::SessionId::from_token) refuses anything that is not
/// base64url, so a UTF-8 check here would only be paid twice.
///
/// Works on the header's bytes: this runs on every request through the gateway, and a
/// `to_str` of the whole `Cookie` header (every other cookie of the site included) only to
/// find one pair would cost more than the rest of the parse.
pub fn token_and_origin<'h>(headers: &'h HeaderMap, cookie_name: &str) -> Option<(&'h [u8], From)> {
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
            return Some((val, From::Cookie));
        }
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = auth.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&auth[..space], &auth[space + 1..]);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| (token.trim_ascii(), From::Bearer))
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
            // The touch just moved the last activity to now: no second read of the clock.
            let mut resp = StatusCode::OK.into_response();
            identity_headers(
                resp.headers_mut(),
                &s,
                s.expires_in_secs(s.last_activity_at_ms),
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

/// Bytes of identity header values a worker thread writes before it takes a fresh arena.
const ARENA_BYTES: usize = 16 * 1024;

thread_local! {
    /// Where this worker writes the values of the identity headers: each answer's values are
    /// slices of it (a reference count each), so an answer allocates nothing for them; a new
    /// arena is taken when this one is full (one allocation per ~150 answers), and an old one
    /// is freed when the last answer that points into it has been written out (hyper copies
    /// the head into its write buffer at once, so that is right away).
    static ARENA: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// The headers of a 200: `X-Session-Id`, `X-User-Id`, `X-Org-Id` (when there is an org) and
/// `X-Session-Expires-In`. Their values are slices of the worker's arena (above). Ids have no
/// control characters (`session::check_id`), so they are valid header values; one that were
/// not would be left out rather than fail the request.
fn identity_headers(h: &mut HeaderMap, s: &SessionView, expires_in: u64) {
    let hex = s.id.hex();
    let org = s.org_id.as_deref().map(str::as_bytes);
    let mut digits = [0u8; 20];
    let secs = decimal(expires_in, &mut digits);
    let len = 32 + s.user_id.len() + org.map_or(0, <[u8]>::len) + secs.len();
    let values = ARENA.with_borrow_mut(|arena| {
        // The arena is empty between answers (each value is split off it as it is written).
        if arena.capacity() < len {
            *arena = BytesMut::with_capacity(ARENA_BYTES.max(len));
        }
        let mut take = |part: &[u8]| {
            arena.extend_from_slice(part);
            arena.split().freeze()
        };
        [
            (&X_SESSION_ID, Some(take(hex.as_str().as_bytes()))),
            (&X_USER_ID, Some(take(s.user_id.as_bytes()))),
            (&X_ORG_ID, org.map(&mut take)),
            (&X_EXPIRES_IN, Some(take(secs))),
        ]
    });
    for (name, value) in values {
        if let Some(v) = value.and_then(|b| HeaderValue::from_maybe_shared(b).ok()) {
            h.insert(name.clone(), v);
        }
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'h>(h: &'h HeaderMap, name: &str) -> Option<(&'h str, From)> {
        token_and_origin(h, name).map(|(t, f)| (std::str::from_utf8(t).unwrap(), f))
    }

    #[test]
    fn cookie_then_bearer() {
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
        assert_eq!(get(&h, "session"), Some(("tok", From::Cookie)));
        assert_eq!(get(&h, "b"), Some(("2", From::Cookie)));
        assert_eq!(get(&h, "session_id"), Some(("no", From::Cookie)));
    }

    fn view(org: Option<&str>) -> SessionView {
        SessionView {
            id: crate::token::SessionId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            user_id: "josé".into(),
            org_id: org.map(Into::into),
            created_at_ms: 0,
            last_activity_at_ms: 0,
            idle_expires_at_ms: None,
            absolute_expires_at_ms: 0,
            expires_at_ms: 0,
            persistent: false,
            metadata: None,
        }
    }

    #[test]
    fn identity_headers_slice_one_buffer() {
        let get = |h: &HeaderMap, n: &str| h.get(n).map(|v| v.as_bytes().to_vec());
        let mut h = HeaderMap::new();
        identity_headers(&mut h, &view(Some("acme")), 1_800);
        assert_eq!(
            get(&h, "x-session-id").unwrap(),
            b"0123456789abcdef0011223344556677"
        );
        assert_eq!(get(&h, "x-user-id").unwrap(), "josé".as_bytes());
        assert_eq!(get(&h, "x-org-id").unwrap(), b"acme");
        assert_eq!(get(&h, "x-session-expires-in").unwrap(), b"1800");
        assert_eq!(h.len(), 4);
        let mut h = HeaderMap::new();
        identity_headers(&mut h, &view(None), 0);
        assert_eq!(get(&h, "x-org-id"), None);
        assert_eq!(get(&h, "x-session-expires-in").unwrap(), b"0");
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn answers_keep_their_values_across_arenas() {
        // Enough answers to fill several arenas, all alive at once: each keeps its own values.
        let users: Vec<String> = (0..1_000).map(|i| format!("user-{i:0>40}")).collect();
        let maps: Vec<HeaderMap> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let mut v = view(Some("acme"));
                v.user_id = u.as_str().into();
                let mut h = HeaderMap::new();
                identity_headers(&mut h, &v, i as u64);
                h
            })
            .collect();
        assert!(users.len() * 80 > 3 * ARENA_BYTES);
        for (i, (u, h)) in users.iter().zip(&maps).enumerate() {
            assert_eq!(h["x-user-id"], u.as_str());
            assert_eq!(h["x-org-id"], "acme");
            assert_eq!(h["x-session-expires-in"], i.to_string().as_str());
        }
    }

    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 20];
        for n in [0, 7, 10, 99, 1_800, 86_400, u64::MAX] {
            assert_eq!(decimal(n, &mut b), n.to_string().as_bytes());
        }
    }
}
