//! The session object's JSON, and the gateway's hot JSON paths: the answers of validate, touch
//! and `GET /v1/sessions/{id}` written by hand, and the `{"token": "..."}` body read without
//! serde for its common shape.
//!
//! Invariants:
//! 1. [`write_session`] writes exactly the bytes that `serde_json::to_writer` writes for
//!    [`SessionJson`] (same field order, compact, the same escapes: `\"`, `\\`, `\b \t \n \f
//!    \r`, other control characters as `\u00xx`, everything else, non-ASCII included, as is);
//!    [`valid_body`] and [`invalid_body`] likewise for the validation answer. The property
//!    test below holds them to it for arbitrary ids and metadata.
//! 2. Only strings that come from clients (user id, org id, metadata keys and values) go
//!    through the escaping pass; the hex id, the RFC 3339 timestamps and the numbers are
//!    written as they are, since they are ASCII digits, letters and separators only.
//! 3. [`token_fast`] accepts only bodies that `serde_json` would read to the same token:
//!    `{"token":"..."}` with JSON whitespace between the tokens and a value of printable ASCII
//!    without `"` or `\`. Anything else is `None`, and the caller takes serde's path, so every
//!    error (status, code, message) is serde's as before.
//! 4. An answer costs one allocation, its exact size: it is written in a per-thread scratch
//!    buffer (bounded: ids and metadata are, `session`) and copied out once.

use crate::session::{Invalid, Metadata, SessionRef, SessionView};
use crate::timefmt::{Dates, Rfc3339};
use crate::token::HexId;
use bytes::Bytes;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use std::cell::RefCell;

/// The session object of every response, for serde (create, lists); [`write_session`] is
/// the same bytes written by hand (invariant 1).
#[derive(Serialize)]
pub struct SessionJson<'a> {
    id: HexId,
    user_id: &'a str,
    org_id: Option<&'a str>,
    created_at: Rfc3339,
    last_activity_at: Rfc3339,
    idle_expires_at: Option<Rfc3339>,
    absolute_expires_at: Rfc3339,
    expires_at: Rfc3339,
    expires_in: u64,
    persistent: bool,
    metadata: MetadataJson<'a>,
}

pub struct MetadataJson<'a>(Option<&'a Metadata>);

impl Serialize for MetadataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pairs = self.0.map_or(&[][..], |m| m.pairs());
        let mut map = s.serialize_map(Some(pairs.len()))?;
        for (k, v) in pairs {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'a> SessionJson<'a> {
    pub fn new(v: &'a SessionView, now_ms: u64) -> Self {
        SessionJson {
            id: v.id.hex(),
            user_id: &v.user_id,
            org_id: v.org_id.as_deref(),
            created_at: Rfc3339::new(v.created_at_ms),
            last_activity_at: Rfc3339::new(v.last_activity_at_ms),
            idle_expires_at: v.idle_expires_at_ms.map(Rfc3339::new),
            absolute_expires_at: Rfc3339::new(v.absolute_expires_at_ms),
            expires_at: Rfc3339::new(v.expires_at_ms),
            expires_in: v.expires_in_secs(now_ms),
            persistent: v.persistent,
            metadata: MetadataJson(v.metadata.as_deref()),
        }
    }
}

thread_local! {
    /// Where answers are written before their one exact-size copy (invariant 4): a `Vec` with
    /// spare capacity turned into `Bytes` costs a second allocation (`bytes`' shared header).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1_024));
}

/// Runs `write` on this thread's scratch buffer and returns what it wrote, copied once.
fn written(write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        write(buf);
        Bytes::copy_from_slice(buf)
    })
}

/// The body of a validate or touch answer for a live session (invariant 1).
pub fn valid_body(s: &SessionRef<'_>, now_ms: u64) -> Bytes {
    written(|out| {
        out.extend_from_slice(b"{\"valid\":true,\"session\":");
        write_session(out, s, now_ms);
        out.push(b'}');
    })
}

/// The body of a validate or touch answer that refuses the token.
pub fn invalid_body(reason: Invalid) -> Bytes {
    written(|out| {
        out.extend_from_slice(b"{\"valid\":false,\"reason\":");
        write_str(out, reason.as_str());
        out.push(b'}');
    })
}

/// The body of an answer that is one session object.
pub fn session_body(v: &SessionView, now_ms: u64) -> Bytes {
    written(|out| write_session(out, &v.as_ref(), now_ms))
}

/// Appends [`SessionJson::new(v, now_ms)`](SessionJson::new) as serde_json writes it.
pub fn write_session(out: &mut Vec<u8>, v: &SessionRef<'_>, now_ms: u64) {
    let time = |out: &mut Vec<u8>, key: &[u8], at: Rfc3339| {
        out.extend_from_slice(key);
        out.push(b'"');
        out.extend_from_slice(at.as_bytes());
        out.push(b'"');
    };
    let mut dates = Dates::default();
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(v.id.hex().as_bytes());
    out.extend_from_slice(b"\",\"user_id\":");
    write_str(out, v.user_id);
    out.extend_from_slice(b",\"org_id\":");
    match &v.org_id {
        Some(org) => write_str(out, org),
        None => out.extend_from_slice(b"null"),
    }
    time(out, b",\"created_at\":", dates.format(v.created_at_ms));
    time(
        out,
        b",\"last_activity_at\":",
        dates.format(v.last_activity_at_ms),
    );
    // The expiry is one of the two deadlines: formatted once.
    let idle = v.idle_expires_at_ms.map(|ms| (ms, dates.format(ms)));
    let absolute = dates.format(v.absolute_expires_at_ms);
    match idle {
        Some((_, at)) => time(out, b",\"idle_expires_at\":", at),
        None => out.extend_from_slice(b",\"idle_expires_at\":null"),
    }
    time(out, b",\"absolute_expires_at\":", absolute);
    let expires = match idle {
        Some((ms, at)) if ms == v.expires_at_ms => at,
        _ if v.absolute_expires_at_ms == v.expires_at_ms => absolute,
        _ => dates.format(v.expires_at_ms),
    };
    time(out, b",\"expires_at\":", expires);
    out.extend_from_slice(b",\"expires_in\":");
    write_u64(out, v.expires_in_secs(now_ms));
    out.extend_from_slice(if v.persistent {
        b",\"persistent\":true,\"metadata\":{"
    } else {
        b",\"persistent\":false,\"metadata\":{"
    });
    let pairs = v.metadata.map_or(&[][..], |m| m.pairs());
    for (i, (k, val)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_str(out, val);
    }
    out.extend_from_slice(b"}}");
}

/// Appends `s` as a JSON string with serde_json's escapes (invariant 1): the runs that need
/// none are copied whole.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Almost every id needs no escape: one pass without an early exit (a few vector
    // instructions) decides, and the string is copied whole.
    let plain = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            b'\t' => b't',
            b'\n' => b'n',
            0x0c => b'f',
            b'\r' => b'r',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short == b'u' {
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&hex);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `n` in decimal.
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// The token of a body of the exact common shape `{"token":"..."}` (invariant 3), as bytes
/// (the token parser reads bytes), or `None` for serde to read (and to word the error, if any).
///
/// The value is found from both ends of the body, and checked in one pass without an early
/// exit, which the compiler turns into a few vector instructions for a 43-byte token.
pub fn token_fast(body: &[u8]) -> Option<&[u8]> {
    fn json_ws(b: &u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n' | b'\r')
    }
    fn start(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|c| json_ws(c)).count();
        &b[n..]
    }
    fn end(b: &[u8]) -> &[u8] {
        let n = b.iter().rev().take_while(|c| json_ws(c)).count();
        &b[..b.len() - n]
    }
    let rest = start(body).strip_prefix(b"{")?;
    let rest = start(rest).strip_prefix(b"\"token\"")?;
    let rest = start(rest).strip_prefix(b":")?;
    let rest = start(rest).strip_prefix(b"\"")?;
    let rest = end(rest).strip_suffix(b"}")?;
    let value = end(rest).strip_suffix(b"\"")?;
    let plain = value.iter().fold(true, |ok, &b| {
        ok & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    });
    plain.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Invalid, Validation};
    use crate::token::SessionId;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// A validate or touch answer from a `Validation`, as the handlers write it.
    fn validation_body(v: &Validation, now_ms: u64) -> Bytes {
        match v {
            Validation::Valid(s) => valid_body(&s.as_ref(), now_ms),
            Validation::Invalid(r) => invalid_body(*r),
        }
    }

    fn view(user: String, org: Option<String>, meta: Vec<(String, String)>) -> SessionView {
        SessionView {
            id: SessionId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            user_id: user.into(),
            org_id: org.map(Into::into),
            created_at_ms: 1_795_463_151_123,
            last_activity_at_ms: 1_795_463_251_000,
            idle_expires_at_ms: Some(1_795_465_051_000),
            absolute_expires_at_ms: 1_795_549_551_123,
            expires_at_ms: 1_795_465_051_000,
            persistent: false,
            metadata: (!meta.is_empty()).then(|| Arc::new(Metadata::new(meta).unwrap())),
        }
    }

    /// What the serde-derived form writes, the reference of invariant 1.
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Reference<'a> {
        Valid {
            valid: bool,
            session: SessionJson<'a>,
        },
        Invalid {
            valid: bool,
            reason: &'static str,
        },
    }

    fn reference(v: &Validation, now: u64) -> Vec<u8> {
        let r = match v {
            Validation::Valid(s) => Reference::Valid {
                valid: true,
                session: SessionJson::new(s, now),
            },
            Validation::Invalid(r) => Reference::Invalid {
                valid: false,
                reason: r.as_str(),
            },
        };
        serde_json::to_vec(&r).unwrap()
    }

    #[test]
    fn known_answer() {
        let mut v = view(
            "josé \"q\" \\ \u{1}\n".into(),
            None,
            vec![("k".into(), "v\u{7f}\u{1f}".into())],
        );
        v.persistent = true;
        v.idle_expires_at_ms = None;
        let body = validation_body(&Validation::Valid(v.clone()), 1_795_463_251_000);
        assert_eq!(
            String::from_utf8(body.to_vec()).unwrap(),
            "{\"valid\":true,\"session\":{\"id\":\"0123456789abcdef0011223344556677\",\
             \"user_id\":\"josé \\\"q\\\" \\\\ \\u0001\\n\",\"org_id\":null,\
             \"created_at\":\"2026-11-23T19:45:51.123Z\",\
             \"last_activity_at\":\"2026-11-23T19:47:31.000Z\",\"idle_expires_at\":null,\
             \"absolute_expires_at\":\"2026-11-24T19:45:51.123Z\",\
             \"expires_at\":\"2026-11-23T20:17:31.000Z\",\"expires_in\":1800,\
             \"persistent\":true,\"metadata\":{\"k\":\"v\u{7f}\\u001f\"}}}"
        );
        assert_eq!(
            body,
            reference(&Validation::Valid(v.clone()), 1_795_463_251_000)
        );
        for r in [Invalid::Malformed, Invalid::NotFound, Invalid::ExpiredIdle] {
            let v = Validation::Invalid(r);
            assert_eq!(validation_body(&v, 0), reference(&v, 0));
        }
        let session = serde_json::to_vec(&SessionJson::new(&v, 5)).unwrap();
        assert_eq!(session_body(&v, 5), session);
    }

    /// Strings with every kind of character a client can send: quotes, backslashes, every
    /// control character, DEL, non-ASCII of one to four bytes.
    fn any_text() -> impl Strategy<Value = String> {
        text(0)
    }

    fn text(min: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just('"'),
                Just('\\'),
                (0u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
                Just('\u{7f}'),
                any::<char>(),
                prop::char::range('a', 'z'),
            ]
            .prop_map(|c| c.to_string()),
            min..12,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        /// Invariant 1: the same bytes as serde's, which parse back to the same value.
        #[test]
        fn same_bytes_as_serde(
            user in any_text(),
            org in prop::option::of(any_text()),
            meta in prop::collection::btree_map(text(1), any_text(), 0..4),
            idle in any::<bool>(),
            persistent in any::<bool>(),
            expiry in 0u8..3,
            now in 1_795_463_000_000u64..1_795_466_000_000,
        ) {
            let mut v = view(user, org, meta.into_iter().collect());
            v.persistent = persistent;
            // The expiry is the idle deadline, the absolute one, or (for the writer) neither.
            v.expires_at_ms = match expiry {
                0 => v.idle_expires_at_ms.unwrap(),
                1 => v.absolute_expires_at_ms,
                _ => v.absolute_expires_at_ms - 1,
            };
            if !idle {
                v.idle_expires_at_ms = None;
            }
            let v = Validation::Valid(v);
            let (ours, theirs) = (validation_body(&v, now), reference(&v, now));
            prop_assert_eq!(&ours[..], &theirs[..]);
            let parsed: serde_json::Value = serde_json::from_slice(&ours).unwrap();
            prop_assert_eq!(parsed, serde_json::from_slice::<serde_json::Value>(&theirs).unwrap());
        }

        /// Invariant 3: whatever the fast path accepts, serde reads to the same token.
        #[test]
        fn token_fast_agrees_with_serde(
            pre in "[ \t\r\n]{0,2}",
            mid in "[ \t\r\n]{0,2}",
            token in "[ -~]{0,50}",
            post in "[ \t\r\n]{0,2}",
        ) {
            let body = format!("{pre}{{{mid}\"token\"{mid}:{mid}\"{token}\"{mid}}}{post}");
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct T { token: String }
            let serde = serde_json::from_str::<T>(&body).ok().map(|t| t.token);
            match token_fast(body.as_bytes()) {
                Some(fast) => prop_assert_eq!(Some(fast.to_vec()), serde.map(String::into_bytes)),
                None => prop_assert!(token.contains(['"', '\\'])),
            }
        }
    }

    #[test]
    fn token_fast_declines_other_shapes() {
        assert_eq!(token_fast(br#"{"token":"abc-_09"}"#), Some(&b"abc-_09"[..]));
        assert_eq!(token_fast(b" { \"token\" : \"a\" } \n"), Some(&b"a"[..]));
        assert_eq!(token_fast(br#"{"token":""}"#), Some(&b""[..]));
        for other in [
            &br#"{"token":"a","x":1}"#[..],
            br#"{"token":"a"}x"#,
            br#"{"token":"a\"b"}"#,
            br#"{"token":"\u0041"}"#,
            br#"{"token":1}"#,
            br#"{"tok":"a"}"#,
            b"{\"token\":\"a\tb\"}",
            "{\"token\":\"é\"}".as_bytes(),
            br#"["a"]"#,
            b"",
            b"{\"token\":\"a\"",
            b"\x0c{\"token\":\"a\"}",
            br#"{"token":"}"#,
            br#"{"token":"a"}}"#,
            br#"{"token":"a""}"#,
        ] {
            assert_eq!(
                token_fast(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
