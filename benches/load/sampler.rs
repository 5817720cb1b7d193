//! A timeline of the machine during an open loop, to say what each stall episode (`stalls.rs`)
//! was: every `--sample-us`, on a thread of its own, each core's steal time (`/proc/stat`) and
//! each of the target's and the generator's threads' CPU time and run-queue wait
//! (`/proc/PID/task/TID/schedstat`, in ns). Over an episode, a server worker that ran the whole time was busy (the server's own
//! work); one that waited in the run queue stood behind another thread on its core; one whose
//! core's steal grew lost its virtual CPU to the host; one that neither ran nor waited was idle,
//! so the requests were late before they reached it (the generator or the link).
//!
//! Invariants:
//! 1. Off unless asked (`--sample-us`, 0 = off): a sample reads `/proc/stat` and one file per
//!    target thread, tens of µs on the generator's cores.
//! 2. The threads read are the target's and the generator's own (but the sampler's) alive when
//!    the run starts; one that ends keeps its last reading (it adds nothing after).
//! 3. Each sample carries its time since the run's start. An episode's figures are the
//!    differences between the last sample at or before its start and the first at or after its
//!    end (or the last sample), so they cover the episode and at most one interval either side;
//!    the report gives that window.
//! 4. Steal is as coarse as `/proc/stat` gives it: whole clock ticks (10 ms), counted when the
//!    guest's next tick on that core accounts it, so a steal shows within a tick of when it
//!    happened; the per-thread figures are exact to the ns.
//! 5. An episode's cause, in a word ([`Timeline::cause`]), is decided in this order: steal on
//!    any core (the host took a virtual CPU: the target's, or the generator's), one of the
//!    target's threads running for half the window (the target's own work), or waiting in the
//!    run queue that long (another thread on its core), the generator's threads waiting that
//!    long in all (the generator fell behind), else neither.

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
    /// The threads read (invariant 2): the target's, then the generator's own.
    threads: Vec<Thread>,
    samples: Vec<Sample>,
}

fn steal(cores: &mut Vec<String>, out: &mut Vec<u64>) {
    let Some(ticks) = crate::sched::steal_ticks() else {
        return;
    };
    let fill = cores.is_empty();
    for (name, t) in ticks {
        if fill {
            cores.push(name);
        }
        out.push(t);
    }
}

fn schedstat(pid: u32, tid: u32) -> Option<(u64, u64)> {
    crate::sched::schedstat(std::path::Path::new(&format!("/proc/{pid}/task/{tid}")))
}

struct Thread {
    pid: u32,
    tid: u32,
    name: String,
    /// One of the generator's (not the sampler itself).
    own: bool,
}

fn threads(pid: u32, own: bool, out: &mut Vec<Thread>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let mut found: Vec<Thread> = dir
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let name = comm.trim().to_string();
            (tid != me).then_some(Thread {
                pid,
                tid,
                name,
                own,
            })
        })
        .collect();
    found.sort_by_key(|t| t.tid);
    out.extend(found);
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
                threads: Vec::new(),
                samples: Vec::new(),
            };
            threads(pid, false, &mut t.threads);
            threads(std::process::id(), true, &mut t.threads);
            let mut last: Vec<(u64, u64)> = vec![(0, 0); t.threads.len()];
            loop {
                let now = Instant::now();
                let mut s = Sample {
                    at_us: now.saturating_duration_since(start).as_micros() as u64,
                    steal: Vec::with_capacity(t.cores.len()),
                    threads: Vec::with_capacity(t.threads.len()),
                };
                steal(&mut t.cores, &mut s.steal);
                for (i, th) in t.threads.iter().enumerate() {
                    if let Some(v) = schedstat(th.pid, th.tid) {
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
    /// The last sample at or before `start_us` and the first at or after `end_us` (or the
    /// last one): invariant 3's window.
    fn window(&self, start_us: u64, end_us: u64) -> Option<(&Sample, &Sample)> {
        let last = self.samples.len().checked_sub(1)?;
        let first = self.samples.partition_point(|s| s.at_us <= start_us);
        let end = self.samples.partition_point(|s| s.at_us < end_us);
        Some((
            &self.samples[first.saturating_sub(1)],
            &self.samples[end.min(last)],
        ))
    }

    /// Per thread, (it, ns ran, ns waited in the run queue) over the window.
    fn deltas<'a>(
        &'a self,
        a: &'a Sample,
        b: &'a Sample,
    ) -> impl Iterator<Item = (&'a Thread, u64, u64)> {
        self.threads.iter().enumerate().map(move |(i, th)| {
            (
                th,
                b.threads[i].0.saturating_sub(a.threads[i].0),
                b.threads[i].1.saturating_sub(a.threads[i].1),
            )
        })
    }

    /// What changed on the machine from `start_us` to `end_us` (invariant 3).
    pub fn between(&self, start_us: u64, end_us: u64) -> Value {
        let Some((a, b)) = self.window(start_us, end_us) else {
            return Value::Null;
        };
        let steal: BTreeMap<&str, u64> = self
            .cores
            .iter()
            .zip(a.steal.iter().zip(&b.steal))
            .filter(|(_, (x, y))| y > x)
            .map(|(c, (x, y))| (c.as_str(), (y - x) * 1000 / tick_hz()))
            .collect();
        let mut threads = serde_json::Map::new();
        let mut generator = (0, 0);
        for (th, ran, waited) in self.deltas(a, b) {
            if th.own {
                generator = (generator.0 + ran, generator.1 + waited);
            } else if ran + waited >= 50_000 {
                let e = threads
                    .entry(th.name.clone())
                    .or_insert_with(|| json!({"ran_ms": 0.0, "waited_ms": 0.0}));
                e["ran_ms"] = (e["ran_ms"].as_f64().unwrap_or(0.0) + ms(ran)).into();
                e["waited_ms"] = (e["waited_ms"].as_f64().unwrap_or(0.0) + ms(waited)).into();
            }
        }
        json!({
            "window_ms": [ms(a.at_us * 1000), ms(b.at_us * 1000)],
            "steal_ms": steal,
            "target_threads": threads,
            "generator_ran_ms": ms(generator.0),
            "generator_waited_ms": ms(generator.1),
        })
    }

    /// Whether any core's steal grew from `start_us` to `end_us` (invariant 3).
    pub fn stole(&self, start_us: u64, end_us: u64) -> bool {
        self.window(start_us, end_us)
            .is_some_and(|(a, b)| a.steal.iter().zip(&b.steal).any(|(x, y)| y > x))
    }

    /// What the machine did over a window, in a word (invariant 5): `steal` when a core's steal
    /// grew; else `target ran` when one of the target's threads ran for half the window or
    /// more, `target queued` when one waited in the run queue that long, `generator queued`
    /// when the generator's threads together waited that long; else `neither`.
    pub fn cause(&self, start_us: u64, end_us: u64) -> &'static str {
        let Some((a, b)) = self.window(start_us, end_us) else {
            return "unsampled";
        };
        if a.steal.iter().zip(&b.steal).any(|(x, y)| y > x) {
            return "steal";
        }
        let half = (b.at_us - a.at_us) * 1000 / 2;
        // The most any one target thread ran, and waited; what the generator's waited in all.
        let (mut ran, mut waited, mut generator_waited) = (0, 0, 0);
        for (th, r, w) in self.deltas(a, b) {
            if th.own {
                generator_waited += w;
            } else {
                ran = ran.max(r);
                waited = waited.max(w);
            }
        }
        if ran >= half {
            "target ran"
        } else if waited >= half {
            "target queued"
        } else if generator_waited >= half {
            "generator queued"
        } else {
            "neither"
        }
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
