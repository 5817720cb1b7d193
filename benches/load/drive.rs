//! The measured loop: each connection's worker sends one request at a time, picks its
//! operation from the mix and its token from its own pool, and records when the answer came.
//!
//! Invariants:
//! 1. Latency is counted per request from the moment it was due: in closed loop (`--connections`
//!    only) that is when it was sent; in open loop (`--rate`) it is the request's slot in the
//!    fixed schedule, so a stall of the server shows up in the latency of every request that
//!    should have been sent during it (no coordinated omission). A worker ahead of its schedule
//!    waits for the slot, released by the pacer (`pace.rs`: tokio's 1 ms timer would send each
//!    millisecond's requests in one burst); the pacer's own lateness (up to its `--pace-us`
//!    quantum plus the kernel's timer slack) is counted too, so the open-loop figures err
//!    against the server.
//! 2. A wake-up the pacer loses is counted as an error (`pacer:missed_slot`) after
//!    `PACER_GRACE`, and the worker goes on: a run never hangs on it.
//! 3. One request in flight per connection. A worker whose connection fails counts the failure
//!    and connects again to the same node; if it cannot, it stops.
//! 4. Per request the generator allocates nothing the operation does not need: tokens are
//!    borrowed from the pool (inline, one cache line each), user and org are named only for a
//!    create. A create adds its token to the pool, a revoke takes one out.
//! 5. Workers come back from a run with their connections and pools, so a scenario measures
//!    several runs on one preload.

use crate::args::{Args, Mix};
use crate::conn::{Conn, Failure, Op};
use crate::pace::{self, Pacer};
use crate::stats::Stats;
use crate::target::{self, Target};
use crate::{sampler, stalls};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long past its slot a worker waits for the pacer before it counts a missed wake-up.
const PACER_GRACE: Duration = Duration::from_millis(250);

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

/// State the scenario driver shares with the workers.
pub struct Shared {
    pub done: AtomicU64,
    pub tag: AtomicU8,
    pub stop: AtomicBool,
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
pub static UUID_USERS: AtomicBool = AtomicBool::new(false);

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

pub struct Worker {
    conn: Conn,
    pool: Vec<PoolToken>,
    rng: Rng,
    users: u64,
    orgs: u64,
}

/// One closed- or open-loop run of `mix` with every worker, for `duration` (or until
/// `shared.stop`).
pub async fn drive(
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
pub fn progress(
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

pub fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        done: AtomicU64::new(0),
        tag: AtomicU8::new(0),
        stop: AtomicBool::new(false),
    })
}

pub async fn workers(
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

/// Creates `n` sessions spread evenly over the workers' pools (session `i` for user
/// `user_name(i)` in org `org_name(i)`). Returns the workers, the time it took and the creates'
/// figures.
pub async fn preload(
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
    let k = ws.len().max(1);
    let org_name = Arc::new(org_name);
    let mut handles = Vec::new();
    for (wi, mut w) in ws.drain(..).enumerate() {
        // Evenly: the pools' sizes differ by at most one (whole chunks of n / k rounded up
        // left the last workers none, and a worker with an empty pool creates instead).
        let (lo, hi) = (wi * n / k, (wi + 1) * n / k);
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

/// A scenario's workers, with `--sessions` sessions preloaded over `--orgs` orgs round robin.
pub async fn preloaded(args: &Args, t: &Target) -> Result<(Vec<Worker>, Duration, Stats), String> {
    let ws = workers(t, args.connections, args.sessions, args.orgs).await?;
    let orgs = args.orgs.max(1);
    let org_name = move |i| format!("org{}", i % orgs);
    preload(t, ws, args.sessions, org_name, "preload").await
}

/// Runs validate traffic on `ws` in the background for at most `max`; the caller tags
/// phases through `sh.tag` and ends it with `sh.stop`.
pub fn background(
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
