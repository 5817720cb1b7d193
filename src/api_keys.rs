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

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    role: Role,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// The loaded keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], (String, Role)>,
}

/// Shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

impl ApiKeys {
    /// Loads and checks a keys file; every problem is listed.
    pub fn load(path: &Path) -> Result<ApiKeys, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read API keys file {}: {e}", path.display())])?;
        Self::parse(&text).map_err(|errs| {
            errs.into_iter()
                .map(|e| format!("API keys file {}: {e}", path.display()))
                .collect()
        })
    }

    /// Parses the TOML text of a keys file.
    pub fn parse(text: &str) -> Result<ApiKeys, Vec<String>> {
        let file: KeysFile = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let mut keys = ApiKeys::default();
        if file.key.is_empty() {
            errors.push("no [[key]] entries; add at least one, or drop --api-keys-file".into());
        }
        for k in file.key {
            if k.key.len() < MIN_KEY_LEN {
                errors.push(format!(
                    "key {:?} is {} characters; at least {MIN_KEY_LEN} are required",
                    k.name,
                    k.key.len()
                ));
                continue;
            }
            if keys
                .by_digest
                .insert(digest(&k.key), (k.name.clone(), k.role))
                .is_some()
            {
                errors.push(format!("key {:?} repeats the value of another key", k.name));
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
}
