//! Users, orgs and limits: lists, bulk revocation, capacity, per-user limits, bad input,
//! metadata and long user ids.
//!
//! What these tests hold the engine to:
//! 1. Sessions are listed and revoked by user and by org.
//! 2. `max_sessions` is a clean error, never exceeded (engine invariant 3); the per-user limit
//!    refuses or evicts the oldest (engine invariant 4).
//! 3. Bad ids are refused by name.
//! 4. Metadata and long user ids live beside the record and are freed with it.
//! 5. Both limits count live sessions: an expired session not yet swept holds no place (at
//!    `max_sessions`, one expired by the last tick boundary; under the per-user limit, one
//!    expired at all), and evict-oldest never displaces a live session to keep an expired one.

use super::*;

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
fn capacity_counts_no_session_the_wheel_holds_due() {
    let (e, clock) = engine_with(EngineConfig {
        shards: 2,
        max_sessions: 2,
        application_policy: policy(1, None, false),
        ..EngineConfig::default()
    });
    let old: Vec<_> = (0..2)
        .map(|_| e.create(new("u", None)).unwrap().token)
        .collect();
    // Both expired on the tick boundary at T0 + 1 s, and no reaper has run since.
    clock.advance(1_000);
    assert_eq!(e.len(), 2);
    let c = e.create(new("u", None)).unwrap();
    assert!(is_valid(&e.validate(c.token.expose())));
    assert!(old.iter().all(|t| !is_valid(&e.validate(t.expose()))));
    assert_eq!(e.len(), 1);
    assert_eq!(e.take_limit_evictions().absolute, 2);
    assert_eq!(e.take_limit_evictions().total(), 0, "taken once");
    e.check();
}

#[test]
fn per_user_limit_counts_only_live_sessions() {
    let (e, clock) = engine_with(EngineConfig {
        shards: 8,
        max_sessions_per_user: Some(1),
        application_policy: policy(60, None, false),
        ..EngineConfig::default()
    });
    let a = e.create(new("u", None)).unwrap();
    // Expired within the current tick: the wheel has not swept it and could not have yet.
    clock.advance(60_050);
    assert_eq!(
        e.validate(a.token.expose()),
        Validation::Invalid(Invalid::ExpiredAbsolute)
    );
    let b = e.create(new("u", None)).unwrap();
    assert_eq!(b.displaced, 0);
    assert!(is_valid(&e.validate(b.token.expose())));
    assert!(e.get(a.session.id).is_none(), "the expired one is evicted");
    assert_eq!(e.list_user("u").len(), 1);
    assert_eq!(e.len(), 1);
    assert_eq!(e.take_limit_evictions().absolute, 1);
    // A live session still holds its place.
    assert!(matches!(
        e.create(new("u", None)),
        Err(EngineError::UserLimit { max: 1 })
    ));
    e.check();
}

#[test]
fn evict_oldest_takes_an_expired_session_not_a_live_one() {
    let (e, clock) = engine_with(EngineConfig {
        shards: 8,
        max_sessions_per_user: Some(2),
        user_limit_action: UserLimitAction::EvictOldest,
        application_policy: policy(3_600, Some(10), false),
        ..EngineConfig::default()
    });
    let a = e.create(new("u", None)).unwrap();
    clock.advance(1);
    let b = e.create(new("u", None)).unwrap();
    clock.advance(5_000);
    assert!(is_valid(&e.touch(a.token.expose())));
    // B idled out at T0 + 10.001 s; A, the oldest, is kept alive by its touch.
    clock.advance(5_050);
    assert_eq!(
        e.validate(b.token.expose()),
        Validation::Invalid(Invalid::ExpiredIdle)
    );
    let c = e.create(new("u", None)).unwrap();
    assert_eq!(c.displaced, 0, "no live session displaced");
    assert!(is_valid(&e.validate(a.token.expose())));
    assert!(is_valid(&e.validate(c.token.expose())));
    assert!(e.get(b.session.id).is_none());
    assert_eq!(e.take_limit_evictions().idle, 1);
    // At the limit with two live sessions, the oldest live one goes.
    clock.advance(1);
    let d = e.create(new("u", None)).unwrap();
    assert_eq!(d.displaced, 1);
    assert!(!is_valid(&e.validate(a.token.expose())));
    assert!(is_valid(&e.validate(c.token.expose())));
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

fn forms(e: &Engine) -> [usize; 3] {
    e.shards.iter().fold([0; 3], |a, s| {
        let f = s.read().user_forms();
        [a[0] + f[0], a[1] + f[1], a[2] + f[2]]
    })
}

#[test]
fn packed_user_ids_read_back_exactly_and_list_like_text_ones() {
    let (e, _) = engine(policy(3_600, None, false));
    let users = [
        "0b6f2c1e-9a4d-4c3b-8e2f-1a2b3c4d5e6f",
        "0B6F2C1E-9A4D-4C3B-8E2F-1A2B3C4D5E6F",
        "kp_0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "auth0|5f7c8ec7c33c6c004bbafe82",
        "usr_000123456789012345",
        "109876543210987654321",
    ];
    let mut tokens = Vec::new();
    for user in users.iter().chain(&users) {
        let c = e.create(new(user, Some("org_000000000000000042"))).unwrap();
        assert_eq!(c.session.user_id, *user);
        tokens.push(c.token);
    }
    assert_eq!(forms(&e), [0, 0, 12], "all packed");
    e.check();
    for (t, user) in tokens.iter().zip(users.iter().chain(&users)) {
        let got = e.touch_identity(t.expose(), |i| i.user_id.to_owned());
        assert_eq!(got.ok().as_deref(), Some(*user));
        let Validation::Valid(v) = e.validate(t.expose()) else {
            panic!()
        };
        assert_eq!(v.user_id, *user);
    }
    for user in users {
        assert_eq!(e.list_user(user).len(), 2, "{user}");
    }
    // Same value, other case: another user.
    assert!(e.list_user(&users[0].replace('b', "B")).is_empty());
    assert_eq!(e.revoke_user(users[1]), 2);
    assert_eq!(e.list_user(users[0]).len(), 2);
    e.check();
}

#[test]
fn a_full_shape_table_falls_back_to_text_and_a_user_keeps_one_form() {
    let (e, _) = engine_with(EngineConfig {
        shards: 1,
        ..EngineConfig::default()
    });
    // 62 shapes (prefixes) fill the shard's table; the 63rd keeps the text path.
    let shaped: Vec<String> = (0..62).map(|i| format!("p{i}_{:018}", i)).collect();
    for u in &shaped {
        e.create(new(u, None)).unwrap();
    }
    let late = "late_000000000000000001";
    e.create(new(late, None)).unwrap();
    assert_eq!(forms(&e), [0, 1, 62]);
    e.check();
    // A shape freed: the late user's next session joins its list as text, not packed.
    assert_eq!(e.revoke_user(&shaped[0]), 1);
    e.create(new(late, None)).unwrap();
    assert_eq!(forms(&e), [0, 2, 61]);
    assert_eq!(e.list_user(late).len(), 2);
    e.check();
    // Once its text list is gone, the user packs.
    assert_eq!(e.revoke_user(late), 2);
    let c = e.create(new(late, None)).unwrap();
    assert_eq!(forms(&e), [0, 0, 62]);
    assert_eq!(e.get(c.session.id).unwrap().user_id, late);
    e.check();
}
