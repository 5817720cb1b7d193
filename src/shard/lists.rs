//! The shard's user and org lists: every live record is in exactly one user list (headed in
//! `users`, by the user id's hash) and one org list (headed in its [`OrgSlot`]; slot 0 is "no
//! org"), doubly linked through the record, so a user's or an org's sessions are found, counted
//! and revoked without a scan.
//!
//! Invariants:
//! 1. A user list's head is in `users`; the list holds exactly that user's live records, and
//!    they all hold the user id in the same form (text, or packed with the same shape), so a
//!    list is found by its key ([`UserKey`]: text, or shape code and value) and a lookup
//!    compares keys, never unpacked text. A new record takes the form of its user's list when
//!    there is one, else packs when its shape is in the table or has room (`user_id`).
//! 2. An org slot lives while it has sessions (slot 0 always); `org_index` finds it by name, and
//!    a freed slot goes to `org_free` for reuse. `len` is the length of its list.
//! 3. The lists are changed only under the shard's write lock, at insert and removal.
//! 4. What the per-user limit asks of a user's list tells live sessions from expired ones at
//!    the `now` it is given: [`Shard::count_user`] counts both, [`Shard::evict_expired_of_user`]
//!    evicts the expired ones as the wheel would (reported as idle or absolute removals), and
//!    [`Shard::oldest_of_user`] picks among the live ones only.

use super::record::{USER_INLINE, USER_LONG, USER_SHAPE0, UserBytes, UserKey, key_of};
use super::user_id::pack;
use super::{Evictions, NO_ORG, Shard};
use crate::policy::Effective;
use crate::session::{RemoveReason, Scope, SessionView};
use crate::token::SessionId;
use crate::wheel::NIL;
use compact_str::CompactString;
use std::hash::BuildHasher;

pub(super) struct OrgSlot {
    pub(super) name: CompactString,
    pub(super) head: u32,
    pub(super) len: u32,
    pub(super) eff: Effective,
}

impl Shard {
    pub(super) fn hash_str(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    pub(super) fn org_slot_or_insert(
        &mut self,
        name: &str,
        eff_for: impl FnOnce() -> Effective,
    ) -> u32 {
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

    pub(super) fn find_org(&self, name: &str) -> Option<u32> {
        let h = self.hash_str(name);
        let orgs = &self.orgs;
        self.org_index
            .find(h, |&s| {
                orgs[s as usize].as_ref().is_some_and(|o| o.name == name)
            })
            .copied()
    }

    /// The user code and bytes a new record of `user` gets (invariant 1): inline text up to 16
    /// bytes; else the form of the user's list if it has one; else packed if it packs and its
    /// shape is in the table or fits in it; else text in `long_users`.
    pub(super) fn user_form(&mut self, user: &str) -> (u8, UserBytes) {
        if let Some(b) = UserBytes::text(user) {
            return (USER_INLINE, b);
        }
        let long = (USER_LONG, UserBytes::EMPTY);
        let Some(p) = pack(user) else {
            return long;
        };
        let packed = |code: u8| (USER_SHAPE0 + code, UserBytes::packed(p.value));
        if let Some(code) = self.shapes.find(&p) {
            if self.head_of(UserKey::Packed(USER_SHAPE0 + code, p.value)) != NIL
                || self.head_of(UserKey::Text(user)) == NIL
            {
                return packed(code);
            }
            return long;
        }
        if self.head_of(UserKey::Text(user)) != NIL {
            return long;
        }
        self.shapes.intern(&p).map_or(long, packed)
    }

    /// Reads the index entries a replayed session `id` of `user` will touch, and nothing
    /// else: start-up calls it for a group of sessions before putting them back, so that the
    /// group's cache misses overlap instead of coming one after the other.
    pub(crate) fn warm(&self, id: SessionId, user: Option<&str>) {
        std::hint::black_box(self.find(id));
        let Some(user) = user else { return };
        let key = match UserBytes::text(user) {
            Some(_) => UserKey::Text(user),
            None => match pack(user).and_then(|p| Some((self.shapes.find(&p)?, p.value))) {
                Some((code, value)) => UserKey::Packed(USER_SHAPE0 + code, value),
                None => UserKey::Text(user),
            },
        };
        std::hint::black_box(self.head_of(key));
    }

    fn head_of(&self, key: UserKey<'_>) -> u32 {
        let (recs, long) = (&self.slab.records, &self.long_users);
        self.users
            .find(key.hash(&self.hasher), |&head| {
                key_of(recs, long, head) == key
            })
            .copied()
            .unwrap_or(NIL)
    }

    pub(super) fn link_user(&mut self, idx: u32) {
        let (recs, long) = (&self.slab.records, &self.long_users);
        let key = key_of(recs, long, idx);
        let h = key.hash(&self.hasher);
        match self
            .users
            .find_mut(h, |&head| key_of(recs, long, head) == key)
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
                    .insert_unique(h, idx, |&i| key_of(recs, long, i).hash(hasher));
            }
        }
    }

    pub(super) fn unlink_user(&mut self, idx: u32) {
        let (next, prev) = {
            let r = &self.slab.records[idx as usize];
            (r.user_next, r.user_prev)
        };
        if prev != NIL {
            self.slab.records[prev as usize].user_next = next;
        } else {
            let h = key_of(&self.slab.records, &self.long_users, idx).hash(&self.hasher);
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

    pub(super) fn link_org(&mut self, idx: u32, slot: u32) {
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

    pub(super) fn unlink_org(&mut self, idx: u32) {
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

    /// The head of `user`'s list: under its packed key if its shape is in the table, else (or
    /// if not found there) under its text (invariant 1).
    pub(super) fn user_head(&self, user: &str) -> u32 {
        if user.len() > 16
            && let Some(p) = pack(user)
            && let Some(code) = self.shapes.find(&p)
        {
            let head = self.head_of(UserKey::Packed(USER_SHAPE0 + code, p.value));
            if head != NIL {
                return head;
            }
        }
        self.head_of(UserKey::Text(user))
    }

    pub(super) fn user_indices(&self, user: &str) -> Vec<u32> {
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

    /// How many sessions `user` has in this shard, and how many of those are expired at
    /// `now_ms` (not yet swept).
    pub fn count_user(&self, user: &str, now_ms: u64) -> (usize, usize) {
        let idxs = self.user_indices(user);
        let expired = idxs
            .iter()
            .filter(|&&i| self.deadlines(i).expired(now_ms).is_some())
            .count();
        (idxs.len(), expired)
    }

    /// Evicts `user`'s sessions in this shard that are expired at `now_ms`, as the wheel would
    /// (each reported as an idle or absolute removal, invariant 4); returns them by reason.
    pub fn evict_expired_of_user(&mut self, user: &str, now_ms: u64) -> Evictions {
        let mut ev = Evictions::default();
        for i in self.user_indices(user) {
            if let Some(reason) = self.deadlines(i).expired(now_ms) {
                self.remove(i, reason.into());
                ev.add(reason);
            }
        }
        ev
    }

    /// `(created_at, id)` of `user`'s oldest session in this shard that is live at `now_ms`
    /// (an expired one is never displaced in place of a live one, invariant 4).
    pub fn oldest_of_user(&self, user: &str, now_ms: u64) -> Option<(u64, SessionId)> {
        self.user_indices(user)
            .into_iter()
            .filter(|&i| self.deadlines(i).expired(now_ms).is_none())
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

    pub(super) fn org_indices(&self, slot: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = self.orgs[slot as usize].as_ref().map_or(NIL, |o| o.head);
        while cur != NIL {
            out.push(cur);
            cur = self.slab.records[cur as usize].org_next;
        }
        out
    }

    /// Removes, without reporting them, `user`'s (`Scope::User`) or `org`'s sessions in this
    /// shard created before `before_ms`: another node's "not before" mark (`changes`,
    /// invariant 6). Returns how many.
    pub fn drop_before(&mut self, scope: Scope, id: &str, before_ms: u64) -> usize {
        let idxs = match scope {
            Scope::User => self.user_indices(id),
            Scope::Org => match self.find_org(id) {
                Some(slot) => self.org_indices(slot),
                None => return 0,
            },
        };
        let mut n = 0;
        for i in idxs {
            if self.slab.records[i as usize].created_ms < before_ms {
                self.unlink_and_free(i);
                n += 1;
            }
        }
        n
    }

    /// Reports a user- or org-wide revocation's mark (`changes`, invariant 6).
    pub fn report_not_before(&self, scope: Scope, id: &str, before_ms: u64) {
        if let Some((c, i)) = &self.changes {
            c.record(
                *i,
                crate::changes::Change::NotBefore {
                    scope,
                    id,
                    before_ms,
                },
            );
        }
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
}
