//! The engine's policy operations: reading the store, writing it (admin API, reloaded file),
//! re-applying what changed to the shards, and the dry run that counts what a write would do.
//!
//! Invariants:
//! 1. Every policy change takes one path (`change_policies`): the store is mutated
//!    under its write lock, which is held while every shard concerned is visited, so no shard
//!    keeps a stale effective policy (the engine's invariant 2).
//! 2. Each org whose effective policy changed, whether it has live sessions or is named by a
//!    CUSTOM policy before or after the write, is reported once in [`PolicyChange::orgs`],
//!    sorted by org; when no effective policy changed, no shard is visited.
//! 3. A dry run changes nothing: it holds the store's read lock, applies the write to a copy
//!    with the same [`PolicyWrite::apply`] the real change uses, and visits each shard under its
//!    read lock, so at the same clock reading it counts exactly what the real write evicts.

use super::{Engine, EngineError};
use crate::policy::store::PolicyState;
use crate::policy::{Effective, OrgPolicy, OrgPolicyView, Policy, PolicyWrite};
use crate::session::check_id;
use crate::shard::{DryRunCounts, Reapplied};

/// One org whose effective policy changed, and what re-applying it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgChange {
    /// `None`: sessions without an org (they follow the application policy).
    pub org: Option<String>,
    pub old: Effective,
    pub new: Effective,
    pub reapplied: Reapplied,
}

/// What a policy write changed (the default: nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyChange {
    /// Whether any effective policy changed (and so was re-applied).
    pub changed: bool,
    /// Totals over every org.
    pub reapplied: Reapplied,
    /// One entry per org (with live sessions, or with a CUSTOM policy) whose effective policy
    /// changed, sorted by org.
    pub orgs: Vec<OrgChange>,
    /// Time spent re-applying.
    pub duration: std::time::Duration,
}

/// What a policy write would do (see [`Engine::dry_run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// The org's policy as it would be stored (`Application` for an application-policy write).
    pub org_policy: OrgPolicy,
    /// The effective policy it would yield for that org (or the application policy itself).
    pub effective: Policy,
    pub sessions: DryRunCounts,
    pub duration: std::time::Duration,
}

impl Engine {
    /// The application policy.
    pub fn application_policy(&self) -> Policy {
        self.policies.read().app
    }

    /// An org's policy and its effective result.
    pub fn org_policy(&self, org: &str) -> OrgPolicyView {
        let st = self.policies.read();
        OrgPolicyView {
            org_policy: st.org_policy(org),
            effective: st.effective(Some(org)),
        }
    }

    /// Every policy at once: the application policy and the CUSTOM orgs.
    pub fn policies(&self) -> (Policy, std::collections::BTreeMap<String, Policy>) {
        let st = self.policies.read();
        (
            st.app,
            st.custom.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        )
    }

    /// How many orgs have a CUSTOM policy (without copying them, unlike [`Engine::policies`]).
    pub fn custom_policy_count(&self) -> usize {
        self.policies.read().custom.len()
    }

    /// Replaces the application policy and re-applies it to every session it governs (in
    /// `stricter` mode that is every org; in `override` mode the inheriting ones).
    pub fn set_application_policy(&self, policy: Policy) -> PolicyChange {
        self.change_policies(|st| PolicyWrite::Application(policy).apply(st), None)
    }

    /// Sets `org`'s policy and re-applies the resulting effective policy to its live sessions.
    pub fn set_org_policy(
        &self,
        org: &str,
        policy: OrgPolicy,
    ) -> Result<PolicyChange, EngineError> {
        check_id("org_id", org)?;
        let write = PolicyWrite::Org {
            org: org.to_owned(),
            policy,
        };
        Ok(self.change_policies(|st| write.apply(st), Some(org)))
    }

    /// What `write` would do to the live sessions now, changing nothing: the policy store is
    /// only read, and each shard is visited under its read lock (one shard at a time, only the
    /// org slots the write governs), so validate and touch keep answering throughout. It applies
    /// `write` to a copy of the store with the same [`PolicyWrite::apply`] the real change uses,
    /// and each shard counts with [`Shard::dry_run`], the twin of [`Shard::reapply`]: at the same
    /// clock reading, `would_evict` is exactly what the real write evicts.
    pub fn dry_run(&self, write: &PolicyWrite) -> Result<DryRun, EngineError> {
        if let PolicyWrite::Org { org, .. } = write {
            check_id("org_id", org)?;
        }
        let start = std::time::Instant::now();
        // Held for the whole run so that no real change interleaves with the counting.
        let st = self.policies.read();
        let mut after = st.clone();
        write.apply(&mut after);
        let now = self.clock.now_ms();
        let mut sessions = DryRunCounts::default();
        for s in self.shards.iter() {
            s.read().dry_run(
                |org| after.effective(org).effective(),
                write.only_org(),
                now,
                &mut sessions,
            );
        }
        let (org_policy, effective) = match write {
            PolicyWrite::Application(p) => (OrgPolicy::Application, *p),
            PolicyWrite::Org { org, .. } => (after.org_policy(org), after.effective(Some(org))),
        };
        Ok(DryRun {
            org_policy,
            effective,
            sessions,
            duration: start.elapsed(),
        })
    }

    /// Replaces every policy (a reloaded policy file) and re-applies what changed.
    pub fn replace_policies(
        &self,
        app: Policy,
        custom: std::collections::BTreeMap<String, Policy>,
    ) -> PolicyChange {
        self.change_policies(
            |st| {
                st.app = app;
                st.custom = hashbrown::HashMap::with_capacity(custom.len());
                st.custom.extend(custom);
            },
            None,
        )
    }

    /// The one path of every policy change: mutate the store under its write lock, then visit
    /// the shards (all org slots, or only `only_org`'s) and re-apply where the effective policy
    /// changed (invariant 2).
    fn change_policies(
        &self,
        mutate: impl FnOnce(&mut PolicyState),
        only_org: Option<&str>,
    ) -> PolicyChange {
        let start = std::time::Instant::now();
        let mut st = self.policies.write();
        let before = st.clone();
        mutate(&mut st);
        // The orgs named by either policy set, even without live sessions, so each change is
        // reported; each once, in a vector sorted once (a B-tree of 50k org ids cost a start-up
        // with a big policy file ~10% of its time).
        let mut orgs: Vec<OrgChange> = Vec::new();
        let mut note = |org: Option<&str>| {
            let (old, new) = (
                before.effective(org).effective(),
                st.effective(org).effective(),
            );
            if old != new {
                orgs.push(OrgChange {
                    org: org.map(str::to_owned),
                    old,
                    new,
                    reapplied: Reapplied::default(),
                });
            }
        };
        match only_org {
            Some(o) => note(Some(o)),
            None => {
                note(None);
                for k in before.custom.keys() {
                    note(Some(k));
                }
                for k in st.custom.keys() {
                    if !before.custom.contains_key(k) {
                        note(Some(k));
                    }
                }
            }
        }
        orgs.sort_unstable_by(|a, b| a.org.cmp(&b.org));
        // Orgs that changed only through the application policy, found in the shards.
        let mut others: hashbrown::HashMap<Option<String>, OrgChange> = Default::default();
        let anything = !orgs.is_empty() || before.app.effective() != st.app.effective();
        let mut total = Reapplied::default();
        if anything {
            let now = self.clock.now_ms();
            for s in self.shards.iter() {
                s.write().reapply(
                    |org| st.effective(org).effective(),
                    only_org,
                    now,
                    &mut |org, old, new, r| {
                        total.merge(r);
                        let change = match orgs.binary_search_by(|c| c.org.as_deref().cmp(&org)) {
                            Ok(i) => &mut orgs[i],
                            Err(_) => {
                                others
                                    .entry(org.map(str::to_owned))
                                    .or_insert_with(|| OrgChange {
                                        org: org.map(str::to_owned),
                                        old,
                                        new,
                                        reapplied: Reapplied::default(),
                                    })
                            }
                        };
                        change.reapplied.merge(r);
                    },
                );
            }
        }
        drop(st);
        if !others.is_empty() {
            orgs.extend(others.into_values());
            orgs.sort_unstable_by(|a, b| a.org.cmp(&b.org));
        }
        PolicyChange {
            changed: !orgs.is_empty(),
            reapplied: total,
            orgs,
            duration: start.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Invariant 2: each changed org reported once, sorted, with what re-applying did to it.

    use crate::clock::ManualClock;
    use crate::engine::{Engine, EngineConfig};
    use crate::policy::{Mode, Policy};
    use crate::session::NewSession;

    fn policy(abs_s: u64) -> Policy {
        Policy {
            absolute_timeout_secs: abs_s,
            idle_timeout_enabled: false,
            idle_timeout_secs: None,
            persistent: false,
        }
    }

    #[test]
    fn each_changed_org_is_reported_once_in_order() {
        let e = Engine::new(
            EngineConfig {
                shards: 4,
                mode: Mode::Override,
                application_policy: policy(3_600),
                ..EngineConfig::default()
            },
            ManualClock::new(1_800_000_000_000),
        );
        for (user, org) in [
            ("u1", None),
            ("u2", Some("b")),
            ("u3", Some("b")),
            ("u4", Some("a")),
        ] {
            e.create(NewSession {
                user_id: user.into(),
                org_id: org.map(Into::into),
                metadata: None,
            })
            .unwrap();
        }
        // "a" gets a CUSTOM policy, "z" one too (no sessions); the application policy changes,
        // so the org-less sessions and "b" (inheriting, found only in the shards) change as well.
        let custom = [("z", policy(60)), ("a", policy(120))]
            .map(|(o, p)| (o.to_owned(), p))
            .into();
        let c = e.replace_policies(policy(7_200), custom);
        let seen: Vec<_> = c
            .orgs
            .iter()
            .map(|o| (o.org.as_deref(), o.reapplied.refiled))
            .collect();
        assert_eq!(
            seen,
            [(None, 1), (Some("a"), 1), (Some("b"), 2), (Some("z"), 0)]
        );
        assert_eq!((c.changed, c.reapplied.refiled), (true, 4));
        // The same again changes nothing and visits no org.
        let custom = [("a", policy(120)), ("z", policy(60))]
            .map(|(o, p)| (o.to_owned(), p))
            .into();
        let c = e.replace_policies(policy(7_200), custom);
        assert!(!c.changed && c.orgs.is_empty());
        assert_eq!(e.custom_policy_count(), 2);
    }
}
