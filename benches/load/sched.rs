//! Who waited for a CPU during a run, and what the hypervisor took (issue #27's tail): each
//! thread's time in the run queue (runnable, not running), from `/proc/PID/task/*/schedstat`,
//! for the target's threads (by name) and the generator's (summed), and each core's steal
//! time from `/proc/stat`. Read before and after a run, like the CPU meter (`cpu.rs`).
//!
//! With the episodes of `stalls.rs` this tells a server worker that waited behind another
//! thread on its core (its run-queue wait grows) from one whose virtual CPU the host took
//! (steal on its core grows, its own wait does not) and from a generator that fell behind (the
//! generator's wait grows).
//!
//! Invariants:
//! 1. Differences of two readings, per thread id. A thread that started during the run counts
//!    from zero; one that ended during it is left out (it has no second reading).
//! 2. Only what was read: without a pid there is no target part, without `schedstat` (a
//!    kernel without `CONFIG_SCHED_INFO`) no waits, without a steal column no steal; never a
//!    guess or a zero in place of a missing figure.
//! 3. Steal is in ms per core, at `/proc/stat`'s resolution (one clock tick, 10 ms), and only
//!    the cores with some are listed.

use serde_json::{Value, json};
use std::collections::BTreeMap;

/// tid -> (thread name, ns waited in the run queue so far).
type Waits = BTreeMap<u32, (String, u64)>;

fn waits(task_dir: &str) -> Option<Waits> {
    let mut out = Waits::new();
    for task in std::fs::read_dir(task_dir).ok()? {
        let Ok(task) = task else { continue };
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // The thread may end between the listing and these reads: then it is left out.
        let (Some((_, wait)), Ok(comm)) = (
            schedstat(&task.path()),
            std::fs::read_to_string(task.path().join("comm")),
        ) else {
            continue;
        };
        out.insert(tid, (comm.trim().to_string(), wait));
    }
    (!out.is_empty()).then_some(out)
}

/// A thread's (ns on CPU, ns waiting in the run queue) so far, from its `schedstat` in `task`
/// (`/proc/PID/task/TID`); also read by `sampler.rs`.
pub fn schedstat(task: &std::path::Path) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(task.join("schedstat")).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Steal ticks per core, in `/proc/stat`'s order, from its `cpuN` lines (the 8th value); also
/// read by `sampler.rs`.
pub fn steal_ticks() -> Option<Vec<(String, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut out = Vec::new();
    for line in stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
    {
        let mut f = line.split_whitespace();
        let name = f.next()?.to_string();
        out.push((name, f.nth(7)?.parse().ok()?));
    }
    Some(out)
}

fn steal() -> Option<BTreeMap<String, u64>> {
    steal_ticks().map(|v| v.into_iter().collect())
}

/// Readings taken at the start of a run.
pub struct Reading {
    pid: Option<u32>,
    target: Option<Waits>,
    own: Option<Waits>,
    steal: Option<BTreeMap<String, u64>>,
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

/// Per thread name, ms waited between the readings (invariant 1).
fn waited(before: &Waits, after: &Waits) -> BTreeMap<String, f64> {
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (tid, (name, end)) in after {
        let start = before.get(tid).map_or(0, |b| b.1);
        *by_name.entry(name.clone()).or_default() += end.saturating_sub(start);
    }
    by_name.into_iter().map(|(k, v)| (k, ms(v))).collect()
}

impl Reading {
    pub fn take(pid: Option<u32>) -> Reading {
        Reading {
            pid,
            target: pid.and_then(|p| waits(&format!("/proc/{p}/task"))),
            own: waits("/proc/self/task"),
            steal: steal(),
        }
    }

    /// What changed since [`Reading::take`] (invariants 1-3).
    pub fn since(&self) -> Value {
        let target = match (&self.target, self.pid) {
            (Some(b), Some(p)) => waits(&format!("/proc/{p}/task")).map(|a| waited(b, &a)),
            _ => None,
        };
        let generator = match (&self.own, waits("/proc/self/task")) {
            (Some(b), Some(a)) => Some(waited(b, &a).values().sum::<f64>()),
            _ => None,
        };
        let tick_ms = 1000 / rustix::param::clock_ticks_per_second();
        let steal = match (&self.steal, steal()) {
            (Some(b), Some(a)) => Some(
                a.iter()
                    .filter_map(|(cpu, end)| {
                        let d = end.saturating_sub(*b.get(cpu)?);
                        (d > 0).then(|| (cpu.clone(), d * tick_ms))
                    })
                    .collect::<BTreeMap<_, _>>(),
            ),
            _ => None,
        };
        json!({
            "target_run_queue_wait_ms": target,
            "generator_run_queue_wait_ms": generator.map(|g| (g * 100.0).round() / 100.0),
            "steal_ms": steal,
        })
    }
}

/// The text report's line for a run's `sched`, if it has one.
pub fn describe(run: &Value) -> Option<String> {
    let s = run.get("sched")?;
    let target = s["target_run_queue_wait_ms"].as_object().map(|m| {
        m.iter()
            .filter(|(_, v)| v.as_f64().unwrap_or(0.0) > 0.0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    Some(format!(
        "run-queue waits, ms: target [{}], generator {}; steal, ms: {}",
        target.unwrap_or_else(|| "unknown".into()),
        s["generator_run_queue_wait_ms"],
        s["steal_ms"]
    ))
}
