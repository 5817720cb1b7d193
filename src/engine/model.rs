//! Property test: random sequences of every engine operation and clock step, checked at every
//! step against a naive model that recomputes validity (and `persistent`) from first
//! principles: the policy in force, the session's creation and last activity.

use crate::clock::ManualClock;
use crate::engine::{DryRun, Engine, EngineConfig, PolicyChange};
use crate::policy::{Mode, OrgPolicy, Policy, PolicyWrite, resolve};
use crate::session::{Deadlines, Invalid, NewSession, Validation};
use proptest::prelude::*;
use std::collections::HashMap;

const T0: u64 = 1_800_000_000_000;
const USERS: usize = 3;
const ORGS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Create {
        user: usize,
        org: Option<usize>,
    },
    Validate(usize),
    Touch(usize),
    Revoke(usize),
    RevokeId(usize),
    Get(usize),
    ListUser(usize),
    RevokeUser(usize),
    RevokeOrg(usize),
    SetOrg(usize, Option<Policy>),
    SetApp(Policy),
    Advance(u64),
    /// The wall clock steps back (NTP, a VM resumed): `clock`, invariant 2.
    StepBack(u64),
    Sweep,
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (1u64..20, proptest::option::of(1u64..15), any::<bool>()).prop_map(|(a, i, p)| Policy {
        absolute_timeout_secs: a,
        idle_timeout_enabled: i.is_some(),
        idle_timeout_secs: i,
        persistent: p,
    })
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..USERS, proptest::option::of(0..ORGS)).prop_map(|(user, org)| Op::Create { user, org }),
        3 => (0usize..64).prop_map(Op::Validate),
        3 => (0usize..64).prop_map(Op::Touch),
        1 => (0usize..64).prop_map(Op::Revoke),
        1 => (0usize..64).prop_map(Op::RevokeId),
        1 => (0usize..64).prop_map(Op::Get),
        1 => (0..USERS).prop_map(Op::ListUser),
        1 => (0..USERS).prop_map(Op::RevokeUser),
        1 => (0..ORGS).prop_map(Op::RevokeOrg),
        1 => (0..ORGS, proptest::option::of(arb_policy())).prop_map(|(o, p)| Op::SetOrg(o, p)),
        1 => arb_policy().prop_map(Op::SetApp),
        4 => (0u64..6_000).prop_map(Op::Advance),
        1 => (0u64..30_000).prop_map(Op::StepBack),
        2 => Just(Op::Sweep),
    ]
}

struct ModelSession {
    token: String,
    user: usize,
    org: Option<usize>,
    created: u64,
    last: u64,
    /// Still in the table (not revoked, not swept).
    present: bool,
}

struct Model {
    mode: Mode,
    app: Policy,
    custom: HashMap<usize, Policy>,
    sessions: Vec<ModelSession>,
}

impl Model {
    fn effective(&self, org: Option<usize>) -> Policy {
        match org {
            None => self.app,
            Some(o) => {
                let op = self
                    .custom
                    .get(&o)
                    .map_or(OrgPolicy::Application, |p| OrgPolicy::Custom(*p));
                resolve(self.mode, &self.app, &op)
            }
        }
    }

    fn deadlines(&self, s: &ModelSession) -> Deadlines {
        Deadlines::compute(&self.effective(s.org).effective(), s.created, s.last)
    }

    fn expected(&self, i: usize, now: u64) -> Validation {
        let s = &self.sessions[i];
        if !s.present {
            return Validation::Invalid(Invalid::NotFound);
        }
        match self.deadlines(s).expired(now) {
            Some(crate::session::ExpiryReason::Idle) => Validation::Invalid(Invalid::ExpiredIdle),
            Some(crate::session::ExpiryReason::Absolute) => {
                Validation::Invalid(Invalid::ExpiredAbsolute)
            }
            None => Validation::Valid(crate::session::SessionView {
                id: crate::token::SessionId::from_token(&s.token).unwrap(),
                user_id: format!("user{}", s.user).into(),
                org_id: s.org.map(|o| format!("org{o}").into()),
                created_at_ms: s.created,
                last_activity_at_ms: s.last,
                idle_expires_at_ms: self.deadlines(s).idle,
                absolute_expires_at_ms: self.deadlines(s).absolute,
                expires_at_ms: self.deadlines(s).expires,
                persistent: self.effective(s.org).persistent,
                metadata: None,
            }),
        }
    }

    /// Removes every present session whose effective policy changed from `before` and that is
    /// expired at `now` under the new policy or already was under the old one (a change never
    /// revives a session). Returns how many it removed.
    fn reapply(&mut self, before: &HashMap<Option<usize>, Policy>, now: u64) -> u64 {
        let mut removed = 0;
        for i in 0..self.sessions.len() {
            let s = &self.sessions[i];
            if !s.present {
                continue;
            }
            let old = before[&s.org].effective();
            let changed = old != self.effective(s.org).effective();
            let was_expired = Deadlines::compute(&old, s.created, s.last)
                .expired(now)
                .is_some();
            if changed && (was_expired || self.deadlines(s).expired(now).is_some()) {
                self.sessions[i].present = false;
                removed += 1;
            }
        }
        removed
    }

    fn snapshot(&self) -> HashMap<Option<usize>, Policy> {
        std::iter::once(None)
            .chain((0..ORGS).map(Some))
            .map(|o| (o, self.effective(o)))
            .collect()
    }
}

/// Runs the dry run of `write` and checks that it changed nothing.
fn dry_run_then_check(engine: &Engine, write: PolicyWrite) -> DryRun {
    let (len, policies) = (engine.len(), engine.policies());
    let dry = engine.dry_run(&write).unwrap();
    assert_eq!(engine.len(), len, "a dry run removed sessions");
    assert_eq!(engine.policies(), policies, "a dry run changed a policy");
    dry
}

/// The dry run predicted the real change: the same evictions by reason (and the model's count),
/// every affected session either evicted or re-filed, and the write's own report equal to it.
fn check_dry_run(dry: &DryRun, change: &PolicyChange, model_evicted: u64) {
    assert_eq!(
        dry.sessions.would_evict, change.reapplied.evicted,
        "would_evict"
    );
    assert_eq!(dry.sessions.would_evict.total(), model_evicted);
    assert_eq!(
        dry.sessions.affected,
        change.reapplied.evicted.total() + change.reapplied.refiled
    );
    assert!(
        dry.sessions.deadline_earlier + dry.sessions.deadline_later <= change.reapplied.refiled
    );
    // What the write reports of itself is what its dry run said, field by field.
    assert_eq!(
        dry.sessions,
        change.reapplied.as_counts(),
        "the write's report"
    );
}

fn run(ops: Vec<Op>, mode: Mode, app: Policy) {
    let clock = ManualClock::new(T0);
    let engine = Engine::new(
        EngineConfig {
            shards: 4,
            tick_ms: 100,
            mode,
            application_policy: app,
            ..EngineConfig::default()
        },
        clock.clone(),
    );
    let mut m = Model {
        mode,
        app,
        custom: HashMap::new(),
        sessions: Vec::new(),
    };
    let pick = |m: &Model, i: usize| (!m.sessions.is_empty()).then(|| i % m.sessions.len());
    for op in ops {
        let now = clock.now_ms_for_test();
        match op {
            Op::Create { user, org } => {
                let c = engine
                    .create(NewSession {
                        user_id: format!("user{user}"),
                        org_id: org.map(|o| format!("org{o}")),
                        metadata: None,
                    })
                    .unwrap();
                assert_eq!(c.session.persistent, m.effective(org).persistent);
                m.sessions.push(ModelSession {
                    token: c.token.expose().to_owned(),
                    user,
                    org,
                    created: now,
                    last: now,
                    present: true,
                });
            }
            Op::Validate(i) => {
                if let Some(i) = pick(&m, i) {
                    let got = engine.validate(&m.sessions[i].token);
                    assert_eq!(got, m.expected(i, now), "validate #{i}");
                }
            }
            Op::Touch(i) => {
                if let Some(i) = pick(&m, i) {
                    let before = m.expected(i, now);
                    if matches!(before, Validation::Valid(_)) {
                        m.sessions[i].last = m.sessions[i].last.max(now);
                    }
                    let got = engine.touch(&m.sessions[i].token);
                    assert_eq!(got, m.expected(i, now), "touch #{i}");
                }
            }
            Op::Revoke(i) => {
                if let Some(i) = pick(&m, i) {
                    assert_eq!(engine.revoke(&m.sessions[i].token), m.sessions[i].present);
                    m.sessions[i].present = false;
                }
            }
            Op::RevokeId(i) => {
                if let Some(i) = pick(&m, i) {
                    let id = crate::token::SessionId::from_token(&m.sessions[i].token).unwrap();
                    assert_eq!(engine.revoke_id(id), m.sessions[i].present);
                    m.sessions[i].present = false;
                }
            }
            Op::Get(i) => {
                if let Some(i) = pick(&m, i) {
                    let id = crate::token::SessionId::from_token(&m.sessions[i].token).unwrap();
                    let got = engine.get(id);
                    assert_eq!(got.is_some(), m.sessions[i].present);
                    if let Some(v) = got {
                        let s = &m.sessions[i];
                        assert_eq!(v.expires_at_ms, m.deadlines(s).expires);
                        assert_eq!(v.persistent, m.effective(s.org).persistent, "get #{i}");
                    }
                }
            }
            Op::ListUser(u) => {
                let n = m
                    .sessions
                    .iter()
                    .filter(|s| s.present && s.user == u)
                    .count();
                assert_eq!(engine.list_user(&format!("user{u}")).len(), n);
            }
            Op::RevokeUser(u) => {
                let mut n = 0;
                for s in m.sessions.iter_mut().filter(|s| s.present && s.user == u) {
                    s.present = false;
                    n += 1;
                }
                assert_eq!(engine.revoke_user(&format!("user{u}")), n);
            }
            Op::RevokeOrg(o) => {
                let mut n = 0;
                for s in m
                    .sessions
                    .iter_mut()
                    .filter(|s| s.present && s.org == Some(o))
                {
                    s.present = false;
                    n += 1;
                }
                assert_eq!(engine.revoke_org(&format!("org{o}")), n);
            }
            Op::SetOrg(o, p) => {
                let before = m.snapshot();
                match p {
                    Some(p) => m.custom.insert(o, p),
                    None => m.custom.remove(&o),
                };
                let evicted = m.reapply(&before, now);
                let op = p.map_or(OrgPolicy::Application, OrgPolicy::Custom);
                let org = format!("org{o}");
                let dry = dry_run_then_check(
                    &engine,
                    PolicyWrite::Org {
                        org: org.clone(),
                        policy: op,
                    },
                );
                let change = engine.set_org_policy(&org, op).unwrap();
                check_dry_run(&dry, &change, evicted);
                assert_eq!(dry.effective, engine.org_policy(&org).effective);
            }
            Op::SetApp(p) => {
                let before = m.snapshot();
                m.app = p;
                let evicted = m.reapply(&before, now);
                let dry = dry_run_then_check(&engine, PolicyWrite::Application(p));
                let change = engine.set_application_policy(p);
                check_dry_run(&dry, &change, evicted);
            }
            Op::Advance(ms) => clock.advance(ms),
            Op::StepBack(ms) => clock.set(now.saturating_sub(ms)),
            Op::Sweep => {
                let _ = engine.advance();
                // Eviction is exact to one tick, also after the clock stepped back: whatever
                // expired by the last tick boundary is gone, nothing unexpired was removed, and
                // what expired within the current tick may still be there (ask the engine which).
                // (T0 is a multiple of the tick: the boundaries are the clock's multiples of it.)
                let boundary = now - now % 100;
                for s in m.sessions.iter_mut().filter(|s| s.present) {
                    let d = Deadlines::compute(
                        &Model::effective_of(mode, &m.app, &m.custom, s.org).effective(),
                        s.created,
                        s.last,
                    );
                    let id = crate::token::SessionId::from_token(&s.token).unwrap();
                    if d.expires <= boundary {
                        assert!(
                            engine.get(id).is_none(),
                            "expired at {} but kept after sweep at {now}",
                            d.expires
                        );
                        s.present = false;
                    } else if d.expired(now).is_some() {
                        s.present = engine.get(id).is_some();
                    } else {
                        assert!(engine.get(id).is_some(), "live session removed by sweep");
                    }
                }
            }
        }
        let present = m.sessions.iter().filter(|s| s.present).count();
        assert_eq!(engine.len(), present, "session count after a step");
    }
    engine.check();
}

impl Model {
    fn effective_of(
        mode: Mode,
        app: &Policy,
        custom: &HashMap<usize, Policy>,
        org: Option<usize>,
    ) -> Policy {
        match org {
            None => *app,
            Some(o) => {
                let op = custom
                    .get(&o)
                    .map_or(OrgPolicy::Application, |p| OrgPolicy::Custom(*p));
                resolve(mode, app, &op)
            }
        }
    }
}

impl ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        crate::clock::Clock::now_ms(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(
        ops in proptest::collection::vec(arb_op(), 1..160),
        override_mode in any::<bool>(),
        app in arb_policy(),
    ) {
        run(ops, if override_mode { Mode::Override } else { Mode::Stricter }, app);
    }
}
