//! Parsing and checking single setting values, and collecting every problem found.
//!
//! Invariants:
//! 1. A parser takes the text as given and returns the value or a message that names the
//!    setting, quotes the text and says what would be accepted; it never panics.
//! 2. Every duration follows one rule ([`parse_duration`]): a whole number with a unit, `ms`,
//!    `s`, `m`, `h` or `d`, and a bare number means seconds (in the file an integer too). Each is
//!    bounded (the tick 1 ms to 1 s, the snapshot interval 10 s to 24 h, the policy file's
//!    settle window 100 ms to 60 s, ...), and a value out of range is refused with what it was
//!    read as (`tick "5" was read as 5s`), and with the `ms` spelling when that would fit.
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

/// One rule for every duration (invariant 2): a whole number with a unit, `ms`, `s`, `m`, `h`
/// or `d`; a bare number means seconds. Between `min` and `max`; a message says what was read.
pub fn parse_duration(
    name: &str,
    text: &str,
    min: Duration,
    max: Duration,
    example: &str,
) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let ms_per: Option<u64> = match unit {
        "" | "s" => Some(1_000),
        "ms" => Some(1),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        _ => None,
    };
    let (Some(ms_per), Ok(n)) = (ms_per, num.parse::<u64>()) else {
        return Err(format!(
            "{name} {text:?} is not a duration: write a whole number with a unit (ms, s, m, h, \
             d), e.g. \"{example}\"; a bare number means seconds"
        ));
    };
    let read = Duration::from_millis(n.saturating_mul(ms_per));
    if read < min || read > max {
        let hint = if unit.is_empty() && (min..=max).contains(&Duration::from_millis(n)) {
            format!(" (a bare number means seconds; write \"{n}ms\" for milliseconds)")
        } else {
            String::new()
        };
        return Err(format!(
            "{name} {text:?} was read as {}; it must be between {} and {}{hint}",
            show(read),
            show(min),
            show(max)
        ));
    }
    Ok(read)
}

/// `d` in the largest unit that writes it whole: `5s`, `250ms`, `10m`, `24h`, `365d`.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    if ms == 0 {
        return "0s".into();
    }
    format!("{ms}ms")
}

/// A duration setting's value from the file: a string (`"100ms"`) or a bare integer (seconds),
/// kept as the text the command line would give, so one parser reads both.
pub(super) fn duration_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "a duration like \"30s\" or a whole number of seconds"
    )]
    enum Text {
        Int(u64),
        Str(String),
    }
    Ok(Some(match Text::deserialize(d)? {
        Text::Int(n) => n.to_string(),
        Text::Str(s) => s,
    }))
}

/// The timer wheel's tick in milliseconds, 1 ms to 1 s.
pub fn parse_tick(s: &str) -> Result<u64, String> {
    let d = parse_duration(
        "tick",
        s,
        Duration::from_millis(1),
        Duration::from_secs(1),
        "100ms",
    )?;
    Ok(d.as_millis() as u64)
}

/// The snapshot interval, 10 s to 24 h.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let (min, max) = (Duration::from_secs(10), Duration::from_secs(86_400));
    parse_duration("snapshot_interval", s, min, max, "10m")
}

/// How long the stream keeps changes, 5 min to 365 days: longer than the stream's 2-minute
/// duplicate window (`cluster`), which JetStream refuses to exceed its `max_age` (a node given
/// less never became ready, every create answered 503).
pub fn parse_retention(s: &str) -> Result<Duration, String> {
    let (min, max) = (Duration::from_secs(300), Duration::from_secs(365 * 86_400));
    parse_duration("cluster_retention", s, min, max, "24h")
}

/// The policy file's settle window, 100 ms to 60 s.
pub fn parse_settle(s: &str) -> Result<Duration, String> {
    let (min, max) = (Duration::from_millis(100), Duration::from_secs(60));
    parse_duration("policy_file_settle", s, min, max, "1s")
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
    fn one_rule_for_every_duration() {
        let secs = Duration::from_secs;
        let p = |t| parse_duration("x", t, Duration::ZERO, secs(400 * 86_400), "1s");
        assert_eq!(p("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(p("30s"), Ok(secs(30)));
        assert_eq!(p("30"), Ok(secs(30)));
        assert_eq!(p(" 10m "), Ok(secs(600)));
        assert_eq!(p("24h"), Ok(secs(86_400)));
        assert_eq!(p("7d"), Ok(secs(7 * 86_400)));
        for bad in ["", "s", "1.5s", "-1s", "1w", "1 hour", "ms5"] {
            let e = p(bad).unwrap_err();
            assert!(
                e.contains("is not a duration") && e.contains("bare number means seconds"),
                "{e}"
            );
        }
        assert_eq!(show(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(show(secs(7_200)), "2h");
        assert_eq!(show(Duration::ZERO), "0s");
    }

    #[test]
    fn tick_forms() {
        assert_eq!(parse_tick("100ms"), Ok(100));
        assert_eq!(parse_tick("1s"), Ok(1_000));
        assert_eq!(parse_tick("1"), Ok(1_000));
        assert_eq!(
            parse_tick("5"),
            Err(
                "tick \"5\" was read as 5s; it must be between 1ms and 1s (a bare number means \
                 seconds; write \"5ms\" for milliseconds)"
                    .into()
            )
        );
        assert_eq!(
            parse_tick("5000ms"),
            Err("tick \"5000ms\" was read as 5s; it must be between 1ms and 1s".into())
        );
        assert!(parse_tick("0ms").is_err());
        assert!(parse_tick("fast").is_err());
    }

    #[test]
    fn policy_file_settle_is_a_bounded_duration() {
        assert_eq!(parse_settle("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_settle("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_settle("2"), Ok(Duration::from_secs(2)));
        assert!(
            parse_settle("50ms")
                .unwrap_err()
                .contains("between 100ms and 1m")
        );
        assert!(parse_settle("2m").is_err());
        assert!(
            parse_settle("2000")
                .unwrap_err()
                .contains("write \"2000ms\"")
        );
    }
}
