//! The wheel's operations through a harness that re-files cascaded entries as the shard does.
//!
//! What these tests hold the wheel to:
//! 1. An entry fires at its `when` tick, never before, and within one polling step after
//!    (invariants 1, 5), whatever the step.
//! 2. A `when` beyond the top level is clamped, fires early and is re-filed (invariant 4).
//! 3. A clock that jumps days ahead fires everything once; one that steps back fires nothing
//!    early.
//! 4. Removal from any position, pending included, keeps the lists consistent (invariants 2,
//!    3, checked by [`Wheel::check`] after every step).

use super::slots::SPAN_TICKS;
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
