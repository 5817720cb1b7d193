//! A hierarchical timer wheel whose entries are records of a slab, linked by `u32` index.
//!
//! The wheel does not own entries: each record embeds a [`WheelLinks`] and the wheel reaches it
//! through a [`LinkStore`] (the shard's slab). It never allocates after construction.
//!
//! | level | slots | one slot spans | the level spans |
//! |-------|-------|----------------|-----------------|
//! | 0     | 64    | 1 tick         | 64 ticks        |
//! | 1     | 64    | 64 ticks       | 4 096 ticks     |
//! | 2     | 64    | 64^2 ticks     | 64^3 ticks      |
//! | 3     | 64    | 64^3 ticks     | 64^4 ticks      |
//! | 4     | 64    | 64^4 ticks     | 64^5 ticks      |
//! | 5     | 64    | 64^5 ticks     | 64^6 = 2^36 ticks |
//!
//! With a 100 ms tick the wheel spans 218 years; with a 1 ms tick, 2.2 years (> 400 days).
//!
//! An entry is filed by its `when` tick: the level is that of the highest bit in which `when`
//! differs from `elapsed` (tokio's `level_for`), the slot is `when`'s digit at that level. When a
//! slot at level > 0 comes due, its entries are handed back by [`Wheel::poll`]; the caller knows
//! each entry's true deadline and either expires it or files it again (cascading to a lower
//! level). The wheel itself stores no deadline: an entry's slot is its only position.
//!
//! Invariants (checked by `debug_assert!` and by the tests at the end):
//! 1. Every slot strictly before `elapsed` has been processed: no entry sits in a slot whose
//!    deadline is `<= elapsed` except in the `pending` list.
//! 2. `occupied[level]` bit `s` is set iff `heads[level][s] != NIL`.
//! 3. An entry is in exactly one list (a slot or `pending`) iff its `level != UNLINKED`, and its
//!    `level`/`slot` name that list, so [`Wheel::remove`] is O(1).
//! 4. `when` is clamped into `elapsed + 1 ..= elapsed + MAX_AHEAD_TICKS`: an entry never lands in
//!    the slot being processed, and never more than 63 top-level slots ahead (no wrap onto the
//!    current slot). A clamped entry simply fires early and is filed again by the caller.
//! 5. A slot's deadline is never later than the `when` of any entry filed in it, so an entry is
//!    never handed back after its `when` has passed by more than the caller's polling delay.
//! 6. [`TickScale`] rounds a deadline up to its tick and the clock down to the last tick fully
//!    begun, so the tick a deadline is filed at never comes due before the deadline itself.

/// "No entry" in a link.
pub const NIL: u32 = u32::MAX;
/// Number of levels.
pub const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// `level` value of an entry that is in no list.
pub const UNLINKED: u8 = u8::MAX;
/// `level` value of an entry that sits in the pending (due) list.
const PENDING: u8 = u8::MAX - 1;
/// Ticks covered by all levels together.
const SPAN_TICKS: u64 = 1 << (SLOT_BITS as u64 * LEVELS as u64);
/// How far ahead an entry may be filed (see invariant 4).
pub const MAX_AHEAD_TICKS: u64 = 63 * (1 << (SLOT_BITS as u64 * (LEVELS as u64 - 1)));

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

fn level_for(elapsed: u64, when: u64) -> usize {
    const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
    let mut masked = (elapsed ^ when) | SLOT_MASK;
    if masked >= SPAN_TICKS {
        masked = SPAN_TICKS - 1;
    }
    let significant = 63 - masked.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1)
}

fn slot_span(level: usize) -> u64 {
    1 << (level as u32 * SLOT_BITS)
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
    /// not per tick. A `now_tick` before `elapsed` (clock stepped back) fires nothing new.
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
mod tests {
    use super::*;

    /// A slab of entries that remember their `when`, re-filing cascades the way the shard does.
    struct Harness {
        wheel: Wheel,
        links: Vec<WheelLinks>,
        when: Vec<u64>,
        fired_at: Vec<Option<u64>>,
    }

    impl Harness {
        fn new(n: usize) -> Self {
            Harness {
                wheel: Wheel::new(),
                links: vec![WheelLinks::default(); n],
                when: vec![0; n],
                fired_at: vec![None; n],
            }
        }

        fn insert(&mut self, idx: u32, when: u64) {
            self.when[idx as usize] = when;
            self.wheel.insert(&mut self.links, idx, when);
        }

        /// Polls at `now` and returns the entries whose true `when` has come.
        fn advance(&mut self, now: u64) -> Vec<u32> {
            let mut fired = vec![];
            while let Some(idx) = self.wheel.poll(&mut self.links, now) {
                let when = self.when[idx as usize];
                if when <= now {
                    self.fired_at[idx as usize] = Some(now);
                    fired.push(idx);
                } else {
                    self.wheel.insert(&mut self.links, idx, when);
                }
            }
            self.wheel.check(&mut self.links);
            fired.sort();
            fired
        }
    }

    #[test]
    fn level_for_matches_the_table() {
        assert_eq!(level_for(0, 1), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(0, 4_095), 1);
        assert_eq!(level_for(0, 4_096), 2);
        assert_eq!(level_for(0, 1 << 30), 5);
        assert_eq!(level_for(0, SPAN_TICKS + 5), 5);
        assert_eq!(level_for(60, 66), 1);
    }

    #[test]
    fn deadline_exactly_on_a_tick_fires_on_that_tick_not_before() {
        let mut h = Harness::new(3);
        h.insert(0, 10);
        h.insert(1, 64);
        h.insert(2, 4_096);
        assert!(h.advance(9).is_empty());
        assert_eq!(h.advance(10), vec![0]);
        assert!(h.advance(63).is_empty());
        assert_eq!(h.advance(64), vec![1]);
        assert!(h.advance(4_095).is_empty());
        assert_eq!(h.advance(4_096), vec![2]);
        assert!(h.wheel.is_empty());
    }

    #[test]
    fn every_tick_step_fires_each_entry_exactly_at_its_when() {
        let whens: Vec<u64> = (0..400u64).map(|i| 1 + (i * 7_919) % 300_000).collect();
        let mut h = Harness::new(whens.len());
        for (i, &w) in whens.iter().enumerate() {
            h.insert(i as u32, w);
        }
        let mut now = 0;
        while !h.wheel.is_empty() {
            now += 37;
            h.advance(now);
        }
        for (i, &w) in whens.iter().enumerate() {
            let fired = h.fired_at[i].unwrap();
            assert!(
                fired >= w && fired < w + 37,
                "entry {i} when {w} fired at {fired}"
            );
        }
    }

    #[test]
    fn beyond_the_top_level_is_clamped_and_refiled() {
        let mut h = Harness::new(2);
        let far = SPAN_TICKS * 3 + 12_345;
        h.insert(0, far);
        h.insert(1, MAX_AHEAD_TICKS + 1);
        let mut now = 0;
        let step = SPAN_TICKS / 50;
        while h.fired_at[0].is_none() {
            now += step;
            h.advance(now);
            assert!(now < far + step);
        }
        assert!(h.fired_at[0].unwrap() >= far);
        assert!(h.fired_at[1].unwrap() > MAX_AHEAD_TICKS);
    }

    #[test]
    fn clock_jumping_forward_by_days_fires_everything_once() {
        // 100 ms ticks: 3 days = 2_592_000 ticks.
        let mut h = Harness::new(1_000);
        for i in 0..1_000u32 {
            h.insert(i, 1 + u64::from(i) * 2_500);
        }
        let fired = h.advance(2_592_000 * 3);
        assert_eq!(fired.len(), 1_000);
        assert!(h.wheel.is_empty());
    }

    #[test]
    fn clock_stepping_backwards_fires_nothing_early() {
        let mut h = Harness::new(2);
        h.insert(0, 100);
        h.insert(1, 200);
        assert_eq!(h.advance(150), vec![0]);
        assert!(h.advance(20).is_empty());
        assert_eq!(h.wheel.elapsed(), 150);
        assert!(h.advance(199).is_empty());
        assert_eq!(h.advance(200), vec![1]);
    }

    #[test]
    fn remove_from_any_position_keeps_lists_consistent() {
        let mut h = Harness::new(10);
        for i in 0..10u32 {
            h.insert(i, 5 + u64::from(i % 3) * 70);
        }
        for i in [0u32, 4, 9, 3] {
            h.wheel.remove(&mut h.links, i);
            h.wheel.check(&mut h.links);
        }
        h.wheel.remove(&mut h.links, 0); // already out: no-op
        assert_eq!(h.wheel.len(), 6);
        let fired = h.advance(1_000);
        assert_eq!(fired, vec![1, 2, 5, 6, 7, 8]);
    }

    #[test]
    fn remove_while_pending() {
        let mut h = Harness::new(3);
        for i in 0..3u32 {
            h.insert(i, 10);
        }
        let first = h.wheel.poll(&mut h.links, 10).unwrap();
        // The other two now sit in the pending list; take one out from the middle or head.
        let other = (0..3u32).find(|&i| i != first).unwrap();
        h.wheel.remove(&mut h.links, other);
        h.wheel.check(&mut h.links);
        let rest: Vec<u32> = std::iter::from_fn(|| h.wheel.poll(&mut h.links, 10)).collect();
        assert_eq!(rest.len(), 1);
        assert!(h.wheel.is_empty());
    }

    #[test]
    fn insert_at_or_before_elapsed_fires_next_tick() {
        let mut h = Harness::new(2);
        h.advance(500);
        h.insert(0, 3);
        h.insert(1, 500);
        assert_eq!(h.advance(501), vec![0, 1]);
    }
}
