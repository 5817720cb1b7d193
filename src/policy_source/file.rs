//! The policy file's format: TOML with an optional `[application]` table and one
//! `[orgs.<org_id>]` table per org, read into policies with every problem named by line.
//!
//! Invariants:
//! 1. Reading has two stages. The text is first read into a [`RawFile`] (the tables as written,
//!    each with the byte offset of its header), then [`validate`] turns that into policies. Two
//!    readers produce a `RawFile`: the line-oriented fast path ([`super::fast`]) and the full
//!    TOML parser ([`read_toml`]); validation is shared, so a file means the same and gets the
//!    same errors whichever reader read it.
//! 2. The fast path is tried first and gives up on anything outside its subset of TOML; the TOML
//!    parser then reads the file, so every syntax or type error is toml's own message with its
//!    line, and every unknown key is named at once, each with its line and the nearest known
//!    key (`crate::suggest`). A differential property test (`tests.rs`) checks on generated
//!    files that whenever the fast path answers, its `RawFile` is the one the TOML parser gives.
//! 3. Every validation problem is reported at once, each with its line: the line of the field
//!    at fault ([`field_line`]) or of the table's header.
//! 4. Reading is linear in the file's size: lines of offsets are looked up in one index of line
//!    starts built per parse ([`Lines`]), and the orgs arrive sorted (50k orgs in tens of
//!    milliseconds, not minutes).
//! 5. A file with nothing but whitespace is refused, never read as "no org policies": it is what
//!    a truncation in progress looks like. A file that means "no org policies" says so with a
//!    comment or an `[application]` table.

use crate::policy::duration::DurationSecs;
use crate::policy::{Policy, PolicyError, PolicyPatch};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One org's table as written.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileOrg {
    pub(super) source: String,
    pub(super) absolute_timeout: Option<DurationSecs>,
    pub(super) idle_timeout_enabled: Option<bool>,
    pub(super) idle_timeout: Option<DurationSecs>,
    pub(super) persistent: Option<bool>,
}

/// A table's fields and the byte offset of its header's `[`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Table<T> {
    pub(super) start: usize,
    pub(super) fields: T,
}

/// The file as written, before validation (invariant 1).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RawFile {
    pub(super) application: Option<Table<PolicyPatch>>,
    /// Sorted by org id, each once.
    pub(super) orgs: Vec<(String, Table<FileOrg>)>,
}

/// The serde shape of the file, for the TOML parser.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicies {
    application: Option<toml::Spanned<PolicyPatch>>,
    #[serde(default)]
    orgs: BTreeMap<String, toml::Spanned<FileOrg>>,
}

/// Reads the file with the full TOML parser. The error is toml's message on one line, except
/// that every unknown key is named, each with its line and the nearest known key ([`unknown_keys`]),
/// where toml stops at the first.
pub(super) fn read_toml(text: &str) -> Result<RawFile, Vec<String>> {
    let file: FilePolicies = toml::from_str(text).map_err(|e| {
        let first = e.to_string().trim().replace('\n', " ");
        let mut unknown = unknown_keys(text);
        if unknown.is_empty() || !e.message().starts_with("unknown field") {
            unknown.push(first);
        }
        unknown
    })?;
    fn table<T>(sp: toml::Spanned<T>) -> Table<T> {
        Table {
            start: sp.span().start,
            fields: sp.into_inner(),
        }
    }
    Ok(RawFile {
        application: file.application.map(table),
        orgs: file
            .orgs
            .into_iter()
            .map(|(name, sp)| (name, table(sp)))
            .collect(),
    })
}

/// Every unknown key of a file that is valid TOML, with its line and the nearest known key
/// (nothing for a file that is not TOML: toml's own message says why).
fn unknown_keys(text: &str) -> Vec<String> {
    use crate::suggest::{key_line, unknown};
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in &table {
        let fields: &[&str] = match key.as_str() {
            "application" => PolicyPatch::FIELDS,
            "orgs" => &[],
            _ => {
                let line = key_line(text, None, key);
                let m = unknown("table", key, &["application", "orgs"], "");
                out.push((line, format!("line {line}: {m}")));
                continue;
            }
        };
        let tables: Vec<(String, &toml::Value, &[&str])> = match value {
            _ if key == "application" => vec![(key.clone(), value, fields)],
            toml::Value::Table(orgs) => orgs
                .iter()
                .map(|(org, t)| (format!("orgs.{org}"), t, PolicyPatch::ORG_FIELDS))
                .collect(),
            _ => Vec::new(),
        };
        for (name, t, fields) in tables {
            let toml::Value::Table(t) = t else { continue };
            for k in t.keys().filter(|k| !fields.contains(&k.as_str())) {
                let line = key_line(text, Some(&name), k);
                let m = unknown("key", k, fields, "");
                out.push((line, format!("line {line}: [{name}] {m}")));
            }
        }
    }
    out.sort();
    out.into_iter().map(|(_, m)| m).collect()
}

/// Line numbers of byte offsets: the start of every line, found in one pass (invariant 4).
pub(super) struct Lines(Vec<usize>);

impl Lines {
    pub(super) fn new(text: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Lines(starts)
    }

    /// The 1-based line holding byte `offset`.
    pub(super) fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

/// The line of `field = ...` inside the table whose header starts at `start` (up to the next
/// table header), else the header's line.
fn field_line(text: &str, lines: &Lines, start: usize, err: &PolicyError) -> usize {
    let field = match err {
        PolicyError::OutOfRange { field, .. } | PolicyError::Missing { field, .. } => *field,
    };
    let body = text.get(start.min(text.len())..).unwrap_or_default();
    let mut offset = start;
    for (i, line) in body.split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        if i > 0 && t.starts_with('[') {
            break;
        }
        if t.strip_prefix(field)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return lines.of(offset);
        }
        offset += line.len();
    }
    lines.of(start)
}

/// Parses and validates a policy file's text; `base` is the application policy when the file has
/// no `[application]` table. Every problem is listed with its line.
pub fn parse_policy_file(
    text: &str,
    base: &Policy,
) -> Result<(Policy, BTreeMap<String, Policy>), Vec<String>> {
    if text.trim().is_empty() {
        return Err(vec![
            "the file is empty, which is what a truncation in progress looks like, so nothing \
             was applied; a file meant to hold no org policies says so with a comment (e.g. \
             `# no org policies`) or an [application] table"
                .to_owned(),
        ]);
    }
    let raw = match super::fast::read(text) {
        Some(raw) => raw,
        None => read_toml(text)?,
    };
    validate(text, raw, base)
}

/// Turns the tables as written into policies, listing every problem with its line (invariant 3).
pub(super) fn validate(
    text: &str,
    raw: RawFile,
    base: &Policy,
) -> Result<(Policy, BTreeMap<String, Policy>), Vec<String>> {
    let lines = Lines::new(text);
    let mut errors = Vec::new();
    let app = match &raw.application {
        None => *base,
        Some(t) => Policy::from_patch(None, &t.fields).unwrap_or_else(|e| {
            errors.push(format!(
                "line {}: [application] {e}",
                field_line(text, &lines, t.start, &e)
            ));
            *base
        }),
    };
    let mut orgs = Vec::with_capacity(raw.orgs.len());
    for (name, t) in raw.orgs {
        let line = || lines.of(t.start);
        if let Err(e) = crate::session::check_id("org_id", &name) {
            let line = line();
            errors.push(format!("line {line}: [orgs.{name}] {e}"));
            continue;
        }
        let o = &t.fields;
        let has_fields = o.absolute_timeout.is_some()
            || o.idle_timeout_enabled.is_some()
            || o.idle_timeout.is_some()
            || o.persistent.is_some();
        match o.source.as_str() {
            "APPLICATION" if has_fields => errors.push(format!(
                "line {}: [orgs.{name}] source APPLICATION takes no policy fields",
                line()
            )),
            "APPLICATION" => {}
            "CUSTOM" => {
                let patch = PolicyPatch {
                    absolute_timeout: o.absolute_timeout,
                    idle_timeout_enabled: o.idle_timeout_enabled,
                    idle_timeout: o.idle_timeout,
                    persistent: o.persistent,
                };
                match Policy::from_patch(None, &patch) {
                    Ok(p) => orgs.push((name, p)),
                    Err(e) => errors.push(format!(
                        "line {}: [orgs.{name}] {e}",
                        field_line(text, &lines, t.start, &e)
                    )),
                }
            }
            other => errors.push(format!(
                "line {}: [orgs.{name}] source {other:?} is not \"CUSTOM\" or \"APPLICATION\"",
                line()
            )),
        }
    }
    if errors.is_empty() {
        // Sorted and unique already (`RawFile::orgs`), so this builds the map in one pass.
        Ok((app, orgs.into_iter().collect()))
    } else {
        Err(errors)
    }
}
