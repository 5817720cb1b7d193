//! The shard's lookups, all under its **read** lock: get, validate, touch (each also in a form
//! that lends the session to a closure instead of copying it out, and the forward-auth touch
//! that lends only who the session is), and the snapshot's walk.
//!
//! Invariants:
//! 1. Nothing here takes the write lock or moves a record: touch moves only `last_ms`, with an
//!    atomic `fetch_max`, so validate and touch of one shard never wait for one another (the
//!    shard's invariant 2: the wheel position stays no later than the true deadline).
//! 2. Validate and touch compare `now` with the exact deadline and refuse a session past one;
//!    a touch never revives it (the shard's invariant 3).
//! 3. A touch reports activity through the `changes` seam only when it crosses into a new
//!    second, so the reported time is less than 1 s behind (`changes`, invariant 2).
//! 4. The snapshot's walk hands out only live records, each as it is at that moment, and never
//!    holds the lock past one chunk.
//! 5. A packed user id is unpacked only to answer (the view, the identity, the snapshot's
//!    walk), on the stack: nothing here allocates for it.

use super::record::user_of;
use super::user_id::UserText;
use super::{NO_ORG, Shard};
use crate::changes::Change;
use crate::session::{Deadlines, ExpiryReason, Identity, SavedRef, SessionRef, SessionView};
use crate::token::SessionId;
use std::sync::atomic::Ordering;

impl Shard {
    pub(super) fn view_with(&self, idx: u32, last_ms: u64, d: &Deadlines) -> SessionView {
        self.with_ref(idx, last_ms, d, |s| s.to_view())
    }

    /// Hands `f` record `idx` borrowed (invariant 5: a packed user id unpacked on the stack).
    #[inline]
    fn with_ref<R>(
        &self,
        idx: u32,
        last_ms: u64,
        d: &Deadlines,
        f: impl FnOnce(&SessionRef<'_>) -> R,
    ) -> R {
        let r = &self.slab.records[idx as usize];
        let org = r.org();
        let user = self.user_text(idx);
        f(&SessionRef {
            id: SessionId(r.id()),
            user_id: &user,
            org_id: (org != NO_ORG).then(|| self.org_slot(org).name.as_str()),
            created_at_ms: r.created_ms,
            last_activity_at_ms: last_ms,
            idle_expires_at_ms: d.idle,
            absolute_expires_at_ms: d.absolute,
            expires_at_ms: d.expires,
            persistent: self.org_eff(r).persistent,
            metadata: if r.has_metadata() {
                self.metadata.get(&idx)
            } else {
                None
            },
        })
    }

    /// Record `idx`'s user id as text (unpacked on the stack if packed).
    #[inline]
    pub(super) fn user_text(&self, idx: u32) -> UserText<'_> {
        user_of(&self.slab.records, &self.long_users, &self.shapes, idx)
    }

    pub(super) fn view(&self, idx: u32) -> SessionView {
        let last = self.slab.records[idx as usize]
            .last_ms
            .load(Ordering::Relaxed);
        self.view_with(idx, last, &self.deadlines(idx))
    }

    /// Whether session `id`, expired or not, is still in the table.
    pub fn holds(&self, id: SessionId) -> bool {
        self.find(id).is_some()
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
        self.validate_with(id, now_ms, |s| s.to_view())
    }

    /// [`Shard::validate`], handing `f` the session borrowed from the table instead of a copy.
    #[inline]
    pub fn validate_with<R>(
        &self,
        id: SessionId,
        now_ms: u64,
        f: impl FnOnce(&SessionRef<'_>) -> R,
    ) -> Result<R, Option<ExpiryReason>> {
        let idx = self.find(id).ok_or(None)?;
        let d = self.deadlines(idx);
        if let Some(reason) = d.expired(now_ms) {
            return Err(Some(reason));
        }
        let last = self.slab.records[idx as usize]
            .last_ms
            .load(Ordering::Relaxed);
        Ok(self.with_ref(idx, last, &d, f))
    }

    /// Records activity at `now_ms` unless the session is already expired (invariants 2, 3).
    #[inline]
    pub fn touch(&self, id: SessionId, now_ms: u64) -> Result<SessionView, Option<ExpiryReason>> {
        self.touch_with(id, now_ms, |s| s.to_view())
    }

    /// [`Shard::touch`], handing `f` the session borrowed from the table instead of a copy.
    #[inline]
    pub fn touch_with<R>(
        &self,
        id: SessionId,
        now_ms: u64,
        f: impl FnOnce(&SessionRef<'_>) -> R,
    ) -> Result<R, Option<ExpiryReason>> {
        let (idx, last, d) = self.touch_at(id, now_ms)?;
        Ok(self.with_ref(idx, last, &d, f))
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
        let user = self.user_text(idx);
        Ok(f(&Identity {
            id,
            user_id: &user,
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
                    prev_ms: prev,
                    idle_ms: eff.idle_ms,
                },
            );
        }
        Ok((idx, last, Deadlines::compute(eff, r.created_ms, last)))
    }

    /// Whether `id` is present.
    pub fn contains(&self, id: SessionId) -> bool {
        self.find(id).is_some()
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
            let user = user_of(recs, &self.long_users, &self.shapes, idx as u32);
            f(SavedRef {
                id: r.id(),
                created_ms: r.created_ms,
                last_ms: r.last_ms.load(Ordering::Relaxed),
                user: &user,
                org,
                metadata,
            });
        }
        (end < recs.len()).then_some(end as u32)
    }
}
