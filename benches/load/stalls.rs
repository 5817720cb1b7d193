//! Where an open loop's slow requests fell (issue #27's tail): a p99.9 says how many requests
//! were late, not whether one stall made them late or many, nor what stalled. This groups the
//! slow requests into episodes and says, for each, how long it lasted and how much of the load
//! it touched, which is what tells a stalled server worker from a stalled generator thread
//! or a stalled machine.
//!
//! Invariants:
//! 1. A request is slow when its answer came [`threshold`] or more after its slot (open loop
//!    only: a closed loop has no schedule to fall behind). Each worker keeps the first [`KEEP`]
//!    slow requests and counts the rest (`not_kept`), so a run that is all stall costs bounded
//!    memory; the episodes are then drawn from the kept ones, and the report says so.
//! 2. An episode is a run of slow requests whose waits overlap: sorted by slot, a request joins
//!    the current episode while its slot comes before the latest answer seen in it. It spans
//!    from its first slot to its last answer.
//! 3. Per episode: when it began (ms after the run's start), how long it spans, how many slow
//!    requests it holds, on how many of the run's connections, and how many of the generator's
//!    threads read their answers (the thread a worker task ran on when its answer came, by
//!    `gettid`; tokio moves tasks between threads, so this is where the answers were read, not
//!    a fixed owner). A stall of the whole server, of its machine or of the link touches every
//!    connection; one of a server's N workers, about 1/N of them; a generator thread that
//!    stalls, the connections it was polling.
//! 4. The report lists at most [`SHOW`] episodes, the ones with most slow requests, in the
//!    order they happened; the totals cover every kept request.
//! 5. With a timeline (`sampler.rs`), each listed episode carries what the machine did over
//!    it, and every episode counts towards the steal check: how many saw a core's steal grow,
//!    against windows of the same lengths moved elsewhere in the run (chance's share), and
//!    each episode's cause in a word (`sampler`, invariant 5) is counted.
//! 6. Against sessiond, the report carries the daemon's own view: its lag probe's ticks over
//!    the run (`sessiond_http_worker_delay_seconds`, read from `/metrics` before and after),
//!    and how many ran late by more than 5 to 50 ms. A stall of a worker is late ticks there;
//!    episodes with none were not the workers'.

use crate::sampler::Timeline;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Slow requests kept per worker (invariant 1).
pub const KEEP: usize = 4_096;
/// Episodes listed in a report (invariant 4).
pub const SHOW: usize = 8;

static THRESHOLD_US: AtomicU64 = AtomicU64::new(5_000);

/// Sets the lateness from which a request counts as slow (`--slow-ms`).
pub fn set_threshold(t: Duration) {
    THRESHOLD_US.store(t.as_micros().max(1) as u64, Ordering::Relaxed);
}

/// The lateness from which a request counts as slow, in microseconds.
pub fn threshold() -> u64 {
    THRESHOLD_US.load(Ordering::Relaxed)
}

/// One slow request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slow {
    /// Its slot, in µs after the run's start.
    pub slot_us: u64,
    pub latency_us: u64,
    /// The worker (connection) index.
    pub conn: u32,
    /// The generator thread that read the answer.
    pub tid: i32,
}

/// The slow requests of a run, or of one worker of it.
#[derive(Debug, Default)]
pub struct Slows {
    list: Vec<Slow>,
    not_kept: u64,
}

impl Slows {
    /// Keeps `s` if the worker's share allows (invariant 1).
    pub fn note(&mut self, s: Slow) {
        if self.list.len() < KEEP {
            self.list.push(s);
        } else {
            self.not_kept += 1;
        }
    }

    pub fn merge(&mut self, o: Slows) {
        self.list.extend(o.list);
        self.not_kept += o.not_kept;
    }
}

/// The daemon's lag probe (`sessiond_http_worker_delay_seconds`, every worker summed) from a
/// `/metrics` text: (bucket bound in seconds, ticks at or under it), in the text's order.
pub fn worker_delays(metrics: &str) -> Vec<(f64, f64)> {
    let mut sums: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("sessiond_http_worker_delay_seconds_bucket{") else {
            continue;
        };
        let Some((labels, n)) = rest.split_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|l| l.split('"').next())
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let n: f64 = n.trim().parse().unwrap_or(0.0);
        match sums.iter_mut().find(|(b, _)| *b == le) {
            Some(s) => s.1 += n,
            None => sums.push((le, n)),
        }
    }
    sums
}

/// The daemon's own view of a run (invariant 6): how many of its workers' probe ticks ran late
/// by more than 5, 10, 25 and 50 ms between the two readings of [`worker_delays`].
pub fn delay_report(before: &[(f64, f64)], after: &[(f64, f64)]) -> Value {
    let at = |v: &[(f64, f64)], le: f64| v.iter().find(|(b, _)| *b == le).map_or(0.0, |x| x.1);
    let ticks = at(after, f64::INFINITY) - at(before, f64::INFINITY);
    let over = |le: f64| ticks - (at(after, le) - at(before, le));
    json!({
        "ticks": ticks,
        "late_over_5ms": over(0.005),
        "late_over_10ms": over(0.01),
        "late_over_25ms": over(0.025),
        "late_over_50ms": over(0.05),
    })
}

/// The thread id of the caller, for [`Slow::tid`].
pub fn tid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// One episode (invariants 2, 3).
#[derive(Debug, Clone, PartialEq)]
struct Episode {
    start_us: u64,
    end_us: u64,
    requests: usize,
    conns: BTreeSet<u32>,
    tids: BTreeSet<i32>,
    worst_us: u64,
}

fn episodes(mut list: Vec<Slow>) -> Vec<Episode> {
    list.sort_by_key(|s| s.slot_us);
    let mut out: Vec<Episode> = Vec::new();
    for s in list {
        let end = s.slot_us + s.latency_us;
        match out.last_mut() {
            Some(e) if s.slot_us < e.end_us => {
                e.end_us = e.end_us.max(end);
                e.requests += 1;
                e.conns.insert(s.conn);
                e.tids.insert(s.tid);
                e.worst_us = e.worst_us.max(s.latency_us);
            }
            _ => out.push(Episode {
                start_us: s.slot_us,
                end_us: end,
                requests: 1,
                conns: BTreeSet::from([s.conn]),
                tids: BTreeSet::from([s.tid]),
                worst_us: s.latency_us,
            }),
        }
    }
    out
}

/// How many episodes saw a core's steal grow, against how many windows of the same lengths at
/// other times of the run did (each episode's window moved by a quarter, a half and three
/// quarters of the run, wrapping): a steal that comes with the stalls, not by chance, shows as
/// a share well above the other's (invariant 5).
fn steal_against_chance(all: &[Episode], t: &Timeline) -> Value {
    let run = t.span_us();
    let with = all.iter().filter(|e| t.stole(e.start_us, e.end_us)).count();
    let (mut tried, mut hit) = (0u64, 0u64);
    for e in all {
        let span = e.end_us - e.start_us;
        for k in 1..=3 {
            let s = (e.start_us + k * run / 4) % run.max(1);
            if s + span <= run {
                tried += 1;
                hit += u64::from(t.stole(s, s + span));
            }
        }
    }
    let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
    for e in all {
        *causes.entry(t.cause(e.start_us, e.end_us)).or_default() += 1;
    }
    json!({
        "episodes_with_steal": with,
        "episodes": all.len(),
        "shifted_windows_with_steal": hit,
        "shifted_windows": tried,
        "causes": causes,
    })
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// The report of a run over `connections` connections (invariant 4), each episode with what
/// the machine did meanwhile when it was sampled (`sampler.rs`).
pub fn report(slows: &Slows, connections: usize, timeline: Option<&Timeline>) -> Value {
    let all = episodes(slows.list.clone());
    let threads: BTreeSet<i32> = slows.list.iter().map(|s| s.tid).collect();
    let mut shown: Vec<&Episode> = all.iter().collect();
    shown.sort_by_key(|e| std::cmp::Reverse(e.requests));
    shown.truncate(SHOW);
    shown.sort_by_key(|e| e.start_us);
    json!({
        "threshold_ms": ms(threshold()),
        "slow_requests": slows.list.len() as u64 + slows.not_kept,
        "not_kept": slows.not_kept,
        "episodes": all.len(),
        "connections": connections,
        "generator_threads_seen": threads.len(),
        "largest": shown.iter().map(|e| json!({
            "at_ms": ms(e.start_us),
            "span_ms": ms(e.end_us - e.start_us),
            "worst_ms": ms(e.worst_us),
            "requests": e.requests,
            "connections": e.conns.len(),
            "generator_threads": e.tids.len(),
            "machine": timeline.map(|t| t.between(e.start_us, e.end_us)),
        })).collect::<Vec<_>>(),
        "sampled_every_us": timeline.map(Timeline::interval_us),
        "steal": timeline.map(|t| steal_against_chance(&all, t)),
    })
}

/// The text report's lines for a run's `stalls`, if it has any.
pub fn describe(run: &Value) -> Vec<String> {
    let s = &run["stalls"];
    let Some(n) = s["slow_requests"].as_u64() else {
        return Vec::new();
    };
    let mut lines = vec![format!(
        "slow (>= {} ms after the slot): {n} requests in {} episodes{}",
        s["threshold_ms"],
        s["episodes"],
        match s["not_kept"].as_u64() {
            Some(k) if k > 0 => format!(" ({k} not kept, not in the episodes)"),
            _ => String::new(),
        }
    )];
    let d = &s["daemon_worker_delay"];
    if d.is_object() {
        lines.push(format!(
            "  the daemon's lag probe: {} ticks, late by > 5 ms: {}, > 10 ms: {}, > 25 ms: {}, > 50 ms: {}",
            d["ticks"], d["late_over_5ms"], d["late_over_10ms"], d["late_over_25ms"], d["late_over_50ms"]
        ));
    }
    let st = &s["steal"];
    if st.is_object() && st["episodes"].as_u64() > Some(0) {
        lines.push(format!(
            "  steal on some core during {} of {} episodes; during {} of {} windows of the same lengths at other times; causes: {}",
            st["episodes_with_steal"], st["episodes"], st["shifted_windows_with_steal"], st["shifted_windows"], st["causes"]
        ));
    }
    for e in s["largest"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  at {} ms: {} ms long, worst {} ms, {} requests on {} of {} connections, read by {} generator threads",
            e["at_ms"],
            e["span_ms"],
            e["worst_ms"],
            e["requests"],
            e["connections"],
            s["connections"],
            e["generator_threads"]
        ));
        let m = &e["machine"];
        if m.is_object() {
            let threads: Vec<String> = m["target_threads"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k} ran {} waited {}", v["ran_ms"], v["waited_ms"]))
                .collect();
            lines.push(format!(
                "    from {} to {} ms: steal {}; generator ran {} waited {}; target threads (ms): {}",
                m["window_ms"][0],
                m["window_ms"][1],
                m["steal_ms"],
                m["generator_ran_ms"],
                m["generator_waited_ms"],
                if threads.is_empty() {
                    "none ran".into()
                } else {
                    threads.join(", ")
                }
            ));
        }
    }
    lines
}

/// Checked by the smoke run (the load generator has no test harness): episodes are grouped
/// and counted as invariants 2 and 3 say. Returns what is wrong, if anything.
pub fn self_check() -> Option<String> {
    let s = |slot_us, latency_us, conn, tid| Slow {
        slot_us,
        latency_us,
        conn,
        tid,
    };
    // Two overlapping waits on two connections, then one alone later.
    let got = episodes(vec![
        s(50_000, 6_000, 3, 7),
        s(1_000, 10_000, 1, 7),
        s(5_000, 5_000, 2, 8),
    ]);
    let spans: Vec<(u64, u64, usize, usize, usize)> = got
        .iter()
        .map(|e| {
            (
                e.start_us,
                e.end_us,
                e.requests,
                e.conns.len(),
                e.tids.len(),
            )
        })
        .collect();
    let want = vec![(1_000, 11_000, 2, 2, 2), (50_000, 56_000, 1, 1, 1)];
    (spans != want).then(|| format!("stall episodes: got {spans:?}, want {want:?}"))
}
