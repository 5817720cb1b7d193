//! The session engine: N shards, the policy store, limits and the clock, as plain synchronous
//! Rust. Everything async (HTTP, the reaper tick, signals) calls into this.
//!
//! Files: this one (the engine, its sessions and expiry), `config.rs` (its settings),
//! `saved.rs` (start-up replay and the snapshot's walk), `policies.rs` (its policy operations
//! and the dry run); the store it keeps is `policy::store`, the shards are `shard`. Beside it,
//! `tests/` (behaviour tests on a manual clock, one file per topic) and `model.rs` (the
//! property test against a naive model).
//!
//! Invariants:
//! 1. A session lives in shard `id.shard_bits() & mask`; the shard count is a power of two.
//! 2. Lock order is `user stripe` → `policies` → one shard at a time → `marks`. Creates read the
//!    policy store while holding its read lock across the shard insert, and policy writes hold
//!    its write lock while visiting every shard, so no shard ever caches a stale effective
//!    policy. Creates and restores read the marks under the shard's lock; a mark is written
//!    with no other lock held (`marks`, invariant 5).
//! 3. `active` counts the sessions in the table (expired ones not yet swept included, see 6); a
//!    create reserves its place before inserting, so `max_sessions` is never exceeded even
//!    under concurrent creates.
//! 4. With a per-user limit, creates of one user are serialized by a striped mutex, so the count
//!    across shards cannot race past the limit.
//! 5. Every change of the table leaves the engine through the `changes` seam (the shards report
//!    it, shard index included); the engine knows nothing of what records it (no `persist`).
//! 6. **Limits count live sessions.** `active` also holds expired sessions not yet swept, so
//!    a create that finds `max_sessions` reached first evicts what the wheels hold due, as the
//!    reaper would (at most once per tick, so a flood of refused creates costs one pass):
//!    only sessions expired since the last tick boundary can still hold a place, for less than
//!    a tick (finding those would take a walk of the table). Under the per-user limit, the
//!    user's sessions already expired are evicted before counting (each shard checks every
//!    deadline), and evict-oldest displaces only a live session. These evictions are reported
//!    like the wheel's (idle, absolute) and kept for the reaper to count
//!    ([`Engine::take_limit_evictions`]).
//! 7. **A cluster node's revocation leaves even for a session it does not hold.** Each node
//!    evicts by its own view of a session's activity, so one may have evicted a session that
//!    another still holds. On a cluster node (`EngineConfig::cluster`), [`Engine::revoke_id`]
//!    (and [`Engine::revoke`]) of an id not in the table reports the revocation all the same
//!    (a removal, reason revoked, that changes nothing here), once per call, so that the node
//!    holding it removes it. A single node reports nothing for it: no journal frame.

use crate::changes::Changes;
use crate::clock::Clock;
use crate::policy::store::PolicyState;
use crate::session::{
    ExpiryReason, Identity, InputError, Invalid, NewSession, RemoveReason, SessionRef, SessionView,
    Validation, check_id,
};
use crate::shard::{Evictions, NewRecord, Shard};
use crate::token::{SessionId, Token};
use crate::wheel::TickScale;
use hashbrown::DefaultHashBuilder;
use parking_lot::{Mutex, RwLock};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why the engine refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("the session table is full ({max} sessions); retry later or raise --max-sessions")]
    Capacity { max: usize },
    #[error("user already has {max} sessions, the per-user limit")]
    UserLimit { max: usize },
    /// The OS's words stay in the source, for the log; the HTTP answer leaves them out.
    #[error("the operating system's random number generator failed: {0}")]
    Rng(#[source] getrandom::Error),
}

/// A new session: the token (given out once) and the session's state.
#[derive(Debug)]
pub struct Created {
    pub token: Token,
    pub session: SessionView,
    /// Sessions of the same user revoked to honour `max_sessions_per_user` (evict-oldest).
    pub displaced: usize,
}

/// A shard's lock and table on cache lines of their own (128 bytes: the line and the one the
/// prefetcher pairs with it), so that threads working on neighbouring shards never write to
/// one line (without it, the end of one shard's table and the next one's lock shared a line).
#[repr(align(128))]
struct ShardCell(RwLock<Shard>);

impl std::ops::Deref for ShardCell {
    type Target = RwLock<Shard>;
    fn deref(&self) -> &RwLock<Shard> {
        &self.0
    }
}

/// The engine (see the module doc).
pub struct Engine {
    shards: Box<[ShardCell]>,
    mask: u64,
    policies: RwLock<PolicyState>,
    clock: Arc<dyn Clock>,
    active: Arc<AtomicUsize>,
    max_sessions: usize,
    per_user: Option<(usize, UserLimitAction)>,
    user_stripes: Box<[Mutex<()>]>,
    stripe_hasher: DefaultHashBuilder,
    tick_ms: u64,
    cluster: bool,
    /// A cluster node's last applied stream sequence (0: none); saved in snapshots.
    stream_applied: std::sync::atomic::AtomicU64,
    /// User- and org-wide revocations as times (`marks`).
    marks: RwLock<marks::Marks>,
    has_marks: std::sync::atomic::AtomicBool,
    /// Expired sessions a create evicted at a limit (invariant 6), until the reaper takes them.
    limit_evictions: Mutex<Evictions>,
    /// The tick of the last [`Engine::reap_at_capacity`] (invariant 6).
    capacity_reaped_tick: std::sync::atomic::AtomicU64,
}

/// Reaper batch: most sessions evicted per shard lock hold.
pub const REAP_BATCH: usize = 1_024;

impl Engine {
    /// Builds an engine; `shards` is rounded up to a power of two and `tick_ms` clamped to
    /// 1..=1000 (the config layer rejects bad values with a message before this).
    pub fn new(cfg: EngineConfig, clock: Arc<dyn Clock>) -> Engine {
        Engine::with_changes(cfg, clock, None)
    }

    /// As [`Engine::new`], reporting every change to `changes` (see `changes`) with the
    /// shard's index, `0..`[`Engine::shards_for`]`(&cfg)`.
    pub fn with_changes(
        cfg: EngineConfig,
        clock: Arc<dyn Clock>,
        changes: Option<Arc<dyn Changes>>,
    ) -> Engine {
        let n = cfg.shards.max(1).next_power_of_two();
        let tick_ms = cfg.tick_ms.clamp(1, 1_000);
        let now = clock.now_ms();
        let scale = TickScale {
            origin_ms: now - now % tick_ms,
            tick_ms,
        };
        let active = Arc::new(AtomicUsize::new(0));
        let app_eff = cfg.application_policy.effective();
        Engine {
            shards: (0..n)
                .map(|i| {
                    let c = changes.as_ref().map(|c| (c.clone(), i));
                    ShardCell(RwLock::new(Shard::new(scale, app_eff, active.clone(), c)))
                })
                .collect(),
            mask: (n - 1) as u64,
            policies: RwLock::new(PolicyState::new(cfg.mode, cfg.application_policy)),
            clock,
            active,
            max_sessions: cfg.max_sessions,
            per_user: cfg
                .max_sessions_per_user
                .map(|m| (m.max(1), cfg.user_limit_action)),
            user_stripes: (0..64).map(|_| Mutex::new(())).collect(),
            stripe_hasher: DefaultHashBuilder::default(),
            tick_ms,
            cluster: cfg.cluster,
            stream_applied: std::sync::atomic::AtomicU64::new(0),
            marks: RwLock::new(marks::Marks::default()),
            has_marks: std::sync::atomic::AtomicBool::new(false),
            limit_evictions: Mutex::new(Evictions::default()),
            capacity_reaped_tick: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// A cluster node's last applied stream sequence (0: not a cluster node, or nothing yet).
    pub fn stream_applied(&self) -> u64 {
        self.stream_applied.load(Ordering::Acquire)
    }

    /// Records the stream sequence applied (the cluster's consumer, or a snapshot at start).
    pub fn set_stream_applied(&self, seq: u64) {
        self.stream_applied.fetch_max(seq, Ordering::AcqRel);
    }

    /// The shard count [`Engine::new`] makes of `cfg.shards`.
    pub fn shards_for(cfg: &EngineConfig) -> usize {
        cfg.shards.max(1).next_power_of_two()
    }

    /// The clock this engine reads.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Wheel tick in milliseconds.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Live sessions (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn shard(&self, id: SessionId) -> &RwLock<Shard> {
        &self.shards[(id.shard_bits() & self.mask) as usize]
    }

    /// Creates a session for `new.user_id` (and org), honouring the limits, at the clock's
    /// `now`, or at the time of a later "not before" mark of its user or org (`marks`,
    /// invariant 5).
    pub fn create(&self, new: NewSession) -> Result<Created, EngineError> {
        check_id("user_id", &new.user_id)?;
        if let Some(org) = &new.org_id {
            check_id("org_id", org)?;
        }
        // Reserve a place (invariant 3); at the limit, once the wheels' due sessions are gone.
        let reserved = self.reserve() || (self.reap_at_capacity() > 0 && self.reserve());
        if !reserved {
            return Err(EngineError::Capacity {
                max: self.max_sessions,
            });
        }
        let result = self.create_reserved(new);
        if result.is_err() {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }

    /// Takes a place in `active` if there is one under `max_sessions` (invariant 3).
    fn reserve(&self) -> bool {
        if self.active.fetch_add(1, Ordering::Relaxed) >= self.max_sessions {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// At `max_sessions`: evicts what every wheel holds due now, the reaper's own work
    /// (`advance_shard`, in batches), at most once per tick whatever the number of creates
    /// refused meanwhile (invariant 6). Returns how many it evicted.
    fn reap_at_capacity(&self) -> u64 {
        let now = self.clock.now_ms();
        let tick = now / self.tick_ms;
        if self.capacity_reaped_tick.swap(tick, Ordering::AcqRel) == tick {
            return 0;
        }
        let mut ev = Evictions::default();
        for i in 0..self.shards.len() {
            loop {
                let (e, more) = self.advance_shard(i, REAP_BATCH, &mut |_, _| {});
                ev.merge(e);
                if !more {
                    break;
                }
            }
        }
        self.limit_evictions.lock().merge(ev);
        ev.total()
    }

    fn create_reserved(&self, new: NewSession) -> Result<Created, EngineError> {
        let stripe = self.per_user.map(|_| {
            let h = self.stripe_hasher.hash_one(new.user_id.as_str()) as usize;
            self.user_stripes[h % self.user_stripes.len()].lock()
        });
        let mut displaced = 0;
        if let Some((max, action)) = self.per_user {
            let user = new.user_id.as_str();
            let now = self.clock.now_ms();
            let (mut count, expired) = self
                .shards
                .iter()
                .map(|s| s.read().count_user(user, now))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
            if count >= max && expired > 0 {
                // Only live sessions count (invariant 6): evict the user's expired ones first,
                // as the wheel would.
                let mut ev = Evictions::default();
                for s in self.shards.iter() {
                    if s.read().count_user(user, now).1 > 0 {
                        ev.merge(s.write().evict_expired_of_user(user, now));
                    }
                }
                count = count.saturating_sub(ev.total() as usize);
                self.limit_evictions.lock().merge(ev);
            }
            while count >= max {
                match action {
                    UserLimitAction::Refuse => return Err(EngineError::UserLimit { max }),
                    UserLimitAction::EvictOldest => {
                        let oldest = self
                            .shards
                            .iter()
                            .filter_map(|s| s.read().oldest_of_user(user, now))
                            .min();
                        match oldest {
                            Some((_, id))
                                if self
                                    .shard(id)
                                    .write()
                                    .remove_id(id, RemoveReason::Displaced) =>
                            {
                                displaced += 1;
                            }
                            _ => {}
                        }
                        count -= 1;
                    }
                }
            }
        }
        let token = Token::generate().map_err(EngineError::Rng)?;
        let id = token.id();
        let now = self.clock.now_ms();
        let metadata = new.metadata.filter(|m| !m.is_empty()).map(Arc::new);
        let policies = self.policies.read();
        let mut shard = self.shard(id).write();
        // Never older than a mark of its user or org, read under the shard's lock (`marks`,
        // invariant 5).
        let created_ms = self
            .not_before(&new.user_id, new.org_id.as_deref())
            .map_or(now, |mark| mark.max(now));
        let session = shard.insert(
            NewRecord {
                id,
                user: &new.user_id,
                org: new.org_id.as_deref(),
                metadata,
                created_ms,
                last_ms: created_ms,
            },
            || policies.effective(new.org_id.as_deref()).effective(),
        );
        drop(shard);
        drop(policies);
        drop(stripe);
        Ok(Created {
            token,
            session,
            displaced,
        })
    }

    /// Whether `token` names a live, unexpired session. No side effect.
    #[inline]
    pub fn validate(&self, token: impl AsRef<[u8]>) -> Validation {
        outcome(self.validate_with(token, |s, _| s.to_view()))
    }

    /// [`Engine::validate`], handing `f` the session borrowed from the table, and the instant
    /// it was checked at, under the shard's read lock (keep `f` short: writers of that shard
    /// wait for it) instead of a [`SessionView`] copied out and dropped again.
    #[inline]
    pub fn validate_with<R>(
        &self,
        token: impl AsRef<[u8]>,
        f: impl FnOnce(&SessionRef<'_>, u64) -> R,
    ) -> Result<R, Invalid> {
        self.lookup(token, |shard, id, now| {
            shard.validate_with(id, now, |s| f(s, now))
        })
    }

    /// Records activity on `token`'s session and returns its deadlines after it; an expired
    /// session is refused, never revived.
    #[inline]
    pub fn touch(&self, token: impl AsRef<[u8]>) -> Validation {
        outcome(self.touch_with(token, |s, _| s.to_view()))
    }

    /// [`Engine::touch`], handing `f` the session as [`Engine::validate_with`] does.
    #[inline]
    pub fn touch_with<R>(
        &self,
        token: impl AsRef<[u8]>,
        f: impl FnOnce(&SessionRef<'_>, u64) -> R,
    ) -> Result<R, Invalid> {
        self.lookup(token, |shard, id, now| {
            shard.touch_with(id, now, |s| f(s, now))
        })
    }

    /// [`Engine::touch`] for forward-auth, which needs only who the session is: `f` sees it
    /// borrowed from the table, under the shard's read lock (so keep `f` short: writers of that
    /// shard wait for it), instead of a [`SessionView`] copied out and dropped again.
    #[inline]
    pub fn touch_identity<R>(
        &self,
        token: impl AsRef<[u8]>,
        f: impl FnOnce(&Identity<'_>) -> R,
    ) -> Result<R, Invalid> {
        self.lookup(token, |shard, id, now| shard.touch_identity(id, now, f))
    }

    /// What validate and touch share: the token's id (or `Malformed`), the clock, and `op` on
    /// the id's shard under its read lock.
    #[inline]
    fn lookup<R>(
        &self,
        token: impl AsRef<[u8]>,
        op: impl FnOnce(&Shard, SessionId, u64) -> Result<R, Option<ExpiryReason>>,
    ) -> Result<R, Invalid> {
        let Some(id) = SessionId::from_token(token) else {
            return Err(Invalid::Malformed);
        };
        let now = self.clock.now_ms();
        op(&self.shard(id).read(), id, now).map_err(invalid)
    }

    /// Ends `token`'s session; false if there was none here (see [`Engine::revoke_id`]).
    pub fn revoke(&self, token: impl AsRef<[u8]>) -> bool {
        SessionId::from_token(token).is_some_and(|id| self.revoke_id(id))
    }

    /// The session `id` if it is still in the table (expired-but-unswept ones included, with
    /// deadlines that show it).
    pub fn get(&self, id: SessionId) -> Option<SessionView> {
        self.shard(id).read().get(id)
    }

    /// Whether session `id` is in the table (expired-but-unswept ones included).
    pub fn holds(&self, id: SessionId) -> bool {
        self.shard(id).read().holds(id)
    }

    /// Ends session `id`; false if there was none here. On a cluster node the revocation is
    /// reported even then (invariant 7).
    pub fn revoke_id(&self, id: SessionId) -> bool {
        let mut shard = self.shard(id).write();
        let removed = shard.remove_id(id, RemoveReason::Revoked);
        if !removed && self.cluster {
            shard.report_revoked_elsewhere(id);
        }
        removed
    }

    /// `user`'s sessions, oldest first. Costs one lookup per shard plus the user's sessions.
    pub fn list_user(&self, user: &str) -> Vec<SessionView> {
        let mut all: Vec<SessionView> = self
            .shards
            .iter()
            .flat_map(|s| s.read().user_sessions(user))
            .collect();
        all.sort_by_key(|v| (v.created_at_ms, v.id));
        all
    }

    /// Ends all of `user`'s sessions; returns how many.
    pub fn revoke_user(&self, user: &str) -> usize {
        self.revoke_marked(crate::session::Scope::User, user, || {
            self.shards
                .iter()
                .map(|s| s.write().revoke_user(user))
                .sum()
        })
    }

    /// Ends all of `org`'s sessions; returns how many.
    pub fn revoke_org(&self, org: &str) -> usize {
        self.revoke_marked(crate::session::Scope::Org, org, || {
            self.shards.iter().map(|s| s.write().revoke_org(org)).sum()
        })
    }

    /// Removes every session already expired at the clock's `now` by checking each one's
    /// deadline (a full walk, not the wheel: restored sessions were filed in a wheel whose
    /// clock has only just started). Start-up uses it once replay is done.
    pub fn sweep_expired(&self) -> Evictions {
        let now = self.clock.now_ms();
        let mut total = Evictions::default();
        for s in self.shards.iter() {
            total.merge(s.write().sweep_expired(now));
        }
        total
    }

    /// Evicts every session due at the clock's `now` (all shards, no batch limit); for tests and
    /// tools. The daemon's reaper uses [`Engine::advance_shard`].
    pub fn advance(&self) -> Evictions {
        let mut total = Evictions::default();
        for i in 0..self.shards.len() {
            loop {
                let (ev, more) = self.advance_shard(i, usize::MAX, &mut |_, _| {});
                total.merge(ev);
                if !more {
                    break;
                }
            }
        }
        total
    }

    /// Evicts up to `budget` due sessions of shard `i`, holding its lock only for that batch.
    /// Returns the evictions and whether more may be due. The clock is read under the lock, so
    /// no advance of a shard is ever at an instant before the previous one's unless the clock
    /// itself stepped back (the shard's invariant 7 tells one from the other by it).
    pub fn advance_shard(
        &self,
        i: usize,
        budget: usize,
        on_evict: &mut impl FnMut(ExpiryReason, u64),
    ) -> (Evictions, bool) {
        let mut shard = self.shards[i].write();
        shard.advance(self.clock.now_ms(), budget, on_evict)
    }

    /// The expired sessions creates have evicted at a limit since the last call (invariant 6),
    /// for the reaper to count with its own.
    pub fn take_limit_evictions(&self) -> Evictions {
        std::mem::take(&mut *self.limit_evictions.lock())
    }

    /// Checks every shard's invariants (tests only; O(n)).
    pub fn check(&self) {
        let mut n = 0;
        for s in self.shards.iter() {
            let mut s = s.write();
            s.check();
            n += s.len();
        }
        assert_eq!(n, self.len());
    }
}

#[inline]
fn outcome(r: Result<SessionView, Invalid>) -> Validation {
    match r {
        Ok(v) => Validation::Valid(v),
        Err(why) => Validation::Invalid(why),
    }
}

/// Why a lookup failed: not in the table, or past one of its deadlines.
#[inline]
fn invalid(why: Option<ExpiryReason>) -> Invalid {
    match why {
        None => Invalid::NotFound,
        Some(ExpiryReason::Idle) => Invalid::ExpiredIdle,
        Some(ExpiryReason::Absolute) => Invalid::ExpiredAbsolute,
    }
}

mod config;
mod marks;
mod policies;
mod saved;

pub use config::{EngineConfig, UserLimitAction, default_shards};
pub use policies::{DryRun, OrgChange, PolicyChange};
pub use saved::Replay;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
