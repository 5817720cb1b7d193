//! Resident memory per session: RSS growth divided by the count (issue #2 target: at most 100
//! bytes per session at 10M sessions; issue #25: the same with the user ids identity providers
//! hand out), no metadata, orgs of the Scalekit shape (`org_` + 18 digits).
//!
//! Run: `cargo bench --bench memory -- [--user-ids SHAPE] [--orgs N] [SESSIONS] [SESSIONS_PER_USER]`
//! (defaults: short, 10000 orgs, 10000000 sessions, 1 per user; SESSIONS_PER_USER may be a
//! fraction, e.g. 1.5). SHAPE is one of `short` (16 bytes, `u` + 15 digits), `uuid` (lower-case
//! `8-4-4-4-12`), `kinde` (`kp_` + 32 hex), `scalekit` (`usr_` + 18 digits), `auth0`
//! (`auth0|` + 24 hex), `google` (21 digits) or `email` (`first.last<n>@example.com`).
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

/// splitmix64: user `k`'s random-looking bits, the same on every run.
fn mix(k: u64) -> u64 {
    let mut z = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const SHAPES: &[&str] = &[
    "short", "uuid", "kinde", "scalekit", "auth0", "google", "email",
];

fn user_id(shape: &str, k: u64) -> String {
    let (a, b) = (mix(2 * k), mix(2 * k + 1));
    let v = (u128::from(a) << 64) | u128::from(b);
    match shape {
        "short" => format!("u{k:015}"),
        "uuid" => format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xFFFF,
            a & 0xFFF,
            0x8000 | (b >> 48) & 0x3FFF,
            b & 0xFFFF_FFFF_FFFF
        ),
        "kinde" => format!("kp_{v:032x}"),
        "scalekit" => format!("usr_{:018}", a % 1_000_000_000_000_000_000),
        "auth0" => format!("auth0|{:024x}", v >> 32),
        "google" => format!("1{:020}", v % 100_000_000_000_000_000_000),
        "email" => format!("first.last{k}@example.com"),
        _ => unreachable!("checked in main"),
    }
}

fn measure(shape: &str, n: usize, per_user: f64, orgs: u64) {
    let users = ((n as f64 / per_user).round() as u64).max(1);
    let before = rss_bytes();
    let engine = Engine::new(
        EngineConfig {
            max_sessions: n,
            ..EngineConfig::default()
        },
        Arc::new(SystemClock),
    );
    let start = Instant::now();
    for i in 0..n as u64 {
        let c = engine
            .create(NewSession {
                user_id: user_id(shape, i % users),
                org_id: Some(format!(
                    "org_{:018}",
                    mix(!(i % orgs)) % 1_000_000_000_000_000_000
                )),
                metadata: None,
            })
            .unwrap();
        drop(c);
    }
    let took = start.elapsed();
    let after = rss_bytes();
    println!(
        "{n} sessions, user ids {shape} (e.g. {}), {users} distinct users ({per_user} sessions each), {orgs} orgs: RSS +{:.1} MiB = {:.1} bytes/session (created in {:.1} s, {:.2} M creates/s)",
        user_id(shape, 0),
        (after - before) as f64 / 1_048_576.0,
        (after - before) as f64 / n as f64,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64() / 1e6
    );
    drop(engine);
}

fn main() {
    let mut shape = "short".to_owned();
    let mut orgs = 10_000u64;
    let mut nums = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--user-ids" => shape = args.next().expect("--user-ids SHAPE"),
            "--orgs" => orgs = args.next().and_then(|s| s.parse().ok()).expect("--orgs N"),
            // cargo bench passes --bench to the target.
            _ => nums.extend(a.parse::<f64>().ok()),
        }
    }
    assert!(
        SHAPES.contains(&shape.as_str()),
        "--user-ids must be one of {SHAPES:?}"
    );
    let n = nums.first().map_or(10_000_000, |&n| n as usize);
    let per_user = nums.get(1).copied().unwrap_or(1.0).max(1.0);
    measure(&shape, n, per_user, orgs.max(1));
}
