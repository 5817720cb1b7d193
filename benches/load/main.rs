//! The load generator (issue #5): drives a mix of session operations at sessiond, or the same
//! mix at Redis, over keep-alive connections, and reports throughput, latency percentiles (HDR
//! histograms), errors, memory per session and the daemon's eviction lag.
//!
//! ```sh
//! cargo bench --bench load -- --help
//! cargo bench --bench load                                   # default mix, 100k sessions, 10 s
//! cargo bench --bench load -- --mix validate --target sessiond --target redis
//! cargo bench --bench load -- --scenario ceiling             # /v1/auth vs /healthz
//! cargo bench --bench load -- --scenario storm               # 1M deadlines, validate p99
//! cargo bench --bench load -- --scenario policy              # tighten a 100k-session org
//! cargo test --bench load -- --smoke                         # what CI runs (a few seconds)
//! ```
//!
//! Files, in the data's path: `args.rs` (the command line), `target.rs` (start or reach what is
//! loaded), `conn.rs` (one connection's requests), `drive.rs` (the measured loop, with
//! `pace.rs` for open loops), `stats.rs` (what a run measured), `scenarios.rs` and
//! `ceiling.rs` (what each scenario runs), `cpu.rs`, `sched.rs`, `sampler.rs` and `stalls.rs`
//! (what the target's CPU and the machine did), `report.rs` (the text summary and the smoke
//! run's verdict).
//!
//! Invariants:
//! 1. Latency is counted from each request's due moment (`drive.rs`, invariant 1): an open
//!    loop's figures err against the server, never for it.
//! 2. Each scenario gets a fresh target, so that one's sessions do not skew the next.
//! 3. `--smoke` fails (exit 1) on any error of any run, on a missing figure (`report.rs`), and
//!    when Redis is missing unless `SESSIOND_SKIP_MISSING_TOOLS=1` outside CI.

mod args;
mod ceiling;
mod conn;
mod cpu;
mod drive;
mod pace;
mod report;
mod sampler;
mod scenarios;
mod sched;
mod stalls;
mod stats;
mod target;

use args::{Args, Mix};
use clap::Parser;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use target::{Kind, Target};

fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.sessions = args.sessions.min(2_000);
        args.storm_sessions = args.storm_sessions.min(5_000);
        args.policy_sessions = args.policy_sessions.min(2_000);
        args.duration = args.duration.min(1.0);
        args.rounds = 1;
        args.connections = args.connections.min(8);
        args.orgs = args.orgs.min(50);
        args.scenario = "all".into();
        // The packed user-id path (issue #25) through HTTP, journal and snapshot.
        args.user_ids = "uuid".into();
        let has_redis = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if has_redis && !args.targets.iter().any(|t| t.starts_with("redis")) {
            args.targets.push("redis".into());
        } else if !has_redis {
            // A smoke run that skipped Redis must not pass as if it had driven it (the tests'
            // rule, `tests/common::missing_tool`).
            let skip = std::env::var("SESSIOND_SKIP_MISSING_TOOLS").is_ok_and(|v| v == "1");
            if std::env::var_os("CI").is_some() || !skip {
                eprintln!(
                    "error: redis-server is not installed and the smoke run drives it: apt-get \
                     install -y redis-server (`.ci/run` installs it), or set \
                     SESSIOND_SKIP_MISSING_TOOLS=1 to skip it"
                );
                std::process::exit(1);
            }
            eprintln!("SKIPPED (SESSIOND_SKIP_MISSING_TOOLS=1): redis-server is not installed");
        }
    }
    drive::UUID_USERS.store(args.user_ids == "uuid", Ordering::Relaxed);
    if !(args.slow_ms > 0.0 && args.slow_ms.is_finite()) {
        eprintln!("error: --slow-ms must be a positive number of milliseconds");
        std::process::exit(2);
    }
    stalls::set_threshold(Duration::from_secs_f64(args.slow_ms / 1e3));
    // Each sample is a few hundred bytes kept for the run: finer than 100 µs would fill memory
    // faster than it tells anything /proc's resolution does not.
    if args.sample_us != 0 && args.sample_us < 100 {
        eprintln!("error: --sample-us must be 0 (off) or at least 100");
        std::process::exit(2);
    }
    sampler::set_interval(args.sample_us);
    let mix = match Mix::parse(&args.mix) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let scenarios: Vec<&str> = match args.scenario.as_str() {
        "all" => vec!["steady", "ceiling", "storm", "policy"],
        s @ ("steady" | "ceiling" | "storm" | "policy") => vec![s],
        other => {
            eprintln!("error: unknown scenario {other:?}: steady, ceiling, storm, policy or all");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Vec::new();
    let mut failed = false;
    for spec in &args.targets {
        for sc in &scenarios {
            // A fresh target per scenario, so that one's sessions do not skew the next.
            let t = match Target::open(spec, &args.sessiond_args) {
                Ok(mut t) => {
                    t.pid = t.pid.or(args.pid);
                    t
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2);
                }
            };
            if t.kind == Kind::Redis && *sc != "steady" {
                // Expiry storms and policy changes are sessiond's; Redis has no policy.
                if *sc == "ceiling" {
                    eprintln!("note: the ceiling scenario is for sessiond; skipped for {spec}");
                }
                continue;
            }
            let r = rt.block_on(async {
                match *sc {
                    "steady" => scenarios::steady(&args, &t, &mix).await,
                    "ceiling" => ceiling::ceiling(&args, &t).await,
                    "storm" => scenarios::storm(&args, &t).await,
                    _ => scenarios::policy(&args, &t).await,
                }
            });
            match r {
                Ok(mut v) => {
                    v["scenario"] = (*sc).into();
                    if !args.json {
                        report::print_summary(&v);
                    }
                    results.push(v);
                }
                Err(e) => {
                    eprintln!("error: {spec} {sc}: {e}");
                    failed = true;
                }
            }
        }
    }
    let comparison = report::compare_targets(&results);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "machine": {"cores": std::thread::available_parallelism().map_or(0, |n| n.get())},
                "args": format!("{args:?}"),
                "results": results,
                "comparison": comparison,
            }))
            .expect("json")
        );
    } else {
        report::print_comparison(&comparison);
    }
    if args.smoke {
        let mut problems = report::smoke_problems(&results);
        let targets: std::collections::BTreeSet<&str> = results
            .iter()
            .filter_map(|r| r["target"].as_str())
            .collect();
        if targets.len() > 1 && comparison.is_empty() {
            problems.push(format!(
                "{} targets but no comparison between them",
                targets.len()
            ));
        }
        for p in &problems {
            eprintln!("smoke: {p}");
        }
        if !problems.is_empty() {
            failed = true;
        } else if !failed {
            eprintln!("smoke: ok ({} results)", results.len());
        }
    }
    if failed {
        std::process::exit(1);
    }
}
