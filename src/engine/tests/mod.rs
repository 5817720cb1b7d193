//! Engine behaviour tests: deterministic, on a manual clock, no sleeping. One file per topic;
//! this one holds the helpers they share.
//!
//! Invariants of the tests themselves:
//! 1. Time moves only through the [`ManualClock`]: no test sleeps or reads the wall clock.
//! 2. Each file states, numbered, what it holds the engine to.

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

mod changes;
mod expiry;
mod policies;
mod users;
