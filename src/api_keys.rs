//! API keys and their roles, loaded from `--api-keys-file`.
//!
//! File format (TOML):
//! ```toml
//! [[key]]
//! name = "edge-gateway"   # shown in logs, never the key itself
//! role = "gateway"        # or "admin"
//! key = "a long random string, at least 16 characters"
//! ```
//!
//! Invariants:
//! 1. Keys are held only as SHA-256 digests; a lookup hashes the presented key, so a key is
//!    never compared byte by byte in variable time and never kept in clear after loading.
//! 2. Admin implies gateway: an admin key may call everything.
//! 3. A problem with the file is reported by line (and column, for a syntax error) and field
//!    name, never by quoting the file: no value of the file other than a `name` appears in a
//!    message, and a text the parser quotes (a key name, say) is shown only when it is shorter
//!    than [`MIN_KEY_LEN`], so it cannot be a key. The TOML parser's own rendering, which
//!    quotes the offending line, is never used.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use toml::Spanned;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Create, validate, touch, revoke by token, and `/v1/auth`.
    Gateway,
    /// Everything.
    Admin,
}

impl Role {
    /// Whether this role may do what `needed` requires (invariant 2).
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || needed == Role::Gateway
    }
}

/// A table with the position of every name and value; values are checked by hand so that no
/// serde message (which would quote a wrong value) is ever shown (invariant 3).
type Fields = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The `[[key]]` entries, read once the top level is known to hold only those.
#[derive(Deserialize)]
struct Entries {
    #[serde(default)]
    key: Vec<Spanned<Fields>>,
}

/// The loaded keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], (String, Role)>,
}

/// Shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// Why a keys file could not be loaded. The read error keeps its cause as its `source` (shown
/// after the message by `{:#}`, as the daemon prints errors).
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read API keys file {}", .path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, each naming the file.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl ApiKeys {
    /// Loads and checks a keys file; every problem is listed.
    pub fn load(path: &Path) -> Result<ApiKeys, KeysFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|errs| {
            KeysFileError::Invalid(
                errs.into_iter()
                    .map(|e| format!("API keys file {}: {e}", path.display()))
                    .collect(),
            )
        })
    }

    /// Parses the TOML text of a keys file (invariant 3 for every message).
    pub fn parse(text: &str) -> Result<ApiKeys, Vec<String>> {
        let top: Fields = toml::from_str(text).map_err(|e| vec![syntax_error(text, &e)])?;
        let mut errors = Vec::new();
        for (name, value) in &top {
            let line = line_of(text, name.span().start);
            if name.get_ref() != "key" {
                errors.push(format!(
                    "line {line}: unknown field {} at the top level; the file holds only [[key]] entries",
                    shown(name.get_ref())
                ));
            } else if !matches!(value.get_ref(), toml::Value::Array(a)
                if a.iter().all(|v| matches!(v, toml::Value::Table(_))))
            {
                errors.push(format!(
                    "line {line}: `key` must be written as [[key]] entries (tables), \
                     each with name, role and key"
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let entries: Entries = toml::from_str(text).map_err(|e| {
            // The shape was checked above; should serde still refuse, say where, not what.
            let at = e.span().map_or(String::new(), |s| {
                format!("line {}: ", line_of(text, s.start))
            });
            vec![format!(
                "{at}unexpected layout; expected [[key]] entries with name, role and key"
            )]
        })?;
        let mut keys = ApiKeys::default();
        if entries.key.is_empty() {
            errors.push("no [[key]] entries; add at least one, or drop --api-keys-file".into());
        }
        for entry in &entries.key {
            let Some((name, role, key)) = check_entry(text, entry, &mut errors) else {
                continue;
            };
            if key.len() < MIN_KEY_LEN {
                errors.push(format!(
                    "key {name:?} is {} characters; at least {MIN_KEY_LEN} are required",
                    key.len()
                ));
                continue;
            }
            if keys
                .by_digest
                .insert(digest(key), (name.to_owned(), role))
                .is_some()
            {
                errors.push(format!("key {name:?} repeats the value of another key"));
            }
        }
        if errors.is_empty() {
            Ok(keys)
        } else {
            Err(errors)
        }
    }

    /// The name and role of `presented`, if it is a known key.
    pub fn lookup(&self, presented: &str) -> Option<(&str, Role)> {
        self.by_digest
            .get(&digest(presented))
            .map(|(n, r)| (n.as_str(), *r))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// Checks one `[[key]]` table by hand: known fields, each a string, the role one of two words.
/// Pushes each problem (line and field name, never the value) and returns the entry if whole.
fn check_entry<'e>(
    text: &str,
    entry: &'e Spanned<Fields>,
    errors: &mut Vec<String>,
) -> Option<(&'e str, Role, &'e str)> {
    let before = errors.len();
    let (mut name, mut role, mut key) = (None, None, None);
    for (field, value) in entry.get_ref() {
        let line = line_of(text, field.span().start);
        let slot = match field.get_ref().as_str() {
            "name" => &mut name,
            "role" => &mut role,
            "key" => &mut key,
            other => {
                errors.push(format!(
                    "line {line}: unknown field {} in a [[key]] entry; expected name, role and key",
                    shown(other)
                ));
                continue;
            }
        };
        match value.get_ref() {
            toml::Value::String(s) => *slot = Some((s.as_str(), line)),
            _ => errors.push(format!(
                "line {line}: field `{}` must be a string",
                field.get_ref()
            )),
        }
    }
    let role = role.and_then(|(r, line)| match r {
        "gateway" => Some(Role::Gateway),
        "admin" => Some(Role::Admin),
        _ => {
            errors.push(format!(
                "line {line}: field `role` must be \"gateway\" or \"admin\""
            ));
            None
        }
    });
    for (field, missing) in [
        ("name", name.is_none()),
        ("role", role.is_none()),
        ("key", key.is_none()),
    ] {
        // A field present but refused above is already reported.
        let present = entry.get_ref().keys().any(|k| k.get_ref() == field);
        if missing && !present {
            errors.push(format!(
                "line {}: this [[key]] entry has no `{field}` field",
                line_of(text, entry.span().start)
            ));
        }
    }
    if errors.len() > before {
        return None;
    }
    Some((name?.0, role?, key?.0))
}

/// A TOML syntax error as line, column and the parser's description, with any quoted text
/// that could be a key hidden (invariant 3).
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let what = redact(e.message().trim()).replace('\n', "; ");
    match e.span() {
        Some(s) => {
            let (line, column) = line_column(text, s.start);
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// Hides every `quoted` piece of a parser message that is [`MIN_KEY_LEN`] characters or more.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, piece) in message.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 && piece.chars().count() >= MIN_KEY_LEN {
            out.push_str("(not shown)");
        } else {
            out.push_str(piece);
        }
    }
    out
}

/// A name read from the file, quoted, or a placeholder if it is long enough to be a key.
fn shown(name: &str) -> String {
    let n = name.chars().count();
    if n < MIN_KEY_LEN && !name.chars().any(char::is_control) {
        format!("`{name}`")
    } else {
        format!("({n} characters, not shown in case it is a key)")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    line_column(text, offset).0
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_lookup() {
        let keys = ApiKeys::parse(
            "[[key]]\nname = \"gw\"\nrole = \"gateway\"\nkey = \"gateway-key-0123456789\"\n\
             [[key]]\nname = \"ops\"\nrole = \"admin\"\nkey = \"admin-key-0123456789\"\n",
        )
        .unwrap();
        assert_eq!(
            keys.lookup("gateway-key-0123456789"),
            Some(("gw", Role::Gateway))
        );
        assert_eq!(
            keys.lookup("admin-key-0123456789"),
            Some(("ops", Role::Admin))
        );
        assert_eq!(keys.lookup("nope"), None);
        assert!(Role::Admin.allows(Role::Gateway));
        assert!(!Role::Gateway.allows(Role::Admin));
    }

    #[test]
    fn problems_are_listed() {
        let e = ApiKeys::parse(
            "[[key]]\nname = \"short\"\nrole = \"gateway\"\nkey = \"abc\"\n\
             [[key]]\nname = \"a\"\nrole = \"admin\"\nkey = \"same-key-0123456789\"\n\
             [[key]]\nname = \"b\"\nrole = \"admin\"\nkey = \"same-key-0123456789\"\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            ApiKeys::parse("[[key]]\nname = \"x\"\nrole = \"root\"\nkey = \"0123456789abcdef\"\n")
                .is_err()
        );
        assert!(ApiKeys::parse("").is_err());
    }
    const SECRET: &str = "SUPERSECRET-0123456789abcdef";

    /// Every message of a refused file, joined, for checking that the secret is not in it.
    fn refusal(text: &str) -> String {
        let e = ApiKeys::parse(text).expect_err(text).join("\n");
        assert!(!e.contains("SUPERSECRET"), "the secret leaked: {e}");
        assert!(
            !e.contains("0123456789abcdef"),
            "part of the secret leaked: {e}"
        );
        e
    }

    #[test]
    fn malformed_files_name_line_and_field_never_the_key() {
        let head = "[[key]]\nname = \"gw\"\nrole = \"gateway\"\n";
        let e = refusal(&format!("{head}kye = \"{SECRET}\"\n"));
        assert!(e.contains("line 4") && e.contains("`kye`"), "{e}");
        assert!(
            e.contains("line 1: this [[key]] entry has no `key` field"),
            "{e}"
        );
        let e = refusal(&format!("{head}key = \"{SECRET}\n"));
        assert!(e.contains("line 4, column"), "{e}");
        let e = refusal(&format!("{head}key = \"{SECRET}\"\nkey = \"{SECRET}x\"\n"));
        assert!(e.contains("line 5") && e.contains("duplicate key"), "{e}");
        let e = refusal(&format!("{head}key = '''{SECRET}\n"));
        assert!(
            e.contains("line 5, column 1"),
            "where the parser saw the end: {e}"
        );
        // A key pasted into the wrong place or shape.
        let e = refusal(&format!("key = \"{SECRET}\"\n"));
        assert!(e.contains("line 1") && e.contains("[[key]]"), "{e}");
        let e = refusal(&format!(
            "[[key]]\nname = \"gw\"\nrole = \"{SECRET}\"\nkey = \"{SECRET}\"\n"
        ));
        assert!(e.contains("line 3") && e.contains("`role`"), "{e}");
        let e = refusal(&format!("{head}key = [\"{SECRET}\"]\n"));
        assert!(
            e.contains("line 4") && e.contains("`key` must be a string"),
            "{e}"
        );
        let e = refusal(&format!("{head}{SECRET} = \"x\"\nkey = \"{SECRET}\"\n"));
        assert!(e.contains("line 4") && e.contains("not shown"), "{e}");
        let e = refusal(&format!("{head}{SECRET}\n"));
        assert!(e.contains("line 4"), "{e}");
        let e = refusal(&format!("{SECRET} = 1\n"));
        assert!(e.contains("line 1") && e.contains("top level"), "{e}");
        let e = refusal(&format!(
            "[[key]]\nname = \"gw\"\nrole = \"gateway\"\nkey = \"{SECRET}\"\n\
             [[key]]\nname = \"b\"\nkey = \"{SECRET}-2\"\n"
        ));
        assert!(
            e.contains("line 5: this [[key]] entry has no `role` field"),
            "{e}"
        );
    }

    #[test]
    fn quoted_text_long_enough_to_be_a_key_is_hidden() {
        assert_eq!(redact("duplicate key `key`"), "duplicate key `key`");
        assert_eq!(
            redact(&format!("duplicate key `{SECRET}` in table `key`")),
            "duplicate key `(not shown)` in table `key`"
        );
        assert_eq!(line_column("ab\ncdé\nf", 7), (2, 4));
    }
}
