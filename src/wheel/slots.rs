//! Where the wheel files an entry: its levels and slots, and the scale from milliseconds to
//! ticks. Pure arithmetic, no state; the wheel's operations are in `mod.rs`.
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
//! Invariants:
//! 1. An entry's level is that of the highest bit in which its `when` differs from `elapsed`
//!    (tokio's `level_for`), its slot `when`'s digit at that level; a `when` past the span
//!    files at the top level.
//! 2. [`MAX_AHEAD_TICKS`] is 63 top-level slots: an entry filed no further ahead never wraps
//!    onto the slot being processed (the wheel's invariant 4).
//! 3. [`TickScale`] rounds a deadline up to its tick and the clock down to the last tick fully
//!    begun, so on one scale the tick a deadline is filed at never comes due before the deadline
//!    itself. A shard moves `origin_ms` back, by whole ticks, after the clock steps back
//!    (`shard` invariant 7): ticks filed on the scale before come due earlier, never later.

/// Number of levels.
pub const LEVELS: usize = 6;
pub(super) const SLOT_BITS: u32 = 6;
pub(super) const SLOTS: usize = 1 << SLOT_BITS;
/// Ticks covered by all levels together.
pub(super) const SPAN_TICKS: u64 = 1 << (SLOT_BITS as u64 * LEVELS as u64);
/// How far ahead an entry may be filed (invariant 2).
pub const MAX_AHEAD_TICKS: u64 = 63 * (1 << (SLOT_BITS as u64 * (LEVELS as u64 - 1)));

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

/// The level an entry due at `when` is filed at (invariant 1).
pub(super) fn level_for(elapsed: u64, when: u64) -> usize {
    const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
    let mut masked = (elapsed ^ when) | SLOT_MASK;
    if masked >= SPAN_TICKS {
        masked = SPAN_TICKS - 1;
    }
    let significant = 63 - masked.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

/// The slot of `level` an entry due at `when` is filed in (invariant 1).
pub(super) fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1)
}

/// Ticks one slot of `level` spans.
pub(super) fn slot_span(level: usize) -> u64 {
    1 << (level as u32 * SLOT_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
