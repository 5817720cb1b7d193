//! Parsing and checking single setting values, and collecting every problem found.
//!
//! Invariants:
//! 1. A parser takes the text as given and returns the value or a message that names the
//!    setting, quotes the text and says what would be accepted; it never panics.
//! 2. Durations are bounded: the tick 1 ms to 1 s, the snapshot interval 10 s to 24 h, the
//!    policy file's settle window 100 ms to 60 s.
//! 3. [`Problems`] keeps every message in the order found and hands back a default in place of
//!    a bad value, so that checking goes on past the first problem.

use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use std::time::Duration;

/// Every problem found so far in a configuration (invariant 3).
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    /// Notes `message` unless `ok`.
    pub(super) fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    /// `given` parsed, else `default()`: also when `given` does not parse (noted).
    pub(super) fn parse<T>(
        &mut self,
        given: Option<String>,
        default: impl Fn() -> T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match given {
            None => default(),
            Some(text) => parse(&text).unwrap_or_else(|e| {
                self.0.push(e);
                default()
            }),
        }
    }
}

/// A TOML boolean as the text the command line gives for it (`cookie_secure`): the file's key
/// stays a boolean (a string there is an error), the command line's stays text.
pub(super) fn bool_as_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(bool::deserialize(d)?.to_string()))
}

/// `true` or `false`, as `cookie_secure` is spelt on the command line.
pub(super) fn parse_bool(name: &str, text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{name} {other:?} is not true or false")),
    }
}

/// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else `$XDG_STATE_HOME/sessiond`,
/// else `$HOME/.local/state/sessiond`, else `./sessiond-state`.
pub fn default_state_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("STATE_DIRECTORY") {
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first);
    }
    if let Some(x) = var("XDG_STATE_HOME") {
        return PathBuf::from(x).join("sessiond");
    }
    if let Some(h) = var("HOME") {
        return PathBuf::from(h).join(".local/state/sessiond");
    }
    PathBuf::from("sessiond-state")
}

/// Parses `100ms`, `1s` or a bare number of milliseconds.
pub fn parse_tick(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000)
    } else {
        (s, 1)
    };
    let v: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("tick {s:?} is not a duration like \"100ms\" or \"1s\""))?;
    let ms = v.saturating_mul(mult);
    if !(1..=1_000).contains(&ms) {
        return Err(format!(
            "tick {s:?} is out of range; it must be between 1ms and 1s"
        ));
    }
    Ok(ms)
}

/// Parses a snapshot interval: `30s`, `10m`, `1h` or a bare number of seconds, 10 s to 24 h.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3_600),
        _ => (t, 1),
    };
    let v: u64 = num.trim().parse().map_err(|_| {
        format!("snapshot_interval {s:?} is not a duration like \"30s\", \"10m\" or \"1h\"")
    })?;
    let secs = v.saturating_mul(mult);
    if !(10..=86_400).contains(&secs) {
        return Err(format!(
            "snapshot_interval {s:?} is out of range; it must be between 10s and 24h"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// Parses the cluster stream's retention: `90m`, `24h`, `7d` or bare seconds, 1 minute to 365
/// days.
pub fn parse_retention(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3_600),
        Some((i, 'd')) => (&t[..i], 86_400),
        _ => (t, 1),
    };
    let v: u64 = num.trim().parse().map_err(|_| {
        format!("cluster_retention {s:?} is not a duration like \"90m\", \"24h\" or \"7d\"")
    })?;
    let secs = v.saturating_mul(mult);
    if !(60..=365 * 86_400).contains(&secs) {
        return Err(format!(
            "cluster_retention {s:?} is out of range; it must be between 1m and 365d"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// Parses the policy file's settle window: `500ms`, `1s` or a bare number of milliseconds,
/// 100 ms to 60 s.
pub fn parse_settle(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1_000)
    } else {
        (t, 1)
    };
    let ms = num
        .trim()
        .parse::<u64>()
        .map_err(|_| {
            format!("policy_file_settle {s:?} is not a duration like \"1s\" or \"500ms\"")
        })?
        .saturating_mul(mult);
    if !(100..=60_000).contains(&ms) {
        return Err(format!(
            "policy_file_settle {s:?} is out of range; it must be between 100ms and 60s"
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// Whether `name` is a valid cookie name (an RFC 6265 token).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_forms() {
        assert_eq!(parse_tick("100ms"), Ok(100));
        assert_eq!(parse_tick("1s"), Ok(1_000));
        assert_eq!(parse_tick("250"), Ok(250));
        assert!(parse_tick("0ms").is_err());
        assert!(parse_tick("2s").is_err());
        assert!(parse_tick("fast").is_err());
    }

    #[test]
    fn policy_file_settle_is_a_bounded_duration() {
        assert_eq!(parse_settle("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_settle("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_settle("2000"), Ok(Duration::from_secs(2)));
        assert!(
            parse_settle("50ms")
                .unwrap_err()
                .contains("between 100ms and 60s")
        );
        assert!(parse_settle("2m").is_err());
    }
}
