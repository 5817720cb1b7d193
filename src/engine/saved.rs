//! Saved sessions in and out of the engine: start-up replay puts them back, a snapshot walks
//! them out. The format they are saved in is `persist`'s; this side knows only [`Saved`] and
//! [`SavedRef`].
//!
//! Invariants:
//! 1. Replay is not reported through the `changes` seam and ignores the limits: the sessions
//!    were admitted, and reported, once already.
//! 2. Replay is idempotent: a known id only moves its activity forward, activity and removal of
//!    an unknown id do nothing (see `shard`).
//! 3. A snapshot's walk holds one shard's **read** lock per chunk, so validate and touch never
//!    wait for it and a writer waits for one chunk at most.
//! 4. Start-up puts sessions back a shard's batch at a time ([`Engine::restore_in_shard`]):
//!    the replay threads then share no cache line per session (the policies' lock and the
//!    session count are touched once per batch), which made them bounce between cores.
//! 5. A batch is put back [`WARM`] sessions at a time, after reading the index entries of all
//!    of them ([`Shard::warm`]): their cache misses then overlap, where inserting one after
//!    the other waits for each in turn (start-up is bound by those misses).

use super::Engine;
use crate::policy::store::PolicyState;
use crate::session::{Saved, SavedRef};
use crate::shard::{NewRecord, Shard};
use crate::token::SessionId;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Sessions whose index entries are read together before they are put back (invariant 5).
const WARM: usize = 8;

/// One saved change of a session, to put back (start-up replay).
pub enum Replay {
    Create(Saved),
    Activity { id: u128, last_ms: u64 },
    Remove { id: u128 },
}

impl Engine {
    /// Puts a saved session back (start-up replay, another node's create; not reported, no
    /// limits: the sessions were admitted once). Returns whether it was new; false too for a
    /// session a "not before" mark revokes.
    pub fn restore(&self, mut saved: Saved) -> bool {
        let policies = self.policies.read();
        let new = self.put_back(
            &mut self.shard(SessionId(saved.id)).write(),
            &policies,
            &mut saved,
        );
        if new {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
        new
    }

    /// Puts back `items`, in order, every one a session of shard `i` ([`Engine::shard_of`]):
    /// the same as [`Engine::restore`], [`Engine::restore_activity`] and
    /// [`Engine::restore_remove`] one at a time, with the policies and the shard locked once
    /// and the shared session count updated once, not per session (invariant 4).
    pub fn restore_in_shard(&self, i: usize, mut items: Vec<Replay>) {
        let policies = self.policies.read();
        let mut shard = self.shards[i].write();
        let mut added = 0;
        // Read in place, a group at a time: copying each group out first cost two moves of
        // every entry.
        for group in items.chunks_mut(WARM) {
            for item in group.iter() {
                let (id, user) = match item {
                    Replay::Create(s) => (s.id, Some(s.user.as_str())),
                    Replay::Activity { id, .. } | Replay::Remove { id } => (*id, None),
                };
                shard.warm(SessionId(id), user);
            }
            for item in group.iter_mut() {
                match item {
                    Replay::Create(saved) => {
                        debug_assert_eq!(self.shard_of(SessionId(saved.id)), i);
                        added += usize::from(self.put_back(&mut shard, &policies, saved));
                    }
                    Replay::Activity { id, last_ms } => {
                        shard.restore_activity(SessionId(*id), *last_ms);
                    }
                    Replay::Remove { id } => {
                        // The shard counts a removal down itself: count the creates before it in.
                        self.active
                            .fetch_add(std::mem::take(&mut added), Ordering::Relaxed);
                        shard.restore_remove(SessionId(*id));
                    }
                }
            }
        }
        self.active.fetch_add(added, Ordering::Relaxed);
    }

    /// Puts `saved` back into its shard, held by the caller (taking its metadata), unless a
    /// "not before" mark revokes it (a user- or org-wide revocation made after it was
    /// created, `marks`); whether it was new. The caller counts it.
    fn put_back(&self, shard: &mut Shard, policies: &PolicyState, saved: &mut Saved) -> bool {
        if self.marked(&saved.user, saved.org.as_deref(), saved.created_ms) {
            return false;
        }
        let org = saved.org.as_deref();
        shard.restore(
            NewRecord {
                id: SessionId(saved.id),
                user: &saved.user,
                org,
                metadata: saved.metadata.take().map(Arc::new),
                created_ms: saved.created_ms,
                last_ms: saved.last_ms,
            },
            || policies.effective(org).effective(),
        )
    }

    /// Makes room for about `n` more sessions in shard `i` (start-up: each replay thread
    /// sizes its own shards' tables, in parallel).
    pub fn reserve_in_shard(&self, i: usize, n: usize) {
        self.shards[i].write().reserve(n);
    }

    /// The shard index of session `id` (start-up routes each shard's records to one thread).
    pub fn shard_of(&self, id: SessionId) -> usize {
        (id.shard_bits() & self.mask) as usize
    }

    /// Replays saved activity of session `id`.
    pub fn restore_activity(&self, id: SessionId, last_ms: u64) {
        self.shard(id).write().restore_activity(id, last_ms);
    }

    /// Replays a saved removal of session `id` (not reported).
    pub fn restore_remove(&self, id: SessionId) {
        self.shard(id).write().restore_remove(id);
    }

    /// Removes, unreported, every session created before `ms`: a cluster node whose saved state
    /// the stream no longer covers replaces it by a published snapshot. Returns how many.
    pub fn drop_made_before(&self, ms: u64) -> usize {
        let mut dropped = 0;
        for i in 0..self.shards.len() {
            let mut ids = Vec::new();
            let mut from = Some(0);
            while let Some(at) = from {
                from = self.visit_chunk(i, at, 4_096, &mut |s| {
                    if s.created_ms < ms {
                        ids.push(s.id);
                    }
                });
            }
            dropped += ids.len();
            for id in ids {
                self.restore_remove(SessionId(id));
            }
        }
        dropped
    }

    /// Hands `f` what is saved of each live session in a chunk of shard `i`, under its read
    /// lock (keep `f` short: that shard's writers wait for it). Returns where the next chunk
    /// starts, `None` at the end of the shard (see [`Shard::visit_chunk`]).
    pub fn visit_chunk(
        &self,
        i: usize,
        from: u32,
        max: usize,
        f: &mut impl FnMut(SavedRef<'_>),
    ) -> Option<u32> {
        self.shards[i].read().visit_chunk(from, max, f)
    }
}
