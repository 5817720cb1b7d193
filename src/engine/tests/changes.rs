//! The `changes` seam seen from the engine.
//!
//! What this test holds the engine to:
//! 1. Every create, coalesced activity and removal (revocation, expiry by the wheel or at a
//!    limit, displacement, policy eviction) is reported exactly once, in order, with the shard
//!    that holds the session (engine invariant 5, shard invariant 6).
//! 2. Start-up replay is not reported.
//! 3. A cluster node reports a revocation of a session it does not hold, once per call, with
//!    the shard the id belongs to (engine invariant 7); a single node reports nothing for it.

use super::*;

/// The engine reports exactly the changes of a scripted scenario through the `changes` seam,
/// each with the shard that holds the session, and nothing for start-up replay.
#[test]
fn every_change_is_reported_once_through_the_seam() {
    use crate::changes::{Change, Changes};
    use crate::session::{Metadata, RemoveReason, Saved, Scope};
    use parking_lot::Mutex;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Created(Saved),
        Activity {
            id: u128,
            last_ms: u64,
        },
        Removed {
            id: u128,
            reason: RemoveReason,
        },
        NotBefore {
            scope: Scope,
            id: String,
            before_ms: u64,
        },
    }

    /// Records every report, in order, with its shard.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, Seen)>>);

    impl Changes for Recorder {
        fn record(&self, shard: usize, change: Change<'_>) {
            let seen = match change {
                Change::Created(s) => Seen::Created(s.to_saved()),
                Change::Activity { id, last_ms, .. } => Seen::Activity { id, last_ms },
                Change::Removed { id, reason } => Seen::Removed { id, reason },
                Change::NotBefore {
                    scope,
                    id,
                    before_ms,
                } => Seen::NotBefore {
                    scope,
                    id: id.to_owned(),
                    before_ms,
                },
            };
            self.0.lock().push((shard, seen));
        }
    }

    let rec = Arc::new(Recorder::default());
    let clock = ManualClock::new(T0);
    let e = Engine::with_changes(
        EngineConfig {
            shards: 4,
            application_policy: policy(3_600, Some(600), false),
            max_sessions_per_user: Some(2),
            user_limit_action: UserLimitAction::EvictOldest,
            ..EngineConfig::default()
        },
        clock.clone(),
        Some(rec.clone() as Arc<dyn Changes>),
    );
    e.set_org_policy("acme", OrgPolicy::Custom(policy(120, Some(600), false)))
        .unwrap();
    let mut expected = Vec::new();
    let created = |c: &crate::engine::Created, org: Option<&str>, meta: Option<Metadata>| {
        let s = &c.session;
        (
            e.shard_of(s.id),
            Seen::Created(Saved {
                id: s.id.0,
                created_ms: s.created_at_ms,
                last_ms: s.created_at_ms,
                user: s.user_id.clone(),
                org: org.map(Into::into),
                metadata: meta,
            }),
        )
    };
    let removed =
        |id: crate::token::SessionId, reason| (e.shard_of(id), Seen::Removed { id: id.0, reason });

    // Create, with metadata.
    let meta = Metadata::new(vec![("ip".into(), "10.0.0.1".into())]).unwrap();
    let a = e
        .create(NewSession {
            metadata: Some(meta.clone()),
            ..new("alice", None)
        })
        .unwrap();
    expected.push(created(&a, None, Some(meta)));
    let a_id = a.session.id;
    // Touches within the creation's second are not reported; the one that crosses into the
    // next second is, once.
    clock.advance(300);
    assert!(is_valid(&e.touch(a.token.expose())));
    clock.set(T0 + 1_000);
    assert!(is_valid(&e.touch(a.token.expose())));
    expected.push((
        e.shard_of(a_id),
        Seen::Activity {
            id: a_id.0,
            last_ms: T0 + 1_000,
        },
    ));
    clock.set(T0 + 1_500);
    assert!(is_valid(&e.touch(a.token.expose())));
    assert!(is_valid(&e.validate(a.token.expose())));
    // Revoke.
    assert!(e.revoke(a.token.expose()));
    expected.push(removed(a_id, RemoveReason::Revoked));
    assert!(
        !e.revoke(a.token.expose()),
        "a second revoke changes nothing"
    );

    // Expiry by the wheel: acme's absolute timeout (120 s) first, then the idle one (600 s).
    let b = e.create(new("bob", Some("acme"))).unwrap();
    expected.push(created(&b, Some("acme"), None));
    let c = e.create(new("carol", None)).unwrap();
    expected.push(created(&c, None, None));
    clock.set(T0 + 1_500 + 120_000);
    assert_eq!(e.advance().absolute, 1);
    expected.push(removed(b.session.id, RemoveReason::Absolute));
    clock.set(T0 + 1_500 + 600_000);
    assert_eq!(e.advance().idle, 1);
    expected.push(removed(c.session.id, RemoveReason::Idle));

    // The per-user limit displaces the oldest before the create is reported.
    let d1 = e.create(new("dave", None)).unwrap();
    expected.push(created(&d1, None, None));
    clock.advance(10);
    let d2 = e.create(new("dave", None)).unwrap();
    expected.push(created(&d2, None, None));
    clock.advance(10);
    let d3 = e.create(new("dave", None)).unwrap();
    assert_eq!(d3.displaced, 1);
    expected.push(removed(d1.session.id, RemoveReason::Displaced));
    expected.push(created(&d3, None, None));
    // At the limit, an expired session of the user is evicted as an expiry (as the wheel
    // would), not displaced, and the live one stays.
    clock.advance(300_000);
    assert!(is_valid(&e.touch(d3.token.expose())));
    expected.push((
        e.shard_of(d3.session.id),
        Seen::Activity {
            id: d3.session.id.0,
            last_ms: e.now_ms(),
        },
    ));
    clock.advance(300_000);
    let d4 = e.create(new("dave", None)).unwrap();
    assert_eq!(d4.displaced, 0);
    expected.push(removed(d2.session.id, RemoveReason::Idle));
    expected.push(created(&d4, None, None));

    // A tighter policy evicts through the same report.
    let f = e.create(new("frank", Some("acme"))).unwrap();
    expected.push(created(&f, Some("acme"), None));
    clock.advance(61_000);
    e.set_org_policy("acme", OrgPolicy::Custom(policy(60, Some(600), false)))
        .unwrap();
    expected.push(removed(f.session.id, RemoveReason::Absolute));

    // A user-wide revocation: its removals, then its mark (under shard 0).
    let g = e.create(new("gina", None)).unwrap();
    expected.push(created(&g, None, None));
    assert_eq!(e.revoke_user("gina"), 1);
    expected.push(removed(g.session.id, RemoveReason::Revoked));
    expected.push((
        0,
        Seen::NotBefore {
            scope: Scope::User,
            id: "gina".into(),
            before_ms: e.now_ms(),
        },
    ));

    // Start-up replay is not reported.
    let saved = Saved {
        id: 0xfeed,
        created_ms: e.now_ms(),
        last_ms: e.now_ms(),
        user: "replayed".into(),
        org: None,
        metadata: None,
    };
    assert!(e.restore(saved));
    let replayed = crate::token::SessionId(0xfeed);
    e.restore_activity(replayed, e.now_ms() + 5_000);
    e.restore_remove(replayed);
    assert!(e.get(replayed).is_none());

    assert_eq!(*rec.0.lock(), expected);
    e.check();
}

/// A revocation of an id not in the table: reported once per call on a cluster node, never on
/// a single node (no journal frame there).
#[test]
fn a_revocation_of_a_session_not_held_is_reported_by_a_cluster_node_only() {
    use crate::changes::{Change, Changes};
    use crate::session::RemoveReason;
    use crate::token::SessionId;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Removals(Mutex<Vec<(usize, u128, RemoveReason)>>);
    impl Changes for Removals {
        fn record(&self, shard: usize, change: Change<'_>) {
            if let Change::Removed { id, reason } = change {
                self.0.lock().push((shard, id, reason));
            }
        }
    }

    for cluster in [false, true] {
        let rec = Arc::new(Removals::default());
        let e = Engine::with_changes(
            EngineConfig {
                shards: 4,
                cluster,
                ..EngineConfig::default()
            },
            ManualClock::new(T0),
            Some(rec.clone() as Arc<dyn Changes>),
        );
        let held = e.create(new("alice", None)).unwrap();
        let absent = SessionId(0xab5e_0000_0000_0000_0000_0000_0000_0001);
        assert!(!e.revoke_id(absent));
        assert!(!e.revoke_id(absent));
        assert!(e.revoke(held.token.expose()));
        let id = held.session.id;
        let mut want = Vec::new();
        if cluster {
            let revoked = (e.shard_of(absent), absent.0, RemoveReason::Revoked);
            want.extend([revoked, revoked]);
        }
        want.push((e.shard_of(id), id.0, RemoveReason::Revoked));
        assert_eq!(*rec.0.lock(), want, "cluster: {cluster}");
        assert_eq!(e.len(), 0);
        e.check();
    }
}
