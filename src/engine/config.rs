//! The engine's settings, fixed at start: shard count, tick, policies, limits.
//!
//! Invariants:
//! 1. Every setting has a default that starts a working engine ([`EngineConfig::default`]);
//!    the config layer validates what an operator gives before it reaches here, and
//!    [`Engine::new`](super::Engine::new) only clamps (shards to a power of two, the tick to
//!    1..=1000 ms).
//! 2. [`UserLimitAction`] reads the same words from the command line and the file
//!    (`refuse`, `evict_oldest`, also `evict-oldest`) and names the accepted ones when refusing.

use crate::policy::{DEFAULT_POLICY, Mode, Policy};

/// What to do when a user already has `max_sessions_per_user` sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserLimitAction {
    /// Refuse the new session.
    #[default]
    Refuse,
    /// Revoke the user's oldest session to make room.
    EvictOldest,
}

impl std::str::FromStr for UserLimitAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(UserLimitAction::Refuse),
            "evict_oldest" | "evict-oldest" => Ok(UserLimitAction::EvictOldest),
            other => Err(format!(
                "unknown per-user limit action {other:?}; expected \"refuse\" or \"evict_oldest\""
            )),
        }
    }
}

/// Engine settings, fixed at start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of shards; a power of two.
    pub shards: usize,
    /// Wheel tick in milliseconds (1..=1000).
    pub tick_ms: u64,
    pub mode: Mode,
    pub application_policy: Policy,
    /// Most live sessions in total.
    pub max_sessions: usize,
    /// Most live sessions per user, if limited.
    pub max_sessions_per_user: Option<usize>,
    pub user_limit_action: UserLimitAction,
    /// A cluster node (`--cluster`). It keeps the "not before" marks of its own user- and
    /// org-wide revocations (`marks`; a single node needs none: its later creates are never
    /// older), and reports a revocation of a session it does not hold (engine invariant 7:
    /// another node may still hold it; a single node reports nothing for it).
    pub cluster: bool,
}

/// Default shard count: 8 per core, rounded up to a power of two.
pub fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 8).next_power_of_two().min(1024)
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: default_shards(),
            tick_ms: 100,
            mode: Mode::Stricter,
            application_policy: DEFAULT_POLICY,
            max_sessions: 10_000_000,
            max_sessions_per_user: None,
            user_limit_action: UserLimitAction::Refuse,
            cluster: false,
        }
    }
}
