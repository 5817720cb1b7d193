//! One shard of the session table: a slab of records, an id index, per-user and per-org lists,
//! the effective policy of every org it holds sessions for, and its own timer wheel, all behind
//! one `parking_lot::RwLock` owned by the engine.
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
//!    the org's list) under the write lock whenever the policy changes.
//! 5. Ids are cryptographic hashes, so `ids` files by the id's low 64 bits with no keyed hasher
//!    (see `token`), and nobody can choose a colliding id. `ids` is an [`IdIndex`]: one cache
//!    line of slots, then the record (see its module doc).
//! 6. Every create, coalesced activity and removal is reported to `changes` with this shard's
//!    index while the shard's lock is held (see `changes`); start-up replay is not.

use crate::changes::{Change, Changes};
use crate::id_index::{self, IdIndex};
use crate::policy::Effective;
use crate::session::{
    Deadlines, ExpiryReason, Identity, Metadata, RemoveReason, SavedRef, SessionView,
};
use crate::token::SessionId;
use crate::wheel::{LinkStore, NIL, Wheel, WheelLinks};
use compact_str::CompactString;
use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Org slot of sessions that belong to no org; it follows the application policy.
pub const NO_ORG: u32 = 0;

/// Maps Unix milliseconds to wheel ticks.
#[derive(Debug, Clone, Copy)]
pub struct TickScale {
    pub origin_ms: u64,
    pub tick_ms: u64,
}

impl TickScale {
    /// The first tick at or after `deadline_ms`: a session filed there is expired when it fires.
    #[inline]
    pub fn deadline_tick(&self, deadline_ms: u64) -> u64 {
        deadline_ms
            .saturating_sub(self.origin_ms)
            .div_ceil(self.tick_ms)
    }

    /// The last tick that has fully begun at `now_ms`.
    #[inline]
    pub fn now_tick(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.origin_ms) / self.tick_ms
    }
}

/// One session as stored (80 bytes on 64-bit targets).
#[derive(Debug)]
struct Record {
    id_lo: u64,
    id_hi: u64,
    created_ms: u64,
    /// Moved forward only (`fetch_max`), possibly under the read lock.
    last_ms: AtomicU64,
    /// The user id if it fits in 16 bytes; else in the shard's `long_users` ([`LONG_USER_BIT`]).
    user: InlineUser,
    /// Org slot in the low 30 bits, then [`METADATA_BIT`] and [`PERSISTENT_BIT`]; [`VACANT`]
    /// when free.
    org_flags: u32,
    user_next: u32,
    user_prev: u32,
    org_next: u32,
    org_prev: u32,
    wheel: WheelLinks,
}

// The record's size is the table's memory per session: a field that grows it must be a choice.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Record>() == 80);

const PERSISTENT_BIT: u32 = 1 << 31;
/// The record has an entry in the shard's `metadata` side table.
const METADATA_BIT: u32 = 1 << 30;
/// The record's user id is longer than 16 bytes and lives in the shard's `long_users`.
const LONG_USER_BIT: u32 = 1 << 29;
const ORG_MASK: u32 = LONG_USER_BIT - 1;

/// A user id of at most 16 bytes kept in the record itself; `0xFF`, a byte that never occurs in
/// UTF-8, pads the rest. Typical ids (16-byte opaque ids, short names) need no allocation.
#[derive(Debug, Clone, Copy)]
struct InlineUser([u8; 16]);

impl InlineUser {
    const EMPTY: InlineUser = InlineUser([0xFF; 16]);

    fn new(s: &str) -> Option<InlineUser> {
        let mut b = [0xFF; 16];
        b.get_mut(..s.len())?.copy_from_slice(s.as_bytes());
        Some(InlineUser(b))
    }

    fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0xFF).unwrap_or(16);
        std::str::from_utf8(&self.0[..len]).expect("built from a str, cut at a char boundary")
    }
}

/// The user id of record `idx` (inline, or in the long-id side table).
#[inline]
fn user_of<'a>(
    recs: &'a [Record],
    long: &'a hashbrown::HashMap<u32, Box<str>>,
    idx: u32,
) -> &'a str {
    let r = &recs[idx as usize];
    if r.org_flags & LONG_USER_BIT != 0 {
        long.get(&idx).map_or("", |u| u)
    } else {
        r.user.as_str()
    }
}
/// The (hash, index) of every live record but `except`, in slab order, for an id index rebuild.
fn live_ids(recs: &[Record], except: u32) -> impl Iterator<Item = (u64, u32)> + '_ {
    recs.iter()
        .enumerate()
        .filter(move |&(i, r)| r.live() && i as u32 != except)
        .map(|(i, r)| (r.id_lo, i as u32))
}

/// `org_flags` of a free record.
const VACANT: u32 = ORG_MASK;

impl Record {
    fn vacant(next_free: u32) -> Record {
        Record {
            id_lo: 0,
            id_hi: 0,
            created_ms: 0,
            last_ms: AtomicU64::new(0),
            user: InlineUser::EMPTY,
            org_flags: VACANT,
            user_next: next_free,
            user_prev: NIL,
            org_next: NIL,
            org_prev: NIL,
            wheel: WheelLinks::default(),
        }
    }

    #[inline]
    fn org(&self) -> u32 {
        self.org_flags & ORG_MASK
    }

    fn persistent(&self) -> bool {
        self.org_flags & PERSISTENT_BIT != 0
    }

    fn has_metadata(&self) -> bool {
        self.org_flags & METADATA_BIT != 0
    }

    fn live(&self) -> bool {
        self.org_flags != VACANT
    }

    fn id(&self) -> u128 {
        (u128::from(self.id_hi) << 64) | u128::from(self.id_lo)
    }
}

struct Slab {
    records: Vec<Record>,
    free: u32,
}

impl LinkStore for Slab {
    #[inline]
    fn links(&mut self, idx: u32) -> &mut WheelLinks {
        &mut self.records[idx as usize].wheel
    }
}

impl Slab {
    fn alloc(&mut self) -> u32 {
        if self.free != NIL {
            let idx = self.free;
            self.free = self.records[idx as usize].user_next;
            idx
        } else {
            // Unreachable in practice: the configuration caps max_sessions at
            // `config::SHARD_SESSIONS` per shard, and ids spread evenly over shards.
            let idx = u32::try_from(self.records.len())
                .ok()
                .filter(|&i| i < id_index::MAX_RECORDS)
                .expect("a shard holds fewer than 16,777,214 sessions");
            self.records.push(Record::vacant(NIL));
            idx
        }
    }

    fn release(&mut self, idx: u32) {
        self.records[idx as usize] = Record::vacant(self.free);
        self.free = idx;
    }
}

struct OrgSlot {
    name: CompactString,
    head: u32,
    len: u32,
    eff: Effective,
}

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

/// What re-applying a policy did to one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reapplied {
    pub refiled: u64,
    pub evicted: Evictions,
}

impl Reapplied {
    pub fn merge(&mut self, other: Reapplied) {
        self.refiled += other.refiled;
        self.evicted.merge(other.evicted);
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
    /// User ids over 16 bytes, by record index (see [`InlineUser`]).
    long_users: hashbrown::HashMap<u32, Box<str>>,
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

    fn view_with(&self, idx: u32, last_ms: u64, d: &Deadlines) -> SessionView {
        let r = &self.slab.records[idx as usize];
        let org = r.org();
        SessionView {
            id: SessionId(r.id()),
            user_id: CompactString::from(user_of(&self.slab.records, &self.long_users, idx)),
            org_id: (org != NO_ORG).then(|| self.org_slot(org).name.clone()),
            created_at_ms: r.created_ms,
            last_activity_at_ms: last_ms,
            idle_expires_at_ms: d.idle,
            absolute_expires_at_ms: d.absolute,
            expires_at_ms: d.expires,
            persistent: r.persistent(),
            metadata: if r.has_metadata() {
                self.metadata.get(&idx).cloned()
            } else {
                None
            },
        }
    }

    fn view(&self, idx: u32) -> SessionView {
        let last = self.slab.records[idx as usize]
            .last_ms
            .load(Ordering::Relaxed);
        self.view_with(idx, last, &self.deadlines(idx))
    }

    /// The session `id`, expired or not, if it is still in the table.
    pub fn get(&self, id: SessionId) -> Option<SessionView> {
        self.find(id).map(|idx| self.view(idx))
    }

    /// Validates without side effects (invariant 3).
    #[inline]
    pub fn validate(
        &self,
        id: SessionId,
        now_ms: u64,
    ) -> Result<SessionView, Option<ExpiryReason>> {
        let idx = self.find(id).ok_or(None)?;
        let d = self.deadlines(idx);
        if let Some(reason) = d.expired(now_ms) {
            return Err(Some(reason));
        }
        let last = self.slab.records[idx as usize]
            .last_ms
            .load(Ordering::Relaxed);
        Ok(self.view_with(idx, last, &d))
    }

    /// Records activity at `now_ms` unless the session is already expired (invariants 2, 3).
    #[inline]
    pub fn touch(&self, id: SessionId, now_ms: u64) -> Result<SessionView, Option<ExpiryReason>> {
        let (idx, last, d) = self.touch_at(id, now_ms)?;
        Ok(self.view_with(idx, last, &d))
    }

    /// [`Shard::touch`], handing `f` the session's identity borrowed from the table instead of
    /// a copy of all of it.
    #[inline]
    pub fn touch_identity<R>(
        &self,
        id: SessionId,
        now_ms: u64,
        f: impl FnOnce(&Identity<'_>) -> R,
    ) -> Result<R, Option<ExpiryReason>> {
        let (idx, last, d) = self.touch_at(id, now_ms)?;
        let org = self.slab.records[idx as usize].org();
        Ok(f(&Identity {
            id,
            user_id: user_of(&self.slab.records, &self.long_users, idx),
            org_id: (org != NO_ORG).then(|| self.org_slot(org).name.as_str()),
            last_activity_at_ms: last,
            expires_at_ms: d.expires,
        }))
    }

    /// The touch itself: the record, its last activity and its deadlines after it.
    #[inline]
    fn touch_at(
        &self,
        id: SessionId,
        now_ms: u64,
    ) -> Result<(u32, u64, Deadlines), Option<ExpiryReason>> {
        let idx = self.find(id).ok_or(None)?;
        let r = &self.slab.records[idx as usize];
        let eff = self.org_eff(r);
        let d = Deadlines::compute(eff, r.created_ms, r.last_ms.load(Ordering::Relaxed));
        if let Some(reason) = d.expired(now_ms) {
            return Err(Some(reason));
        }
        let prev = r.last_ms.fetch_max(now_ms, Ordering::Relaxed);
        let last = prev.max(now_ms);
        // Activity is reported at most once per second per session (`changes`, invariant 2):
        // only when it crosses into a new second, so the reported time is < 1 s behind.
        if now_ms / 1_000 > prev / 1_000
            && let Some((c, i)) = &self.changes
        {
            c.record(
                *i,
                Change::Activity {
                    id: r.id(),
                    last_ms: now_ms,
                },
            );
        }
        Ok((idx, last, Deadlines::compute(eff, r.created_ms, last)))
    }

    /// Whether `id` is present.
    pub fn contains(&self, id: SessionId) -> bool {
        self.find(id).is_some()
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
            .reserve(n, |&i| hasher.hash_one(user_of(recs, long, i)));
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
        let idx = self.slab.alloc();
        let eff = self.orgs[org_slot as usize].as_ref().expect("live").eff;
        {
            let r = &mut self.slab.records[idx as usize];
            r.id_lo = id.table_hash();
            r.id_hi = id.shard_bits();
            r.created_ms = created_ms;
            r.last_ms = AtomicU64::new(last_ms);
            let inline = InlineUser::new(user);
            r.user = inline.unwrap_or(InlineUser::EMPTY);
            r.org_flags = org_slot
                | if eff.persistent { PERSISTENT_BIT } else { 0 }
                | if metadata.is_some() { METADATA_BIT } else { 0 }
                | if inline.is_none() { LONG_USER_BIT } else { 0 };
            if inline.is_none() {
                self.long_users.insert(idx, user.into());
            }
            r.user_next = NIL;
            r.user_prev = NIL;
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
        self.wheel
            .insert(&mut self.slab, idx, self.scale.deadline_tick(d.expires));
        self.len += 1;
        (idx, d)
    }

    fn hash_str(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    fn org_slot_or_insert(&mut self, name: &str, eff_for: impl FnOnce() -> Effective) -> u32 {
        let h = self.hash_str(name);
        let orgs = &self.orgs;
        if let Some(&slot) = self.org_index.find(h, |&s| {
            orgs[s as usize].as_ref().is_some_and(|o| o.name == name)
        }) {
            return slot;
        }
        let org = OrgSlot {
            name: CompactString::from(name),
            head: NIL,
            len: 0,
            eff: eff_for(),
        };
        let slot = match self.org_free.pop() {
            Some(s) => {
                self.orgs[s as usize] = Some(org);
                s
            }
            None => {
                self.orgs.push(Some(org));
                (self.orgs.len() - 1) as u32
            }
        };
        let (orgs, hasher) = (&self.orgs, &self.hasher);
        self.org_index.insert_unique(h, slot, |&s| {
            hasher.hash_one(orgs[s as usize].as_ref().map_or("", |o| o.name.as_str()))
        });
        slot
    }

    fn find_org(&self, name: &str) -> Option<u32> {
        let h = self.hash_str(name);
        let orgs = &self.orgs;
        self.org_index
            .find(h, |&s| {
                orgs[s as usize].as_ref().is_some_and(|o| o.name == name)
            })
            .copied()
    }

    fn link_user(&mut self, idx: u32) {
        let (recs, long) = (&self.slab.records, &self.long_users);
        let user = user_of(recs, long, idx);
        let h = self.hasher.hash_one(user);
        match self
            .users
            .find_mut(h, |&head| user_of(recs, long, head) == user)
        {
            Some(head) => {
                let old = *head;
                *head = idx;
                self.slab.records[idx as usize].user_next = old;
                self.slab.records[old as usize].user_prev = idx;
            }
            None => {
                let hasher = &self.hasher;
                self.users
                    .insert_unique(h, idx, |&i| hasher.hash_one(user_of(recs, long, i)));
            }
        }
    }

    fn unlink_user(&mut self, idx: u32) {
        let (next, prev) = {
            let r = &self.slab.records[idx as usize];
            (r.user_next, r.user_prev)
        };
        if prev != NIL {
            self.slab.records[prev as usize].user_next = next;
        } else {
            let h = self.hash_str(user_of(&self.slab.records, &self.long_users, idx));
            let entry = self
                .users
                .find_entry(h, |&head| head == idx)
                .unwrap_or_else(|_| panic!("head of a user list is indexed"));
            if next != NIL {
                *entry.into_mut() = next;
            } else {
                entry.remove();
            }
        }
        if next != NIL {
            self.slab.records[next as usize].user_prev = prev;
        }
    }

    fn link_org(&mut self, idx: u32, slot: u32) {
        let org = self.orgs[slot as usize].as_mut().expect("live org slot");
        let old = org.head;
        org.head = idx;
        org.len += 1;
        let r = &mut self.slab.records[idx as usize];
        r.org_next = old;
        r.org_prev = NIL;
        if old != NIL {
            self.slab.records[old as usize].org_prev = idx;
        }
    }

    fn unlink_org(&mut self, idx: u32) {
        let (next, prev, slot) = {
            let r = &self.slab.records[idx as usize];
            (r.org_next, r.org_prev, r.org())
        };
        if prev != NIL {
            self.slab.records[prev as usize].org_next = next;
        } else {
            self.orgs[slot as usize].as_mut().expect("live").head = next;
        }
        if next != NIL {
            self.slab.records[next as usize].org_prev = prev;
        }
        let org = self.orgs[slot as usize].as_mut().expect("live");
        org.len -= 1;
        if org.len == 0 && slot != NO_ORG {
            let h = self.hasher.hash_one(org.name.as_str());
            if let Ok(e) = self.org_index.find_entry(h, |&s| s == slot) {
                e.remove();
            }
            self.orgs[slot as usize] = None;
            self.org_free.push(slot);
        }
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
        if self.slab.records[idx as usize].org_flags & LONG_USER_BIT != 0 {
            self.long_users.remove(&idx);
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

    fn user_head(&self, user: &str) -> u32 {
        let h = self.hash_str(user);
        let recs = &self.slab.records;
        self.users
            .find(h, |&head| user_of(recs, &self.long_users, head) == user)
            .copied()
            .unwrap_or(NIL)
    }

    fn user_indices(&self, user: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = self.user_head(user);
        while cur != NIL {
            out.push(cur);
            cur = self.slab.records[cur as usize].user_next;
        }
        out
    }

    /// Views of `user`'s sessions in this shard (expired-but-unswept ones included).
    pub fn user_sessions(&self, user: &str) -> Vec<SessionView> {
        self.user_indices(user)
            .into_iter()
            .map(|i| self.view(i))
            .collect()
    }

    /// How many sessions `user` has in this shard.
    pub fn count_user(&self, user: &str) -> usize {
        self.user_indices(user).len()
    }

    /// `(created_at, id)` of `user`'s oldest session in this shard.
    pub fn oldest_of_user(&self, user: &str) -> Option<(u64, SessionId)> {
        self.user_indices(user)
            .into_iter()
            .map(|i| {
                let r = &self.slab.records[i as usize];
                (r.created_ms, SessionId(r.id()))
            })
            .min()
    }

    /// Removes all of `user`'s sessions in this shard; returns how many.
    pub fn revoke_user(&mut self, user: &str) -> usize {
        let idxs = self.user_indices(user);
        for &i in &idxs {
            self.remove(i, RemoveReason::Revoked);
        }
        idxs.len()
    }

    fn org_indices(&self, slot: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = self.orgs[slot as usize].as_ref().map_or(NIL, |o| o.head);
        while cur != NIL {
            out.push(cur);
            cur = self.slab.records[cur as usize].org_next;
        }
        out
    }

    /// Removes all of `org`'s sessions in this shard; returns how many.
    pub fn revoke_org(&mut self, org: &str) -> usize {
        let Some(slot) = self.find_org(org) else {
            return 0;
        };
        let idxs = self.org_indices(slot);
        for &i in &idxs {
            self.remove(i, RemoveReason::Revoked);
        }
        idxs.len()
    }

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
                let d = self.deadlines(idx);
                match d.expired(now_ms) {
                    Some(reason) => {
                        self.remove(idx, reason.into());
                        report.evicted.add(reason);
                    }
                    None => {
                        self.wheel.remove(&mut self.slab, idx);
                        self.wheel
                            .insert(&mut self.slab, idx, self.scale.deadline_tick(d.expires));
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
    fn governed_slots(&self, only_org: Option<&str>) -> Vec<u32> {
        match only_org {
            Some(name) => self.find_org(name).into_iter().collect(),
            None => (0..self.orgs.len() as u32)
                .filter(|&s| self.orgs[s as usize].is_some())
                .collect(),
        }
    }

    /// What [`Shard::reapply`] with the same arguments would do, without doing it (`&self`: it
    /// runs under the shard's read lock, so validate and touch keep answering). For every session
    /// of an org whose effective policy would change it computes the new deadlines with the same
    /// [`Deadlines::compute`] / [`Deadlines::expired`] the real change uses, which is what makes
    /// `would_evict` equal the real eviction at the same `now_ms`.
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
                match after.expired(now_ms) {
                    Some(reason) => out.would_evict.add(reason),
                    None if after.expires < before.expires => out.deadline_earlier += 1,
                    None if after.expires > before.expires => out.deadline_later += 1,
                    None => {}
                }
                cur = r.org_next;
            }
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
                None => {
                    self.wheel
                        .insert(&mut self.slab, idx, self.scale.deadline_tick(d.expires));
                }
            }
        }
        (ev, true)
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

    /// Hands `f` what is saved of each live session among up to `max` slab entries from index
    /// `from` on (a snapshot walks a shard in such chunks, taking the read lock once per
    /// chunk). Returns where to go on, `None` at the end.
    pub fn visit_chunk(
        &self,
        from: u32,
        max: usize,
        f: &mut impl FnMut(SavedRef<'_>),
    ) -> Option<u32> {
        let recs = &self.slab.records;
        let end = (from as usize).saturating_add(max).min(recs.len());
        for idx in from as usize..end {
            let r = &recs[idx];
            if !r.live() {
                continue;
            }
            let org = (r.org() != NO_ORG).then(|| self.org_slot(r.org()).name.as_str());
            let metadata = if r.has_metadata() {
                self.metadata.get(&(idx as u32)).map(|m| &**m)
            } else {
                None
            };
            f(SavedRef {
                id: r.id(),
                created_ms: r.created_ms,
                last_ms: r.last_ms.load(Ordering::Relaxed),
                user: user_of(recs, &self.long_users, idx as u32),
                org,
                metadata,
            });
        }
        (end < recs.len()).then_some(end as u32)
    }

    /// Checks invariants 1 and 2 exhaustively (tests only; O(n)).
    pub fn check(&mut self) {
        self.wheel.check(&mut self.slab);
        let live = self.slab.records.iter().filter(|r| r.live()).count();
        assert_eq!(live, self.len);
        assert_eq!(self.ids.len(), self.len);
        self.ids.check(|i| self.slab.records[i as usize].id_lo);
        assert_eq!(self.wheel.len(), self.len);
        let with_metadata = self
            .slab
            .records
            .iter()
            .filter(|r| r.live() && r.has_metadata())
            .count();
        assert_eq!(
            with_metadata,
            self.metadata.len(),
            "metadata side table out of step"
        );
        let org_total: u32 = self.orgs.iter().flatten().map(|o| o.len).sum();
        assert_eq!(org_total as usize, self.len);
        let user_total: usize = self
            .users
            .iter()
            .map(|&h| {
                let mut n = 0;
                let mut c = h;
                while c != NIL {
                    n += 1;
                    c = self.slab.records[c as usize].user_next;
                }
                n
            })
            .sum();
        assert_eq!(user_total, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_user_ids() {
        for u in [
            "",
            "a",
            "alice@example.co",
            "Zoë-ünïcødé",
            "exactly-16-bytes",
        ] {
            assert_eq!(InlineUser::new(u).unwrap().as_str(), u);
        }
        assert!(InlineUser::new("seventeen-bytes-x").is_none());
    }

    #[test]
    fn record_stays_small() {
        assert!(
            std::mem::size_of::<Record>() <= 96,
            "{}",
            std::mem::size_of::<Record>()
        );
    }
}
