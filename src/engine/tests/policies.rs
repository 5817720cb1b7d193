//! Policy changes seen from the sessions: resolution, re-application, the dry run.
//!
//! What these tests hold the engine to:
//! 1. A tighter org policy evicts at once what it puts past a deadline; a looser one extends
//!    (shard invariant 4).
//! 2. An application policy change reaches every org that inherits it, and the customs that
//!    stricter mode bounds by it; override mode lets an org loosen.
//! 3. `persistent` needs both policies in stricter mode.
//! 4. A dry run counts exactly what the change would do and changes nothing.
//! 5. A session already expired when the policy changes stays dead, however loose the new
//!    policy: the change evicts it (and its dry run counts it), it never validates again.
//! 6. `persistent` follows the policy in force, like the deadlines: a change reaches every
//!    session it governs, in every read (validate, touch, get, a user's list).

use super::*;

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
fn a_looser_policy_never_revives_an_expired_session() {
    use crate::policy::PolicyWrite;
    // Override mode, so that the org's own policy can loosen the application's.
    let (e, clock) = engine_with(EngineConfig {
        shards: 4,
        mode: Mode::Override,
        application_policy: policy(60, Some(1), false),
        ..EngineConfig::default()
    });
    let idle = e.create(new("a", Some("acme"))).unwrap();
    let live = e.create(new("b", Some("acme"))).unwrap();
    let org_less = e.create(new("c", None)).unwrap();
    // Within the tick after the idle deadline: expired, not yet swept.
    clock.advance(600);
    assert!(is_valid(&e.touch(live.token.expose())));
    clock.advance(450);
    assert_eq!(
        e.validate(idle.token.expose()),
        Validation::Invalid(Invalid::ExpiredIdle)
    );
    // Idle 30 s through the org: the dry run and the change evict it, by the deadline that
    // had passed; the session still active is kept.
    let looser = policy(60, Some(30), false);
    let write = PolicyWrite::Org {
        org: "acme".into(),
        policy: OrgPolicy::Custom(looser),
    };
    let dry = e.dry_run(&write).unwrap().sessions;
    assert_eq!((dry.affected, dry.would_evict.idle), (2, 1));
    let change = e.set_org_policy("acme", OrgPolicy::Custom(looser)).unwrap();
    assert_eq!(change.reapplied.as_counts(), dry);
    assert_eq!(
        e.validate(idle.token.expose()),
        Validation::Invalid(Invalid::NotFound)
    );
    assert!(is_valid(&e.validate(live.token.expose())));
    // The same through the application policy, for the org-less session.
    assert_eq!(
        e.validate(org_less.token.expose()),
        Validation::Invalid(Invalid::ExpiredIdle)
    );
    let write = PolicyWrite::Application(looser);
    assert_eq!(e.dry_run(&write).unwrap().sessions.would_evict.idle, 1);
    assert_eq!(e.set_application_policy(looser).reapplied.evicted.idle, 1);
    assert_eq!(
        e.validate(org_less.token.expose()),
        Validation::Invalid(Invalid::NotFound)
    );
    assert_eq!(e.len(), 1);
    e.check();
}

#[test]
fn persistent_follows_the_policy_in_force() {
    let (e, _) = engine(policy(3_600, None, true));
    let plain = e.create(new("u", None)).unwrap();
    let acme = e.create(new("u", Some("acme"))).unwrap();
    assert!(plain.session.persistent && acme.session.persistent);
    // Every read of both sessions says `want`.
    let says = |want: [bool; 2]| {
        for (c, want) in [(&plain, want[0]), (&acme, want[1])] {
            let t = c.token.expose();
            let Validation::Valid(v) = e.validate(t) else {
                panic!()
            };
            assert_eq!(v.persistent, want, "validate");
            assert_eq!(e.validate_with(t, |s, _| s.persistent), Ok(want));
            let Validation::Valid(v) = e.touch(t) else {
                panic!()
            };
            assert_eq!(v.persistent, want, "touch");
            assert_eq!(e.get(c.session.id).unwrap().persistent, want, "get");
            let listed = e.list_user("u");
            let l = listed.iter().find(|v| v.id == c.session.id).unwrap();
            assert_eq!(l.persistent, want, "list");
        }
    };
    says([true, true]);
    e.set_application_policy(policy(3_600, None, false));
    says([false, false]);
    e.set_application_policy(policy(3_600, None, true));
    says([true, true]);
    e.set_org_policy("acme", OrgPolicy::Custom(policy(3_600, None, false)))
        .unwrap();
    says([true, false]);
    e.set_org_policy("acme", OrgPolicy::Application).unwrap();
    says([true, true]);
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
