//! The change seam: the one place where "a session changed" leaves the engine. The engine and
//! its shards report every change of the session table through [`Changes`]; the journal
//! (`persist::journal`) is one implementation, and a replication to other nodes would be
//! another. The engine layer imports this module, never what implements it.
//!
//! Invariants:
//! 1. **Every change, once.** A create is reported as [`Change::Created`] with what is saved
//!    of the session, a removal as [`Change::Removed`] with its reason (revoked by the API,
//!    evicted idle or absolute by the wheel, the start-up sweep, a tighter policy or a create
//!    at a limit, displaced by the per-user limit), activity as [`Change::Activity`]. Nothing
//!    else changes what is saved of a session: deadlines follow from the policy, which is not a
//!    session change (policies are kept by `policy_source` in `policies.json`, not by the
//!    engine; what a policy change does to sessions arrives here as the removals it causes).
//!    One report changes nothing here: a cluster node's revocation of a session it does not
//!    hold (engine invariant 7) is a [`Change::Removed`] too, for the nodes that still hold
//!    it; replayed from the journal it removes nothing (`persist::record`, invariant 2).
//! 2. **Activity is coalesced**: reported only when a touch moves a session's last activity
//!    into a new whole second, so at most once a second per session, and the reported time is
//!    less than a second behind the table.
//! 3. **Per-session order.** Changes are reported while the session's shard lock is held (the
//!    write lock for create and removal; touch holds the read lock, beside which no create or
//!    removal of that shard runs), with the shard's index. So the reports of one shard, kept
//!    in arrival order per shard (the journal keeps one buffer per shard), are in the order
//!    the changes happened, session by session.
//! 4. **Quick, and no way back.** Because it runs under the shard lock (a touch's report on
//!    the request path), an implementation must be quick (encode or queue, never I/O, never
//!    wait), and must never call into the engine: that would take a shard lock again.
//! 5. Replaying saved state at start-up (`Engine::restore*`) is not reported: it is what was
//!    reported before.
//! 6. A user- or org-wide revocation is also reported as one [`Change::NotBefore`] mark, after
//!    its removals (under shard 0's lock): "every session of this user (org) created before
//!    this time is revoked". It tells other nodes to revoke what they hold and what reaches
//!    them later of that user (org), created before the mark; its order among the session
//!    frames does not matter.

use crate::session::{RemoveReason, SavedRef, Scope};

/// One change of the session table (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// A new session, borrowed from the table.
    Created(SavedRef<'a>),
    /// The session's last activity moved into a new second (invariant 2), from `prev_ms`;
    /// `idle_ms` is its idle timeout in force (0: off), for listeners that coalesce further.
    Activity {
        id: u128,
        last_ms: u64,
        prev_ms: u64,
        idle_ms: u64,
    },
    /// The session left the table, or, on a cluster node, was revoked while not in it
    /// (invariant 1).
    Removed { id: u128, reason: RemoveReason },
    /// Every session of `id` (a user or an org) created before `before_ms` is revoked
    /// (invariant 6).
    NotBefore {
        scope: Scope,
        id: &'a str,
        before_ms: u64,
    },
}

/// Where the engine reports its changes (see the module doc).
pub trait Changes: Send + Sync {
    /// Called under shard `shard`'s lock (invariants 3, 4).
    fn record(&self, shard: usize, change: Change<'_>);
}

/// Several listeners, each told every change in turn (the journal and the cluster's outbox).
pub struct Tee(pub Vec<std::sync::Arc<dyn Changes>>);

impl Changes for Tee {
    #[inline]
    fn record(&self, shard: usize, change: Change<'_>) {
        for c in &self.0 {
            c.record(shard, change);
        }
    }
}
