//! "Not before" marks: a user- or org-wide revocation as a time, so that it also catches the
//! sessions of that user (org) that another node created concurrently and that reach this
//! node later (as Keycloak's notBefore). Only a cluster needs them; a single node's marks
//! never match anything, since its own later creates are never older than its revocations.
//!
//! Invariants:
//! 1. A mark `(scope, id, before_ms)` revokes every session of that user (org) created before
//!    `before_ms`: the ones here when it is set or applied, and the ones restored later
//!    ([`Engine::restore`] drops them). A later mark for the same id keeps the later time.
//! 2. A local user- or org-wide revocation reports its mark at the clock's `now` (`changes`,
//!    invariant 6) and, with `cluster` (a cluster node), keeps it; a mark from another node
//!    is always kept, and applied without being reported.
//! 3. **Kept as long as it can matter**: a mark is dropped once it is older than the longest
//!    absolute timeout of the policies in force, since no session created before it can still
//!    be alive. The table is swept when it has doubled since the last sweep, so its size stays
//!    within twice the marks that matter, at amortized O(1) per mark.
//! 4. Restoring checks the marks only while there are any (one relaxed load otherwise).
//! 5. **A login is never older than a mark of its user (org).** A create whose clock is
//!    behind such a mark (a mark made on a node whose clock runs ahead of this one's, or this
//!    node's clock stepped back) is created at the mark's time instead: `created_ms =
//!    max(now, mark)`, its last activity the same, its deadlines counted from there. The
//!    create that the other nodes apply then carries a time no node's mark revokes, and every
//!    node keeps it, where otherwise the others would drop it on arrival and this node keep
//!    it. The marks are read under the lock of the shard the session goes into, and a mark is
//!    kept before the shards are visited (a local revocation's before its removals, another
//!    node's before its `drop_before`), so a mark set concurrently either is seen by the
//!    create or finds the session in the table. Checked only while there are marks
//!    (invariant 4): a single node keeps none, and its creates are as before.

use super::Engine;
use crate::session::Scope;
use compact_str::CompactString;
use hashbrown::HashMap;
use std::sync::atomic::Ordering;

/// The marks (see the module doc).
#[derive(Default)]
pub struct Marks {
    map: HashMap<(Scope, CompactString), u64>,
    swept_at_len: usize,
}

impl Marks {
    /// The mark of `id` in `scope`, if any.
    pub fn get(&self, scope: Scope, id: &str) -> Option<u64> {
        self.map.get(&(scope, CompactString::from(id))).copied()
    }

    fn set(&mut self, scope: Scope, id: &str, before_ms: u64) {
        let m = self.map.entry((scope, id.into())).or_insert(0);
        *m = (*m).max(before_ms);
    }

    /// Drops the marks set before `horizon_ms` once the table has doubled (invariant 3).
    fn sweep(&mut self, horizon_ms: u64) {
        if self.map.len() < (self.swept_at_len * 2).max(64) {
            return;
        }
        self.map.retain(|_, before| *before >= horizon_ms);
        self.swept_at_len = self.map.len();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Engine {
    /// Whether a session of `user` and `org` created at `created_ms` is revoked by a mark.
    pub(super) fn marked(&self, user: &str, org: Option<&str>, created_ms: u64) -> bool {
        if !self.has_marks.load(Ordering::Relaxed) {
            return false;
        }
        let m = self.marks.read();
        m.get(Scope::User, user).is_some_and(|b| created_ms < b)
            || org.is_some_and(|o| m.get(Scope::Org, o).is_some_and(|b| created_ms < b))
    }

    /// Remembers a mark, keeping the later time, and sweeps old ones (invariants 1, 3).
    fn set_mark(&self, scope: Scope, id: &str, before_ms: u64) {
        let horizon = before_ms.saturating_sub(self.longest_absolute_ms());
        let mut m = self.marks.write();
        m.set(scope, id, before_ms);
        m.sweep(horizon);
        self.has_marks.store(!m.is_empty(), Ordering::Relaxed);
    }

    /// The time a new session of `user` and `org` may not be created before: the later of
    /// their marks, if any (invariant 5).
    pub(super) fn not_before(&self, user: &str, org: Option<&str>) -> Option<u64> {
        if !self.has_marks.load(Ordering::Relaxed) {
            return None;
        }
        let m = self.marks.read();
        let by_org = org.and_then(|o| m.get(Scope::Org, o));
        m.get(Scope::User, user).max(by_org)
    }

    /// A local user- or org-wide revocation: its mark kept (on a cluster node) before `remove`
    /// ends the sessions here, and reported after them (invariants 2, 5). Returns what
    /// `remove` does.
    pub(super) fn revoke_marked(
        &self,
        scope: Scope,
        id: &str,
        remove: impl FnOnce() -> usize,
    ) -> usize {
        let now = self.clock.now_ms();
        if self.cluster {
            self.set_mark(scope, id, now);
        }
        let n = remove();
        self.shards[0].write().report_not_before(scope, id, now);
        n
    }

    /// Applies another node's mark: remembers it and removes, without reporting, every session
    /// of that user (org) here created before `before_ms`. Returns how many.
    pub fn apply_not_before(&self, scope: Scope, id: &str, before_ms: u64) -> usize {
        self.set_mark(scope, id, before_ms);
        self.shards
            .iter()
            .map(|s| s.write().drop_before(scope, id, before_ms))
            .sum()
    }

    /// Every mark kept (a snapshot saves them).
    pub fn marks_list(&self) -> Vec<(Scope, CompactString, u64)> {
        self.marks
            .read()
            .map
            .iter()
            .map(|((s, id), b)| (*s, id.clone(), *b))
            .collect()
    }

    /// How many marks are kept.
    pub fn marks(&self) -> usize {
        self.marks.read().len()
    }

    /// The longest absolute timeout of the policies in force (invariant 3).
    fn longest_absolute_ms(&self) -> u64 {
        let p = self.policies.read();
        p.custom
            .values()
            .map(|c| c.absolute_timeout_secs)
            .chain([p.app.absolute_timeout_secs])
            .max()
            .unwrap_or(0)
            .saturating_mul(1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::engine::EngineConfig;
    use crate::session::{NewSession, Saved};

    fn saved(id: u128, user: &str, org: Option<&str>, created_ms: u64) -> Saved {
        Saved {
            id,
            created_ms,
            last_ms: created_ms,
            user: user.into(),
            org: org.map(Into::into),
            metadata: None,
        }
    }

    #[test]
    fn a_mark_revokes_what_is_here_and_what_arrives_later_if_older() {
        let clock = ManualClock::new(1_000_000);
        let e = Engine::new(EngineConfig::default(), clock.clone());
        assert!(e.restore(saved(1, "alice", Some("acme"), 999_000)));
        assert!(e.restore(saved(2, "alice", None, 1_000_500)));
        assert!(e.restore(saved(3, "bob", Some("acme"), 999_500)));
        assert_eq!(e.apply_not_before(Scope::User, "alice", 1_000_000), 1);
        assert_eq!(e.len(), 2);
        // Arriving later: older than the mark is dropped, newer kept.
        assert!(!e.restore(saved(4, "alice", None, 999_999)));
        assert!(e.restore(saved(5, "alice", None, 1_000_000)));
        // An org mark catches every user of the org; a later mark for the same id wins.
        assert_eq!(e.apply_not_before(Scope::Org, "acme", 999_000), 0);
        assert_eq!(e.apply_not_before(Scope::Org, "acme", 1_000_000), 1);
        assert!(!e.restore(saved(6, "carol", Some("acme"), 999_999)));
        assert_eq!(e.apply_not_before(Scope::Org, "acme", 1), 0);
        assert!(!e.restore(saved(7, "dan", Some("acme"), 999_998)));
        assert_eq!(e.len(), 2);
        assert_eq!(e.marks(), 2);
    }

    #[test]
    fn a_local_revocation_marks_and_later_creates_are_not_caught() {
        let clock = ManualClock::new(1_000_000);
        let e = Engine::new(
            EngineConfig {
                cluster: true,
                ..EngineConfig::default()
            },
            clock.clone(),
        );
        let new = |user: &str| NewSession {
            user_id: user.into(),
            ..Default::default()
        };
        e.create(new("alice")).unwrap();
        assert_eq!(e.revoke_user("alice"), 1);
        assert_eq!(e.marks(), 1);
        // A create on another node a moment before the revocation, arriving now: dropped.
        assert!(!e.restore(saved(9, "alice", None, 999_999)));
        // A login after it, here or elsewhere, stands.
        clock.advance(1);
        e.create(new("alice")).unwrap();
        assert!(e.restore(saved(10, "alice", None, 1_000_001)));
        assert_eq!(e.len(), 2);
    }

    /// A node whose clock runs 10 s behind makes a login 2 s after another node revoked the
    /// user (org): created at its own clock, the login would be older than the mark, and every
    /// other node would drop it on arrival while this one kept it. It is created at the mark's
    /// time instead, its deadlines counted from there, and every node keeps it.
    #[test]
    fn a_login_on_a_slow_clock_is_not_older_than_a_mark() {
        const T: u64 = 1_000_000_000;
        let cfg = || EngineConfig {
            cluster: true,
            ..EngineConfig::default()
        };
        let slow_clock = ManualClock::new(T + 2_000 - 10_000);
        let slow = Engine::new(cfg(), slow_clock.clone());
        let other = Engine::new(cfg(), ManualClock::new(T + 2_000));
        for e in [&slow, &other] {
            e.apply_not_before(Scope::User, "alice", T);
            e.apply_not_before(Scope::Org, "acme", T + 500);
        }
        let abs_ms = slow.longest_absolute_ms();
        for (user, org, mark) in [("alice", None, T), ("bob", Some("acme"), T + 500)] {
            let c = slow
                .create(NewSession {
                    user_id: user.into(),
                    org_id: org.map(Into::into),
                    ..Default::default()
                })
                .unwrap();
            let s = &c.session;
            assert_eq!((s.created_at_ms, s.last_activity_at_ms), (mark, mark));
            assert_eq!(s.absolute_expires_at_ms, mark + abs_ms);
            // What the other nodes apply: kept there, as here.
            assert!(other.restore(Saved {
                id: s.id.0,
                created_ms: s.created_at_ms,
                last_ms: s.last_activity_at_ms,
                user: user.into(),
                org: org.map(Into::into),
                metadata: None,
            }));
            assert!(matches!(
                slow.validate(c.token.expose()),
                crate::session::Validation::Valid(_)
            ));
            assert!(matches!(
                other.validate(c.token.expose()),
                crate::session::Validation::Valid(_)
            ));
        }
        // A user with no mark is created at the node's own clock.
        let c = slow
            .create(NewSession {
                user_id: "carol".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c.session.created_at_ms, slow.now_ms());
        // This node's own revocation, then its clock stepped back: the same.
        let revoked_at = slow.now_ms();
        slow.revoke_user("carol");
        slow_clock.set(revoked_at - 1_000);
        let c = slow
            .create(NewSession {
                user_id: "carol".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c.session.created_at_ms, revoked_at);
    }

    #[test]
    fn a_single_node_keeps_no_marks() {
        let e = Engine::new(EngineConfig::default(), ManualClock::new(1_000_000));
        e.create(NewSession {
            user_id: "alice".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(e.revoke_user("alice"), 1);
        assert_eq!(e.revoke_org("acme"), 0);
        assert_eq!(e.marks(), 0);
        assert!(e.restore(saved(9, "alice", None, 999_999)));
    }

    #[test]
    fn marks_older_than_any_session_can_live_are_swept() {
        let clock = ManualClock::new(1_000_000_000);
        let e = Engine::new(EngineConfig::default(), clock.clone());
        let lifetime = e.longest_absolute_ms();
        for i in 0..100 {
            e.apply_not_before(Scope::User, &format!("u{i}"), 1_000_000_000);
        }
        assert_eq!(e.marks(), 100);
        // Far past every lifetime, new marks sweep the old ones as the table grows.
        let later = 1_000_000_000 + lifetime + 1;
        for i in 0..200 {
            e.apply_not_before(Scope::User, &format!("v{i}"), later);
        }
        assert!(e.marks() <= 200, "{}", e.marks());
        assert!(e.marks.read().get(Scope::User, "u0").is_none());
    }
}
