//! The scenarios that load one target with a mix or an event: `steady` (the mix after a
//! preload), `storm` (a million deadlines falling together under validate traffic) and `policy`
//! (an org's policy tightened under validate traffic). `ceiling.rs` is the fourth.
//!
//! Invariants:
//! 1. Each scenario preloads `--sessions` sessions over `--orgs` orgs before it measures, and
//!    measures with the same workers, so the measured requests find a table of that size.
//! 2. The event scenarios tag their traffic's latencies by phase (0 before the event, 1 during,
//!    2 after) through `Shared::tag`, and report validate's p99 per phase.
//! 3. An event counts as done only when the daemon's session count is back to what it was
//!    before the event's sessions were made (`until_count`); a timeout reports `null`, which
//!    fails a smoke run.
//! 4. Every measured run reports the target's CPU time per request (`cpu.rs`) when its pid is
//!    known.

use crate::args::{Args, Mix};
use crate::conn::Op;
use crate::cpu;
use crate::drive::{
    Shared, Worker, background, drive, preload, preloaded, progress, shared, workers,
};
use crate::stats::{Stats, pct, run_json, tagged_p99};
use crate::target::{self, Target};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Eviction lag figures from sessiond's `/metrics`.
async fn eviction_lag(t: &Target) -> Value {
    let Some(text) = t.metrics().await else {
        return Value::Null;
    };
    let b = target::histogram(&text, "sessiond_expiry_lag_seconds");
    let count = b.last().map_or(0.0, |x| x.1);
    json!({
        "evicted": count,
        "p99_le_seconds": target::histogram_quantile(&b, 0.99),
        "max_le_seconds": target::histogram_quantile(&b, 1.0),
    })
}

/// Preloads the target and runs the mix: the steady-state figures.
pub async fn steady(args: &Args, t: &Target, mix: &Mix) -> Result<Value, String> {
    let rss0 = t.rss_bytes();
    let count0 = t.count().await.unwrap_or(0);
    let (ws, took, pre) = preloaded(args, t).await?;
    let rss1 = t.rss_bytes();
    let count1 = t.count().await.unwrap_or(0);
    let sh = shared();
    let d = Duration::from_secs_f64(args.duration);
    let bar = progress(
        format!("{} {}", t.label, mix.describe()),
        None,
        d,
        sh.clone(),
    );
    let meter = cpu::Meter::start(t.pid);
    let (stats, _ws, elapsed) = drive(t, ws, mix, d, args.rate, args.pace(), sh.clone()).await;
    sh.stop.store(true, Ordering::Relaxed);
    let _ = bar.await;
    let stored = count1.saturating_sub(count0);
    let per_session = match (rss0, rss1) {
        (Some(a), Some(b)) if stored > 0 => Some((b.saturating_sub(a)) as f64 / stored as f64),
        _ => None,
    };
    let mut run = run_json(&stats, elapsed);
    cpu::attach(&mut run, &meter);
    run["mix"] = mix.describe().into();
    run["connections"] = args.connections.into();
    run["rate"] = args.rate.into();
    Ok(json!({
        "target": t.label,
        "preload": {"sessions": stored, "seconds": took.as_secs_f64(),
                    "creates_per_sec": (args.sessions as f64 / took.as_secs_f64()).round(),
                    "errors": pre.errors, "error_samples": pre.samples},
        "memory": {"rss_before": rss0, "rss_after_preload": rss1, "rss_after_run": t.rss_bytes(),
                   "bytes_per_session": per_session.map(f64::round)},
        "run": run,
        "eviction_lag": eviction_lag(t).await,
    }))
}

/// Waits until the target holds at most `level` sessions; returns when (None on timeout).
async fn until_count(t: &Target, level: u64, timeout: Duration) -> Option<Instant> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if t.count().await.is_some_and(|c| c <= level) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// An expiry storm: `storm_sessions` sessions whose deadlines fall together while validate
/// traffic continues.
pub async fn storm(args: &Args, t: &Target) -> Result<Value, String> {
    let (ws, _, _) = preloaded(args, t).await?;
    let base = t.count().await.unwrap_or(0);
    // Created under a long policy, then given one short enough that all fall due shortly after
    // the last create: their deadlines are spread over the creation time, no more.
    t.admin(
        "PUT",
        "/v1/orgs/storm/policy",
        r#"{"source": "CUSTOM", "absolute_timeout": 3600}"#,
    )
    .await?;
    let first = Instant::now();
    let (created_in, pre) =
        one_org(args, t, args.storm_sessions, "storm", "storm sessions").await?;
    let last = Instant::now();
    // Absolute timeout so that the first deadline is ~3 s from now.
    let abs = (last - first).as_secs() + 3;
    let first_deadline = first + Duration::from_secs(abs);
    let last_deadline = last + Duration::from_secs(abs);
    t.admin(
        "PUT",
        "/v1/orgs/storm/policy",
        &format!(r#"{{"source": "CUSTOM", "absolute_timeout": {abs}}}"#),
    )
    .await?;
    let sh = shared();
    let max = (last_deadline - Instant::now()) + Duration::from_secs(30);
    let meter = cpu::Meter::start(t.pid);
    let bg = background(t, ws, max, sh.clone());
    let bar = progress(format!("{} storm", t.label), None, max, sh.clone());
    tokio::time::sleep_until((first_deadline - Duration::from_millis(500)).into()).await;
    sh.tag.store(1, Ordering::Relaxed);
    let all_gone = until_count(
        t,
        base,
        (last_deadline - Instant::now()) + Duration::from_secs(20),
    )
    .await;
    let (stats, traffic) = after_phase(&sh, bg, &meter).await?;
    let _ = bar.await;
    let after_last = all_gone.map(|g| g.saturating_duration_since(last_deadline).as_secs_f64());
    Ok(json!({
        "target": t.label,
        "storm": {
            "sessions": args.storm_sessions,
            "create_errors": pre.errors,
            "deadline_spread_seconds": (last - first).as_secs_f64(),
            "created_in_seconds": created_in.as_secs_f64(),
            "all_evicted_seconds_after_last_deadline": after_last,
            "validate_p99_ms_before": tagged_p99(&stats, 0, Op::Validate).or_else(|| stats.hist.get(&Op::Validate).map(|h| pct(h, 0.99))),
            "validate_p99_ms_during": tagged_p99(&stats, 1, Op::Validate),
            "traffic": traffic,
        },
        "eviction_lag": eviction_lag(t).await,
    }))
}

/// `n` sessions of org `org`, made over connections of their own (closed after); returns how
/// long they took and the creates' figures.
async fn one_org(
    args: &Args,
    t: &Target,
    n: usize,
    org: &'static str,
    what: &str,
) -> Result<(Duration, Stats), String> {
    let ws = workers(t, args.connections, n, 1).await?;
    let (_, took, pre) = preload(t, ws, n, move |_| org.into(), what).await?;
    Ok((took, pre))
}

/// The end of an event scenario's traffic: half a second tagged "after" (invariant 2), then
/// stopped; its figures and their JSON, CPU per request included.
async fn after_phase(
    sh: &Shared,
    bg: tokio::task::JoinHandle<(Stats, Vec<Worker>, Duration)>,
    meter: &cpu::Meter,
) -> Result<(Stats, Value), String> {
    sh.tag.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sh.stop.store(true, Ordering::Relaxed);
    let (stats, _, elapsed) = bg.await.map_err(|e| e.to_string())?;
    let mut traffic = run_json(&stats, elapsed);
    cpu::attach(&mut traffic, meter);
    Ok((stats, traffic))
}

/// Tightens a `policy_sessions`-session org under validate traffic.
pub async fn policy(args: &Args, t: &Target) -> Result<Value, String> {
    let (ws, _, _) = preloaded(args, t).await?;
    let base = t.count().await.unwrap_or(0);
    let (_, pre) = one_org(args, t, args.policy_sessions, "tighten", "org sessions").await?;
    let sh = shared();
    let meter = cpu::Meter::start(t.pid);
    let bg = background(t, ws, Duration::from_secs(60), sh.clone());
    // Older than the new policy allows by the time it lands.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    sh.tag.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let put = Instant::now();
    t.admin(
        "PUT",
        "/v1/orgs/tighten/policy",
        r#"{"source": "CUSTOM", "absolute_timeout": 1}"#,
    )
    .await?;
    let put_took = put.elapsed();
    let gone = until_count(t, base, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stats, traffic) = after_phase(&sh, bg, &meter).await?;
    Ok(json!({
        "target": t.label,
        "policy_change": {
            "org_sessions": args.policy_sessions,
            "create_errors": pre.errors,
            "put_seconds": put_took.as_secs_f64(),
            "all_evicted_seconds_after_put": gone.map(|g| (g - put).as_secs_f64()),
            "validate_p99_ms_before": tagged_p99(&stats, 0, Op::Validate),
            "validate_p99_ms_around": tagged_p99(&stats, 1, Op::Validate),
            "validate_p99_ms_after": tagged_p99(&stats, 2, Op::Validate),
            "traffic": traffic,
        },
    }))
}
