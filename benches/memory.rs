//! Resident memory per session: RSS growth divided by the count (issue #2 target: at most 100
//! bytes per session at 10M sessions with 16-byte user and org ids, no metadata).
//!
//! Run: `cargo bench --bench memory -- [SESSIONS] [SESSIONS_PER_USER]` (defaults 10000000 1).
//! One scenario per process: memory freed by an earlier run would stay resident and hide cost.

use sessiond::clock::SystemClock;
use sessiond::engine::{Engine, EngineConfig};
use sessiond::session::NewSession;
use std::sync::Arc;
use std::time::Instant;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4_096
}

fn measure(n: usize, users: usize) {
    let before = rss_bytes();
    let engine = Engine::new(
        EngineConfig {
            max_sessions: n,
            ..EngineConfig::default()
        },
        Arc::new(SystemClock),
    );
    let start = Instant::now();
    for i in 0..n {
        let c = engine
            .create(NewSession {
                user_id: format!("u{:015}", i % users),
                org_id: Some(format!("org{:013}", i % 1_000)),
                metadata: None,
            })
            .unwrap();
        drop(c);
    }
    let took = start.elapsed();
    let after = rss_bytes();
    println!(
        "{n} sessions, {users} distinct users, 1000 orgs: RSS +{:.1} MiB = {:.1} bytes/session (created in {:.1} s, {:.2} M creates/s)",
        (after - before) as f64 / 1_048_576.0,
        (after - before) as f64 / n as f64,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64() / 1e6
    );
    drop(engine);
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10_000_000);
    let per_user = args.get(1).copied().unwrap_or(1).max(1);
    measure(n, n / per_user);
}
