//! The policy file's fast path: a line-oriented reader for the shape nearly every policy file
//! has, about ten times faster than the full TOML parser on a 50k-org file (which start-up
//! would otherwise spend most of its time in).
//!
//! The subset it reads, one item per line: blank lines; comments (`# ...`); the headers
//! `[application]` and `[orgs.<bare key>]`; and `key = value` with one of the known keys, where
//! a value is a basic string without escapes (`"CUSTOM"`), a decimal integer (`900`), `true` or
//! `false`, or a one-line duration table (`{ value = 8, unit = "HOURS" }`). Space and tab are
//! the whitespace; a comment may end any line.
//!
//! Invariants:
//! 1. What it reads, it reads as TOML does, into the same [`RawFile`] (header offsets included).
//! 2. It never reports an error: on anything outside the subset, and on anything the TOML path
//!    would refuse or report itself (a duplicate table or key, an unknown key or unit, an org
//!    without `source`, a key before any table, a control character in a comment, an integer
//!    with a sign, underscores, a leading zero or more than 18 digits, a duration that
//!    overflows, `\r`), it gives up with `None`, and the caller reads the file with the TOML
//!    parser, whose messages the operator then gets. Errors of meaning (a zero timeout, a bad
//!    source) are not its business: [`super::file::validate`] finds them whichever reader ran.
//! 3. One pass over the text; per org, one allocation for its id and one for its source.

use super::file::{FileOrg, RawFile, Table};
use crate::policy::PolicyPatch;
use crate::policy::duration::DurationSecs;

/// Reads `text` if it is all inside the subset (invariant 2), else `None`.
pub(super) fn read(text: &str) -> Option<RawFile> {
    let mut application = None;
    let mut orgs: Vec<(String, Table<FileOrg>)> = Vec::new();
    let mut open: Option<Open> = None;
    let mut offset = 0;
    for line in text.split('\n') {
        let start = offset;
        offset += line.len() + 1;
        let t = ws(line);
        if t.is_empty() || t.starts_with('#') {
            end(t)?;
            continue;
        }
        if let Some(h) = t.strip_prefix('[') {
            close(open.take(), &mut application, &mut orgs)?;
            let (org, rest) = match h.strip_prefix("application]") {
                Some(rest) => (None, rest),
                None => {
                    let (name, rest) = bare_key(h.strip_prefix("orgs.")?)?;
                    (Some(name), rest.strip_prefix(']')?)
                }
            };
            end(rest)?;
            open = Some(Open {
                org,
                start: start + (line.len() - t.len()),
                source: None,
                patch: PolicyPatch::default(),
            });
            continue;
        }
        let table = open.as_mut()?;
        let (key, rest) = bare_key(t)?;
        let rest = ws(ws(rest).strip_prefix('=')?);
        let rest = match key {
            "source" if table.org.is_some() => {
                let (v, rest) = basic_string(rest)?;
                once(&mut table.source, v)?;
                rest
            }
            "absolute_timeout" => {
                let (v, rest) = duration(rest)?;
                once(&mut table.patch.absolute_timeout, v)?;
                rest
            }
            "idle_timeout" => {
                let (v, rest) = duration(rest)?;
                once(&mut table.patch.idle_timeout, v)?;
                rest
            }
            "idle_timeout_enabled" => {
                let (v, rest) = boolean(rest)?;
                once(&mut table.patch.idle_timeout_enabled, v)?;
                rest
            }
            "persistent" => {
                let (v, rest) = boolean(rest)?;
                once(&mut table.patch.persistent, v)?;
                rest
            }
            _ => return None,
        };
        end(rest)?;
    }
    close(open, &mut application, &mut orgs)?;
    // Almost always sorted already; a duplicate table is TOML's error to report.
    orgs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if orgs.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(RawFile { application, orgs })
}

/// The table being read: `org` is `None` for `[application]`.
struct Open<'a> {
    org: Option<&'a str>,
    start: usize,
    source: Option<&'a str>,
    patch: PolicyPatch,
}

/// Files the table just read; `None` where TOML would refuse it (invariant 2).
fn close(
    open: Option<Open>,
    application: &mut Option<Table<PolicyPatch>>,
    orgs: &mut Vec<(String, Table<FileOrg>)>,
) -> Option<()> {
    let Some(t) = open else {
        return Some(());
    };
    match t.org {
        None => {
            let fields = t.patch;
            once(
                application,
                Table {
                    start: t.start,
                    fields,
                },
            )?;
        }
        Some(name) => {
            let p = t.patch;
            let fields = FileOrg {
                source: t.source?.to_owned(),
                absolute_timeout: p.absolute_timeout,
                idle_timeout_enabled: p.idle_timeout_enabled,
                idle_timeout: p.idle_timeout,
                persistent: p.persistent,
            };
            orgs.push((
                name.to_owned(),
                Table {
                    start: t.start,
                    fields,
                },
            ));
        }
    }
    Some(())
}

/// Sets `slot` unless it is set already (a duplicate key).
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

fn ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// The end of a line: blank, or a comment without control characters (TOML refuses them).
fn end(rest: &str) -> Option<()> {
    let rest = ws(rest);
    match rest.strip_prefix('#') {
        Some(c) => (!c.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)).then_some(()),
        None => rest.is_empty().then_some(()),
    }
}

fn bare_key(s: &str) -> Option<(&str, &str)> {
    let n = s
        .bytes()
        .take_while(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        .count();
    (n > 0).then(|| s.split_at(n))
}

/// A basic string with no escapes and no control characters.
fn basic_string(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('"')?;
    let n = s.find('"')?;
    let v = &s[..n];
    if v.bytes()
        .any(|b| b == b'\\' || (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return None;
    }
    Some((v, &s[n + 1..]))
}

/// `0` or a decimal integer of at most 18 digits without a leading zero (so it fits an i64, as
/// every TOML integer must). What may follow it (or a boolean) is checked by the caller: the
/// line's end, or `,` / `}` in a duration table; anything else (`1.5`, `1_000`, `truex`) is
/// refused there.
fn integer(s: &str) -> Option<(u64, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || n > 18 || (n > 1 && s.starts_with('0')) {
        return None;
    }
    let (digits, rest) = s.split_at(n);
    Some((digits.parse().ok()?, rest))
}

fn boolean(s: &str) -> Option<(bool, &str)> {
    let (v, rest) = match s.strip_prefix("true") {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix("false")?),
    };
    Some((v, rest))
}

/// Seconds as an integer, or `{ value = N, unit = "UNIT" }` (either order) on one line.
fn duration(s: &str) -> Option<(DurationSecs, &str)> {
    let Some(mut t) = s.strip_prefix('{') else {
        let (v, rest) = integer(s)?;
        return Some((DurationSecs(v), rest));
    };
    let (mut value, mut unit) = (None, None);
    loop {
        let (key, rest) = bare_key(ws(t))?;
        let rest = ws(ws(rest).strip_prefix('=')?);
        let rest = match key {
            "value" => {
                let (v, rest) = integer(rest)?;
                once(&mut value, v)?;
                rest
            }
            "unit" => {
                let (u, rest) = basic_string(rest)?;
                once(&mut unit, u)?;
                rest
            }
            _ => return None,
        };
        let rest = ws(rest);
        if let Some(rest) = rest.strip_prefix(',') {
            t = rest;
            continue;
        }
        let rest = rest.strip_prefix('}')?;
        return Some((DurationSecs::from_value_unit(value?, unit?)?, rest));
    }
}
