//! What one run measured (`Stats`) and how it is reported (`run_json`).
//!
//! Invariants:
//! 1. Latencies are kept in microseconds, clamped to 1 µs..100 s, in HDR histograms of 3
//!    significant digits; every histogram has those bounds, so merging two never fails.
//! 2. A run's `Stats` is the merge of its workers': counts add, and each failure kind keeps the
//!    first message seen of it.
//! 3. `Stats::ready` makes and writes the histograms of the mix's operations before the run's
//!    clock starts, so that no page of them is faulted in while requests are timed.
//! 4. `run_json` is the one shape every scenario reports a run in (ms, ops/s, errors); an open
//!    loop's carries its stall report (`stalls.rs`) and the daemon's lag probe beside it.

use crate::args::Mix;
use crate::conn::{Failure, Op};
use crate::{sampler, stalls};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

pub fn new_hist() -> Histogram<u64> {
    // Microseconds, 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Latencies and failures of one run (or one worker of it).
pub struct Stats {
    pub hist: BTreeMap<Op, Histogram<u64>>,
    /// Latencies by the scenario's phase tag (0 = before the event, 1 = during, 2 = after).
    pub tagged: BTreeMap<(u8, Op), Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    /// One message per failure kind, to show what went wrong.
    pub samples: BTreeMap<String, String>,
    /// Open loop: the requests answered `--slow-ms` or more after their slot (`stalls.rs`).
    pub slow: stalls::Slows,
    /// The run's connections, when it was an open loop (then `stalls` is reported).
    pub open_loop_connections: Option<usize>,
    /// Open loop with `--sample-us`: the machine meanwhile (`sampler.rs`).
    pub timeline: Option<sampler::Timeline>,
    /// Open loop against sessiond: its lag probe over the run (`stalls.rs`, invariant 6).
    pub worker_delay: Option<Value>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            hist: BTreeMap::new(),
            tagged: BTreeMap::new(),
            errors: BTreeMap::new(),
            samples: BTreeMap::new(),
            slow: stalls::Slows::default(),
            open_loop_connections: None,
            timeline: None,
            worker_delay: None,
        }
    }

    /// Stats with the histograms of `mix`'s operations (untagged and tag 0) made and every
    /// page of them written, before the clock starts: an HDR histogram of this range is ~220 KB,
    /// and allocating and faulting in two per operation per connection at a run's first
    /// requests (57 MB at 128 connections) delayed the start of every open loop on the 2-core
    /// guest, which at its rate the generator then took ~100 ms to catch up on.
    pub fn ready(mix: &Mix) -> Stats {
        let mut s = Stats::new();
        for &(op, _) in &mix.0 {
            s.hist.entry(op).or_insert_with(new_hist).reset(); // writes every count
            s.tagged.entry((0, op)).or_insert_with(new_hist).reset();
        }
        s
    }

    pub fn record(&mut self, op: Op, tag: u8, micros: u64) {
        let v = micros.clamp(1, 100_000_000);
        self.hist
            .entry(op)
            .or_insert_with(new_hist)
            .saturating_record(v);
        {
            self.tagged
                .entry((tag, op))
                .or_insert_with(new_hist)
                .saturating_record(v);
        }
    }

    pub fn fail(&mut self, op: Op, f: &Failure) {
        let kind = format!("{}:{}", op.name(), f.kind());
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.samples.entry(kind).or_insert_with(|| format!("{f:?}"));
    }

    pub fn merge(&mut self, o: Stats) {
        for (k, h) in o.hist {
            self.hist
                .entry(k)
                .or_insert_with(new_hist)
                .add(&h)
                .expect("same bounds");
        }
        for (k, h) in o.tagged {
            self.tagged
                .entry(k)
                .or_insert_with(new_hist)
                .add(&h)
                .expect("same bounds");
        }
        for (k, n) in o.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.slow.merge(o.slow);
        for (k, s) in o.samples {
            self.samples.entry(k).or_insert(s);
        }
    }
}

pub fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1_000.0
}

/// Per-op figures of a run, in ms and ops/s.
pub fn ops_json(stats: &Stats, elapsed: Duration) -> Value {
    let mut m = serde_json::Map::new();
    for (op, h) in &stats.hist {
        m.insert(
            op.name().into(),
            json!({
                "count": h.len(),
                "ops_per_sec": (h.len() as f64 / elapsed.as_secs_f64()).round(),
                "p50_ms": pct(h, 0.50), "p90_ms": pct(h, 0.90), "p99_ms": pct(h, 0.99),
                "p999_ms": pct(h, 0.999), "max_ms": h.max() as f64 / 1_000.0,
            }),
        );
    }
    Value::Object(m)
}

pub fn run_json(stats: &Stats, elapsed: Duration) -> Value {
    let total: u64 = stats.hist.values().map(|h| h.len()).sum();
    let mut run = json!({
        "seconds": elapsed.as_secs_f64(),
        "requests": total,
        "throughput": (total as f64 / elapsed.as_secs_f64()).round(),
        "ops": ops_json(stats, elapsed),
        "errors": stats.errors,
        "error_samples": stats.samples,
    });
    if let Some(n) = stats.open_loop_connections {
        run["stalls"] = stalls::report(&stats.slow, n, stats.timeline.as_ref());
        run["stalls"]["daemon_worker_delay"] = stats.worker_delay.clone().into();
        // The same lines as the text report, for scripts that read the JSON.
        let text = stalls::describe(&run);
        run["stalls"]["text"] = text.into();
    }
    run
}

pub fn tagged_p99(stats: &Stats, tag: u8, op: Op) -> Option<f64> {
    stats
        .tagged
        .get(&(tag, op))
        .filter(|h| !h.is_empty())
        .map(|h| pct(h, 0.99))
}
