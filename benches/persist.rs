//! Persistence figures (#6): snapshot of N sessions with validate latency measured beside it,
//! then start-up (load + replay + sweep) from that snapshot plus M journal records.
//!
//! `cargo bench --bench persist -- [--sessions 10000000] [--journal 1000000] [--loads 1]
//! [--dir PATH]` (`--smoke` runs 20k/2k for CI-style checks; `--loads N` starts up N times from
//! the same files, each into a fresh engine; `--keep` leaves the files in `--dir`, and
//! `--load-only` starts up from files a `--keep` run left there, to profile start-up alone).
//! Runs on the library directly: the daemon's start-up is exactly `persist::load::load` +
//! `Engine::sweep_expired` on a fresh engine, and validate's only contention with a snapshot
//! is the shard lock measured here.

use hdrhistogram::Histogram;
use sessiond::clock::SystemClock;
use sessiond::engine::{Engine, EngineConfig};
use sessiond::persist::journal::{FsyncPolicy, Journal};
use sessiond::persist::{load, snapshot};
use sessiond::session::NewSession;
use sessiond::shutdown::{Shutdown, Stage};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Args {
    sessions: usize,
    journal: usize,
    loads: usize,
    dir: std::path::PathBuf,
    keep: bool,
    load_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        sessions: 10_000_000,
        journal: 1_000_000,
        loads: 1,
        keep: false,
        load_only: false,
        dir: std::env::temp_dir().join(format!("sessiond-persist-bench-{}", std::process::id())),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--sessions" => {
                a.sessions = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--sessions N")
            }
            "--journal" => a.journal = it.next().and_then(|v| v.parse().ok()).expect("--journal N"),
            "--loads" => a.loads = it.next().and_then(|v| v.parse().ok()).expect("--loads N"),
            "--dir" => a.dir = it.next().expect("--dir PATH").into(),
            "--smoke" => {
                a.sessions = 20_000;
                a.journal = 2_000;
            }
            "--keep" => a.keep = true,
            "--load-only" => a.load_only = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn cfg(max: usize) -> EngineConfig {
    EngineConfig {
        max_sessions: max,
        ..EngineConfig::default()
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let a = args();
    let max = a.sessions + a.journal + 1;
    let want = if a.load_only {
        let marker = a.dir.join("expected-sessions");
        let age = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .expect("--load-only needs the files of an earlier run with --keep in --dir");
        // Past the default idle timeout (30 min) the sweep would drop every session.
        assert!(
            age < Duration::from_secs(29 * 60),
            "the files in --dir were written {} min ago: their sessions have expired; write them again with --keep",
            age.as_secs() / 60
        );
        std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("a --keep run writes the session count in expected-sessions")
    } else {
        let want = write_files(&a, max);
        if a.keep {
            std::fs::write(a.dir.join("expected-sessions"), want.to_string()).unwrap();
        }
        want
    };
    for _ in 0..a.loads {
        let rss0 = rss_bytes();
        let fresh = Engine::new(cfg(max), Arc::new(SystemClock));
        let t = Instant::now();
        let report = load::load(&fresh, &a.dir, false).unwrap();
        let expired = fresh.sweep_expired().total();
        let took = t.elapsed();
        println!(
            "start-up: {} sessions ({} from the snapshot, {} journal records) in {:.2} s ({} dropped as expired); RSS +{:.0} MB",
            report.sessions,
            report.from_snapshot,
            report.replayed,
            took.as_secs_f64(),
            expired,
            (rss_bytes().saturating_sub(rss0)) as f64 / 1e6
        );
        assert_eq!(fresh.len(), want, "the load lost or invented sessions");
    }
    if !a.keep && !a.load_only {
        let _ = std::fs::remove_dir_all(&a.dir);
    }
}

/// Creates the sessions, snapshots them with validate beside it, journals more after it, and
/// stops the journal: the files a start-up loads. Returns how many sessions they hold.
fn write_files(a: &Args, max: usize) -> usize {
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).unwrap();
    let shards = Engine::shards_for(&cfg(max));
    let journal = Arc::new(Journal::new(shards, FsyncPolicy::Everysec));
    let engine = Arc::new(Engine::with_changes(
        cfg(max),
        Arc::new(SystemClock),
        Some(journal.clone()),
    ));
    journal.start(&a.dir, 1).unwrap();
    let shutdown = Shutdown::new();
    let writer = journal
        .clone()
        .spawn_writer(shutdown.at(Stage::Exiting))
        .unwrap();

    println!(
        "creating {} sessions (16-byte user and org ids)...",
        a.sessions
    );
    let t = Instant::now();
    let keep = 400_000.min(a.sessions);
    let mut tokens = Vec::with_capacity(keep);
    for i in 0..a.sessions {
        let c = engine
            .create(NewSession {
                user_id: format!("user-{:011}", i),
                org_id: Some(format!("org-{:012}", i % 1_000)),
                metadata: None,
            })
            .unwrap();
        if tokens.len() < keep {
            tokens.push(c.token.expose().to_owned());
        }
    }
    println!("  {:.1} s", t.elapsed().as_secs_f64());

    // Snapshot with validate running beside it on another thread.
    let validating = Arc::new(AtomicBool::new(true));
    let v = {
        let (engine, validating, tokens) = (engine.clone(), validating.clone(), tokens.clone());
        std::thread::spawn(move || {
            let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
            let mut i = 0usize;
            while validating.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = matches!(
                    engine.validate(&tokens[i % tokens.len()]),
                    sessiond::session::Validation::Valid(_)
                );
                h.record(t.elapsed().as_nanos() as u64).unwrap();
                assert!(ok);
                i += 1;
            }
            h
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let stats = snapshot::take(&engine, &journal, &a.dir).unwrap();
    validating.store(false, Ordering::Relaxed);
    let h = v.join().unwrap();
    println!(
        "snapshot: {} sessions, {:.0} MB in {:.2} s; validate beside it: {} ops, p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.2} ms",
        stats.sessions,
        stats.bytes as f64 / 1e6,
        stats.took.as_secs_f64(),
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e6
    );

    println!(
        "journaling {} records after it (2/3 creates, 1/3 revokes)...",
        a.journal
    );
    let mut n = 0;
    let mut i = 0usize;
    while n < a.journal {
        match i % 3 {
            0 | 1 => {
                engine
                    .create(NewSession {
                        user_id: format!("late-{:011}", i),
                        org_id: Some(format!("org-{:012}", i % 1_000)),
                        metadata: None,
                    })
                    .unwrap();
            }
            _ => {
                assert!(engine.revoke(&tokens[(i / 3) % tokens.len()]));
            }
        }
        n += 1;
        i += 1;
    }
    shutdown.advance(Stage::Exiting);
    writer.join().unwrap();
    engine.len()
}
