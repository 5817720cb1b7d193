//! The id index of one shard: session id hash -> record index, built for the validate path.
//!
//! Open addressing with linear probing over 6-byte slots; a slot's key holds the record index in
//! its low 24 bits and an 8-bit tag (the top byte of the id's hash) in the high 8, and beside it
//! a 16-bit `aux` value the shard files with the entry (the record's org slot, when it is below
//! [`NO_AUX`]). A lookup reads the home slot's cache line (10-11 slots) and then only records
//! whose tag matches (a false match costs 1/256 per occupied slot probed). hashbrown reads a control group, then a bucket in
//! another array, then the record: one dependent cache miss more on every validate and touch
//! of a table that does not fit in cache (issue #2). `aux` removes another: the shard reads
//! the org's policy in parallel with the record instead of after it.
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

/// The `aux` of an entry whose value did not fit in 16 bits: the caller keeps it elsewhere.
/// Six-byte slots keep the index at ~10 bytes per session at 10M (eight-byte ones took the
/// table over its 100-byte budget: 102.2), and a shard with 65,535 orgs is rare.
pub const NO_AUX: u16 = u16::MAX;

/// One entry: the key (`EMPTY`, `TOMBSTONE` or tag | record index) in two halves, then `aux`.
/// Three `u16`s, so that a slot takes 6 bytes with no padding.
#[derive(Debug, Clone, Copy)]
struct Slot([u16; 3]);

impl Slot {
    const fn new(key: u32, aux: u16) -> Slot {
        Slot([key as u16, (key >> 16) as u16, aux])
    }

    #[inline]
    fn key(self) -> u32 {
        u32::from(self.0[0]) | (u32::from(self.0[1]) << 16)
    }

    /// The aux filed with the entry, `None` if it did not fit.
    #[inline]
    fn aux(self) -> Option<u32> {
        (self.0[2] != NO_AUX).then_some(u32::from(self.0[2]))
    }
}

const EMPTY_SLOT: Slot = Slot::new(EMPTY, NO_AUX);

/// `aux` as stored: itself if it fits below [`NO_AUX`], else `NO_AUX`.
fn stored_aux(aux: u32) -> u16 {
    u16::try_from(aux).map_or(NO_AUX, |a| a)
}

/// See the module doc.
pub struct IdIndex {
    slots: Box<[Slot]>,
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

    /// Slots allocated (6 bytes each).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The record index whose entry has `hash` and for which `is(record)` holds, and the `aux`
    /// filed with it (`None` if it did not fit in 16 bits).
    #[inline]
    pub fn find(&self, hash: u64, is: impl Fn(u32) -> bool) -> Option<(u32, Option<u32>)> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let want = tag(hash);
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            let s = slot.key();
            if s == EMPTY {
                return None;
            }
            if s & !INDEX_MASK == want && s != TOMBSTONE && is(s & INDEX_MASK) {
                return Some((s & INDEX_MASK, slot.aux()));
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `idx` (with `aux`) under `hash`; the caller guarantees no entry for the same id
    /// exists. `live()` lists every entry the index must hold *besides* this one, as
    /// (hash, index, aux): it is called only when the table is rebuilt (invariant 2).
    pub fn insert<I>(&mut self, hash: u64, idx: u32, aux: u32, live: impl FnOnce() -> I)
    where
        I: Iterator<Item = (u64, u32, u32)>,
    {
        assert!(
            idx < MAX_RECORDS,
            "record index {idx} out of the id index's range"
        );
        if (self.len + self.tombstones + 1) * 4 > self.slots.len() * 3 {
            let cap = Self::capacity_for(self.len + 1).max(self.slots.len());
            self.rebuild(cap, live());
        }
        self.put(hash, idx, aux);
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
            let s = self.slots[i].key();
            if s == EMPTY {
                return false;
            }
            if s == want {
                self.slots[i] = Slot::new(TOMBSTONE, NO_AUX);
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
        I: Iterator<Item = (u64, u32, u32)>,
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

    fn rebuild(&mut self, cap: usize, live: impl Iterator<Item = (u64, u32, u32)>) {
        self.slots = vec![EMPTY_SLOT; cap].into_boxed_slice();
        self.len = 0;
        self.tombstones = 0;
        for (hash, idx, aux) in live {
            self.put(hash, idx, aux);
            self.len += 1;
        }
    }

    /// Files an entry in the first free slot (empty or tombstone) of its probe run.
    fn put(&mut self, hash: u64, idx: u32, aux: u32) {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i].key();
            if s == EMPTY || s == TOMBSTONE {
                if s == TOMBSTONE {
                    self.tombstones -= 1;
                }
                self.slots[i] = Slot::new(tag(hash) | idx, stored_aux(aux));
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Checks invariants 1-3 against `entry_of(idx)` = (hash, aux) (tests only; O(capacity)).
    pub fn check(&self, entry_of: impl Fn(u32) -> (u64, u32)) {
        let mask = self.slots.len().wrapping_sub(1);
        let (mut len, mut tombs) = (0, 0);
        for (pos, &slot) in self.slots.iter().enumerate() {
            let s = slot.key();
            match s {
                EMPTY => {}
                TOMBSTONE => tombs += 1,
                _ => {
                    len += 1;
                    let idx = s & INDEX_MASK;
                    let (h, want_aux) = entry_of(idx);
                    assert_eq!(s & !INDEX_MASK, tag(h), "tag of record {idx}");
                    assert_eq!(slot.0[2], stored_aux(want_aux), "aux of record {idx}");
                    let mut i = h as usize & mask;
                    while i != pos {
                        assert_ne!(
                            self.slots[i].key(),
                            EMPTY,
                            "empty slot inside record {idx}'s run"
                        );
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

    /// The aux the model files with an entry: derived from the hash so that a lookup can check
    /// it; half of them do not fit in 16 bits.
    fn aux_of(hash: u64) -> u32 {
        (hash >> 17) as u32 & 0x1_FFFF
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
            self.index.insert(hash, idx, aux_of(hash), || {
                recs.iter()
                    .enumerate()
                    .filter_map(|(i, h)| h.map(|h| (h, i as u32, aux_of(h))))
            });
            self.recs[i] = Some(hash);
        }

        /// The record index found for `hash`, after checking the aux filed with it.
        fn find(&self, hash: u64) -> Option<u32> {
            let found = self.index.find(hash, |i| {
                self.recs.get(i as usize).copied().flatten() == Some(hash)
            });
            found.map(|(idx, aux)| {
                let want = aux_of(hash);
                assert_eq!(
                    aux,
                    (want < u32::from(NO_AUX)).then_some(want),
                    "aux of {idx}"
                );
                idx
            })
        }

        fn check(&self) {
            self.index
                .check(|i| self.recs[i as usize].map(|h| (h, aux_of(h))).unwrap());
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
        m.check();
    }

    #[test]
    fn aux_past_16_bits_is_not_filed() {
        let mut index = IdIndex::new();
        let cases = [
            (1u64, 0u32),
            (2, 65_534),
            (3, 65_535),
            (4, 70_000),
            (5, u32::MAX),
        ];
        for (i, &(h, aux)) in cases.iter().enumerate() {
            index.insert(h, i as u32, aux, std::iter::empty);
        }
        let found: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, &(h, _))| index.find(h, |r| r == i as u32).map(|(_, a)| a))
            .collect();
        assert_eq!(
            found,
            [
                Some(Some(0)),
                Some(Some(65_534)),
                Some(None),
                Some(None),
                Some(None)
            ]
        );
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
        m.check();
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
                            .filter_map(|(i, h)| h.map(|h| (h, i as u32, aux_of(h)))));
                    }
                }
                m.check();
            }
            for (i, h) in m.recs.iter().enumerate() {
                if let Some(h) = *h {
                    prop_assert_eq!(m.find(h).is_some(), true, "record {} lost", i);
                }
            }
        }
    }
}
