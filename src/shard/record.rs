//! A session as a shard stores it: the 80-byte [`Record`] (user id inline up to 16 bytes, org
//! slot and flags packed in one word, the links of its user list, org list and wheel slot),
//! and the [`Slab`] that holds them with a free list.
//!
//! Invariants:
//! 1. A record is live iff its `org_flags` is not [`VACANT`]; free records form a list through
//!    `user_next`, headed by `Slab::free`.
//! 2. A record's user id is inline ([`InlineUser`]) unless [`LONG_USER_BIT`] is set, and then
//!    it is in the shard's `long_users` under the record's index; likewise [`METADATA_BIT`] and
//!    the shard's `metadata`.
//! 3. The record is 80 bytes on 64-bit targets (asserted at compile time): it is the table's
//!    memory per session.

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
    /// The user id if it fits in 16 bytes; else in the shard's `long_users` ([`LONG_USER_BIT`]).
    pub(super) user: InlineUser,
    /// Org slot in the low 30 bits, then [`METADATA_BIT`] and [`PERSISTENT_BIT`]; [`VACANT`]
    /// when free.
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

pub(super) const PERSISTENT_BIT: u32 = 1 << 31;
/// The record has an entry in the shard's `metadata` side table.
pub(super) const METADATA_BIT: u32 = 1 << 30;
/// The record's user id is longer than 16 bytes and lives in the shard's `long_users`.
pub(super) const LONG_USER_BIT: u32 = 1 << 29;
pub(super) const ORG_MASK: u32 = LONG_USER_BIT - 1;

/// A user id of at most 16 bytes kept in the record itself; `0xFF`, a byte that never occurs in
/// UTF-8, pads the rest. Typical ids (16-byte opaque ids, short names) need no allocation.
#[derive(Debug, Clone, Copy)]
pub(super) struct InlineUser([u8; 16]);

impl InlineUser {
    pub(super) const EMPTY: InlineUser = InlineUser([0xFF; 16]);

    pub(super) fn new(s: &str) -> Option<InlineUser> {
        let mut b = [0xFF; 16];
        b.get_mut(..s.len())?.copy_from_slice(s.as_bytes());
        Some(InlineUser(b))
    }

    pub(super) fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0xFF).unwrap_or(16);
        std::str::from_utf8(&self.0[..len]).expect("built from a str, cut at a char boundary")
    }
}

/// The user id of record `idx` (inline, or in the long-id side table).
#[inline]
pub(super) fn user_of<'a>(
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
    pub(super) fn org(&self) -> u32 {
        self.org_flags & ORG_MASK
    }

    pub(super) fn persistent(&self) -> bool {
        self.org_flags & PERSISTENT_BIT != 0
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
