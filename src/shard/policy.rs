//! Policy re-application and its dry run: when an org's effective policy changes, every session
//! of that org is re-checked, evicted if it was already expired or the new deadlines have
//! passed, and re-filed in the wheel otherwise; the dry run counts what that would do without
//! doing it.
//!
//! Invariants:
//! 1. `orgs[s].eff` is the org's effective policy; [`Shard::reapply`] rewrites it and re-applies
//!    it to the org's list under the write lock, so the wheel is never later than a deadline
//!    (the shard's invariant 2).
//! 2. The dry run visits exactly the org slots the real change would ([`Shard::governed_slots`])
//!    and decides with the same [`Deadlines::compute`] and [`expired_either`] (invariant 4), so
//!    at the same `now_ms` its `would_evict` equals the real eviction.
//! 3. [`Shard::reapply`] counts what it did in the dry run's terms too (sessions affected,
//!    evicted by reason, deadlines moved earlier / later, [`Reapplied::as_counts`]), by the same
//!    comparisons, so a write's report and its dry run's can be compared field by field.
//! 4. **A policy change never revives a session.** A session already expired under the old
//!    policy when it changes is evicted (by the deadline that had passed), however loose the new
//!    one: validate said it was expired, so it must never validate again. The others are
//!    evicted if the new deadlines have passed, and re-filed otherwise. Reapply and the dry run
//!    decide both with the same [`expired_either`].

use super::{Evictions, NO_ORG, Shard};
use crate::policy::Effective;
use crate::session::{Deadlines, ExpiryReason};
use crate::wheel::NIL;
use std::sync::atomic::Ordering;

/// Whether a session whose deadlines go from `before` to `after` is to be evicted at `now_ms`
/// (invariant 4): if it was already expired, by the deadline that had passed, whatever `after`
/// says; else if `after` puts it past one, by that one.
fn expired_either(before: &Deadlines, after: &Deadlines, now_ms: u64) -> Option<ExpiryReason> {
    before.expired(now_ms).or_else(|| after.expired(now_ms))
}

/// What re-applying a policy did to one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reapplied {
    pub refiled: u64,
    pub evicted: Evictions,
    /// Of the re-filed, those whose deadline moved earlier / later (as [`DryRunCounts`] counts).
    pub deadline_earlier: u64,
    pub deadline_later: u64,
}

impl Reapplied {
    pub fn merge(&mut self, other: Reapplied) {
        self.refiled += other.refiled;
        self.evicted.merge(other.evicted);
        self.deadline_earlier += other.deadline_earlier;
        self.deadline_later += other.deadline_later;
    }

    /// The same counts in the dry run's shape: what the write did, to compare with what its dry
    /// run said it would do (invariant 3).
    pub fn as_counts(&self) -> DryRunCounts {
        DryRunCounts {
            affected: self.refiled + self.evicted.total(),
            would_evict: self.evicted,
            deadline_earlier: self.deadline_earlier,
            deadline_later: self.deadline_later,
        }
    }
}

/// What a policy change would do to the sessions it governs (a dry run).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DryRunCounts {
    /// Sessions whose effective policy would change.
    pub affected: u64,
    /// Of those, the ones the change would evict at once, by the deadline that passed.
    pub would_evict: Evictions,
    /// Of the survivors, those whose deadline would move earlier / later.
    pub deadline_earlier: u64,
    pub deadline_later: u64,
}

impl Shard {
    /// Sets the effective policy of org-less sessions and of each org in this shard (or only
    /// `only_org`) to `eff_for(org name or None)`, re-applying it where it changed (invariant 4).
    /// `on_change(org, old, new, what it did)` is called once per org slot that changed.
    pub fn reapply(
        &mut self,
        eff_for: impl Fn(Option<&str>) -> Effective,
        only_org: Option<&str>,
        now_ms: u64,
        on_change: &mut impl FnMut(Option<&str>, Effective, Effective, Reapplied),
    ) {
        for slot in self.governed_slots(only_org) {
            let org = self.orgs[slot as usize].as_mut().expect("live");
            let name = (slot != NO_ORG).then(|| org.name.clone());
            let new = eff_for(name.as_deref());
            let old = org.eff;
            if old == new {
                continue;
            }
            org.eff = new;
            let mut report = Reapplied::default();
            for idx in self.org_indices(slot) {
                let r = &self.slab.records[idx as usize];
                let last = r.last_ms.load(Ordering::Relaxed);
                let before = Deadlines::compute(&old, r.created_ms, last);
                let d = self.deadlines(idx);
                match expired_either(&before, &d, now_ms) {
                    Some(reason) => {
                        self.remove(idx, reason.into());
                        report.evicted.add(reason);
                    }
                    None => {
                        report.deadline_earlier += u64::from(d.expires < before.expires);
                        report.deadline_later += u64::from(d.expires > before.expires);
                        self.wheel.remove(&mut self.slab, idx);
                        self.file(idx, d.expires);
                        report.refiled += 1;
                    }
                }
            }
            on_change(name.as_deref(), old, new, report);
        }
    }

    /// The org slots a policy change visits: only `only_org`'s, or every live slot (slot 0 is
    /// the org-less sessions). [`Shard::reapply`] and [`Shard::dry_run`] share it, so a dry run
    /// looks at exactly the sessions the real change would.
    pub(super) fn governed_slots(&self, only_org: Option<&str>) -> Vec<u32> {
        match only_org {
            Some(name) => self.find_org(name).into_iter().collect(),
            None => (0..self.orgs.len() as u32)
                .filter(|&s| self.orgs[s as usize].is_some())
                .collect(),
        }
    }

    /// What [`Shard::reapply`] with the same arguments would do, without doing it (`&self`: it
    /// runs under the shard's read lock, so validate and touch keep answering). For every session
    /// of an org whose effective policy would change it computes the old and new deadlines with
    /// the same [`Deadlines::compute`] / [`expired_either`] the real change uses, which is what
    /// makes `would_evict` equal the real eviction at the same `now_ms`.
    pub fn dry_run(
        &self,
        eff_for: impl Fn(Option<&str>) -> Effective,
        only_org: Option<&str>,
        now_ms: u64,
        out: &mut DryRunCounts,
    ) {
        for slot in self.governed_slots(only_org) {
            let org = self.orgs[slot as usize].as_ref().expect("live");
            let name = (slot != NO_ORG).then_some(org.name.as_str());
            let (old, new) = (org.eff, eff_for(name));
            if old == new {
                continue;
            }
            let mut cur = org.head;
            while cur != NIL {
                let r = &self.slab.records[cur as usize];
                let last = r.last_ms.load(Ordering::Relaxed);
                let before = Deadlines::compute(&old, r.created_ms, last);
                let after = Deadlines::compute(&new, r.created_ms, last);
                out.affected += 1;
                match expired_either(&before, &after, now_ms) {
                    Some(reason) => out.would_evict.add(reason),
                    None if after.expires < before.expires => out.deadline_earlier += 1,
                    None if after.expires > before.expires => out.deadline_later += 1,
                    None => {}
                }
                cur = r.org_next;
            }
        }
    }
}
