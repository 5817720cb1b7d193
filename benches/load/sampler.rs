//! A timeline of the machine during an open loop, to say what each stall episode (`stalls.rs`)
//! was: every `--sample-us`, on a thread of its own, each core's steal time (`/proc/stat`) and
//! each of the target's threads' CPU time and run-queue wait (`/proc/PID/task/TID/schedstat`,
//! in ns). Over an episode, a server worker that ran the whole time was busy (the server's own
//! work); one that waited in the run queue stood behind another thread on its core; one whose
//! core's steal grew lost its virtual CPU to the host; one that neither ran nor waited was idle,
//! so the requests were late before they reached it (the generator or the link).
//!
//! Invariants:
//! 1. Off unless asked (`--sample-us`, 0 = off): a sample reads `/proc/stat` and one file per
//!    target thread, tens of µs on the generator's cores.
//! 2. The target's threads are the ones alive when the run starts; one that ends keeps its last
//!    reading (it adds nothing after).
//! 3. Each sample carries its time since the run's start. An episode's figures are the
//!    differences between the last sample at or before its start and the first at or after its
//!    end (or the last sample), so they cover the episode and at most one interval either side;
//!    the report gives that window.
//! 4. Steal is as coarse as `/proc/stat` gives it: whole clock ticks (10 ms), counted when the
//!    guest's next tick on that core accounts it, so a steal shows within a tick of when it
//!    happened; the per-thread figures are exact to the ns.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static INTERVAL_US: AtomicU64 = AtomicU64::new(0);

/// Sets the sampling interval (`--sample-us`; zero turns sampling off).
pub fn set_interval(us: u64) {
    INTERVAL_US.store(us, Ordering::Relaxed);
}

struct Sample {
    at_us: u64,
    /// Steal ticks per core, in `cores` order.
    steal: Vec<u64>,
    /// (ns on CPU, ns waiting in the run queue) per thread, in `threads` order.
    threads: Vec<(u64, u64)>,
}

/// The samples of one run.
pub struct Timeline {
    interval_us: u64,
    cores: Vec<String>,
    /// (tid, name) of the target's threads (invariant 2).
    threads: Vec<(u32, String)>,
    samples: Vec<Sample>,
}

fn steal(cores: &mut Vec<String>, out: &mut Vec<u64>) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return;
    };
    let fill = cores.is_empty();
    for line in stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
    {
        let mut f = line.split_whitespace();
        let name = f.next().unwrap_or_default();
        if fill {
            cores.push(name.to_string());
        }
        out.push(f.nth(7).and_then(|v| v.parse().ok()).unwrap_or(0));
    }
}

fn schedstat(pid: u32, tid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

fn threads(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, String)> = dir
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            Some((tid, comm.trim().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// Starts sampling `pid`'s threads and the cores from `start` until `until`, if sampling is on
/// and the pid is known.
pub fn start(pid: Option<u32>, start: Instant, until: Instant) -> Option<JoinHandle<Timeline>> {
    let interval_us = INTERVAL_US.load(Ordering::Relaxed);
    let pid = pid.filter(|_| interval_us > 0)?;
    let every = Duration::from_micros(interval_us);
    let spawned = std::thread::Builder::new()
        .name("load-sampler".into())
        .spawn(move || {
            let mut t = Timeline {
                interval_us,
                cores: Vec::new(),
                threads: threads(pid),
                samples: Vec::new(),
            };
            let mut last: Vec<(u64, u64)> = vec![(0, 0); t.threads.len()];
            loop {
                let now = Instant::now();
                let mut s = Sample {
                    at_us: now.saturating_duration_since(start).as_micros() as u64,
                    steal: Vec::with_capacity(t.cores.len()),
                    threads: Vec::with_capacity(t.threads.len()),
                };
                steal(&mut t.cores, &mut s.steal);
                for (i, (tid, _)) in t.threads.iter().enumerate() {
                    if let Some(v) = schedstat(pid, *tid) {
                        last[i] = v;
                    }
                    s.threads.push(last[i]);
                }
                t.samples.push(s);
                if now >= until {
                    return t;
                }
                std::thread::sleep(every.min(until.saturating_duration_since(now)));
            }
        });
    spawned.ok()
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

impl Timeline {
    /// What changed on the machine from `start_us` to `end_us` (invariant 3).
    pub fn between(&self, start_us: u64, end_us: u64) -> Value {
        if self.samples.is_empty() {
            return Value::Null;
        }
        let first = self.samples.partition_point(|s| s.at_us <= start_us);
        let a = &self.samples[first.saturating_sub(1)];
        let last = self.samples.partition_point(|s| s.at_us < end_us);
        let b = &self.samples[last.min(self.samples.len() - 1)];
        let steal: BTreeMap<&str, u64> = self
            .cores
            .iter()
            .zip(a.steal.iter().zip(&b.steal))
            .filter(|(_, (x, y))| y > x)
            .map(|(c, (x, y))| (c.as_str(), (y - x) * 1000 / tick_hz()))
            .collect();
        let mut threads = serde_json::Map::new();
        for (i, (_, name)) in self.threads.iter().enumerate() {
            let (ran, waited) = (
                b.threads[i].0.saturating_sub(a.threads[i].0),
                b.threads[i].1.saturating_sub(a.threads[i].1),
            );
            if ran + waited >= 50_000 {
                let e = threads
                    .entry(name.clone())
                    .or_insert_with(|| json!({"ran_ms": 0.0, "waited_ms": 0.0}));
                e["ran_ms"] = (e["ran_ms"].as_f64().unwrap_or(0.0) + ms(ran)).into();
                e["waited_ms"] = (e["waited_ms"].as_f64().unwrap_or(0.0) + ms(waited)).into();
            }
        }
        json!({
            "window_ms": [ms(a.at_us * 1000), ms(b.at_us * 1000)],
            "steal_ms": steal,
            "target_threads": threads,
        })
    }

    /// Whether any core's steal grew from `start_us` to `end_us` (invariant 3).
    pub fn stole(&self, start_us: u64, end_us: u64) -> bool {
        if self.samples.is_empty() {
            return false;
        }
        let first = self.samples.partition_point(|s| s.at_us <= start_us);
        let a = &self.samples[first.saturating_sub(1)];
        let last = self.samples.partition_point(|s| s.at_us < end_us);
        let b = &self.samples[last.min(self.samples.len() - 1)];
        a.steal.iter().zip(&b.steal).any(|(x, y)| y > x)
    }

    /// The time of the last sample, µs after the run's start.
    pub fn span_us(&self) -> u64 {
        self.samples.last().map_or(0, |s| s.at_us)
    }

    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }
}

fn tick_hz() -> u64 {
    rustix::param::clock_ticks_per_second()
}
