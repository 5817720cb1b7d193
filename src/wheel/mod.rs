//! A hierarchical timer wheel whose entries are records of a slab, linked by `u32` index.
//!
//! The wheel does not own entries: each record embeds a [`WheelLinks`] and the wheel reaches it
//! through a [`LinkStore`] (the shard's slab). It never allocates after construction. Where an
//! entry is filed (6 levels x 64 slots, the tick scale) is `slots.rs`; this file holds the
//! operations; `tests.rs` drives them through a harness that re-files as the shard does.
//!
//! When a slot at level > 0 comes due, its entries are handed back by [`Wheel::poll`]; the
//! caller knows each entry's true deadline and either expires it or files it again (cascading
//! to a lower level). The wheel itself stores no deadline: an entry's slot is its only position.
//!
//! Invariants (checked by `debug_assert!`, by [`Wheel::check`] and by the tests):
//! 1. Every slot strictly before `elapsed` has been processed: no entry sits in a slot whose
//!    deadline is `<= elapsed` except in the `pending` list.
//! 2. `occupied[level]` bit `s` is set iff `heads[level][s] != NIL`.
//! 3. An entry is in exactly one list (a slot or `pending`) iff its `level != UNLINKED`, and its
//!    `level`/`slot` name that list, so [`Wheel::remove`] is O(1).
//! 4. `when` is clamped into `elapsed + 1 ..= elapsed + MAX_AHEAD_TICKS`: an entry never lands in
//!    the slot being processed, and never more than 63 top-level slots ahead (no wrap onto the
//!    current slot). An entry clamped down simply fires early and is filed again by the caller.
//!    One clamped up (a `when` at or before `elapsed`) fires at `elapsed + 1`: on time only if
//!    the caller's clock is not behind `elapsed`, which the wheel cannot see; the caller keeps it
//!    so (after a backward clock step the shard moves its scale, `shard` invariant 7).
//! 5. A slot's deadline is never later than the `when` of any entry filed in it, so an entry is
//!    never handed back after its `when` has passed by more than the caller's polling delay.
//! 6. On one scale, a deadline's tick never comes due before the deadline ([`TickScale`],
//!    `slots` invariant 3). The shard only ever moves its scale's origin back (`shard`
//!    invariant 7), so an entry filed on an older scale comes due early, never late; its
//!    caller re-checks the real deadline either way.

mod slots;

pub use slots::{LEVELS, MAX_AHEAD_TICKS, TickScale};
use slots::{SLOTS, level_for, slot_for, slot_span};

/// "No entry" in a link.
pub const NIL: u32 = u32::MAX;
/// `level` value of an entry that is in no list.
pub const UNLINKED: u8 = u8::MAX;
/// `level` value of an entry that sits in the pending (due) list.
const PENDING: u8 = u8::MAX - 1;

/// The wheel's part of a record: intrusive doubly-linked list pointers and the list it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelLinks {
    pub next: u32,
    pub prev: u32,
    pub level: u8,
    pub slot: u8,
}

impl Default for WheelLinks {
    fn default() -> Self {
        WheelLinks {
            next: NIL,
            prev: NIL,
            level: UNLINKED,
            slot: 0,
        }
    }
}

impl WheelLinks {
    /// Whether the entry is in the wheel (a slot or the pending list).
    pub fn is_linked(&self) -> bool {
        self.level != UNLINKED
    }
}

/// Access to the links embedded in the slab's records.
pub trait LinkStore {
    fn links(&mut self, idx: u32) -> &mut WheelLinks;
}

impl LinkStore for Vec<WheelLinks> {
    fn links(&mut self, idx: u32) -> &mut WheelLinks {
        &mut self[idx as usize]
    }
}

/// One shard's timer wheel. See the module doc for its invariants.
#[derive(Debug)]
pub struct Wheel {
    /// Ticks processed so far (invariant 1).
    elapsed: u64,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Entries whose slot came due but that the caller has not taken yet.
    pending: u32,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Self::new()
    }
}

impl Wheel {
    /// An empty wheel at tick 0.
    pub fn new() -> Self {
        Wheel {
            elapsed: 0,
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            pending: NIL,
            len: 0,
        }
    }

    /// Ticks processed so far.
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Entries in the wheel, pending ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the wheel holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Files entry `idx` (which must be unlinked) to come due at tick `when` (clamped, see
    /// invariant 4).
    pub fn insert(&mut self, store: &mut impl LinkStore, idx: u32, when: u64) {
        debug_assert!(!store.links(idx).is_linked(), "entry {idx} inserted twice");
        let when = when.clamp(self.elapsed + 1, self.elapsed + MAX_AHEAD_TICKS);
        let level = level_for(self.elapsed, when);
        let slot = slot_for(when, level);
        debug_assert!(
            self.slot_deadline(level, slot) <= when
                && self.slot_deadline(level, slot) > self.elapsed,
            "entry {idx} when={when} filed at level {level} slot {slot} due {} (elapsed {})",
            self.slot_deadline(level, slot),
            self.elapsed
        );
        let head = self.heads[level][slot];
        {
            let l = store.links(idx);
            l.next = head;
            l.prev = NIL;
            l.level = level as u8;
            l.slot = slot as u8;
        }
        if head != NIL {
            store.links(head).prev = idx;
        }
        self.heads[level][slot] = idx;
        self.occupied[level] |= 1 << slot;
        self.len += 1;
    }

    /// Takes entry `idx` out of whatever list it is in; a no-op if it is unlinked.
    pub fn remove(&mut self, store: &mut impl LinkStore, idx: u32) {
        let WheelLinks {
            next,
            prev,
            level,
            slot,
        } = *store.links(idx);
        if level == UNLINKED {
            return;
        }
        if prev != NIL {
            store.links(prev).next = next;
        } else if level == PENDING {
            debug_assert_eq!(self.pending, idx);
            self.pending = next;
        } else {
            let (level, slot) = (level as usize, slot as usize);
            debug_assert_eq!(self.heads[level][slot], idx);
            self.heads[level][slot] = next;
            if next == NIL {
                self.occupied[level] &= !(1 << slot);
            }
        }
        if next != NIL {
            store.links(next).prev = prev;
        }
        *store.links(idx) = WheelLinks::default();
        self.len -= 1;
    }

    /// Hands back, one at a time and unlinked, every entry whose slot is due at `now_tick`.
    ///
    /// An entry handed back is either truly due or was cascaded from a higher level; the caller
    /// compares its real deadline and expires it or [`Wheel::insert`]s it again. Ticks are
    /// processed in order, so a clock that jumped days ahead costs one step per occupied slot,
    /// not per tick. A `now_tick` before `elapsed` (clock stepped back) fires nothing new; the
    /// shard never passes one, having moved its scale first (invariant 4).
    pub fn poll(&mut self, store: &mut impl LinkStore, now_tick: u64) -> Option<u32> {
        loop {
            if self.pending != NIL {
                let idx = self.pending;
                self.remove(store, idx);
                return Some(idx);
            }
            match self.next_expiration() {
                Some((level, slot, deadline)) if deadline <= now_tick => {
                    self.take_slot(store, level, slot);
                    debug_assert!(deadline >= self.elapsed);
                    self.elapsed = deadline;
                }
                _ => {
                    self.elapsed = self.elapsed.max(now_tick);
                    return None;
                }
            }
        }
    }

    /// The earliest occupied slot at or after `elapsed`, with its deadline tick.
    pub fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            if self.occupied[level] == 0 {
                continue;
            }
            let now_slot = (self.elapsed / slot_span(level)) as u32;
            let rotated = self.occupied[level].rotate_right(now_slot % SLOTS as u32);
            let slot = (rotated.trailing_zeros() as usize + now_slot as usize) % SLOTS;
            let deadline = self.slot_deadline(level, slot);
            debug_assert!(
                (level + 1..LEVELS)
                    .all(|l| self.occupied[l] == 0 || self.first_deadline_at(l) >= deadline),
                "a higher level fires before level {level}"
            );
            return Some((level, slot, deadline));
        }
        None
    }

    fn first_deadline_at(&self, level: usize) -> u64 {
        (0..SLOTS)
            .filter(|s| self.occupied[level] & (1 << s) != 0)
            .map(|s| self.slot_deadline(level, s))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The tick at which `slot` of `level` is next due, counting from `elapsed`.
    fn slot_deadline(&self, level: usize, slot: usize) -> u64 {
        let level_span = slot_span(level) * SLOTS as u64;
        let level_start = self.elapsed & !(level_span - 1);
        let mut deadline = level_start + slot as u64 * slot_span(level);
        if deadline <= self.elapsed && level > 0 {
            // The slot is in the next rotation of this level; only the top level can hold such
            // entries (invariant 4 keeps lower levels within the current rotation) but a
            // not-yet-due cascade target computed from a later elapsed may look like this too.
            deadline += level_span;
        }
        deadline
    }

    /// Moves a whole slot onto the pending list, marking each entry as pending.
    fn take_slot(&mut self, store: &mut impl LinkStore, level: usize, slot: usize) {
        debug_assert_eq!(self.pending, NIL);
        let head = self.heads[level][slot];
        self.heads[level][slot] = NIL;
        self.occupied[level] &= !(1 << slot);
        let mut cur = head;
        while cur != NIL {
            let l = store.links(cur);
            l.level = PENDING;
            cur = l.next;
        }
        self.pending = head;
    }

    /// Checks invariants 2 and 3 by walking every list (tests and debug tools only).
    pub fn check(&self, store: &mut impl LinkStore) {
        let mut count = 0;
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let head = self.heads[level][slot];
                assert_eq!(
                    head != NIL,
                    self.occupied[level] & (1 << slot) != 0,
                    "occupancy bit of level {level} slot {slot} disagrees with its list"
                );
                let mut prev = NIL;
                let mut cur = head;
                while cur != NIL {
                    let l = *store.links(cur);
                    assert_eq!((l.level as usize, l.slot as usize), (level, slot));
                    assert_eq!(l.prev, prev, "entry {cur} has a broken prev link");
                    assert!(self.slot_deadline(level, slot) > self.elapsed);
                    prev = cur;
                    cur = l.next;
                    count += 1;
                }
            }
        }
        let mut cur = self.pending;
        while cur != NIL {
            let l = *store.links(cur);
            assert_eq!(l.level, PENDING);
            cur = l.next;
            count += 1;
        }
        assert_eq!(count, self.len, "len disagrees with the lists");
    }
}

#[cfg(test)]
mod tests;
