//! Session policies: the application default, each org's own, and how the two combine.
//!
//! Files: this one (the policy values and [`resolve`]), [`duration`] (durations as people
//! write them) and [`store`] (the store the engine keeps, and the one way a write changes it).
//! Where policies come from (the API, a watched file) is `policy_source`, above the engine.
//!
//! Invariants:
//! 1. A [`Policy`] value is always valid: `0 < absolute_timeout <= 400 days`; when idle is
//!    enabled, `0 < idle_timeout <= 400 days`. The only way to build one from input is
//!    [`Policy::from_patch`], which checks every field and names the field and value it refuses.
//! 2. [`resolve`] is total and pure: the effective policy of an org depends only on the mode, the
//!    application policy and the org's policy, so re-reading the same inputs gives the same
//!    answer (the engine relies on this to skip re-application when nothing changed).

pub mod duration;
pub mod store;

pub use store::{OrgPolicyView, PolicyWrite};

use duration::DurationSecs;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The longest absolute or idle timeout accepted: 400 days.
pub const MAX_TIMEOUT_SECS: u64 = 400 * 86_400;

/// A validated session policy (see invariant 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Lifetime from creation, in seconds.
    #[serde(rename = "absolute_timeout")]
    pub absolute_timeout_secs: u64,
    /// Whether inactivity ends the session.
    pub idle_timeout_enabled: bool,
    /// Inactivity allowed, in seconds; `Some` whenever idle is enabled, and kept (if it was
    /// given) while disabled so that re-enabling restores it.
    #[serde(rename = "idle_timeout")]
    pub idle_timeout_secs: Option<u64>,
    /// Whether the session cookie survives the browser being closed.
    pub persistent: bool,
}

/// The built-in application policy used when nothing else is configured: 24 hours absolute,
/// 30 minutes idle, session (non-persistent) cookie.
pub const DEFAULT_POLICY: Policy = Policy {
    absolute_timeout_secs: 24 * 3_600,
    idle_timeout_enabled: true,
    idle_timeout_secs: Some(30 * 60),
    persistent: false,
};

/// Policy fields as they arrive from the API or a file; every field optional so the same type
/// serves a full write (`PUT`) and a partial one (`PATCH`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    pub absolute_timeout: Option<DurationSecs>,
    pub idle_timeout_enabled: Option<bool>,
    pub idle_timeout: Option<DurationSecs>,
    pub persistent: Option<bool>,
}

impl PolicyPatch {
    /// The policy fields, as the API and the files spell them (the order of serde's own list).
    pub const FIELDS: &'static [&'static str] = &[
        "absolute_timeout",
        "idle_timeout_enabled",
        "idle_timeout",
        "persistent",
    ];

    /// The keys of an org's policy (the admin API's and the policy file's): `source`, then the
    /// policy fields.
    pub const ORG_FIELDS: &'static [&'static str] = &[
        "source",
        "absolute_timeout",
        "idle_timeout_enabled",
        "idle_timeout",
        "persistent",
    ];
}

/// Why a policy was refused. Every variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{field} is {value} seconds; it must be between 1 and {max} seconds (400 days)", max = MAX_TIMEOUT_SECS)]
    OutOfRange { field: &'static str, value: u64 },
    #[error("{field} is required{why}")]
    Missing {
        field: &'static str,
        why: &'static str,
    },
}

fn check_range(field: &'static str, d: DurationSecs) -> Result<u64, PolicyError> {
    if d.0 == 0 || d.0 > MAX_TIMEOUT_SECS {
        Err(PolicyError::OutOfRange { field, value: d.0 })
    } else {
        Ok(d.0)
    }
}

impl Policy {
    /// Applies `patch` on top of `base` (or on nothing, for a full write) and validates the result.
    pub fn from_patch(base: Option<&Policy>, patch: &PolicyPatch) -> Result<Policy, PolicyError> {
        let absolute_timeout_secs = match patch.absolute_timeout {
            Some(d) => check_range("absolute_timeout", d)?,
            None => match base {
                Some(b) => b.absolute_timeout_secs,
                None => {
                    return Err(PolicyError::Missing {
                        field: "absolute_timeout",
                        why: "",
                    });
                }
            },
        };
        let idle_timeout_secs = match patch.idle_timeout {
            Some(d) => Some(check_range("idle_timeout", d)?),
            None => base.and_then(|b| b.idle_timeout_secs),
        };
        let idle_timeout_enabled = match patch.idle_timeout_enabled {
            Some(e) => e,
            None => match base {
                Some(b) => b.idle_timeout_enabled || patch.idle_timeout.is_some(),
                None => patch.idle_timeout.is_some(),
            },
        };
        if idle_timeout_enabled && idle_timeout_secs.is_none() {
            return Err(PolicyError::Missing {
                field: "idle_timeout",
                why: " when idle_timeout_enabled is true",
            });
        }
        let persistent = patch
            .persistent
            .or(base.map(|b| b.persistent))
            .unwrap_or(false);
        Ok(Policy {
            absolute_timeout_secs,
            idle_timeout_enabled,
            idle_timeout_secs,
            persistent,
        })
    }

    /// The idle timeout in force, if any.
    pub fn idle_secs(&self) -> Option<u64> {
        if self.idle_timeout_enabled {
            self.idle_timeout_secs
        } else {
            None
        }
    }

    /// The compact form the engine keeps beside every shard's sessions.
    pub fn effective(&self) -> Effective {
        Effective {
            absolute_ms: self.absolute_timeout_secs * 1_000,
            idle_ms: self.idle_secs().map_or(0, |s| s * 1_000),
            persistent: self.persistent,
        }
    }
}

/// The numbers the engine needs to compute deadlines, in milliseconds; `idle_ms == 0` means idle
/// expiry is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub absolute_ms: u64,
    pub idle_ms: u64,
    pub persistent: bool,
}

/// Where an org's policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrgPolicy {
    /// Inherit the application policy.
    #[default]
    Application,
    /// The org's own values.
    Custom(Policy),
}

impl OrgPolicy {
    /// `"APPLICATION"` or `"CUSTOM"`, as in the API.
    pub fn source(&self) -> &'static str {
        match self {
            OrgPolicy::Application => "APPLICATION",
            OrgPolicy::Custom(_) => "CUSTOM",
        }
    }

    /// The org's own values, if it has any.
    pub fn custom(&self) -> Option<&Policy> {
        match self {
            OrgPolicy::Application => None,
            OrgPolicy::Custom(p) => Some(p),
        }
    }
}

/// How an org's CUSTOM policy combines with the application policy; chosen at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Field by field, the tighter value wins (the default).
    #[default]
    Stricter,
    /// A CUSTOM org policy replaces the application policy.
    Override,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stricter" => Ok(Mode::Stricter),
            "override" => Ok(Mode::Override),
            other => Err(format!(
                "unknown org policy mode {other:?}; expected \"stricter\" or \"override\""
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Mode::Stricter => "stricter",
            Mode::Override => "override",
        })
    }
}

/// The policy in force for an org (see invariant 2).
pub fn resolve(mode: Mode, app: &Policy, org: &OrgPolicy) -> Policy {
    let custom = match org {
        OrgPolicy::Application => return *app,
        OrgPolicy::Custom(c) => c,
    };
    match mode {
        Mode::Override => *custom,
        Mode::Stricter => {
            let idle = match (app.idle_secs(), custom.idle_secs()) {
                (Some(a), Some(c)) => Some(a.min(c)),
                (a, c) => a.or(c),
            };
            Policy {
                absolute_timeout_secs: app.absolute_timeout_secs.min(custom.absolute_timeout_secs),
                idle_timeout_enabled: idle.is_some(),
                idle_timeout_secs: idle,
                persistent: app.persistent && custom.persistent,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(json: &str) -> PolicyPatch {
        serde_json::from_str(json).unwrap()
    }

    fn policy(abs: u64, idle: Option<u64>, persistent: bool) -> Policy {
        Policy {
            absolute_timeout_secs: abs,
            idle_timeout_enabled: idle.is_some(),
            idle_timeout_secs: idle,
            persistent,
        }
    }

    #[test]
    fn full_write_validates_every_field() {
        let p = Policy::from_patch(
            None,
            &patch(r#"{"absolute_timeout": {"value": 8, "unit": "HOURS"}, "idle_timeout": 900, "persistent": true}"#),
        )
        .unwrap();
        assert_eq!(p, policy(28_800, Some(900), true));

        let e = Policy::from_patch(None, &patch(r#"{"absolute_timeout": 0}"#)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "absolute_timeout is 0 seconds; it must be between 1 and 34560000 seconds (400 days)"
        );
        let e = Policy::from_patch(
            None,
            &patch(r#"{"absolute_timeout": {"value": 401, "unit": "DAYS"}}"#),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            PolicyError::OutOfRange {
                field: "absolute_timeout",
                value: 34_646_400
            }
        ));
        let e = Policy::from_patch(
            None,
            &patch(r#"{"absolute_timeout": 60, "idle_timeout_enabled": true}"#),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "idle_timeout is required when idle_timeout_enabled is true"
        );
        let e = Policy::from_patch(None, &patch(r#"{"idle_timeout": 60}"#)).unwrap_err();
        assert_eq!(e.to_string(), "absolute_timeout is required");
        assert!(
            serde_json::from_str::<PolicyPatch>(r#"{"absolute_timeout": 5, "ttl": 3}"#).is_err()
        );
    }

    #[test]
    fn patch_keeps_unnamed_fields_and_remembers_a_disabled_idle() {
        let base = policy(3_600, Some(600), false);
        let off =
            Policy::from_patch(Some(&base), &patch(r#"{"idle_timeout_enabled": false}"#)).unwrap();
        assert_eq!(off.idle_secs(), None);
        assert_eq!(off.idle_timeout_secs, Some(600));
        let on =
            Policy::from_patch(Some(&off), &patch(r#"{"idle_timeout_enabled": true}"#)).unwrap();
        assert_eq!(on, base);
        let p = Policy::from_patch(Some(&base), &patch(r#"{"persistent": true}"#)).unwrap();
        assert_eq!(p, policy(3_600, Some(600), true));
    }

    #[test]
    fn stricter_takes_the_tighter_field_by_field() {
        let app = policy(86_400, Some(1_800), true);
        let org = OrgPolicy::Custom(policy(28_800, Some(3_600), false));
        assert_eq!(
            resolve(Mode::Stricter, &app, &org),
            policy(28_800, Some(1_800), false)
        );
        // Idle is enabled if either enables it.
        let app_no_idle = policy(86_400, None, true);
        assert_eq!(
            resolve(Mode::Stricter, &app_no_idle, &org),
            policy(28_800, Some(3_600), false)
        );
        let org_no_idle = OrgPolicy::Custom(policy(100_000, None, true));
        assert_eq!(
            resolve(Mode::Stricter, &app, &org_no_idle),
            policy(86_400, Some(1_800), true)
        );
        assert_eq!(
            resolve(Mode::Stricter, &app_no_idle, &org_no_idle),
            policy(86_400, None, true)
        );
    }

    #[test]
    fn override_replaces_and_application_inherits() {
        let app = policy(86_400, Some(1_800), false);
        let custom = policy(200_000, None, true);
        assert_eq!(
            resolve(Mode::Override, &app, &OrgPolicy::Custom(custom)),
            custom
        );
        assert_eq!(resolve(Mode::Override, &app, &OrgPolicy::Application), app);
        assert_eq!(resolve(Mode::Stricter, &app, &OrgPolicy::Application), app);
    }

    #[test]
    fn mode_parses() {
        assert_eq!("stricter".parse::<Mode>().unwrap(), Mode::Stricter);
        assert_eq!("override".parse::<Mode>().unwrap(), Mode::Override);
        assert!("loose".parse::<Mode>().unwrap_err().contains("loose"));
    }
}
