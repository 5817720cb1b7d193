//! The shard's structural self-check, run by the engine's tests and its model test after every
//! step: what invariant 1 of `shard` names, checked exhaustively (O(n)).

use super::Shard;
use super::record::{USER_LONG, USER_SHAPE0, key_of};
use super::user_id::pack;
use crate::wheel::NIL;

impl Shard {
    /// Checks invariant 1 and the bookkeeping beside it exhaustively (tests only; O(n)):
    /// `ids` holds exactly the live records, each under its own id; every live record is in the
    /// wheel, in exactly one user list (its user's) and exactly one org list (its slot's, whose
    /// count is right); the free list holds exactly the vacant records; the metadata and long
    /// user id side tables hold exactly the records flagged for them.
    pub fn check(&mut self) {
        self.wheel.check(&mut self.slab);
        let recs = &self.slab.records;
        let live = recs.iter().filter(|r| r.live()).count();
        assert_eq!(live, self.len);
        assert_eq!(self.ids.len(), self.len);
        assert_eq!(self.wheel.len(), self.len);
        self.ids.check(|i| recs[i as usize].id_lo);
        // Every live record is found under its own id, and is in the wheel.
        for (i, r) in recs.iter().enumerate().filter(|(_, r)| r.live()) {
            let found = self.ids.find(r.id_lo, |j| recs[j as usize].id() == r.id());
            assert_eq!(found, Some(i as u32), "record {i} not found under its id");
            assert!(r.wheel.is_linked(), "live record {i} is not in the wheel");
        }
        // Free list: exactly the vacant records.
        let mut free = 0;
        let mut c = self.slab.free;
        while c != NIL {
            assert!(
                !recs[c as usize].live(),
                "a live record {c} in the free list"
            );
            free += 1;
            assert!(free <= recs.len(), "the free list loops");
            c = recs[c as usize].user_next;
        }
        assert_eq!(
            free,
            recs.len() - live,
            "the free list misses vacant records"
        );
        // User lists: each live record in exactly one, the one of its own user.
        let mut seen = vec![false; recs.len()];
        for &head in self.users.iter() {
            let user = key_of(recs, &self.long_users, head);
            let (mut c, mut prev) = (head, NIL);
            while c != NIL {
                let r = &recs[c as usize];
                assert!(r.live(), "a vacant record {c} in a user list");
                assert!(
                    !std::mem::replace(&mut seen[c as usize], true),
                    "record {c} in two user lists"
                );
                assert_eq!(
                    key_of(recs, &self.long_users, c),
                    user,
                    "record {c} in another user's list"
                );
                assert_eq!(r.user_prev, prev, "user list back link of record {c}");
                (prev, c) = (c, r.user_next);
            }
        }
        assert_eq!(
            seen.iter().filter(|&&s| s).count(),
            self.len,
            "records in no user list"
        );
        // Org lists: each live record in exactly one, its own slot's, and the counts right.
        let mut seen = vec![false; recs.len()];
        for (slot, org) in self.orgs.iter().enumerate() {
            let Some(org) = org else { continue };
            let (mut c, mut prev, mut n) = (org.head, NIL, 0u32);
            while c != NIL {
                let r = &recs[c as usize];
                assert!(r.live(), "a vacant record {c} in an org list");
                assert!(
                    !std::mem::replace(&mut seen[c as usize], true),
                    "record {c} in two org lists"
                );
                assert_eq!(r.org(), slot as u32, "record {c} in another org's list");
                assert_eq!(r.org_prev, prev, "org list back link of record {c}");
                n += 1;
                (prev, c) = (c, r.org_next);
            }
            assert_eq!(n, org.len, "org slot {slot} miscounts its sessions");
        }
        assert_eq!(
            seen.iter().filter(|&&s| s).count(),
            self.len,
            "records in no org list"
        );
        // Side tables: exactly the flagged live records.
        for (i, r) in recs.iter().enumerate().filter(|(_, r)| r.live()) {
            let i = i as u32;
            assert_eq!(
                r.has_metadata(),
                self.metadata.contains_key(&i),
                "metadata of record {i}"
            );
            assert_eq!(
                r.user_code() == USER_LONG,
                self.long_users.contains_key(&i),
                "long user id of record {i}"
            );
            // A packed id reads back to text that packs to the very same form.
            if r.user_code() >= USER_SHAPE0 {
                let text = self.user_text(i);
                let p = pack(&text).expect("a packed id's text packs");
                assert_eq!(p.value, r.user.value(), "packed user id of record {i}");
                assert_eq!(
                    self.shapes.find(&p),
                    Some(r.user_code() - USER_SHAPE0),
                    "shape of record {i}"
                );
            }
        }
        // Shapes: each counted by exactly the live records that use it.
        let mut refs = [0u32; 64];
        for r in recs.iter().filter(|r| r.live()) {
            refs[r.user_code() as usize] += 1;
        }
        for code in 0..64 - USER_SHAPE0 {
            assert_eq!(
                self.shapes.refs(code),
                refs[(code + USER_SHAPE0) as usize],
                "uses of shape {code}"
            );
        }
        assert_eq!(
            self.shapes.len(),
            refs[USER_SHAPE0 as usize..]
                .iter()
                .filter(|&&n| n > 0)
                .count()
        );
        assert_eq!(
            self.metadata.len(),
            recs.iter().filter(|r| r.live() && r.has_metadata()).count()
        );
        assert_eq!(
            self.long_users.len(),
            recs.iter()
                .filter(|r| r.live() && r.user_code() == USER_LONG)
                .count()
        );
    }
}

impl Shard {
    /// How many live records hold their user id inline, in `long_users` and packed (tests).
    #[cfg(test)]
    pub fn user_forms(&self) -> [usize; 3] {
        let mut n = [0; 3];
        for r in self.slab.records.iter().filter(|r| r.live()) {
            n[usize::from(r.user_code()).min(2)] += 1;
        }
        n
    }
}
