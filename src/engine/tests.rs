//! Engine behaviour tests: deterministic, on a manual clock, no sleeping.

use crate::clock::ManualClock;
use crate::engine::{Engine, EngineConfig, EngineError, UserLimitAction};
use crate::policy::{Mode, OrgPolicy, Policy};
use crate::session::{Invalid, NewSession, Validation};
use std::sync::Arc;

const T0: u64 = 1_800_000_000_000;

fn policy(abs_s: u64, idle_s: Option<u64>, persistent: bool) -> Policy {
    Policy {
        absolute_timeout_secs: abs_s,
        idle_timeout_enabled: idle_s.is_some(),
        idle_timeout_secs: idle_s,
        persistent,
    }
}

fn engine_with(cfg: EngineConfig) -> (Engine, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    (Engine::new(cfg, clock.clone()), clock)
}

fn engine(app: Policy) -> (Engine, Arc<ManualClock>) {
    engine_with(EngineConfig {
        shards: 4,
        application_policy: app,
        ..EngineConfig::default()
    })
}

fn new(user: &str, org: Option<&str>) -> NewSession {
    NewSession {
        user_id: user.into(),
        org_id: org.map(Into::into),
        metadata: None,
    }
}

fn is_valid(v: &Validation) -> bool {
    matches!(v, Validation::Valid(_))
}

#[test]
fn create_validate_touch_revoke() {
    let (e, clock) = engine(policy(3_600, Some(600), false));
    let c = e.create(new("alice", Some("acme"))).unwrap();
    let s = &c.session;
    assert_eq!(s.user_id, "alice");
    assert_eq!(s.org_id.as_deref(), Some("acme"));
    assert_eq!(s.created_at_ms, T0);
    assert_eq!(s.idle_expires_at_ms, Some(T0 + 600_000));
    assert_eq!(s.absolute_expires_at_ms, T0 + 3_600_000);
    assert_eq!(s.expires_at_ms, T0 + 600_000);
    let tok = c.token.expose().to_owned();

    clock.advance(300_000);
    let Validation::Valid(v) = e.validate(&tok) else {
        panic!()
    };
    assert_eq!(v.last_activity_at_ms, T0, "validate has no side effect");
    let Validation::Valid(t) = e.touch(&tok) else {
        panic!()
    };
    assert_eq!(t.last_activity_at_ms, T0 + 300_000);
    assert_eq!(t.expires_at_ms, T0 + 900_000);
    assert_eq!(
        e.get(c.session.id).unwrap().last_activity_at_ms,
        T0 + 300_000
    );

    assert!(e.revoke(&tok));
    assert!(!e.revoke(&tok));
    assert_eq!(e.validate(&tok), Validation::Invalid(Invalid::NotFound));
    assert_eq!(
        e.validate("garbage"),
        Validation::Invalid(Invalid::Malformed)
    );
    assert!(e.is_empty());
    e.check();
}

#[test]
fn expired_never_validates_even_before_the_sweep() {
    let (e, clock) = engine(policy(3_600, Some(60), false));
    let c = e.create(new("u", None)).unwrap();
    let tok = c.token.expose();
    clock.advance(59_999);
    assert!(is_valid(&e.validate(tok)));
    clock.advance(1);
    assert_eq!(e.validate(tok), Validation::Invalid(Invalid::ExpiredIdle));
    assert_eq!(
        e.touch(tok),
        Validation::Invalid(Invalid::ExpiredIdle),
        "touch cannot revive"
    );
    assert_eq!(e.len(), 1, "not swept yet");
    let ev = e.advance();
    assert_eq!((ev.idle, ev.absolute), (1, 0));
    assert_eq!(e.validate(tok), Validation::Invalid(Invalid::NotFound));
    e.check();
}

#[test]
fn touch_identity_touches_like_touch_and_lends_who_it_is() {
    let (e, clock) = engine(policy(3_600, Some(600), false));
    let c = e.create(new("alice", Some("acme"))).unwrap();
    let tok = c.token.expose();
    let lone = e.create(new("bob", None)).unwrap();
    clock.advance(300_000);
    let who = e.touch_identity(tok, |w| {
        (
            w.id,
            w.user_id.to_owned(),
            w.org_id.map(str::to_owned),
            w.last_activity_at_ms,
            w.expires_at_ms,
            w.expires_in_secs(),
        )
    });
    assert_eq!(
        who,
        Ok((
            c.session.id,
            "alice".into(),
            Some("acme".into()),
            T0 + 300_000,
            T0 + 900_000,
            600
        ))
    );
    assert_eq!(
        e.get(c.session.id).unwrap().last_activity_at_ms,
        T0 + 300_000,
        "the activity is recorded"
    );
    assert_eq!(
        e.touch_identity(lone.token.expose(), |w| w.org_id.is_none()),
        Ok(true)
    );
    assert_eq!(e.touch_identity("garbage", |_| ()), Err(Invalid::Malformed));
    clock.advance(900_000);
    assert_eq!(
        e.touch_identity(tok, |_| ()),
        Err(Invalid::ExpiredIdle),
        "cannot revive"
    );
    assert!(e.revoke(lone.token.expose()));
    assert_eq!(
        e.touch_identity(lone.token.expose(), |_| ()),
        Err(Invalid::NotFound)
    );
    e.check();
}

#[test]
fn touch_never_moves_past_the_absolute_deadline() {
    let (e, clock) = engine(policy(100, Some(60), false));
    let c = e.create(new("u", None)).unwrap();
    let tok = c.token.expose();
    for _ in 0..3 {
        clock.advance(30_000);
        let _ = e.touch(tok);
    }
    // At T0+90s: idle would be T0+150s, absolute caps it at T0+100s.
    let Validation::Valid(v) = e.validate(tok) else {
        panic!()
    };
    assert_eq!(v.expires_at_ms, T0 + 100_000);
    clock.advance(10_000);
    assert_eq!(e.touch(tok), Validation::Invalid(Invalid::ExpiredAbsolute));
    assert_eq!(e.advance().absolute, 1);
}

#[test]
fn eviction_is_exact_to_one_tick() {
    let (e, clock) = engine(policy(10, None, false));
    let _ = e.create(new("u", None)).unwrap();
    clock.advance(9_999);
    assert_eq!(e.advance().total(), 0);
    clock.advance(1);
    // The deadline is on a tick boundary here (T0 is a multiple of 100 ms).
    assert_eq!(e.advance().absolute, 1);
    // A deadline inside a tick is swept by the end of that tick.
    clock.advance(50);
    let _ = e.create(new("u", None)).unwrap();
    clock.advance(9_999);
    assert_eq!(
        e.advance().total(),
        0,
        "one millisecond before the deadline"
    );
    clock.advance(51); // the next tick boundary after the deadline
    assert_eq!(e.advance().absolute, 1);
}

#[test]
fn touched_session_is_refiled_not_evicted_when_its_old_slot_fires() {
    let (e, clock) = engine(policy(3_600, Some(60), false));
    let c = e.create(new("u", None)).unwrap();
    clock.advance(50_000);
    let _ = e.touch(c.token.expose());
    clock.advance(20_000); // past the original idle deadline
    assert_eq!(e.advance().total(), 0);
    assert!(is_valid(&e.validate(c.token.expose())));
    clock.advance(40_000);
    assert_eq!(e.advance().idle, 1);
    e.check();
}

#[test]
fn clock_jump_of_days_and_step_back() {
    let (e, clock) = engine(policy(86_400, None, false));
    let tokens: Vec<_> = (0..100)
        .map(|i| {
            clock.advance(1_000);
            e.create(new(&format!("u{i}"), None)).unwrap().token
        })
        .collect();
    clock.set(T0 - 10_000_000); // back before anything was created
    assert_eq!(e.advance().total(), 0);
    assert!(tokens.iter().all(|t| is_valid(&e.validate(t.expose()))));
    clock.set(T0 + 3 * 86_400_000);
    assert_eq!(e.advance().absolute, 100);
    assert!(e.is_empty());
    e.check();
}

#[test]
fn tighter_org_policy_evicts_at_once_and_looser_extends() {
    let (e, clock) = engine(policy(86_400, None, false));
    let old = e.create(new("a", Some("acme"))).unwrap();
    clock.advance(2 * 3_600_000);
    let young = e.create(new("b", Some("acme"))).unwrap();
    let other = e.create(new("c", Some("other"))).unwrap();
    let ch = e
        .set_org_policy("acme", OrgPolicy::Custom(policy(3_600, None, false)))
        .unwrap();
    assert!(ch.changed);
    assert_eq!(ch.reapplied.evicted.absolute, 1);
    assert_eq!(ch.reapplied.refiled, 1);
    assert_eq!(
        e.validate(old.token.expose()),
        Validation::Invalid(Invalid::NotFound)
    );
    let Validation::Valid(v) = e.validate(young.token.expose()) else {
        panic!()
    };
    assert_eq!(v.expires_at_ms, young.session.created_at_ms + 3_600_000);
    assert!(is_valid(&e.validate(other.token.expose())));
    // The re-filed session is swept at its new, earlier deadline.
    clock.advance(3_600_000);
    assert_eq!(e.advance().absolute, 1);
    // Loosening extends: back to APPLICATION.
    let c = e.create(new("d", Some("acme"))).unwrap();
    let ch = e.set_org_policy("acme", OrgPolicy::Application).unwrap();
    assert!(ch.changed);
    let Validation::Valid(v) = e.validate(c.token.expose()) else {
        panic!()
    };
    assert_eq!(v.expires_at_ms, c.session.created_at_ms + 86_400_000);
    // Writing the same effective policy again re-applies nothing.
    assert!(
        !e.set_org_policy("acme", OrgPolicy::Application)
            .unwrap()
            .changed
    );
    e.check();
}

#[test]
fn application_policy_change_reaches_inheriting_orgs_and_stricter_customs() {
    let (e, clock) = engine(policy(86_400, None, false));
    let inherit = e.create(new("a", Some("inherit"))).unwrap();
    let none = e.create(new("b", None)).unwrap();
    e.set_org_policy("custom", OrgPolicy::Custom(policy(7_200, None, false)))
        .unwrap();
    let custom = e.create(new("c", Some("custom"))).unwrap();
    clock.advance(1_800_000);
    let ch = e.set_application_policy(policy(1_000, None, false));
    assert_eq!(
        ch.reapplied.evicted.absolute, 3,
        "stricter: all three are past 1000 s"
    );
    for t in [&inherit, &none, &custom] {
        assert!(!is_valid(&e.validate(t.token.expose())));
    }
    e.check();
}

#[test]
fn override_mode_lets_the_org_loosen() {
    let (e, clock) = engine_with(EngineConfig {
        shards: 2,
        mode: Mode::Override,
        application_policy: policy(3_600, Some(300), false),
        ..EngineConfig::default()
    });
    e.set_org_policy("lax", OrgPolicy::Custom(policy(86_400, None, true)))
        .unwrap();
    let c = e.create(new("u", Some("lax"))).unwrap();
    assert!(c.session.persistent);
    assert_eq!(c.session.idle_expires_at_ms, None);
    clock.advance(7_200_000);
    assert!(is_valid(&e.validate(c.token.expose())));
    assert_eq!(e.org_policy("lax").effective, policy(86_400, None, true));
}

#[test]
fn persistent_requires_both_in_stricter_mode() {
    let (e, _) = engine(policy(3_600, None, true));
    e.set_org_policy("p", OrgPolicy::Custom(policy(3_600, None, true)))
        .unwrap();
    e.set_org_policy("np", OrgPolicy::Custom(policy(3_600, None, false)))
        .unwrap();
    assert!(e.create(new("u", Some("p"))).unwrap().session.persistent);
    assert!(!e.create(new("u", Some("np"))).unwrap().session.persistent);
    assert!(e.create(new("u", None)).unwrap().session.persistent);
}

#[test]
fn list_and_revoke_by_user_and_org() {
    let (e, clock) = engine(policy(3_600, None, false));
    for i in 0..10 {
        clock.advance(1);
        let user = if i % 2 == 0 { "even" } else { "odd" };
        let org = if i < 5 { "first" } else { "second" };
        let _ = e.create(new(user, Some(org))).unwrap();
    }
    let evens = e.list_user("even");
    assert_eq!(evens.len(), 5);
    assert!(
        evens
            .windows(2)
            .all(|w| w[0].created_at_ms < w[1].created_at_ms)
    );
    assert!(e.list_user("nobody").is_empty());
    assert_eq!(e.revoke_org("first"), 5);
    assert_eq!(e.list_user("even").len(), 2);
    assert_eq!(e.revoke_user("odd"), 3);
    assert_eq!(e.revoke_user("odd"), 0);
    assert_eq!(e.len(), 2);
    e.check();
}

#[test]
fn capacity_is_a_clean_error() {
    let (e, _) = engine_with(EngineConfig {
        shards: 2,
        max_sessions: 3,
        ..EngineConfig::default()
    });
    let toks: Vec<_> = (0..3)
        .map(|_| e.create(new("u", None)).unwrap().token)
        .collect();
    assert!(matches!(
        e.create(new("u", None)),
        Err(EngineError::Capacity { max: 3 })
    ));
    assert_eq!(e.len(), 3);
    assert!(toks.iter().all(|t| is_valid(&e.validate(t.expose()))));
    assert!(e.revoke(toks[0].expose()));
    assert!(e.create(new("u", None)).is_ok());
}

#[test]
fn per_user_limit_refuses_or_evicts_the_oldest() {
    let (e, clock) = engine_with(EngineConfig {
        shards: 8,
        max_sessions_per_user: Some(2),
        ..EngineConfig::default()
    });
    let a = e.create(new("u", None)).unwrap();
    clock.advance(1);
    let _b = e.create(new("u", None)).unwrap();
    assert!(matches!(
        e.create(new("u", None)),
        Err(EngineError::UserLimit { max: 2 })
    ));
    assert!(e.create(new("someone-else", None)).is_ok());
    assert!(is_valid(&e.validate(a.token.expose())));

    let (e, clock) = engine_with(EngineConfig {
        shards: 8,
        max_sessions_per_user: Some(2),
        user_limit_action: UserLimitAction::EvictOldest,
        ..EngineConfig::default()
    });
    let a = e.create(new("u", None)).unwrap();
    clock.advance(1);
    let b = e.create(new("u", None)).unwrap();
    clock.advance(1);
    let c = e.create(new("u", None)).unwrap();
    assert_eq!(c.displaced, 1);
    assert!(!is_valid(&e.validate(a.token.expose())));
    assert!(is_valid(&e.validate(b.token.expose())));
    assert_eq!(e.list_user("u").len(), 2);
    e.check();
}

#[test]
fn bad_ids_are_refused_by_name() {
    let (e, _) = engine(policy(60, None, false));
    let err = e.create(new("", None)).unwrap_err();
    assert_eq!(err.to_string(), "user_id must not be empty");
    let err = e.create(new("u", Some(&"o".repeat(300)))).unwrap_err();
    assert!(err.to_string().starts_with("org_id is 300 bytes"));
    assert!(e.is_empty());
}

#[test]
fn metadata_is_kept_beside_the_record_and_freed_with_it() {
    let (e, _) = engine(policy(3_600, None, false));
    let meta = crate::session::Metadata::new(vec![("ip".into(), "10.0.0.1".into())]).unwrap();
    let with = e
        .create(NewSession {
            user_id: "u".into(),
            org_id: None,
            metadata: Some(meta.clone()),
        })
        .unwrap();
    let without = e.create(new("u", None)).unwrap();
    let Validation::Valid(v) = e.validate(with.token.expose()) else {
        panic!()
    };
    assert_eq!(v.metadata.as_deref(), Some(&meta));
    let Validation::Valid(v) = e.validate(without.token.expose()) else {
        panic!()
    };
    assert_eq!(v.metadata, None);
    e.check();
    // A freed record reused by a session without metadata must not inherit any.
    assert!(e.revoke(with.token.expose()));
    let reuse = e.create(new("u", None)).unwrap();
    assert_eq!(e.get(reuse.session.id).unwrap().metadata, None);
    e.check();
}

#[test]
fn long_user_ids_work_like_short_ones() {
    let (e, _) = engine(policy(3_600, None, false));
    let long = "a-user-id-much-longer-than-sixteen-bytes@example.com";
    let short = "exactly-16-bytes";
    let mut tokens = Vec::new();
    for user in [long, short, long, short] {
        let c = e.create(new(user, Some("o"))).unwrap();
        assert_eq!(c.session.user_id, user);
        tokens.push(c.token);
    }
    e.check();
    assert_eq!(e.list_user(long).len(), 2);
    assert_eq!(e.list_user(short).len(), 2);
    let Validation::Valid(v) = e.validate(tokens[0].expose()) else {
        panic!()
    };
    assert_eq!(v.user_id, long);
    assert_eq!(e.revoke_user(long), 2);
    e.check();
    // Freed records are reused without keeping the old long id.
    let c = e.create(new("bob", None)).unwrap();
    assert_eq!(e.get(c.session.id).unwrap().user_id, "bob");
    assert_eq!(e.list_user(short).len(), 2);
    e.check();
}

#[test]
fn dry_run_counts_what_the_change_would_do_and_changes_nothing() {
    use crate::policy::PolicyWrite;
    use crate::shard::{DryRunCounts, Evictions};
    let (e, clock) = engine(policy(86_400, Some(1_800), false));
    let s1 = e.create(new("a", Some("acme"))).unwrap().token;
    let s2 = e.create(new("b", Some("acme"))).unwrap().token;
    let other = e.create(new("c", Some("other"))).unwrap().token;
    clock.advance(20 * 60_000);
    let s3 = e.create(new("d", Some("acme"))).unwrap().token;
    assert!(is_valid(&e.touch(s2.expose())));

    // Idle 10 min: s1 (idle since T0) goes; s2 and s3 (active at 20 min) now end at 30 min
    // instead of 50 min. `other` is not governed by acme's policy.
    let tighter = PolicyWrite::Org {
        org: "acme".into(),
        policy: OrgPolicy::Custom(policy(3_600, Some(600), false)),
    };
    let dry = e.dry_run(&tighter).unwrap();
    assert_eq!(
        dry.sessions,
        DryRunCounts {
            affected: 3,
            would_evict: Evictions {
                idle: 1,
                absolute: 0
            },
            deadline_earlier: 2,
            deadline_later: 0,
        }
    );
    assert_eq!(dry.effective, policy(3_600, Some(600), false));
    assert_eq!(e.len(), 4);
    assert_eq!(e.org_policy("acme").org_policy, OrgPolicy::Application);

    // Absolute 15 min: s1 and s2 (created at T0) are past it; s3 moves earlier.
    let abs = PolicyWrite::Org {
        org: "acme".into(),
        policy: OrgPolicy::Custom(policy(900, Some(1_800), false)),
    };
    let dry = e.dry_run(&abs).unwrap().sessions;
    assert_eq!(
        (
            dry.would_evict.absolute,
            dry.would_evict.idle,
            dry.deadline_earlier
        ),
        (2, 0, 1)
    );

    // The application policy governs every inheriting org and the org-less sessions: a looser
    // one (no idle timeout) moves every deadline later.
    let looser = PolicyWrite::Application(policy(2 * 86_400, None, false));
    let dry = e.dry_run(&looser).unwrap().sessions;
    assert_eq!((dry.affected, dry.deadline_later), (4, 4));

    // The real change does what the dry run said.
    let change = e.set_org_policy("acme", OrgPolicy::Custom(policy(3_600, Some(600), false)));
    assert_eq!(change.unwrap().reapplied.evicted.idle, 1);
    assert!(!is_valid(&e.validate(s1.expose())));
    assert!(is_valid(&e.validate(s3.expose())));
    assert!(is_valid(&e.validate(other.expose())));
    // Dry-running the policy already in force affects nothing.
    assert_eq!(
        e.dry_run(&tighter).unwrap().sessions,
        DryRunCounts::default()
    );
    // Org ids are checked like the real write's.
    let bad = PolicyWrite::Org {
        org: String::new(),
        policy: OrgPolicy::Application,
    };
    assert!(matches!(e.dry_run(&bad), Err(EngineError::Input(_))));
}

/// The engine reports exactly the changes of a scripted scenario through the `changes` seam,
/// each with the shard that holds the session, and nothing for start-up replay.
#[test]
fn every_change_is_reported_once_through_the_seam() {
    use crate::changes::{Change, Changes};
    use crate::session::{Metadata, RemoveReason, Saved};
    use parking_lot::Mutex;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Created(Saved),
        Activity { id: u128, last_ms: u64 },
        Removed { id: u128, reason: RemoveReason },
    }

    /// Records every report, in order, with its shard.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, Seen)>>);

    impl Changes for Recorder {
        fn record(&self, shard: usize, change: Change<'_>) {
            let seen = match change {
                Change::Created(s) => Seen::Created(s.to_saved()),
                Change::Activity { id, last_ms } => Seen::Activity { id, last_ms },
                Change::Removed { id, reason } => Seen::Removed { id, reason },
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

    // A tighter policy evicts through the same report.
    let f = e.create(new("frank", Some("acme"))).unwrap();
    expected.push(created(&f, Some("acme"), None));
    clock.advance(61_000);
    e.set_org_policy("acme", OrgPolicy::Custom(policy(60, Some(600), false)))
        .unwrap();
    expected.push(removed(f.session.id, RemoveReason::Absolute));

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
