//! Request parsing with our error body: bounded JSON bodies, path ids, API-key checks, and
//! what keeps a browser page from driving a daemon that runs without keys.
//!
//! Invariants:
//! 1. A body is read only up to [`MAX_BODY_BYTES`]; anything longer is a 413, never buffered.
//! 2. JSON errors (syntax, wrong types, unknown fields, a field given twice) are 400
//!    `invalid_json` with serde's message, which names the field and position. Where a
//!    body holds a map of its own (a session's `metadata`, an org policy's fields), it is
//!    read as [`Members`], so that a key given twice is refused too, not the last one kept.
//! 3. A JSON body is read only under `Content-Type: application/json` (parameters such as
//!    `; charset=utf-8` allowed); anything else, or none, is a 415 before the body is read. A
//!    browser can send `text/plain`, form and multipart bodies across origins without asking
//!    (no CORS preflight), never `application/json`.
//! 4. Without keys, [`authorize`] also refuses what only a browser would send (invariant 5):
//!    a `Host` that is a DNS name other than `localhost` (421: DNS rebinding points such a name
//!    at 127.0.0.1), and an `Origin` other than the daemon's own (403: a page of another
//!    site). With keys, a page cannot present one, so neither is checked. `/v1/auth` skips
//!    both ([`authorize_forward_auth`]): gateways pass the browser's own `Host` and `Origin`
//!    on, and it changes nothing a page could not already do with the token it holds.
//! 5. The `Host` rule: absent (HTTP/1.0, non-browser clients), `localhost`, or an IP literal
//!    (`127.0.0.1`, `[::1]`, the listen address...), any port. A browser puts in `Host` the
//!    name it resolved, so an IP literal or `localhost` means the page itself was loaded from
//!    that address, not from a name an attacker controls. The port is not compared: port
//!    forwarding (`kubectl port-forward`, ssh -L) changes it, and it adds nothing against
//!    rebinding.
//! 6. A body that has not arrived in full `--header-read-timeout` after its read first had
//!    to wait for it is a 408, and the connection is closed: a client that sends a head and
//!    part of its body cannot hold a connection (and the connection cap) for ever. The timer
//!    is made at that first wait, so a body that came with its head costs none. A body
//!    whose bytes do not match its framing (a malformed chunk, a connection that ends early)
//!    is a 400 `invalid_body`, not a 413.

use super::AppState;
use super::error::ApiError;
use crate::api_keys::Role;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Reads a JSON request body: `Content-Type: application/json` (invariant 3), then at most
/// [`MAX_BODY_BYTES`] (invariant 1).
pub fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: Duration,
) -> impl Future<Output = Result<Bytes, ApiError>> + use<> {
    // The headers are checked before the future, which then holds the body alone.
    let checked = json_content_type(headers);
    async move {
        checked?;
        let read = std::pin::pin!(read_body(body));
        Deadline {
            read,
            limit,
            timer: None,
        }
        .await
    }
}

/// A body read that gives up `limit` after it first had to wait (invariant 6).
struct Deadline<'a, F> {
    read: Pin<&'a mut F>,
    limit: Duration,
    /// Made at the first wait: none for a body that came with its head.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F: Future<Output = Result<Bytes, ApiError>>> Future for Deadline<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Poll::Ready(done) = this.read.as_mut().poll(cx) {
            return Poll::Ready(done);
        }
        let limit = this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive in full within {limit:?} (--header-read-timeout); \
                     send the whole body right after the head"
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Checks invariant 3.
pub fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported(
            "request has no Content-Type; send the JSON body with Content-Type: application/json"
                .into(),
        ));
    };
    let essence = value
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if essence.eq_ignore_ascii_case(b"application/json") {
        return Ok(());
    }
    let shown = match value.to_str() {
        Ok(v) if v.len() <= 100 => format!("{v:?}"),
        _ => "that".into(),
    };
    Err(unsupported(format!(
        "Content-Type {shown} is not accepted; send the JSON body with Content-Type: application/json"
    )))
}

fn unsupported(message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        message,
    )
}

/// Reads a whole body, refusing oversized ones (invariant 1). A body that arrives in one
/// frame, as a gateway's small JSON almost always does, is taken as it is; only a longer one
/// is gathered chunk by chunk (a list of chunks, then a copy: ~400 instructions a request).
async fn read_body(mut body: Body) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody as _;
    use http_body_util::BodyExt;
    let too_large = |_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let limit = MAX_BODY_BYTES as u64;
    if body.size_hint().lower() > limit {
        return Err(too_large(()));
    }
    // hyper's error says which framing broke, with no byte of the body in it; the client is
    // told the rule rather than hyper's words.
    let unreadable = || {
        ApiError::bad_request(
            "invalid_body",
            "the request body is malformed or ended early: its bytes must match its \
             Content-Length, or its chunked encoding",
        )
    };
    let first = match body.frame().await {
        None => return Ok(Bytes::new()),
        Some(frame) => frame.map_err(|_| unreadable())?,
    };
    let first = first.into_data().unwrap_or_default();
    if first.len() > MAX_BODY_BYTES {
        return Err(too_large(()));
    }
    if body.is_end_stream() {
        return Ok(first);
    }
    // Boxed: rare, and otherwise ~150 bytes of every gateway handler's future.
    let rest = Box::pin(http_body_util::Limited::new(body, MAX_BODY_BYTES - first.len()).collect())
        .await
        .map_err(|e| match e.is::<http_body_util::LengthLimitError>() {
            true => too_large(()),
            false => unreadable(),
        })?
        .to_bytes();
    if first.is_empty() {
        return Ok(rest);
    }
    let mut whole = Vec::with_capacity(first.len() + rest.len());
    whole.extend_from_slice(&first);
    whole.extend_from_slice(&rest);
    Ok(whole.into())
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

/// A JSON object's members in the order given, a key given twice kept twice: a map type
/// keeps only the last value, which would let `{"a": 1, "a": 2}` pass for `{"a": 2}`
/// (invariant 2). The caller refuses the repeated key with its own field's name.
#[derive(Debug)]
pub struct Members<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Members<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = Members<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members<V>, A::Error> {
                let mut v = Vec::new();
                while let Some(member) = m.next_entry()? {
                    v.push(member);
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

impl<V> Members<V> {
    /// The first key given more than once, if any.
    pub fn repeated(&self) -> Option<&str> {
        let mut seen = std::collections::HashSet::with_capacity(self.0.len());
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !seen.insert(*k))
    }
}

/// Checks the `X-API-Key` header against the configured keys; without keys, everything is
/// allowed to a caller that is not a browser page (invariant 4).
pub fn authorize(state: &AppState, headers: &HeaderMap, needed: Role) -> Result<(), ApiError> {
    if state.keys.is_none() {
        keyless_host(headers)?;
        keyless_origin(headers)?;
    }
    authorize_forward_auth(state, headers, needed)
}

/// [`authorize`] without the browser checks, for `/v1/auth` only (invariant 4).
pub fn authorize_forward_auth(
    state: &AppState,
    headers: &HeaderMap,
    needed: Role,
) -> Result<(), ApiError> {
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

/// The host part of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`), if well formed.
fn host_name(value: &str) -> Option<&str> {
    if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(is_port))
            .then_some(inside);
    }
    match value.rsplit_once(':') {
        Some((name, port)) => is_port(port).then_some(name),
        None => Some(value),
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `host` is one that DNS cannot point elsewhere: `localhost` or an IP literal.
fn host_allowed(value: &str) -> bool {
    host_name(value).is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok()
    })
}

/// Invariant 5.
fn keyless_host(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(value) = hosts.next() else {
        return Ok(());
    };
    // Which one would a proxy in front have routed by? RFC 9112 (3.2): a 400.
    if hosts.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_header",
            "Host is given more than once; send one",
        ));
    }
    if value.to_str().is_ok_and(host_allowed) {
        return Ok(());
    }
    let shown = match value.to_str() {
        Ok(v) if v.len() <= 100 => format!("{v:?}"),
        _ => "this".into(),
    };
    Err(ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "host_not_allowed",
        format!(
            "Host {shown} is not served: without API keys sessiond answers only requests addressed \
             to localhost or an IP address (e.g. 127.0.0.1:PORT), so that a web page cannot reach \
             it through a DNS name; use that address, or configure --api-keys-file"
        ),
    ))
}

/// Invariant 4: an `Origin` is accepted only when it is the daemon's own (`http://` + `Host`).
fn keyless_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let same = headers.get(header::HOST).is_some_and(|host| {
        origin
            .as_bytes()
            .strip_prefix(b"http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(host.as_bytes()))
    });
    if same {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "cross_origin_refused",
        "request comes from a web page of another origin (it has an Origin header); without API \
         keys sessiond refuses those, since any local page could otherwise create and revoke \
         sessions; call it from a server, or configure --api-keys-file",
    ))
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

/// Refuses a query string where an endpoint takes none (the admin session routes): an admin
/// script's `?limit=10` must not pass for a page of an answer that holds everything.
pub fn no_query(uri: &axum::http::Uri) -> Result<(), ApiError> {
    match uri.query() {
        None | Some("") => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "invalid_query",
            "this endpoint takes no query parameters (no paging or filtering: it answers whole)",
        )),
    }
}

/// Reads `?dry_run=true|false` (also `1|0`) from a policy write's query string. Any other
/// parameter is refused: a misspelt `dryrun=true` must not turn a preview into a real write.
pub fn dry_run_param(uri: &axum::http::Uri) -> Result<bool, ApiError> {
    let mut dry = None;
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
        let this = match v {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("dry_run must be true or false, not {other:?}"),
                ));
            }
        };
        // Given twice, the last one must not win: `?dry_run=true&dry_run=false` from a script
        // that appends its own flag would make a preview a real change.
        if dry.replace(this).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                "dry_run is given more than once; give it once",
            ));
        }
    }
    Ok(dry.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that arrives in the given chunks, its length unknown until the end (chunked).
    struct Chunks(VecDeque<&'static [u8]>);

    impl axum::body::HttpBody for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(hyper::body::Frame::data(Bytes::from_static(c)))),
            )
        }
    }

    fn chunked(chunks: &[&'static [u8]]) -> Body {
        Body::new(Chunks(chunks.iter().copied().collect()))
    }

    #[tokio::test]
    async fn a_body_in_one_frame_or_many_is_read_whole_and_bounded() {
        let read = |b| async { read_body(b).await.map_err(|e| e.status) };
        assert_eq!(
            read(Body::from("{\"token\":\"t\"}")).await.unwrap(),
            "{\"token\":\"t\"}"
        );
        assert_eq!(read(Body::empty()).await.unwrap(), "");
        assert_eq!(
            read(chunked(&[b"{\"to", b"", b"ken\":1}"])).await.unwrap(),
            "{\"token\":1}"
        );
        let big: &'static [u8] = Box::leak(vec![b' '; MAX_BODY_BYTES].into_boxed_slice());
        assert_eq!(read(Body::from(big)).await.unwrap().len(), MAX_BODY_BYTES);
        assert_eq!(
            read(chunked(&[&big[1..], b"}"])).await.unwrap().len(),
            MAX_BODY_BYTES
        );
        let too_large = Err(StatusCode::PAYLOAD_TOO_LARGE);
        let over = [big, b" "].concat();
        assert_eq!(read(Body::from(over)).await, too_large);
        assert_eq!(read(chunked(&[b"{", big])).await, too_large);
        assert_eq!(read(chunked(&[big, b" "])).await, too_large);
    }

    /// A body whose frames come only when the test says (none: never).
    struct Trickle(tokio::sync::mpsc::UnboundedReceiver<Result<&'static [u8], std::io::Error>>);

    type Frames = tokio::sync::mpsc::UnboundedSender<Result<&'static [u8], std::io::Error>>;

    fn trickle() -> (Frames, Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, Body::new(Trickle(rx)))
    }

    impl axum::body::HttpBody for Trickle {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|f| f.map(|r| r.map(|c| hyper::body::Frame::data(Bytes::from_static(c)))))
        }
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_a_408_and_one_that_comes_in_time_is_read() {
        let limit = Duration::from_millis(50);
        // Part of a body, then nothing: refused once the limit has passed, not before.
        let (tx, body) = trickle();
        tx.send(Ok(b"{\"tok")).unwrap();
        let t0 = std::time::Instant::now();
        // Bounded, so that a read without its deadline fails here rather than hanging.
        let read = read_json_body(&json_headers(), body, limit);
        let e = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the body's read never gave up")
            .unwrap_err();
        assert!(t0.elapsed() >= limit);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::REQUEST_TIMEOUT, "request_timeout")
        );
        assert!(e.message.contains("--header-read-timeout"), "{}", e.message);
        drop(tx);
        // The rest arriving within the limit: read whole.
        let (tx, body) = trickle();
        tx.send(Ok(b"{\"tok")).unwrap();
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(Ok(b"en\":1}")).unwrap();
        });
        let body = read_json_body(&json_headers(), body, limit * 10).await;
        assert_eq!(body.unwrap(), "{\"token\":1}");
        rest.await.unwrap();
    }

    #[tokio::test]
    async fn a_body_that_breaks_is_a_400_not_a_413() {
        for frames in [vec![Err(())], vec![Ok(&b"{"[..]), Err(())]] {
            let (tx, body) = trickle();
            for f in frames {
                tx.send(f.map_err(|()| std::io::Error::other("invalid chunk size line")))
                    .unwrap();
            }
            let e = read_json_body(&json_headers(), body, Duration::from_secs(5))
                .await
                .unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_body")
            );
            assert!(
                !e.message.contains("chunk size"),
                "hyper's words: {}",
                e.message
            );
        }
    }

    #[test]
    fn content_type_must_be_json() {
        let check = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            }
            json_content_type(&h).map_err(|e| (e.status, e.message))
        };
        assert!(check(Some("application/json")).is_ok());
        assert!(check(Some("Application/JSON; charset=utf-8")).is_ok());
        assert!(check(Some(" application/json ;charset=UTF-8")).is_ok());
        for bad in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
            Some("text/plain; application/json"),
        ] {
            let (status, msg) = check(bad).unwrap_err();
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad:?}");
            assert!(msg.contains("Content-Type: application/json"), "{msg}");
        }
    }

    #[test]
    fn keyless_hosts() {
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LocalHost",
            "[::1]:8080",
            "[::1]",
            "10.1.2.3:7400",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example:8080",
            "127.0.0.1.nip.io:8080",
            "localhost:80x",
            "[::1]x",
            "",
            "::1",
        ] {
            assert!(!host_allowed(bad), "{bad}");
        }
        // Given twice, even an allowed one first: refused, not the first one taken.
        let mut h = HeaderMap::new();
        h.append(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(keyless_host(&h).is_ok());
        h.append(header::HOST, "evil.example".parse().unwrap());
        let e = keyless_host(&h).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_header")
        );
    }

    #[test]
    fn keyless_origins() {
        let check = |host: Option<&str>, origin: Option<&str>| {
            let mut h = HeaderMap::new();
            for (k, v) in [(header::HOST, host), (header::ORIGIN, origin)] {
                if let Some(v) = v {
                    h.insert(k, v.parse().unwrap());
                }
            }
            keyless_origin(&h).map_err(|e| e.status)
        };
        assert!(check(Some("127.0.0.1:8080"), None).is_ok());
        assert!(check(Some("127.0.0.1:8080"), Some("http://127.0.0.1:8080")).is_ok());
        let forbidden = Err(StatusCode::FORBIDDEN);
        assert_eq!(
            check(Some("127.0.0.1:8080"), Some("https://evil.example")),
            forbidden
        );
        assert_eq!(
            check(Some("127.0.0.1:8080"), Some("http://localhost:3000")),
            forbidden
        );
        assert_eq!(check(Some("127.0.0.1:8080"), Some("null")), forbidden);
        assert_eq!(check(None, Some("http://127.0.0.1:8080")), forbidden);
    }

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
        // Repeated, even with the same value: refused, never the last one taken.
        for twice in [
            "dry_run=true&dry_run=false",
            "dry_run=false&dry_run=true",
            "dry_run=1&dry_run=1",
        ] {
            let e = q(&format!("/v1/policy?{twice}")).unwrap_err();
            assert!(e.contains("more than once"), "{twice}: {e}");
        }
    }
}
