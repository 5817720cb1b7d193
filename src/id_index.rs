//! The id index of one shard: session id hash -> record index, built for the validate path.
//!
//! Open addressing with linear probing over 4-byte slots; a slot holds the record index in its
//! low 24 bits and an 8-bit tag (the top byte of the id's hash) in the high 8. A lookup reads
//! the home slot's cache line (16 slots) and then only records whose tag matches (a false match
//! costs 1/256 per occupied slot probed). hashbrown reads a control group, then a bucket in
//! another array, then the record: one dependent cache miss more on every validate and touch
//! of a table that does not fit in cache (issue #2).
//!
//! Invariants:
//! 1. Every entry sits in the probe run that starts at its home slot (`hash & mask`): no
//!    `EMPTY` slot lies between its home and itself. Removal writes `TOMBSTONE`, never `EMPTY`,
//!    so the runs of other entries stay unbroken; a lookup skips tombstones, an insert reuses
//!    the first one it meets.
//! 2. `len + tombstones <= capacity * 3 / 4`, so a probe always ends at an `EMPTY` slot and
//!    runs stay short. Past it the table is rebuilt from the shard's live records (read in
//!    slab order, sequential memory), at twice the size if more than half of that load is live.
//! 3. Record indexes are at most [`MAX_RECORDS`] - 1, so no entry equals `EMPTY` or `TOMBSTONE`.
//!
//! Ids are cryptographic hashes (see `token`), so the hash is the id's own bits and nobody can
//! choose ids that collide.

/// Record indexes a shard may use: `0..MAX_RECORDS`.
pub const MAX_RECORDS: u32 = (1 << 24) - 2;

const INDEX_MASK: u32 = (1 << 24) - 1;
const EMPTY: u32 = u32::MAX;
const TOMBSTONE: u32 = u32::MAX - 1;
const MIN_CAPACITY: usize = 16;

/// See the module doc.
pub struct IdIndex {
    slots: Box<[u32]>,
    len: usize,
    tombstones: usize,
}

#[inline]
fn tag(hash: u64) -> u32 {
    ((hash >> 56) as u32) << 24
}

impl Default for IdIndex {
    fn default() -> Self {
        IdIndex::new()
    }
}

impl IdIndex {
    /// An empty index (allocates nothing).
    pub fn new() -> IdIndex {
        IdIndex {
            slots: Box::new([]),
            len: 0,
            tombstones: 0,
        }
    }

    /// Entries in the index.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots allocated (4 bytes each).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The record index whose entry has `hash` and for which `is(record)` holds.
    #[inline]
    pub fn find(&self, hash: u64, is: impl Fn(u32) -> bool) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let want = tag(hash);
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if s & !INDEX_MASK == want && s != TOMBSTONE && is(s & INDEX_MASK) {
                return Some(s & INDEX_MASK);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `idx` under `hash`; the caller guarantees no entry for the same id exists.
    /// `live()` lists every entry the index must hold *besides* this one, as (hash, index): it
    /// is called only when the table is rebuilt (invariant 2).
    pub fn insert<I>(&mut self, hash: u64, idx: u32, live: impl FnOnce() -> I)
    where
        I: Iterator<Item = (u64, u32)>,
    {
        assert!(
            idx < MAX_RECORDS,
            "record index {idx} out of the id index's range"
        );
        if (self.len + self.tombstones + 1) * 4 > self.slots.len() * 3 {
            let cap = Self::capacity_for(self.len + 1).max(self.slots.len());
            self.rebuild(cap, live());
        }
        self.put(hash, idx);
        self.len += 1;
    }

    /// Removes the entry of record `idx` filed under `hash`. Returns whether it was there.
    pub fn remove(&mut self, hash: u64, idx: u32) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        let want = tag(hash) | idx;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return false;
            }
            if s == want {
                self.slots[i] = TOMBSTONE;
                self.len -= 1;
                self.tombstones += 1;
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    /// Makes room for `additional` more entries without a rebuild on the way.
    pub fn reserve<I>(&mut self, additional: usize, live: impl FnOnce() -> I)
    where
        I: Iterator<Item = (u64, u32)>,
    {
        let cap = Self::capacity_for(self.len + additional);
        if cap > self.slots.len() {
            self.rebuild(cap, live());
        }
    }

    /// The smallest power-of-two capacity that holds `n` entries at half the maximum load
    /// (3/8), so that a table just rebuilt has room to grow before its next rebuild.
    fn capacity_for(n: usize) -> usize {
        (n * 8 / 3 + 1).next_power_of_two().max(MIN_CAPACITY)
    }

    fn rebuild(&mut self, cap: usize, live: impl Iterator<Item = (u64, u32)>) {
        self.slots = vec![EMPTY; cap].into_boxed_slice();
        self.len = 0;
        self.tombstones = 0;
        for (hash, idx) in live {
            self.put(hash, idx);
            self.len += 1;
        }
    }

    /// Files an entry in the first free slot (empty or tombstone) of its probe run.
    fn put(&mut self, hash: u64, idx: u32) {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY || s == TOMBSTONE {
                if s == TOMBSTONE {
                    self.tombstones -= 1;
                }
                self.slots[i] = tag(hash) | idx;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Checks invariants 1-3 against `hash_of(idx)` (tests only; O(capacity)).
    pub fn check(&self, hash_of: impl Fn(u32) -> u64) {
        let mask = self.slots.len().wrapping_sub(1);
        let (mut len, mut tombs) = (0, 0);
        for (pos, &s) in self.slots.iter().enumerate() {
            match s {
                EMPTY => {}
                TOMBSTONE => tombs += 1,
                _ => {
                    len += 1;
                    let idx = s & INDEX_MASK;
                    let h = hash_of(idx);
                    assert_eq!(s & !INDEX_MASK, tag(h), "tag of record {idx}");
                    let mut i = h as usize & mask;
                    while i != pos {
                        assert_ne!(self.slots[i], EMPTY, "empty slot inside record {idx}'s run");
                        i = (i + 1) & mask;
                    }
                }
            }
        }
        assert_eq!(len, self.len);
        assert_eq!(tombs, self.tombstones);
        assert!((len + tombs) * 4 <= self.slots.len() * 3 || self.slots.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn splitmix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// Records as the shard keeps them: slot `i` holds a hash when live.
    struct Model {
        recs: Vec<Option<u64>>,
        index: IdIndex,
    }

    impl Model {
        fn insert(&mut self, idx: u32, hash: u64) {
            // Ids are unique: the shard never files the same id twice.
            if self.recs.contains(&Some(hash)) {
                return;
            }
            let i = idx as usize;
            if self.recs.len() <= i {
                self.recs.resize(i + 1, None);
            }
            let recs = &self.recs;
            self.index.insert(hash, idx, || {
                recs.iter()
                    .enumerate()
                    .filter_map(|(i, h)| h.map(|h| (h, i as u32)))
            });
            self.recs[i] = Some(hash);
        }

        fn find(&self, hash: u64) -> Option<u32> {
            self.index.find(hash, |i| {
                self.recs.get(i as usize).copied().flatten() == Some(hash)
            })
        }
    }

    #[test]
    fn colliding_homes_and_tags_are_told_apart_by_the_record() {
        let mut m = Model {
            recs: Vec::new(),
            index: IdIndex::new(),
        };
        // Same home slot and same tag: only the record check separates them.
        let hs = [
            0xAB00_0000_0000_0005u64,
            0xAB00_0000_0001_0005,
            0xAB00_0000_0002_0005,
        ];
        for (i, &h) in hs.iter().enumerate() {
            m.insert(i as u32, h);
        }
        for (i, &h) in hs.iter().enumerate() {
            assert_eq!(m.find(h), Some(i as u32));
        }
        assert!(m.index.remove(hs[1], 1));
        m.recs[1] = None;
        assert_eq!(m.find(hs[1]), None);
        assert_eq!(m.find(hs[2]), Some(2), "a tombstone must not cut the run");
        assert!(!m.index.remove(hs[1], 1));
        m.index.check(|i| m.recs[i as usize].unwrap());
    }

    #[test]
    fn grows_and_reclaims_tombstones_without_growing() {
        let mut m = Model {
            recs: Vec::new(),
            index: IdIndex::new(),
        };
        for i in 0..1000u32 {
            m.insert(i, splitmix(u64::from(i)));
        }
        let cap = m.index.capacity();
        assert!(cap >= 1000 * 4 / 3);
        // Churn: remove one, insert one, many times over; the table must stay the same size.
        for round in 0..20_000u32 {
            let victim = round % 1000;
            let h = m.recs[victim as usize].take().unwrap();
            assert!(m.index.remove(h, victim));
            m.insert(victim, splitmix(u64::from(round) + 1_000_000));
        }
        assert_eq!(m.index.capacity(), cap);
        m.index.check(|i| m.recs[i as usize].unwrap());
        for (i, h) in m.recs.iter().enumerate() {
            assert_eq!(m.find(h.unwrap()), Some(i as u32));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(usize),
        Find(usize),
        Reserve(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Narrow hashes: many shared homes and tags.
            4 => (0u64..64).prop_map(|h| Op::Insert(h.rotate_right(8) | h)),
            2 => any::<u64>().prop_map(Op::Insert),
            3 => any::<usize>().prop_map(Op::Remove),
            2 => any::<usize>().prop_map(Op::Find),
            1 => (0u16..2_000).prop_map(Op::Reserve),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Against a plain list of live records: every live one is found under its hash at
        /// its own index, every removed one is gone, and invariants 1-3 hold throughout.
        #[test]
        fn matches_a_list_of_records(ops in proptest::collection::vec(op(), 1..400)) {
            let mut m = Model { recs: Vec::new(), index: IdIndex::new() };
            for op in ops {
                match op {
                    Op::Insert(h) => {
                        // Reuse a free record slot as the slab does, else append.
                        let idx = m.recs.iter().position(Option::is_none)
                            .unwrap_or(m.recs.len()) as u32;
                        m.insert(idx, h);
                    }
                    Op::Remove(k) => {
                        let live: Vec<usize> =
                            (0..m.recs.len()).filter(|&i| m.recs[i].is_some()).collect();
                        if !live.is_empty() {
                            let i = live[k % live.len()];
                            let h = m.recs[i].take().unwrap();
                            prop_assert!(m.index.remove(h, i as u32));
                            prop_assert_eq!(m.find(h).filter(|&j| j as usize == i), None);
                        }
                    }
                    Op::Find(k) => {
                        if !m.recs.is_empty() {
                            let i = k % m.recs.len();
                            if let Some(h) = m.recs[i] {
                                prop_assert_eq!(m.find(h), Some(i as u32));
                            }
                        }
                    }
                    Op::Reserve(n) => {
                        let recs = &m.recs;
                        m.index.reserve(n as usize, || recs.iter().enumerate()
                            .filter_map(|(i, h)| h.map(|h| (h, i as u32))));
                    }
                }
                m.index.check(|i| m.recs[i as usize].unwrap());
            }
            for (i, h) in m.recs.iter().enumerate() {
                if let Some(h) = *h {
                    prop_assert_eq!(m.find(h).is_some(), true, "record {} lost", i);
                }
            }
        }
    }
}
