//! Applying another node's batch (one stream message: frames in the journal's format) to this
//! node's table, with the journal's replay rules.
//!
//! Invariants:
//! 1. **Merge, never conflict**: a create of a known id only moves its last activity forward,
//!    activity is a maximum, a removal of an unknown id does nothing (`persist::record`,
//!    invariant 2), and a "not before" mark revokes that user's (org's) older sessions, here
//!    and arriving later (`engine::marks`). Applying a batch twice, or batches of different nodes in any order that
//!    keeps each node's own order, gives the same table.
//! 2. Applied changes are not reported to the engine's listeners (`Engine::restore*`): they are
//!    another node's, already in the stream; this node's journal keeps only its own, and a
//!    restart reads the others' from the stream again.
//! 3. A create that arrives already past its deadlines is inserted and evicted by the wheel
//!    at its next tick, like a snapshot's; it never validates meanwhile (the engine checks
//!    deadlines on every lookup).
//! 4. A damaged message is applied up to its first bad frame and reported; the rest is lost to
//!    this node, and the caller counts it (a writer produced it, so this is a bug, not input).

use crate::engine::Engine;
use crate::persist::record::{self, Entry};
use crate::token::SessionId;

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Frames applied.
    pub frames: u64,
    /// Sessions that were new to this node.
    pub created: u64,
    /// Offset of the first bad frame, if any (invariant 4).
    pub damaged_at: Option<usize>,
}

/// Applies the frames of `batch` to `engine` (see the module doc).
pub fn apply(engine: &Engine, batch: &[u8]) -> Applied {
    let mut out = Applied::default();
    for entry in record::decode_all(batch) {
        match entry {
            Ok(Entry::Create(saved)) => {
                if engine.restore(saved) {
                    out.created += 1;
                }
            }
            Ok(Entry::Activity { id, last_ms }) => engine.restore_activity(SessionId(id), last_ms),
            Ok(Entry::Remove { id, .. }) => engine.restore_remove(SessionId(id)),
            Ok(Entry::NotBefore {
                scope,
                id,
                before_ms,
            }) => {
                engine.apply_not_before(scope, &id, before_ms);
            }
            // Snapshot-only frames; a stream message never holds them.
            Ok(Entry::End { .. } | Entry::StreamSeq { .. }) => {}
            Err(offset) => {
                out.damaged_at = Some(offset);
                break;
            }
        }
        out.frames += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Changes;
    use crate::clock::ManualClock;
    use crate::cluster::outbox::Outbox;
    use crate::engine::EngineConfig;
    use crate::session::{NewSession, Validation};
    use std::sync::Arc;

    fn node(clock: &Arc<ManualClock>, outbox: Option<Arc<Outbox>>) -> Engine {
        Engine::with_changes(
            EngineConfig::default(),
            clock.clone(),
            outbox.map(|o| o as Arc<dyn Changes>),
        )
    }

    fn batch(o: &Outbox) -> Vec<u8> {
        let mut b = Vec::new();
        let seen = o.drain(&mut b);
        o.acknowledged(seen, b.len());
        b
    }

    #[test]
    fn another_nodes_create_touch_and_revoke_apply_here() {
        let clock = ManualClock::new(1_000_000);
        let out = Arc::new(Outbox::new(Engine::shards_for(&EngineConfig::default())));
        let a = node(&clock, Some(out.clone()));
        let b = node(&clock, None);
        let created = a
            .create(NewSession {
                user_id: "alice".into(),
                ..Default::default()
            })
            .unwrap();
        let token = created.token.expose().to_owned();
        let applied = apply(&b, &batch(&out));
        assert_eq!((applied.frames, applied.created), (1, 1));
        assert!(matches!(b.validate(&token), Validation::Valid(_)));

        // Activity on A (past its 60 s replication window, the default policy's idle / 8)
        // moves B's last activity (a maximum); applied twice, it changes nothing.
        clock.advance(60_000);
        assert!(matches!(a.touch(&token), Validation::Valid(_)));
        let act = batch(&out);
        apply(&b, &act);
        apply(&b, &act);
        let Validation::Valid(v) = b.validate(&token) else {
            panic!("valid")
        };
        assert_eq!(v.last_activity_at_ms, 1_060_000);

        // A create arriving again (a redelivery) does not move activity back.
        let mut old = Vec::new();
        record::put_create(&mut old, v.id.0, 1_000_000, 1_000_000, "alice", None, None);
        apply(&b, &old);
        let Validation::Valid(v) = b.validate(&token) else {
            panic!("valid")
        };
        assert_eq!(v.last_activity_at_ms, 1_060_000);

        assert!(a.revoke(&token));
        apply(&b, &batch(&out));
        assert!(matches!(b.validate(&token), Validation::Invalid(_)));
        assert_eq!(b.len(), 0);
    }

    /// Evictions are each node's own (docs/cluster.md): a node whose older view of a session's
    /// activity let it evict the session first still sends a logout of it, by token or by id,
    /// and the node that holds it ends it.
    #[test]
    fn a_revocation_on_a_node_that_evicted_the_session_ends_it_where_it_lives() {
        let clock = ManualClock::new(1_000_000);
        let cfg = EngineConfig {
            application_policy: crate::policy::Policy {
                absolute_timeout_secs: 3_600,
                idle_timeout_enabled: true,
                idle_timeout_secs: Some(16),
                persistent: false,
            },
            cluster: true,
            ..EngineConfig::default()
        };
        let shards = Engine::shards_for(&cfg);
        let (out_a, out_b) = (Arc::new(Outbox::new(shards)), Arc::new(Outbox::new(shards)));
        let on = |o: &Arc<Outbox>| {
            Engine::with_changes(
                cfg.clone(),
                clock.clone(),
                Some(o.clone() as Arc<dyn Changes>),
            )
        };
        let (a, b) = (on(&out_a), on(&out_b));
        let new = |user: &str| NewSession {
            user_id: user.into(),
            ..Default::default()
        };
        let by_token = a.create(new("alice")).unwrap().token;
        let bob = a.create(new("bob")).unwrap();
        let by_id = bob.session.id;
        apply(&b, &batch(&out_a));
        assert_eq!(b.len(), 2);
        // Used on A 1.5 s later, within its 2 s activity window (idle / 8): not sent.
        clock.advance(1_500);
        for t in [&by_token, &bob.token] {
            assert!(matches!(a.touch(t.expose()), Validation::Valid(_)));
        }
        assert!(batch(&out_a).is_empty());
        // At 16.5 s B has evicted both by its view; A holds them until 17.5 s.
        clock.advance(15_000);
        b.advance();
        a.advance();
        assert_eq!((a.len(), b.len()), (2, 0));
        // Logged out on B: nothing to remove there, but the revocations leave for A.
        assert!(!b.revoke(by_token.expose()));
        assert!(!b.revoke_id(by_id));
        apply(&a, &batch(&out_b));
        assert_eq!(a.len(), 0);
        assert!(matches!(
            a.validate(by_token.expose()),
            Validation::Invalid(_)
        ));
        assert!(a.get(by_id).is_none());
    }

    #[test]
    fn a_damaged_batch_applies_up_to_the_damage() {
        let clock = ManualClock::new(1_000_000);
        let b = node(&clock, None);
        let mut buf = Vec::new();
        record::put_create(&mut buf, 1, 1_000_000, 1_000_000, "u", None, None);
        let first = buf.len();
        record::put_create(&mut buf, 2, 1_000_000, 1_000_000, "u", None, None);
        *buf.last_mut().unwrap() ^= 0xff;
        let applied = apply(&b, &buf);
        assert_eq!(applied.frames, 1);
        assert_eq!(applied.damaged_at, Some(first));
        assert_eq!(b.len(), 1);
    }
}
