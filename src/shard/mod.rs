//! One shard of the session table: a slab of records, an id index, per-user and per-org lists,
//! the effective policy of every org it holds sessions for, and its own timer wheel, all behind
//! one `parking_lot::RwLock` owned by the engine. This file holds the shard and its write
//! operations (insert, restore, remove, the wheel's advance, the sweep); `read` the lookups
//! under the read lock (validate, touch, the snapshot's visit); `record` the record layout and
//! slab, `user_id` how user ids are packed, `lists` the user and org lists, `policy` policy
//! re-application and its dry run, `check` the structural self-check.
//!
//! Invariants:
//! 1. A record is live iff it is in `ids`; every live record is in exactly one user list, one org
//!    list (org slot 0 = "no org") and the wheel. Free records form a list through `user_next`.
//! 2. **Wheel position is never later than the true deadline.** Touch only moves
//!    `last_activity` forward (an atomic `fetch_max` under the read lock), which only moves the
//!    deadline later; anything that moves a deadline earlier (a tighter policy) re-files at once
//!    under the write lock. When a slot fires, [`Shard::advance`] re-checks the real deadline and
//!    evicts or re-files, so a touch costs no wheel re-link.
//! 3. Validate and touch compare `now` with the exact deadline, so an expired session never
//!    validates even before the wheel sweeps it.
//! 4. `orgs[s].eff` is the org's effective policy; the engine rewrites it (and re-applies it to
//!    the org's list) under the write lock whenever the policy changes. It alone says a
//!    session's deadlines and whether it is persistent: no record keeps a copy (`record`,
//!    invariant 5), so every read follows the policy in force.
//! 5. Ids are cryptographic hashes, so `ids` files by the id's low 64 bits with no keyed hasher
//!    (see `token`), and nobody can choose a colliding id. `ids` is an [`IdIndex`]: one cache
//!    line of slots, then the record (see its module doc).
//! 6. Every create, coalesced activity and removal is reported to `changes` with this shard's
//!    index while the shard's lock is held (see `changes`), and so is a cluster node's
//!    revocation of a session this shard does not hold (engine invariant 7); start-up replay
//!    is not.
//! 7. **A clock that steps back delays no eviction.** The wheel's ticks only move forward, so a
//!    deadline after a backward step can map to a tick already processed, which the wheel
//!    clamps to the next one (wheel invariant 4), due only once the clock is back where it was.
//!    [`Shard::advance`] first moves the scale's origin back (`scale_back_before`) so that the
//!    clock is again one tick past the ticks processed, and so does filing a deadline at or
//!    before them (`file`: a create or touch after the step, before any pass has seen it):
//!    the origin only ever moves back, by whole ticks, so an entry filed on an older scale
//!    comes due early (re-checked and re-filed, as invariant 2 has it), never late, and
//!    eviction lags a deadline by at most one tick after a step as before it.

mod check;
mod lists;
mod policy;
mod read;
mod record;
mod user_id;

pub use policy::{DryRunCounts, Reapplied};
/// Ids near the packers' shapes, for property tests beyond the shard (`persist`).
#[cfg(test)]
pub(crate) use user_id::tests::arb_user_id;

use crate::changes::{Change, Changes};
use crate::id_index::IdIndex;
use crate::policy::Effective;
use crate::session::{Deadlines, ExpiryReason, Metadata, RemoveReason, SavedRef, SessionView};
use crate::token::SessionId;
use crate::wheel::{NIL, TickScale, Wheel};
use compact_str::CompactString;
use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use lists::OrgSlot;
use record::{Record, Slab, USER_INLINE, USER_LONG, USER_SHAPE0, key_of, live_ids};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use user_id::Shapes;

/// Org slot of sessions that belong to no org; it follows the application policy.
pub const NO_ORG: u32 = 0;

/// Evictions counted by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evictions {
    pub idle: u64,
    pub absolute: u64,
}

impl Evictions {
    pub fn add(&mut self, reason: ExpiryReason) {
        match reason {
            ExpiryReason::Idle => self.idle += 1,
            ExpiryReason::Absolute => self.absolute += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.idle + self.absolute
    }

    pub fn merge(&mut self, other: Evictions) {
        self.idle += other.idle;
        self.absolute += other.absolute;
    }
}

/// A session to put in a shard: a new one (created = last activity = now) or a saved one.
#[derive(Debug)]
pub struct NewRecord<'a> {
    pub id: SessionId,
    pub user: &'a str,
    pub org: Option<&'a str>,
    pub metadata: Option<Arc<Metadata>>,
    pub created_ms: u64,
    pub last_ms: u64,
}

/// One shard (see the module doc).
pub struct Shard {
    slab: Slab,
    ids: IdIndex,
    users: HashTable<u32>,
    orgs: Vec<Option<OrgSlot>>,
    org_index: HashTable<u32>,
    org_free: Vec<u32>,
    /// Metadata of the (few) sessions that have any, by record index: a pointer in every
    /// record would cost 8 bytes per session for the many that have none.
    metadata: hashbrown::HashMap<u32, Arc<Metadata>>,
    /// User ids over 16 bytes that do not pack, by record index (`record`, invariant 2).
    long_users: hashbrown::HashMap<u32, Box<str>>,
    /// The shapes of this shard's packed user ids (see `user_id`).
    shapes: Shapes,
    wheel: Wheel,
    hasher: DefaultHashBuilder,
    scale: TickScale,
    /// The engine-wide count of live sessions; decremented here on every removal.
    active: Arc<AtomicUsize>,
    len: usize,
    /// Where creates, activity and removals are reported (see `changes`), and this shard's
    /// index.
    changes: Option<(Arc<dyn Changes>, usize)>,
}

impl Shard {
    /// An empty shard whose org-less sessions follow `app`.
    pub fn new(
        scale: TickScale,
        app: Effective,
        active: Arc<AtomicUsize>,
        changes: Option<(Arc<dyn Changes>, usize)>,
    ) -> Shard {
        let mut shard = Shard {
            slab: Slab {
                records: Vec::new(),
                free: NIL,
            },
            ids: IdIndex::new(),
            users: HashTable::new(),
            orgs: Vec::new(),
            org_index: HashTable::new(),
            org_free: Vec::new(),
            metadata: hashbrown::HashMap::new(),
            long_users: hashbrown::HashMap::new(),
            shapes: Shapes::default(),
            wheel: Wheel::new(),
            hasher: DefaultHashBuilder::default(),
            scale,
            active,
            len: 0,
            changes,
        };
        shard.orgs.push(Some(OrgSlot {
            name: CompactString::default(),
            head: NIL,
            len: 0,
            eff: app,
        }));
        shard
    }

    /// Live sessions in this shard.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no session.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn find(&self, id: SessionId) -> Option<u32> {
        let lo = id.table_hash();
        let hi = id.shard_bits();
        let recs = &self.slab.records;
        self.ids.find(lo, |i| {
            let r = &recs[i as usize];
            r.id_lo == lo && r.id_hi == hi
        })
    }

    #[inline]
    fn org_slot(&self, slot: u32) -> &OrgSlot {
        self.orgs[slot as usize]
            .as_ref()
            .expect("a live record's org slot is live")
    }

    #[inline]
    fn org_eff(&self, rec: &Record) -> &Effective {
        &self.org_slot(rec.org()).eff
    }

    #[inline]
    fn deadlines(&self, idx: u32) -> Deadlines {
        let r = &self.slab.records[idx as usize];
        Deadlines::compute(
            self.org_eff(r),
            r.created_ms,
            r.last_ms.load(Ordering::Relaxed),
        )
    }

    /// Inserts a new session and reports it; `eff_for()` gives the effective policy if its org
    /// is new to this shard. The caller has already reserved room in the engine-wide count.
    pub fn insert(
        &mut self,
        new: NewRecord<'_>,
        eff_for: impl FnOnce() -> Effective,
    ) -> SessionView {
        if let Some((c, i)) = &self.changes {
            c.record(
                *i,
                Change::Created(SavedRef {
                    id: new.id.0,
                    created_ms: new.created_ms,
                    last_ms: new.last_ms,
                    user: new.user,
                    org: new.org,
                    metadata: new.metadata.as_deref(),
                }),
            );
        }
        let last_ms = new.last_ms;
        let (idx, d) = self.insert_at(new, eff_for);
        self.view_with(idx, last_ms, &d)
    }

    /// Puts a saved session back (start-up replay, not reported): if its id is already here
    /// only its activity moves forward (replay is idempotent). Returns whether it was new.
    pub fn restore(&mut self, new: NewRecord<'_>, eff_for: impl FnOnce() -> Effective) -> bool {
        if let Some(idx) = self.find(new.id) {
            self.slab.records[idx as usize]
                .last_ms
                .fetch_max(new.last_ms, Ordering::Relaxed);
            return false;
        }
        self.insert_at(new, eff_for);
        true
    }

    /// Makes room for `n` more sessions at once (start-up knows roughly how many it will load,
    /// and growing tables one doubling at a time costs a rehash of everything each time).
    pub fn reserve(&mut self, n: usize) {
        self.slab.records.reserve(n);
        let (recs, long, hasher) = (&self.slab.records, &self.long_users, &self.hasher);
        self.ids.reserve(n, || live_ids(recs, NIL));
        self.users
            .reserve(n, |&i| key_of(recs, long, i).hash(hasher));
    }

    /// Replays saved activity: moves `id`'s last activity forward if it is here.
    pub fn restore_activity(&mut self, id: SessionId, last_ms: u64) {
        if let Some(idx) = self.find(id) {
            self.slab.records[idx as usize]
                .last_ms
                .fetch_max(last_ms, Ordering::Relaxed);
        }
    }

    fn insert_at(
        &mut self,
        new: NewRecord<'_>,
        eff_for: impl FnOnce() -> Effective,
    ) -> (u32, Deadlines) {
        let NewRecord {
            id,
            user,
            org,
            metadata,
            created_ms,
            last_ms,
        } = new;
        debug_assert!(!self.contains(id), "duplicate session id");
        let org_slot = match org {
            None => NO_ORG,
            Some(name) => self.org_slot_or_insert(name, eff_for),
        };
        let (code, bytes) = self.user_form(user);
        let idx = self.slab.alloc();
        {
            let r = &mut self.slab.records[idx as usize];
            r.id_lo = id.table_hash();
            r.id_hi = id.shard_bits();
            r.created_ms = created_ms;
            r.last_ms = AtomicU64::new(last_ms);
            r.user = bytes;
            r.org_flags = Record::flags(org_slot, code, metadata.is_some());
            r.user_next = NIL;
            r.user_prev = NIL;
        }
        match code {
            USER_INLINE => {}
            USER_LONG => {
                self.long_users.insert(idx, user.into());
            }
            code => self.shapes.add_ref(code - USER_SHAPE0),
        }
        if let Some(m) = metadata {
            self.metadata.insert(idx, m);
        }
        let recs = &self.slab.records;
        self.ids
            .insert(id.table_hash(), idx, || live_ids(recs, idx));
        self.link_user(idx);
        self.link_org(idx, org_slot);
        let d = self.deadlines(idx);
        self.file(idx, d.expires);
        self.len += 1;
        (idx, d)
    }

    /// Reports the removal of a live record, then removes it.
    fn remove(&mut self, idx: u32, reason: RemoveReason) {
        if let Some((c, i)) = &self.changes {
            let id = self.slab.records[idx as usize].id();
            c.record(*i, Change::Removed { id, reason });
        }
        self.unlink_and_free(idx);
    }

    /// Removes a live record from every index and frees it.
    fn unlink_and_free(&mut self, idx: u32) {
        debug_assert!(self.slab.records[idx as usize].live());
        let lo = self.slab.records[idx as usize].id_lo;
        let removed = self.ids.remove(lo, idx);
        assert!(removed, "live record {idx} missing from the id index");
        self.unlink_user(idx);
        self.unlink_org(idx);
        self.wheel.remove(&mut self.slab, idx);
        if self.slab.records[idx as usize].has_metadata() {
            self.metadata.remove(&idx);
        }
        match self.slab.records[idx as usize].user_code() {
            USER_INLINE => {}
            USER_LONG => {
                self.long_users.remove(&idx);
            }
            code => self.shapes.release(code - USER_SHAPE0),
        }
        self.slab.release(idx);
        self.len -= 1;
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Replays a saved removal (start-up, not reported): removes `id` if it is here.
    pub fn restore_remove(&mut self, id: SessionId) {
        if let Some(idx) = self.find(id) {
            self.unlink_and_free(idx);
        }
    }

    /// Reports the revocation of `id`, which this shard does not hold: a cluster node's, for
    /// the node that still holds it (engine invariant 7). The table does not change.
    pub fn report_revoked_elsewhere(&self, id: SessionId) {
        debug_assert!(self.find(id).is_none());
        if let Some((c, i)) = &self.changes {
            c.record(
                *i,
                Change::Removed {
                    id: id.0,
                    reason: RemoveReason::Revoked,
                },
            );
        }
    }

    /// Removes session `id`; false if it was not there.
    pub fn remove_id(&mut self, id: SessionId, reason: RemoveReason) -> bool {
        match self.find(id) {
            Some(idx) => {
                self.remove(idx, reason);
                true
            }
            None => false,
        }
    }

    /// Advances the wheel to `now_ms`, evicting at most `budget` due sessions; calls
    /// `on_evict(reason, lag_ms)` for each. Returns the evictions and whether the budget ran out
    /// (so the caller should come back after letting others take the lock).
    pub fn advance(
        &mut self,
        now_ms: u64,
        mut budget: usize,
        on_evict: &mut impl FnMut(ExpiryReason, u64),
    ) -> (Evictions, bool) {
        self.scale_back_before(now_ms);
        let now_tick = self.scale.now_tick(now_ms);
        let mut ev = Evictions::default();
        while budget > 0 {
            let Some(idx) = self.wheel.poll(&mut self.slab, now_tick) else {
                return (ev, false);
            };
            budget -= 1;
            let d = self.deadlines(idx);
            match d.expired(now_ms) {
                Some(reason) => {
                    self.remove(idx, reason.into());
                    ev.add(reason);
                    on_evict(reason, now_ms - d.expires);
                }
                None => self.file(idx, d.expires),
            }
        }
        (ev, true)
    }

    /// Files live record `idx` in the wheel at the tick of its deadline `expires_ms`. A live
    /// session's deadline is after now, so one at or before the ticks already processed means
    /// the clock stepped back and no advance has seen it yet (a create or touch right after
    /// the step, or no reaper pass while the clock was behind): the scale follows first
    /// (invariant 7), else the entry would be clamped to a tick the clock reaches only once it
    /// is back where it was.
    fn file(&mut self, idx: u32, expires_ms: u64) {
        if self.scale.deadline_tick(expires_ms) <= self.wheel.elapsed() {
            self.scale_back_before(expires_ms);
        }
        let when = self.scale.deadline_tick(expires_ms);
        self.wheel.insert(&mut self.slab, idx, when);
    }

    /// Keeps the wheel's ticks ahead of a clock that stepped back (invariant 7). The wheel has
    /// processed tick `elapsed`, which begins at `origin + elapsed * tick`: a pass's `now` or a
    /// live deadline `ms` before that can only come of a backward step (not of a stale
    /// reading: the engine reads the clock under this shard's write lock, after any earlier
    /// pass's reading). The origin then moves back by whole ticks, so that `ms` falls in tick
    /// `elapsed + 1` or later; every entry filed before comes due early by the shift (re-checked
    /// and filed again on the new scale), never late.
    fn scale_back_before(&mut self, ms: u64) {
        let tick = self.scale.tick_ms;
        let processed_ms = self.scale.origin_ms + self.wheel.elapsed() * tick;
        if ms < processed_ms {
            let back = (1 + (processed_ms - ms).div_ceil(tick)) * tick;
            self.scale.origin_ms = self.scale.origin_ms.saturating_sub(back);
        }
    }

    /// Removes every expired session in this shard (O(slab)); see `Engine::sweep_expired`.
    pub fn sweep_expired(&mut self, now_ms: u64) -> Evictions {
        let mut ev = Evictions::default();
        for idx in 0..self.slab.records.len() as u32 {
            if !self.slab.records[idx as usize].live() {
                continue;
            }
            if let Some(reason) = self.deadlines(idx).expired(now_ms) {
                self.remove(idx, reason.into());
                ev.add(reason);
            }
        }
        ev
    }
}
