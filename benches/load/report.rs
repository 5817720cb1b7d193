//! What the generator prints: each result's text summary, the comparison of targets, and
//! the smoke run's verdict.
//!
//! Invariants:
//! 1. The text summary is drawn from the same JSON `--json` prints; nothing is measured here.
//! 2. A comparison sets each later target's steady run against the first target's, as ratios
//!    (later / first); it is empty with one target.
//! 3. `smoke_problems` lists every reason a smoke run fails: an error in any run, a missing
//!    CPU-per-request figure, an open loop short of its rate or without its stall report, an
//!    event whose sessions were not all evicted, a run that completed no request, and the
//!    stall grouping's own self-check (`stalls.rs`).

use crate::{cpu, sched, stalls};
use serde_json::{Value, json};

fn fmt_ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

/// The human summary of one result.
pub fn print_summary(r: &Value) {
    println!("\n== {}", r["target"].as_str().unwrap_or("?"));
    let table = |run: &Value| {
        println!(
            "  {:<10} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        if let Some(ops) = run["ops"].as_object() {
            for (name, o) in ops {
                println!(
                    "  {:<10} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    name,
                    o["count"].to_string(),
                    o["ops_per_sec"].to_string(),
                    fmt_ms(&o["p50_ms"]),
                    fmt_ms(&o["p90_ms"]),
                    fmt_ms(&o["p99_ms"]),
                    fmt_ms(&o["p999_ms"]),
                    fmt_ms(&o["max_ms"])
                );
            }
        }
        println!(
            "  total {} req/s over {:.1} s; errors: {}",
            run["throughput"],
            run["seconds"].as_f64().unwrap_or(0.0),
            run["errors"]
        );
        if let Some(line) = cpu::describe(run) {
            println!("  {line}");
        }
        if let Some(line) = sched::describe(run) {
            println!("  {line}");
        }
        for line in stalls::describe(run) {
            println!("  {line}");
        }
    };
    if let Some(p) = r.get("preload") {
        println!(
            "  preload: {} sessions in {:.1} s ({} creates/s)",
            p["sessions"],
            p["seconds"].as_f64().unwrap_or(0.0),
            p["creates_per_sec"]
        );
        let m = &r["memory"];
        println!(
            "  memory: RSS {} -> {} bytes; {} bytes/session",
            m["rss_before"], m["rss_after_preload"], m["bytes_per_session"]
        );
    }
    if let Some(run) = r.get("run") {
        println!(
            "  mix {} over {} connections",
            run["mix"], run["connections"]
        );
        table(run);
    }
    if let Some(c) = r.get("ceiling") {
        for k in ["healthz", "auth", "validate", "auth_at_half_peak"] {
            println!(
                "  -- {k}{}",
                if k == "auth_at_half_peak" {
                    " (median round by p99)"
                } else {
                    " (median round)"
                }
            );
            table(&c[k]);
        }
        println!("  req/s by round: {}", c["rounds"]);
        println!("  ratios (median of the rounds): {}", c["ratios"]);
        println!(
            "  target CPU per request over healthz's (median of the rounds): {}",
            c["cpu_over_healthz"]
        );
        println!(
            "  auth p99 at half peak, ms: {}",
            c["auth_at_half_peak_p99_ms"]
        );
        println!("  errors over every run: {}", c["errors_all_runs"]);
    }
    for key in ["storm", "policy_change"] {
        if let Some(s) = r.get(key) {
            let mut s = s.clone();
            let traffic = s.as_object_mut().and_then(|o| o.remove("traffic"));
            println!("  {key}: {s}");
            if let Some(t) = traffic {
                table(&t);
            }
        }
    }
    if let Some(l) = r.get("eviction_lag").filter(|l| !l.is_null()) {
        println!("  eviction lag (daemon's histogram): {l}");
    }
}

/// With more than one target: each later target's steady run against the first one's, as
/// ratios (later / first) of throughput and of each operation's p50 and p99 latency. Empty with
/// one target.
pub fn compare_targets(results: &[Value]) -> Vec<Value> {
    let steady: Vec<&Value> = results
        .iter()
        .filter(|r| r["scenario"] == "steady" && r["run"].is_object())
        .collect();
    let Some(base) = steady.first() else {
        return Vec::new();
    };
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!((a / b * 100.0).round() / 100.0),
        _ => Value::Null,
    };
    steady[1..]
        .iter()
        .filter(|r| r["target"] != base["target"])
        .map(|r| {
            let mut ops = serde_json::Map::new();
            if let Some(o) = r["run"]["ops"].as_object() {
                for (name, v) in o {
                    let b = &base["run"]["ops"][name];
                    ops.insert(
                        name.clone(),
                        json!({"ops_per_sec": ratio(&v["ops_per_sec"], &b["ops_per_sec"]),
                               "p50": ratio(&v["p50_ms"], &b["p50_ms"]),
                               "p99": ratio(&v["p99_ms"], &b["p99_ms"])}),
                    );
                }
            }
            json!({
                "target": r["target"], "baseline": base["target"],
                "throughput": ratio(&r["run"]["throughput"], &base["run"]["throughput"]),
                "ops": ops,
            })
        })
        .collect()
}

pub fn print_comparison(comparison: &[Value]) {
    for c in comparison {
        let t = |v: &Value| v.as_str().unwrap_or("?").to_owned();
        println!(
            "\n== {} vs {} (steady; ratio = {} / {}, below 1: fewer ops/s or lower latency)",
            t(&c["target"]),
            t(&c["baseline"]),
            t(&c["target"]),
            t(&c["baseline"])
        );
        println!("  throughput x{}", c["throughput"]);
        if let Some(ops) = c["ops"].as_object() {
            for (name, o) in ops {
                println!(
                    "  {:<10} ops/s x{}  p50 x{}  p99 x{}",
                    name, o["ops_per_sec"], o["p50"], o["p99"]
                );
            }
        }
    }
}

/// Everything that makes a smoke run fail, one line each.
pub fn smoke_problems(results: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    let walk_errors = |v: &Value, at: &str, p: &mut Vec<String>| {
        if let Some(e) = v.as_object().filter(|e| !e.is_empty()) {
            p.push(format!("{at}: errors {}", Value::Object(e.clone())));
        }
    };
    // An open loop far short of its rate means the pacer (pace.rs) lost its workers.
    let short_of_rate = |run: &Value, at: &str, p: &mut Vec<String>| {
        if let (Some(rate), Some(got)) = (run["rate"].as_f64(), run["throughput"].as_f64())
            && got < 0.75 * rate
        {
            p.push(format!("{at}: the open loop reached {got} of {rate} req/s"));
        }
    };
    p.extend(stalls::self_check());
    // An open loop without its stall report means the slow requests went uncollected.
    let no_stalls = |run: &Value, at: &str, p: &mut Vec<String>| {
        if run["rate"].is_number() && run["stalls"]["slow_requests"].as_u64().is_none() {
            p.push(format!("{at}: an open loop without its stall report"));
        }
    };
    for r in results {
        let t = r["target"].as_str().unwrap_or("?");
        walk_errors(&r["preload"]["errors"], &format!("{t} preload"), &mut p);
        walk_errors(&r["run"]["errors"], &format!("{t} run"), &mut p);
        // The smoke run starts every target itself, so every one has a pid.
        let runs = [&r["run"], &r["ceiling"]["auth"], &r["storm"]["traffic"]];
        if runs.iter().any(|run| cpu::missing(run, true)) {
            p.push(format!(
                "{t}: no CPU time per request (from /proc/PID/stat)"
            ));
        }
        short_of_rate(&r["run"], &format!("{t} run"), &mut p);
        no_stalls(&r["run"], &format!("{t} run"), &mut p);
        if let Some(c) = r.get("ceiling") {
            walk_errors(&c["errors_all_runs"], &format!("{t} ceiling"), &mut p);
            short_of_rate(&c["auth_at_half_peak"], &format!("{t} ceiling"), &mut p);
            no_stalls(&c["auth_at_half_peak"], &format!("{t} ceiling"), &mut p);
        }
        for key in ["storm", "policy_change"] {
            if let Some(s) = r.get(key) {
                walk_errors(&s["create_errors"], &format!("{t} {key} create"), &mut p);
                walk_errors(
                    &s["traffic"]["errors"],
                    &format!("{t} {key} traffic"),
                    &mut p,
                );
            }
        }
        if let Some(s) = r.get("storm")
            && s["all_evicted_seconds_after_last_deadline"].is_null()
        {
            p.push(format!("{t}: the storm sessions were not all evicted"));
        }
        if let Some(s) = r.get("policy_change")
            && s["all_evicted_seconds_after_put"].is_null()
        {
            p.push(format!(
                "{t}: the tightened org's sessions were not all evicted"
            ));
        }
        if let Some(run) = r.get("run")
            && run["requests"].as_u64() == Some(0)
        {
            p.push(format!("{t}: no request completed"));
        }
    }
    p
}
