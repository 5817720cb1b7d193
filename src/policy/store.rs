//! The policy store the engine keeps: the mode, the application policy and the orgs with a
//! CUSTOM policy, and the one way a policy write changes it.
//!
//! Invariants:
//! 1. An org absent from the store follows the application policy (APPLICATION); only CUSTOM
//!    policies are stored. Sessions without an org follow the application policy itself, and an
//!    org's effective policy is [`resolve`]`(mode, app, org's policy)`, so the store's contents
//!    alone decide every effective policy.
//! 2. A single policy write, as the admin API expresses it, changes the store only through
//!    [`PolicyWrite::apply`]; the real change and the dry run both use it (the dry run on a
//!    copy), so what a dry run counts is what the real write stores.
//! 3. The store is plain data and touches no session: the engine holds it behind its policy
//!    lock, re-applies what changed to the shards and keeps the lock order (see `engine`).

use crate::policy::{Mode, OrgPolicy, Policy, resolve};
use hashbrown::HashMap;

/// A single policy write, as the admin API expresses it; shared by the real change and the
/// dry run so that both mutate the policy store the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyWrite {
    /// Replace the application policy.
    Application(Policy),
    /// Set one org's policy (CUSTOM values, or back to APPLICATION).
    Org { org: String, policy: OrgPolicy },
}

impl PolicyWrite {
    pub(crate) fn apply(&self, st: &mut PolicyState) {
        match self {
            PolicyWrite::Application(p) => st.app = *p,
            PolicyWrite::Org {
                org,
                policy: OrgPolicy::Application,
            } => {
                st.custom.remove(org);
            }
            PolicyWrite::Org {
                org,
                policy: OrgPolicy::Custom(p),
            } => {
                st.custom.insert(org.clone(), *p);
            }
        }
    }

    /// The org whose slots the write re-applies to; `None` for the application policy (it may
    /// govern every org).
    pub(crate) fn only_org(&self) -> Option<&str> {
        match self {
            PolicyWrite::Application(_) => None,
            PolicyWrite::Org { org, .. } => Some(org),
        }
    }
}

/// An org's policy as stored, with the effective result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgPolicyView {
    pub org_policy: OrgPolicy,
    pub effective: Policy,
}

/// The store itself (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct PolicyState {
    pub(crate) mode: Mode,
    pub(crate) app: Policy,
    /// Orgs with a CUSTOM policy; absent means APPLICATION.
    pub(crate) custom: HashMap<String, Policy>,
}

impl PolicyState {
    /// A store with `app` and no CUSTOM org.
    pub(crate) fn new(mode: Mode, app: Policy) -> PolicyState {
        PolicyState {
            mode,
            app,
            custom: HashMap::new(),
        }
    }

    pub(crate) fn org_policy(&self, org: &str) -> OrgPolicy {
        self.custom
            .get(org)
            .map_or(OrgPolicy::Application, |p| OrgPolicy::Custom(*p))
    }

    pub(crate) fn effective(&self, org: Option<&str>) -> Policy {
        match org {
            None => self.app,
            Some(o) => resolve(self.mode, &self.app, &self.org_policy(o)),
        }
    }
}
