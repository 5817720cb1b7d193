//! What a session is from the outside: the input to create one, the read-only view handed back
//! (or lent under the shard's lock), the outcomes of validate/touch, what is saved of it and why
//! it left the table, and the bounds on ids and metadata.
//!
//! Invariants:
//! 1. A [`SessionView`] (or a [`SessionRef`], the same borrowed) never contains the token (only
//!    the id derived from it).
//! 2. Ids (`user_id`, `org_id`) are 1..=256 bytes without control characters and without
//!    whitespace at either end (so never only whitespace), so they can be echoed in HTTP headers
//!    (`X-User-Id`) and log fields safely, and reach the application byte for byte: a proxy
//!    trims a header value's outer whitespace, which would turn `" alice"` into `alice` and
//!    `"   "` into no header at all.
//! 3. Metadata holds at most [`MAX_METADATA_KEYS`] keys and [`MAX_METADATA_BYTES`] bytes of keys
//!    plus values; it is immutable once created and shared by `Arc`, so a view clones it for
//!    the price of a reference count.
//! 4. What is saved of a session ([`Saved`]) is its id, creation, last activity, user, org and
//!    metadata: never the token, never a deadline (deadlines follow from the policy).

use crate::token::SessionId;
use compact_str::CompactString;
use std::sync::Arc;

/// Longest `user_id` or `org_id`, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most metadata keys per session.
pub const MAX_METADATA_KEYS: usize = 16;
/// Most bytes of metadata keys and values together per session.
pub const MAX_METADATA_BYTES: usize = 1_024;

/// Small string metadata, sorted by key, keys unique.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata(Vec<(String, String)>);

impl Metadata {
    /// Validates and sorts metadata (invariant 3).
    pub fn new(mut pairs: Vec<(String, String)>) -> Result<Metadata, InputError> {
        if pairs.len() > MAX_METADATA_KEYS {
            return Err(InputError::new(
                "metadata",
                format!(
                    "has {} keys; at most {MAX_METADATA_KEYS} are allowed",
                    pairs.len()
                ),
            ));
        }
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_METADATA_BYTES {
            return Err(InputError::new(
                "metadata",
                format!(
                    "is {bytes} bytes of keys and values; at most {MAX_METADATA_BYTES} are allowed"
                ),
            ));
        }
        if pairs.iter().any(|(k, _)| k.is_empty()) {
            return Err(InputError::new("metadata", "keys must not be empty".into()));
        }
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(InputError::new(
                "metadata",
                format!("key {:?} appears twice", w[0].0),
            ));
        }
        Ok(Metadata(pairs))
    }

    /// Key/value pairs in key order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A refused input, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct InputError {
    pub field: &'static str,
    pub message: String,
}

impl InputError {
    pub fn new(field: &'static str, message: String) -> Self {
        InputError { field, message }
    }
}

/// Checks an id against invariant 2.
pub fn check_id(field: &'static str, id: &str) -> Result<(), InputError> {
    if id.is_empty() {
        return Err(InputError::new(field, "must not be empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(InputError::new(
            field,
            format!(
                "is {} bytes long; at most {MAX_ID_BYTES} are allowed",
                id.len()
            ),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(InputError::new(
            field,
            "must not contain control characters".into(),
        ));
    }
    if id.chars().all(char::is_whitespace) {
        return Err(InputError::new(
            field,
            "is only whitespace; it must contain a visible character".into(),
        ));
    }
    if id.starts_with(char::is_whitespace) || id.ends_with(char::is_whitespace) {
        return Err(InputError::new(
            field,
            "must not start or end with whitespace (a proxy would trim it and pass on a \
             different id); send the id without the surrounding spaces"
                .into(),
        ));
    }
    Ok(())
}

/// What the caller supplies to create a session.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub user_id: String,
    pub org_id: Option<String>,
    pub metadata: Option<Metadata>,
}

/// What forward-auth tells the gateway about a session it has just touched, borrowed from the
/// table while the shard's read lock is held (see `Engine::touch_identity`). Times are Unix
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    pub id: SessionId,
    pub user_id: &'a str,
    pub org_id: Option<&'a str>,
    /// The activity the touch recorded.
    pub last_activity_at_ms: u64,
    /// The earlier of the idle and absolute deadlines after the touch.
    pub expires_at_ms: u64,
}

impl Identity<'_> {
    /// Whole seconds from the touch to the deadline.
    pub fn expires_in_secs(&self) -> u64 {
        self.expires_at_ms.saturating_sub(self.last_activity_at_ms) / 1_000
    }
}

/// A read-only copy of a session's state at one instant. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub id: SessionId,
    pub user_id: CompactString,
    pub org_id: Option<CompactString>,
    pub created_at_ms: u64,
    pub last_activity_at_ms: u64,
    /// `last_activity_at + idle_timeout`; `None` when idle expiry is off.
    pub idle_expires_at_ms: Option<u64>,
    pub absolute_expires_at_ms: u64,
    /// The earlier of the two deadlines.
    pub expires_at_ms: u64,
    pub persistent: bool,
    pub metadata: Option<Arc<Metadata>>,
}

impl SessionView {
    /// Whole seconds left at `now_ms` (0 once expired).
    pub fn expires_in_secs(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms) / 1_000
    }

    /// This view, borrowed.
    pub fn as_ref(&self) -> SessionRef<'_> {
        SessionRef {
            id: self.id,
            user_id: &self.user_id,
            org_id: self.org_id.as_deref(),
            created_at_ms: self.created_at_ms,
            last_activity_at_ms: self.last_activity_at_ms,
            idle_expires_at_ms: self.idle_expires_at_ms,
            absolute_expires_at_ms: self.absolute_expires_at_ms,
            expires_at_ms: self.expires_at_ms,
            persistent: self.persistent,
            metadata: self.metadata.as_ref(),
        }
    }
}

/// A [`SessionView`] borrowed from the table, under the shard's read lock: what validate and
/// touch write their answer from, without copying the ids (a user id longer than 24 bytes, a
/// UUID, would be an allocation) or the metadata's reference count out and dropping them again.
#[derive(Debug, Clone, Copy)]
pub struct SessionRef<'a> {
    pub id: SessionId,
    pub user_id: &'a str,
    pub org_id: Option<&'a str>,
    pub created_at_ms: u64,
    pub last_activity_at_ms: u64,
    pub idle_expires_at_ms: Option<u64>,
    pub absolute_expires_at_ms: u64,
    pub expires_at_ms: u64,
    pub persistent: bool,
    pub metadata: Option<&'a Arc<Metadata>>,
}

impl SessionRef<'_> {
    /// Whole seconds left at `now_ms` (0 once expired).
    pub fn expires_in_secs(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms) / 1_000
    }

    /// A copy that outlives the lock.
    pub fn to_view(&self) -> SessionView {
        SessionView {
            id: self.id,
            user_id: CompactString::from(self.user_id),
            org_id: self.org_id.map(CompactString::from),
            created_at_ms: self.created_at_ms,
            last_activity_at_ms: self.last_activity_at_ms,
            idle_expires_at_ms: self.idle_expires_at_ms,
            absolute_expires_at_ms: self.absolute_expires_at_ms,
            expires_at_ms: self.expires_at_ms,
            persistent: self.persistent,
            metadata: self.metadata.cloned(),
        }
    }
}

/// Why a token did not validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not shaped like a token at all.
    Malformed,
    /// Unknown, revoked, or expired and already swept.
    NotFound,
    /// Past its idle deadline (not yet swept).
    ExpiredIdle,
    /// Past its absolute deadline (not yet swept).
    ExpiredAbsolute,
}

impl Invalid {
    /// The stable reason string of the API and the `outcome` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::NotFound => "not_found",
            Invalid::ExpiredIdle => "expired_idle",
            Invalid::ExpiredAbsolute => "expired_absolute",
        }
    }
}

/// The outcome of validate or touch. Outcomes are not errors.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    Valid(SessionView),
    Invalid(Invalid),
}

/// Why the engine evicted a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryReason {
    Idle,
    Absolute,
}

impl ExpiryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpiryReason::Idle => "idle",
            ExpiryReason::Absolute => "absolute",
        }
    }
}

/// What a "not before" mark covers: every session of one user, or of one org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    User,
    Org,
}

/// Why a session left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// Revoked through the API (by token, id, user or org).
    Revoked,
    Idle,
    Absolute,
    /// Made room under `max_sessions_per_user` with `evict_oldest`.
    Displaced,
}

impl From<ExpiryReason> for RemoveReason {
    fn from(r: ExpiryReason) -> Self {
        match r {
            ExpiryReason::Idle => RemoveReason::Idle,
            ExpiryReason::Absolute => RemoveReason::Absolute,
        }
    }
}

/// What is saved of a session (invariant 4): everything but its deadlines, which follow from
/// the policy in force when it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub id: u128,
    pub created_ms: u64,
    pub last_ms: u64,
    /// Inline up to 24 bytes: a load of millions of sessions allocates nothing for ids.
    pub user: CompactString,
    pub org: Option<CompactString>,
    pub metadata: Option<Metadata>,
}

impl Saved {
    /// The same fields, borrowed.
    pub fn as_saved_ref(&self) -> SavedRef<'_> {
        SavedRef {
            id: self.id,
            created_ms: self.created_ms,
            last_ms: self.last_ms,
            user: &self.user,
            org: self.org.as_deref(),
            metadata: self.metadata.as_ref(),
        }
    }
}

/// [`Saved`] borrowed from the table: what the engine hands out for a create and to a
/// snapshot's visitor, without copying a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedRef<'a> {
    pub id: u128,
    pub created_ms: u64,
    pub last_ms: u64,
    pub user: &'a str,
    pub org: Option<&'a str>,
    pub metadata: Option<&'a Metadata>,
}

impl SavedRef<'_> {
    /// An owned copy.
    pub fn to_saved(&self) -> Saved {
        Saved {
            id: self.id,
            created_ms: self.created_ms,
            last_ms: self.last_ms,
            user: CompactString::from(self.user),
            org: self.org.map(CompactString::from),
            metadata: self.metadata.cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(n: usize, len: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("k{i:02}"), "v".repeat(len)))
            .collect()
    }

    #[test]
    fn metadata_bounds() {
        assert!(Metadata::new(kv(16, 10)).is_ok());
        let e = Metadata::new(kv(17, 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "metadata has 17 keys; at most 16 are allowed"
        );
        let e = Metadata::new(kv(2, 600)).unwrap_err();
        assert!(e.to_string().contains("1206 bytes"), "{e}");
        assert!(Metadata::new(vec![(String::new(), "x".into())]).is_err());
        let m = Metadata::new(vec![("b".into(), "2".into()), ("a".into(), "1".into())]).unwrap();
        assert_eq!(m.pairs()[0].0, "a");
    }

    #[test]
    fn id_rules() {
        assert!(check_id("user_id", "alice@example.com").is_ok());
        assert!(check_id("user_id", "Zoë").is_ok());
        assert_eq!(
            check_id("user_id", "").unwrap_err().to_string(),
            "user_id must not be empty"
        );
        assert!(
            check_id("org_id", &"x".repeat(257))
                .unwrap_err()
                .to_string()
                .contains("257 bytes")
        );
        assert!(check_id("user_id", "a\nb").is_err());
        assert!(check_id("user_id", &"x".repeat(256)).is_ok());
        assert!(
            check_id("user_id", "alice smith").is_ok(),
            "inner spaces are fine"
        );
        for bad in [" alice", "alice ", "\u{a0}alice", "alice\u{3000}"] {
            let e = check_id("user_id", bad).unwrap_err().to_string();
            assert!(e.contains("start or end with whitespace"), "{bad:?}: {e}");
        }
        for bad in [" ", "   ", "\u{2003}"] {
            let e = check_id("org_id", bad).unwrap_err().to_string();
            assert_eq!(
                e,
                "org_id is only whitespace; it must contain a visible character"
            );
        }
        assert!(
            check_id("user_id", "\talice")
                .unwrap_err()
                .to_string()
                .contains("control")
        );
        assert!(check_id("user_id", "a\u{7f}b").is_err());
        assert!(check_id("user_id", "a\u{85}b").is_err());
    }
}

/// A session's deadlines under one effective policy, in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub idle: Option<u64>,
    pub absolute: u64,
    /// The earlier of the two: the session is expired at any `now >= expires`.
    pub expires: u64,
}

impl Deadlines {
    /// `idle = last_activity + idle_timeout` (none when off), `absolute = created + absolute_timeout`.
    #[inline]
    pub fn compute(eff: &crate::policy::Effective, created_ms: u64, last_ms: u64) -> Deadlines {
        let absolute = created_ms.saturating_add(eff.absolute_ms);
        let idle = (eff.idle_ms != 0).then(|| last_ms.saturating_add(eff.idle_ms));
        let expires = idle.map_or(absolute, |i| i.min(absolute));
        Deadlines {
            idle,
            absolute,
            expires,
        }
    }

    /// `Some(reason)` if the session is expired at `now_ms`; the reason is the deadline that
    /// came first (absolute on a tie).
    #[inline]
    pub fn expired(&self, now_ms: u64) -> Option<ExpiryReason> {
        if now_ms < self.expires {
            None
        } else if self.idle.is_some_and(|i| i < self.absolute) {
            Some(ExpiryReason::Idle)
        } else {
            Some(ExpiryReason::Absolute)
        }
    }
}
