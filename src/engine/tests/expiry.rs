//! Expiry and activity: the lifecycle of one session on a manual clock.
//!
//! What these tests hold the engine to:
//! 1. Create, validate, touch and revoke do what they say, and touch moves only the idle
//!    deadline (engine, shard invariant 2).
//! 2. An expired session never validates, even before the wheel sweeps it (shard invariant 3).
//! 3. A touch never moves a session past its absolute deadline and never revives one.
//! 4. The wheel evicts within one tick of the deadline, re-files a touched session instead of
//!    evicting it, and survives clock jumps of days and steps back.
//! 5. After the clock steps back, eviction still lags a deadline by at most one tick: for the
//!    sessions created after the step as for those filed before it, which are not evicted early.

use super::*;

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
fn after_the_clock_steps_back_eviction_still_lags_a_deadline_by_a_tick_at_most() {
    let (e, clock) = engine(policy(2, None, false));
    // The reaper has run up to T0 + 120 s, where a session is created.
    clock.advance(120_000);
    assert_eq!(e.advance().total(), 0);
    let before = e.create(new("before", None)).unwrap();
    // The clock steps back 60 s; a session created then lives 2 s by that clock.
    clock.set(T0 + 60_000);
    let after = e.create(new("after", None)).unwrap();
    assert_eq!(after.session.expires_at_ms, T0 + 62_000);
    clock.advance(1_999);
    assert_eq!(
        e.advance().total(),
        0,
        "one millisecond before its deadline"
    );
    clock.advance(1); // its deadline, on a tick boundary
    assert_eq!(
        e.validate(after.token.expose()),
        Validation::Invalid(Invalid::ExpiredAbsolute)
    );
    assert_eq!(e.advance().absolute, 1);
    assert!(e.get(after.session.id).is_none());
    assert_eq!(e.list_user("after").len(), 0);
    // The session filed before the step keeps its own deadline, T0 + 122 s: never evicted
    // early, however often the wheel fires it meanwhile.
    for t in (62_100..122_000).step_by(700) {
        clock.set(T0 + t);
        assert_eq!(e.advance().total(), 0, "at T0 + {t} ms");
    }
    assert!(is_valid(&e.validate(before.token.expose())));
    clock.set(T0 + 122_000);
    assert_eq!(e.advance().absolute, 1);
    assert!(e.is_empty());
    e.check();

    // The first pass after a step evicts at once what is already due, even when that pass
    // comes late (no reaper ran in between).
    clock.set(T0 + 200_000);
    assert_eq!(e.advance().total(), 0);
    clock.set(T0 + 100_000);
    let late = e.create(new("late", None)).unwrap();
    clock.advance(2_050);
    assert_eq!(e.advance().absolute, 1);
    assert!(e.get(late.session.id).is_none());
    e.check();
}
