//! A session as a shard stores it: the 80-byte [`Record`] (16 user bytes, org slot, user code
//! and flags packed in one word, the links of its user list, org list and wheel slot), and the
//! [`Slab`] that holds them with a free list.
//!
//! Invariants:
//! 1. A record is live iff its `org_flags` is not [`VACANT`]; free records form a list through
//!    `user_next`, headed by `Slab::free`.
//! 2. A record's user id is said by its 6-bit user code (bits 24-29 of `org_flags`):
//!    [`USER_INLINE`], text of at most 16 bytes in `user`; [`USER_LONG`], text in the shard's
//!    `long_users` under the record's index; any other code `c`, a packed id whose value is
//!    `user` and whose shape is `c - USER_SHAPE0` in the shard's `shapes` (see `user_id`).
//!    Likewise [`METADATA_BIT`] and the shard's `metadata`.
//! 3. The record is 80 bytes on 64-bit targets (asserted at compile time): it is the table's
//!    memory per session.
//! 4. The org slot takes the low 24 bits: a shard holds fewer than 2^24 - 2 records
//!    (`id_index::MAX_RECORDS`), and an org slot lives only while it has one, so slots stay
//!    below `ORG_MASK` (= [`VACANT`]).
//! 5. A record keeps nothing that follows from its policy: its deadlines and whether it is
//!    persistent are its org slot's effective policy's, read at each look, so a policy change
//!    reaches them at once (a persistent bit set at insert went stale when the policy changed).

use super::user_id::{Shapes, UserText};
use crate::id_index;
use crate::wheel::{LinkStore, NIL, WheelLinks};
use std::sync::atomic::AtomicU64;

/// One session as stored (80 bytes on 64-bit targets).
#[derive(Debug)]
pub(super) struct Record {
    pub(super) id_lo: u64,
    pub(super) id_hi: u64,
    pub(super) created_ms: u64,
    /// Moved forward only (`fetch_max`), possibly under the read lock.
    pub(super) last_ms: AtomicU64,
    /// The user id as text if it fits in 16 bytes, or packed (invariant 2).
    pub(super) user: UserBytes,
    /// Org slot in the low 24 bits, the user code in the next 6, then [`METADATA_BIT`]; bit 31
    /// is unused (invariant 5); [`VACANT`] when free.
    pub(super) org_flags: u32,
    pub(super) user_next: u32,
    pub(super) user_prev: u32,
    pub(super) org_next: u32,
    pub(super) org_prev: u32,
    pub(super) wheel: WheelLinks,
}

// The record's size is the table's memory per session: a field that grows it must be a choice.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Record>() == 80);

/// The record has an entry in the shard's `metadata` side table.
pub(super) const METADATA_BIT: u32 = 1 << 30;
const USER_SHIFT: u32 = 24;
pub(super) const ORG_MASK: u32 = (1 << USER_SHIFT) - 1;
/// User code: text of at most 16 bytes inline.
pub(super) const USER_INLINE: u8 = 0;
/// User code: text in the shard's `long_users`.
pub(super) const USER_LONG: u8 = 1;
/// User code of shape 0; shape `k` is `USER_SHAPE0 + k`.
pub(super) const USER_SHAPE0: u8 = 2;

/// The record's 16 user bytes: text of at most 16 bytes, `0xFF` (a byte that never occurs in
/// UTF-8) padding the rest, or a packed id's value (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UserBytes([u8; 16]);

impl UserBytes {
    pub(super) const EMPTY: UserBytes = UserBytes([0xFF; 16]);

    pub(super) fn text(s: &str) -> Option<UserBytes> {
        let mut b = [0xFF; 16];
        b.get_mut(..s.len())?.copy_from_slice(s.as_bytes());
        Some(UserBytes(b))
    }

    pub(super) fn packed(value: u128) -> UserBytes {
        UserBytes(value.to_le_bytes())
    }

    #[inline]
    pub(super) fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0xFF).unwrap_or(16);
        std::str::from_utf8(&self.0[..len]).expect("built from a str, cut at a char boundary")
    }

    #[inline]
    pub(super) fn value(&self) -> u128 {
        u128::from_le_bytes(self.0)
    }
}

/// What a user list is keyed by: an id's text, or its packed form (shape code, value). A user's
/// records in one shard all have the same key (`lists`, invariant 1), so lists compare keys,
/// never unpacked text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UserKey<'a> {
    Text(&'a str),
    Packed(u8, u128),
}

impl UserKey<'_> {
    #[inline]
    pub(super) fn hash(&self, hasher: &impl std::hash::BuildHasher) -> u64 {
        match *self {
            UserKey::Text(s) => hasher.hash_one(s),
            UserKey::Packed(code, value) => hasher.hash_one((code, value)),
        }
    }
}

/// The user key of record `idx`.
#[inline]
pub(super) fn key_of<'a>(
    recs: &'a [Record],
    long: &'a hashbrown::HashMap<u32, Box<str>>,
    idx: u32,
) -> UserKey<'a> {
    let r = &recs[idx as usize];
    match r.user_code() {
        USER_INLINE => UserKey::Text(r.user.as_str()),
        USER_LONG => UserKey::Text(long.get(&idx).map_or("", |u| u)),
        code => UserKey::Packed(code, r.user.value()),
    }
}

/// The user id of record `idx` as text (inline, in the long-id side table, or unpacked on the
/// stack).
#[inline]
pub(super) fn user_of<'a>(
    recs: &'a [Record],
    long: &'a hashbrown::HashMap<u32, Box<str>>,
    shapes: &Shapes,
    idx: u32,
) -> UserText<'a> {
    let r = &recs[idx as usize];
    match r.user_code() {
        USER_INLINE => UserText::Str(r.user.as_str()),
        USER_LONG => UserText::Str(long.get(&idx).map_or("", |u| u)),
        code => shapes.unpack(code - USER_SHAPE0, r.user.value()),
    }
}
/// The (hash, index) of every live record but `except`, in slab order, for an id index rebuild.
pub(super) fn live_ids(recs: &[Record], except: u32) -> impl Iterator<Item = (u64, u32)> + '_ {
    recs.iter()
        .enumerate()
        .filter(move |&(i, r)| r.live() && i as u32 != except)
        .map(|(i, r)| (r.id_lo, i as u32))
}

/// `org_flags` of a free record.
pub(super) const VACANT: u32 = ORG_MASK;

impl Record {
    pub(super) fn vacant(next_free: u32) -> Record {
        Record {
            id_lo: 0,
            id_hi: 0,
            created_ms: 0,
            last_ms: AtomicU64::new(0),
            user: UserBytes::EMPTY,
            org_flags: VACANT,
            user_next: next_free,
            user_prev: NIL,
            org_next: NIL,
            org_prev: NIL,
            wheel: WheelLinks::default(),
        }
    }

    #[inline]
    pub(super) fn org(&self) -> u32 {
        self.org_flags & ORG_MASK
    }

    /// The user code (invariant 2).
    #[inline]
    pub(super) fn user_code(&self) -> u8 {
        ((self.org_flags >> USER_SHIFT) & 0x3F) as u8
    }

    /// `org_flags` of a live record (invariants 2, 4).
    pub(super) fn flags(org: u32, user_code: u8, metadata: bool) -> u32 {
        assert!(org < ORG_MASK, "org slot {org} out of range");
        debug_assert!(user_code < 64);
        org | (u32::from(user_code) << USER_SHIFT) | if metadata { METADATA_BIT } else { 0 }
    }

    pub(super) fn has_metadata(&self) -> bool {
        self.org_flags & METADATA_BIT != 0
    }

    pub(super) fn live(&self) -> bool {
        self.org_flags != VACANT
    }

    pub(super) fn id(&self) -> u128 {
        (u128::from(self.id_hi) << 64) | u128::from(self.id_lo)
    }
}

pub(super) struct Slab {
    pub(super) records: Vec<Record>,
    pub(super) free: u32,
}

impl LinkStore for Slab {
    #[inline]
    fn links(&mut self, idx: u32) -> &mut WheelLinks {
        &mut self.records[idx as usize].wheel
    }
}

impl Slab {
    pub(super) fn alloc(&mut self) -> u32 {
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

    pub(super) fn release(&mut self, idx: u32) {
        self.records[idx as usize] = Record::vacant(self.free);
        self.free = idx;
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
            assert_eq!(UserBytes::text(u).unwrap().as_str(), u);
        }
        assert!(UserBytes::text("seventeen-bytes-x").is_none());
        assert_eq!(UserBytes::packed(u128::MAX - 7).value(), u128::MAX - 7);
    }

    #[test]
    fn flags_keep_their_fields_apart() {
        for (org, code, m) in [(0, 0, false), (ORG_MASK - 1, 63, true)] {
            let mut r = Record::vacant(NIL);
            r.org_flags = Record::flags(org, code, m);
            assert!(r.live());
            assert_eq!((r.org(), r.user_code(), r.has_metadata()), (org, code, m));
        }
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
