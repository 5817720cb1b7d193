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
//! Latency is counted per request from the moment it was due: in closed loop (`--connections`
//! only) that is when it was sent; in open loop (`--rate`) it is the request's slot in the fixed
//! schedule, so a stall of the server shows up in the latency of every request that should have
//! been sent during it (no coordinated omission). A worker ahead of its schedule waits for the
//! slot, released by the pacer (`pace.rs`: tokio's 1 ms timer would send each millisecond's
//! requests in one burst); the pacer's own lateness (up to its `--pace-us` quantum plus the kernel's
//! timer slack) is counted too, so the open-loop figures err against the server.

mod conn;
mod cpu;
mod pace;
mod sampler;
mod sched;
mod stalls;
mod target;

use clap::Parser;
use conn::{Conn, Failure, OPS, Op};
use hdrhistogram::Histogram;
use pace::Pacer;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use target::{Kind, Target};

/// How long past its slot a worker waits for the pacer before it counts a missed wake-up.
const PACER_GRACE: Duration = Duration::from_millis(250);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    about = "Load generator for sessiond (and Redis, for comparison)"
)]
struct Args {
    /// What to load: `sessiond` (start the daemon built with this bench), `sessiond+unix` (the
    /// same on a Unix domain socket), `http://HOST:PORT` or `unix:PATH` (a running sessiond
    /// without API keys), `http://A:PORT,http://B:PORT,...` (the nodes of a cluster:
    /// connections spread over them), `redis` (start redis-server from PATH) or
    /// `redis://HOST:PORT`. Repeat to compare targets in one run.
    #[arg(long = "target", default_value = "sessiond")]
    targets: Vec<String>,
    /// Sessions created before the measurement, spread over `--orgs` orgs.
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
    /// Orgs the preloaded sessions (and the mix's creates) are spread over, round robin; the
    /// policy scenario tightens one more org of its own.
    #[arg(long, default_value_t = 1_000)]
    orgs: usize,
    /// The shape of the user ids sessions are created with: `short` (`u123`) or `uuid`
    /// (canonical lower-case UUIDs, as most identity providers hand out; issue #25).
    #[arg(long, default_value = "short", value_parser = ["short", "uuid"])]
    user_ids: String,
    /// Keep-alive connections, one request in flight on each.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of measurement per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open loop: total requests per second on a fixed schedule. Without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// `op=weight,...` over validate, touch, create, revoke, auth, healthz; or a preset:
    /// `default` (validate=80,touch=15,create=4,revoke=1), or one op's name alone.
    #[arg(long, default_value = "default")]
    mix: String,
    /// steady (the mix), ceiling (healthz vs auth vs validate, then auth at half its peak),
    /// storm (an expiry storm under validate traffic), policy (tighten a big org under traffic),
    /// all (every one in turn).
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// Sessions that expire together in the storm scenario.
    #[arg(long, default_value_t = 1_000_000)]
    storm_sessions: usize,
    /// Sessions of the org tightened in the policy scenario.
    #[arg(long, default_value_t = 100_000)]
    policy_sessions: usize,
    /// Rounds of the ceiling scenario: healthz, auth and validate are measured in turn this many
    /// times and the ratios are the medians of the rounds' (a shared VM's speed drifts by tens
    /// of percent over a minute; alternating makes each ratio compare like with like); then auth
    /// at half its peak as many times, reported by its median round's p99.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Open loop: the least time in microseconds between two wake-ups of the pacer, which
    /// releases every request due by then (see `pace.rs`). Shorter spreads the requests more
    /// evenly but costs the generator more CPU on the cores it shares with the server;
    /// latency is counted from each request's slot either way, so the pacer's lateness is
    /// charged to the server, not hidden.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    pace_us: u64,
    /// Open loop: a request answered this many ms or more after its slot counts as slow; the
    /// slow requests are grouped into stall episodes in the report (`stalls.rs`).
    #[arg(long, default_value_t = 5.0)]
    slow_ms: f64,
    /// Open loop: sample the target's threads (CPU time, run-queue wait) and each core's steal
    /// every this many µs (at least 100), to say what each stall episode was (`sampler.rs`);
    /// 0: off.
    #[arg(long, default_value_t = 0)]
    sample_us: u64,
    /// Worker threads of the load generator itself.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The pid of a sessiond given as a URL (`http://`, `unix:`), to report its CPU time per
    /// request as for the targets this tool starts.
    #[arg(long)]
    pid: Option<u32>,
    /// Extra argument for a sessiond this tool starts (repeat).
    #[arg(long = "sessiond-arg", allow_hyphen_values = true)]
    sessiond_args: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// A few seconds of every scenario at small sizes, failing on any error (CI). Adds the
    /// `redis` target when redis-server is installed.
    #[arg(long)]
    smoke: bool,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Weighted operations.
#[derive(Debug, Clone)]
struct Mix(Vec<(Op, u32)>);

impl Mix {
    fn parse(s: &str) -> Result<Mix, String> {
        if s == "default" {
            return Mix::parse("validate=80,touch=15,create=4,revoke=1");
        }
        if let Some(op) = Op::parse(s) {
            return Ok(Mix(vec![(op, 1)]));
        }
        let mut v = Vec::new();
        for part in s.split(',') {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?} is not op=weight"))?;
            let op = Op::parse(name.trim()).ok_or_else(|| {
                format!(
                    "unknown op {name:?} in --mix; known: {}",
                    OPS.map(Op::name).join(", ")
                )
            })?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} must be a whole number, not {w:?}"))?;
            if w > 0 {
                v.push((op, w));
            }
        }
        if v.is_empty() {
            return Err("--mix has no operation with a weight above 0".into());
        }
        Ok(Mix(v))
    }

    fn pick(&self, r: u64) -> Op {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let mut x = (r % total as u64) as u32;
        for (op, w) in &self.0 {
            if x < *w {
                return *op;
            }
            x -= w;
        }
        self.0[0].0
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(o, w)| format!("{}={w}", o.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// xorshift64*: cheap, per worker, good enough to pick ops and tokens.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn new_hist() -> Histogram<u64> {
    // Microseconds, 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Latencies and failures of one run (or one worker of it).
struct Stats {
    hist: BTreeMap<Op, Histogram<u64>>,
    /// Latencies by the scenario's phase tag (0 = before the event, 1 = during, 2 = after).
    tagged: BTreeMap<(u8, Op), Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    /// One message per failure kind, to show what went wrong.
    samples: BTreeMap<String, String>,
    /// Open loop: the requests answered `--slow-ms` or more after their slot (`stalls.rs`).
    slow: stalls::Slows,
    /// The run's connections, when it was an open loop (then `stalls` is reported).
    open_loop_connections: Option<usize>,
    /// Open loop with `--sample-us`: the machine meanwhile (`sampler.rs`).
    timeline: Option<sampler::Timeline>,
    /// Open loop against sessiond: its lag probe over the run (`stalls.rs`, invariant 6).
    worker_delay: Option<Value>,
}

impl Stats {
    fn new() -> Stats {
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
    fn ready(mix: &Mix) -> Stats {
        let mut s = Stats::new();
        for &(op, _) in &mix.0 {
            s.hist.entry(op).or_insert_with(new_hist).reset(); // writes every count
            s.tagged.entry((0, op)).or_insert_with(new_hist).reset();
        }
        s
    }

    fn record(&mut self, op: Op, tag: u8, micros: u64) {
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

    fn fail(&mut self, op: Op, f: &Failure) {
        let kind = format!("{}:{}", op.name(), f.kind());
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.samples.entry(kind).or_insert_with(|| format!("{f:?}"));
    }

    fn merge(&mut self, o: Stats) {
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

/// State the scenario driver shares with the workers.
struct Shared {
    done: AtomicU64,
    tag: AtomicU8,
    stop: AtomicBool,
}

/// A token in a worker's pool, its text inline in one cache line: picking a random one of
/// 100k costs the generator one cache miss, where a `String` cost two (its header in the
/// pool, then its bytes on the heap), on the cores it shares with the server.
#[derive(Clone)]
#[repr(align(64))]
struct PoolToken {
    len: u8,
    text: [u8; 63],
}

impl PoolToken {
    fn new(t: &str) -> PoolToken {
        let mut text = [0u8; 63];
        text.get_mut(..t.len())
            .expect("session tokens are 43 characters")
            .copy_from_slice(t.as_bytes());
        PoolToken {
            len: t.len() as u8,
            text,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..usize::from(self.len)]).expect("copied from a str")
    }
}

/// Whether user ids are UUIDs (`--user-ids uuid`), set once at start.
static UUID_USERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// User number `i`'s id in the shape `--user-ids` asks for (the same `i`, the same id).
fn user_name(i: u64) -> String {
    if !UUID_USERS.load(Ordering::Relaxed) {
        return format!("u{i}");
    }
    // Two rounds of splitmix64 spread `i` over the UUID's 128 bits.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (a, b) = (mix(i), mix(!i));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

struct Worker {
    conn: Conn,
    pool: Vec<PoolToken>,
    rng: Rng,
    users: u64,
    orgs: u64,
}

/// One closed- or open-loop run of `mix` with every worker, for `duration` (or until
/// `shared.stop`).
async fn drive(
    target: &Target,
    workers: Vec<Worker>,
    mix: &Mix,
    duration: Duration,
    rate: Option<f64>,
    pace: Duration,
    shared: Arc<Shared>,
) -> (Stats, Vec<Worker>, Duration) {
    let n = workers.len().max(1);
    let mut ready: Vec<Stats> = workers.iter().map(|_| Stats::ready(mix)).collect();
    let delays = match rate {
        // A server without the lag probe (not sessiond, or an HTTP server that is not) has none.
        Some(_) => target
            .metrics()
            .await
            .map(|m| stalls::worker_delays(&m))
            .filter(|d| !d.is_empty()),
        None => None,
    };
    let start = Instant::now();
    let until = start + duration;
    let interval = rate.map(|r| Duration::from_secs_f64(n as f64 / r.max(0.001)));
    // Open loop: the workers' slots, staggered across workers, released by the pacer.
    let first = move |iv: Duration, i: usize| start + iv.mul_f64(i as f64 / n as f64);
    let pacer =
        interval.map(|iv| Pacer::start((0..n).map(|i| first(iv, i)).collect(), iv, pace, until));
    let sampler = interval.and_then(|_| sampler::start(target.pid, start, until));
    let mut handles = Vec::new();
    for (i, mut w) in workers.into_iter().enumerate() {
        let mix = mix.clone();
        let shared = shared.clone();
        let gate = pacer.as_ref().map(|p| p.gate(i));
        // A worker that lost its connection makes a new one to a node of the target.
        let target_addr = target.addrs[i % target.addrs.len()].clone();
        let kind = target.kind;
        let mut stats = ready.pop().expect("one per worker");
        handles.push(tokio::spawn(async move {
            let mut next = interval.map(|iv| first(iv, i));
            loop {
                let now = Instant::now();
                if now >= until || shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = match (&mut next, interval) {
                    (Some(slot), Some(iv)) => {
                        let due = *slot;
                        *slot += iv;
                        if due >= until {
                            break;
                        }
                        if due > now {
                            let gate = gate.as_deref().expect("an open loop has a pacer");
                            // A lost wake-up must not hang the run: it is counted as an error
                            // (the smoke run fails on any) and the worker goes on.
                            let wait = pace::until(gate, due);
                            if tokio::time::timeout(due - now + PACER_GRACE, wait)
                                .await
                                .is_err()
                            {
                                *stats.errors.entry("pacer:missed_slot".into()).or_default() += 1;
                            }
                        }
                        // Counted from the slot, ahead or behind: the pacer's own lateness
                        // (up to `--pace-us` plus the kernel's timer slack) is charged to the
                        // server, and no stall on either side can hide (no coordinated
                        // omission).
                        due
                    }
                    _ => now,
                };
                if due >= until {
                    break;
                }
                let mut op = mix.pick(w.rng.next());
                if w.pool.is_empty() && op != Op::Healthz {
                    op = Op::Create;
                }
                // Borrowed from the pool, and user and org named only for a create: the
                // generator shares the cores with the server, so it allocates nothing per
                // request that the operation does not need.
                let revoked;
                let token = match op {
                    Op::Validate | Op::Touch | Op::Auth => {
                        let i = (w.rng.next() % w.pool.len() as u64) as usize;
                        Some(w.pool[i].as_str())
                    }
                    Op::Revoke => {
                        let i = (w.rng.next() % w.pool.len() as u64) as usize;
                        revoked = w.pool.swap_remove(i);
                        Some(revoked.as_str())
                    }
                    _ => None,
                };
                let (user, org) = match op {
                    Op::Create => (
                        user_name(w.rng.next() % w.users),
                        format!("org{}", w.rng.next() % w.orgs),
                    ),
                    _ => (String::new(), String::new()),
                };
                let tag = shared.tag.load(Ordering::Relaxed);
                match w.conn.run(op, token, &user, &org).await {
                    Ok(created) => {
                        let late = due.elapsed().as_micros() as u64;
                        stats.record(op, tag, late);
                        if interval.is_some() && late >= stalls::threshold() {
                            stats.slow.note(stalls::Slow {
                                slot_us: due.saturating_duration_since(start).as_micros() as u64,
                                latency_us: late,
                                conn: i as u32,
                                tid: stalls::tid(),
                            });
                        }
                        if let Some(t) = created {
                            w.pool.push(PoolToken::new(&t));
                        }
                    }
                    Err(f) => {
                        stats.fail(op, &f);
                        if matches!(f, Failure::Io(_)) {
                            match target::connect(kind, &target_addr).await {
                                Ok(c) => w.conn = c,
                                Err(_) => break,
                            }
                        }
                    }
                }
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            (stats, w)
        }));
    }
    let mut total = Stats::new();
    total.open_loop_connections = interval.map(|_| n);
    let mut back = Vec::new();
    for h in handles {
        let (s, w) = h.await.expect("worker panicked");
        total.merge(s);
        back.push(w);
    }
    // After the workers: the sampler ends at `until` too, within one interval.
    total.timeline = sampler.and_then(|s| s.join().ok());
    if let Some(before) = delays
        && let Some(after) = target.metrics().await
    {
        total.worker_delay = Some(stalls::delay_report(
            &before,
            &stalls::worker_delays(&after),
        ));
    }
    (total, back, start.elapsed())
}

/// A progress line on stderr while `shared.done` moves (only on a terminal).
fn progress(
    label: String,
    total: Option<u64>,
    duration: Duration,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let start = Instant::now();
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let done = shared.done.load(Ordering::Relaxed);
            let frac = match total {
                Some(t) => done as f64 / t.max(1) as f64,
                None => start.elapsed().as_secs_f64() / duration.as_secs_f64(),
            }
            .min(1.0);
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), done);
            let filled = (frac * 30.0) as usize;
            eprint!(
                "\r{label:<24} [{}{}] {:>3.0}% {:>9.0} req/s ",
                "=".repeat(filled),
                " ".repeat(30 - filled),
                frac * 100.0,
                rate
            );
            let _ = std::io::stderr().flush();
            if shared.stop.load(Ordering::Relaxed) {
                eprint!("\r{}\r", " ".repeat(80));
                return;
            }
        }
    })
}

fn pace(args: &Args) -> Duration {
    Duration::from_micros(args.pace_us)
}

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        done: AtomicU64::new(0),
        tag: AtomicU8::new(0),
        stop: AtomicBool::new(false),
    })
}

async fn workers(
    target: &Target,
    n: usize,
    users: usize,
    orgs: usize,
) -> Result<Vec<Worker>, String> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(Worker {
            conn: target.connect().await?,
            pool: Vec::new(),
            rng: Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0000_01B3)),
            users: users.max(1) as u64,
            orgs: orgs.max(1) as u64,
        });
    }
    Ok(v)
}

/// Creates `n` sessions spread over the workers' pools (user `u{i}`, org `{org_prefix}{i % orgs}`).
/// Returns the workers and the time it took.
async fn preload(
    target: &Target,
    mut ws: Vec<Worker>,
    n: usize,
    org_name: impl Fn(usize) -> String + Send + Sync + 'static,
    what: &str,
) -> Result<(Vec<Worker>, Duration, Stats), String> {
    let start = Instant::now();
    let sh = shared();
    let bar = progress(
        format!("{} {what}", target.label),
        Some(n as u64),
        Duration::ZERO,
        sh.clone(),
    );
    let per = n.div_ceil(ws.len().max(1));
    let org_name = Arc::new(org_name);
    let mut handles = Vec::new();
    for (wi, mut w) in ws.drain(..).enumerate() {
        let lo = wi * per;
        let hi = ((wi + 1) * per).min(n);
        let sh = sh.clone();
        let org_name = org_name.clone();
        handles.push(tokio::spawn(async move {
            let mut stats = Stats::new();
            for i in lo..hi {
                let t0 = Instant::now();
                let user = user_name(i as u64);
                match w.conn.run(Op::Create, None, &user, &org_name(i)).await {
                    Ok(Some(t)) => {
                        stats.record(Op::Create, 0, t0.elapsed().as_micros() as u64);
                        w.pool.push(PoolToken::new(&t));
                    }
                    Ok(None) => stats.fail(Op::Create, &Failure::NotValid),
                    Err(f) => stats.fail(Op::Create, &f),
                }
                sh.done.fetch_add(1, Ordering::Relaxed);
            }
            (stats, w)
        }));
    }
    let mut out = Vec::new();
    let mut stats = Stats::new();
    for h in handles {
        let (s, w) = h.await.map_err(|e| e.to_string())?;
        stats.merge(s);
        out.push(w);
    }
    sh.stop.store(true, Ordering::Relaxed);
    let _ = bar.await;
    Ok((out, start.elapsed(), stats))
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1_000.0
}

/// Per-op figures of a run, in ms and ops/s.
fn ops_json(stats: &Stats, elapsed: Duration) -> Value {
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

fn run_json(stats: &Stats, elapsed: Duration) -> Value {
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

fn tagged_p99(stats: &Stats, tag: u8, op: Op) -> Option<f64> {
    stats
        .tagged
        .get(&(tag, op))
        .filter(|h| !h.is_empty())
        .map(|h| pct(h, 0.99))
}

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
async fn steady(args: &Args, t: &Target, mix: &Mix) -> Result<Value, String> {
    let rss0 = t.rss_bytes();
    let count0 = t.count().await.unwrap_or(0);
    let ws = workers(t, args.connections, args.sessions, args.orgs).await?;
    let orgs = args.orgs.max(1);
    let (ws, took, pre) = preload(
        t,
        ws,
        args.sessions,
        move |i| format!("org{}", i % orgs),
        "preload",
    )
    .await?;
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
    let (stats, _ws, elapsed) = drive(t, ws, mix, d, args.rate, pace(args), sh.clone()).await;
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

/// healthz vs auth vs validate at the same connection count, then auth open-loop at half its
/// peak (issue #10 part 3).
async fn ceiling(args: &Args, t: &Target) -> Result<Value, String> {
    let ws = workers(t, args.connections, args.sessions, args.orgs).await?;
    let orgs = args.orgs.max(1);
    let (mut ws, _, _) = preload(
        t,
        ws,
        args.sessions,
        move |i| format!("org{}", i % orgs),
        "preload",
    )
    .await?;
    let d = Duration::from_secs_f64(args.duration);
    let mut out = serde_json::Map::new();
    let ops = [Op::Healthz, Op::Auth, Op::Validate];
    // peaks[op] = the op's req/s in each round; the tables keep the median round of each op.
    let mut peaks: BTreeMap<Op, Vec<(f64, Value)>> = BTreeMap::new();
    let rounds = args.rounds.max(1);
    // Errors of every run, not only of the median rounds the tables keep.
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut count_errors = |stats: &Stats| {
        for (k, n) in &stats.errors {
            *errors.entry(k.clone()).or_default() += n;
        }
    };
    for round in 0..rounds {
        for op in ops {
            let sh = shared();
            let label = format!("{} {} ({}/{rounds})", t.label, op.name(), round + 1);
            let bar = progress(label, None, d, sh.clone());
            let meter = cpu::Meter::start(t.pid);
            let (stats, back, elapsed) =
                drive(t, ws, &Mix(vec![(op, 1)]), d, None, pace(args), sh.clone()).await;
            sh.stop.store(true, Ordering::Relaxed);
            let _ = bar.await;
            ws = back;
            count_errors(&stats);
            let n = stats.hist.get(&op).map_or(0, |h| h.len());
            let mut run = run_json(&stats, elapsed);
            cpu::attach(&mut run, &meter);
            peaks
                .entry(op)
                .or_default()
                .push((n as f64 / elapsed.as_secs_f64(), run));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio_rounds = |op: Op| -> Vec<f64> {
        (0..rounds)
            .map(|r| peaks[&op][r].0 / peaks[&Op::Healthz][r].0)
            .collect()
    };
    let (auth_ratios, validate_ratios) = (ratio_rounds(Op::Auth), ratio_rounds(Op::Validate));
    let cpu_ratios = cpu_over_healthz(&peaks, rounds);
    let mut peak = BTreeMap::new();
    for (op, runs) in &peaks {
        let mut runs = runs.clone();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, run) = runs.swap_remove(runs.len() / 2);
        peak.insert(*op, rate);
        out.insert(op.name().into(), run);
    }
    out.insert(
        "rounds".into(),
        json!(
            ops.iter()
                .map(|op| (
                    op.name().to_owned(),
                    json!(peaks[op].iter().map(|p| p.0.round()).collect::<Vec<_>>())
                ))
                .collect::<serde_json::Map<_, _>>()
        ),
    );
    // Auth at half its peak, in rounds too: one stall of this VM (a few ms, now and then) decides
    // the p99 of the run it falls in. The table keeps the median round by p99; every round's
    // p99 and the p99 of all rounds pooled are reported beside it.
    let half = peak[&Op::Auth] / 2.0;
    let mut halves: Vec<(f64, Value)> = Vec::new();
    let mut pooled: Option<Histogram<u64>> = None;
    for round in 0..rounds {
        let sh = shared();
        let label = format!("{} auth at {half:.0}/s ({}/{rounds})", t.label, round + 1);
        let bar = progress(label, None, d, sh.clone());
        let meter = cpu::Meter::start(t.pid);
        let (stats, back, elapsed) = drive(
            t,
            ws,
            &Mix(vec![(Op::Auth, 1)]),
            d,
            Some(half),
            pace(args),
            sh.clone(),
        )
        .await;
        sh.stop.store(true, Ordering::Relaxed);
        let _ = bar.await;
        ws = back;
        count_errors(&stats);
        let Some(h) = stats.hist.get(&Op::Auth).filter(|h| !h.is_empty()) else {
            continue;
        };
        match &mut pooled {
            Some(p) => p.add(h).expect("histograms of the same bounds"),
            None => pooled = Some(h.clone()),
        }
        let mut run = run_json(&stats, elapsed);
        cpu::attach(&mut run, &meter);
        run["rate"] = half.round().into();
        halves.push((pct(h, 0.99), run));
    }
    let by_round: Vec<f64> = halves.iter().map(|h| h.0).collect();
    halves.sort_by(|a, b| a.0.total_cmp(&b.0));
    if !halves.is_empty() {
        let (_, run) = halves.swap_remove(halves.len() / 2);
        out.insert("auth_at_half_peak".into(), run);
    }
    out.insert("errors_all_runs".into(), json!(errors));
    out.insert(
        "auth_at_half_peak_p99_ms".into(),
        json!({
            "median_round": (!by_round.is_empty()).then(|| median(by_round.clone())),
            "by_round": by_round,
            "all_rounds_pooled": pooled.as_ref().map(|h| pct(h, 0.99)),
        }),
    );
    out.insert(
        "ratios".into(),
        json!({
            "auth_over_healthz": median(auth_ratios.clone()),
            "validate_over_healthz": median(validate_ratios.clone()),
            "auth_over_healthz_by_round": auth_ratios,
            "validate_over_healthz_by_round": validate_ratios,
        }),
    );
    out.insert("cpu_over_healthz".into(), cpu_ratios);
    Ok(json!({"target": t.label, "ceiling": out}))
}

/// auth's and validate's CPU per request over healthz's, each the median of the rounds' ratios
/// (a round compares runs measured back to back).
fn cpu_over_healthz(peaks: &BTreeMap<Op, Vec<(f64, Value)>>, rounds: usize) -> Value {
    let mut out = serde_json::Map::new();
    for op in [Op::Auth, Op::Validate] {
        let mut by_round: Vec<f64> = (0..rounds)
            .filter_map(|r| cpu::ratio(&peaks[&op][r].1, &peaks[&Op::Healthz][r].1))
            .collect();
        let key = format!("{}_over_healthz", op.name());
        out.insert(format!("{key}_by_round"), json!(by_round.clone()));
        by_round.sort_by(f64::total_cmp);
        out.insert(key, json!(by_round.get(by_round.len() / 2)));
    }
    Value::Object(out)
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

/// Runs validate traffic on `ws` in the background for at most `max`; the caller tags
/// phases through `sh.tag` and ends it with `sh.stop`.
fn background(
    t: &Target,
    ws: Vec<Worker>,
    max: Duration,
    sh: Arc<Shared>,
) -> tokio::task::JoinHandle<(Stats, Vec<Worker>, Duration)> {
    let target = t.view();
    tokio::spawn(async move {
        drive(
            &target,
            ws,
            &Mix(vec![(Op::Validate, 1)]),
            max,
            None,
            Duration::ZERO,
            sh,
        )
        .await
    })
}

/// An expiry storm: `storm_sessions` sessions whose deadlines fall together while validate
/// traffic continues.
async fn storm(args: &Args, t: &Target) -> Result<Value, String> {
    let ws = workers(t, args.connections, args.sessions, args.orgs).await?;
    let orgs = args.orgs.max(1);
    let (ws, _, _) = preload(
        t,
        ws,
        args.sessions,
        move |i| format!("org{}", i % orgs),
        "preload",
    )
    .await?;
    let base = t.count().await.unwrap_or(0);
    // Created under a long policy, then given one short enough that all fall due shortly after
    // the last create: their deadlines are spread over the creation time, no more.
    t.admin(
        "PUT",
        "/v1/orgs/storm/policy",
        r#"{"source": "CUSTOM", "absolute_timeout": 3600}"#,
    )
    .await?;
    let sw = workers(t, args.connections, args.storm_sessions, 1).await?;
    let first = Instant::now();
    let (sw, created_in, pre) = preload(
        t,
        sw,
        args.storm_sessions,
        |_| "storm".into(),
        "storm sessions",
    )
    .await?;
    drop(sw);
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
    sh.tag.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sh.stop.store(true, Ordering::Relaxed);
    let (stats, _, elapsed) = bg.await.map_err(|e| e.to_string())?;
    let mut traffic = run_json(&stats, elapsed);
    cpu::attach(&mut traffic, &meter);
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

/// Tightens a `policy_sessions`-session org under validate traffic.
async fn policy(args: &Args, t: &Target) -> Result<Value, String> {
    let ws = workers(t, args.connections, args.sessions, args.orgs).await?;
    let orgs = args.orgs.max(1);
    let (ws, _, _) = preload(
        t,
        ws,
        args.sessions,
        move |i| format!("org{}", i % orgs),
        "preload",
    )
    .await?;
    let base = t.count().await.unwrap_or(0);
    let pw = workers(t, args.connections, args.policy_sessions, 1).await?;
    let (pw, _, pre) = preload(
        t,
        pw,
        args.policy_sessions,
        |_| "tighten".into(),
        "org sessions",
    )
    .await?;
    drop(pw);
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
    sh.tag.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    sh.stop.store(true, Ordering::Relaxed);
    let (stats, _, elapsed) = bg.await.map_err(|e| e.to_string())?;
    let mut traffic = run_json(&stats, elapsed);
    cpu::attach(&mut traffic, &meter);
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

fn fmt_ms(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

/// The human summary of one result.
fn print_summary(r: &Value) {
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

/// Everything that makes a smoke run fail.
/// With more than one target: each later target's steady run against the first one's, as
/// ratios (later / first) of throughput and of each operation's p50 and p99 latency. Empty with
/// one target.
fn compare_targets(results: &[Value]) -> Vec<Value> {
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

fn print_comparison(comparison: &[Value]) {
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

fn smoke_problems(results: &[Value]) -> Vec<String> {
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
    UUID_USERS.store(args.user_ids == "uuid", Ordering::Relaxed);
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
                    "steady" => steady(&args, &t, &mix).await,
                    "ceiling" => ceiling(&args, &t).await,
                    "storm" => storm(&args, &t).await,
                    _ => policy(&args, &t).await,
                }
            });
            match r {
                Ok(mut v) => {
                    v["scenario"] = (*sc).into();
                    if !args.json {
                        print_summary(&v);
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
    let comparison = compare_targets(&results);
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
        print_comparison(&comparison);
    }
    if args.smoke {
        let mut problems = smoke_problems(&results);
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
