//! The load generator's command line (`Args`) and its operation mix (`Mix`).
//!
//! Invariants:
//! 1. Every flag has a default: `cargo bench --bench load` with none runs the default mix
//!    against a daemon it starts, 100k sessions, 10 s, closed loop.
//! 2. A `Mix` holds at least one operation, each with a weight above 0; `pick` maps a random
//!    number to an operation in proportion to the weights, the same number to the same one.
//! 3. What clap cannot check (`--mix`, `--scenario`, `--slow-ms`, `--sample-us`) `main` checks
//!    before it starts any target, exiting with 2 and a line that says what to write instead.

use crate::conn::{OPS, Op};
use clap::Parser;
use std::time::Duration;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    about = "Load generator for sessiond (and Redis, for comparison)"
)]
pub struct Args {
    /// What to load: `sessiond` (start the daemon built with this bench), `sessiond+unix` (the
    /// same on a Unix domain socket), `http://HOST:PORT` or `unix:PATH` (a running sessiond
    /// without API keys), `http://A:PORT,http://B:PORT,...` (the nodes of a cluster:
    /// connections spread over them), `redis` (start redis-server from PATH) or
    /// `redis://HOST:PORT`. Repeat to compare targets in one run.
    #[arg(long = "target", default_value = "sessiond")]
    pub targets: Vec<String>,
    /// Sessions created before the measurement, spread over `--orgs` orgs.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Orgs the preloaded sessions (and the mix's creates) are spread over, round robin; the
    /// policy scenario tightens one more org of its own.
    #[arg(long, default_value_t = 1_000)]
    pub orgs: usize,
    /// The shape of the user ids sessions are created with: `short` (`u123`) or `uuid`
    /// (canonical lower-case UUIDs, as most identity providers hand out; issue #25).
    #[arg(long, default_value = "short", value_parser = ["short", "uuid"])]
    pub user_ids: String,
    /// Keep-alive connections, one request in flight on each.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds of measurement per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Open loop: total requests per second on a fixed schedule. Without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// `op=weight,...` over validate, touch, create, revoke, auth, healthz; or a preset:
    /// `default` (validate=80,touch=15,create=4,revoke=1), or one op's name alone.
    #[arg(long, default_value = "default")]
    pub mix: String,
    /// steady (the mix), ceiling (healthz vs auth vs validate, then auth at half its peak),
    /// storm (an expiry storm under validate traffic), policy (tighten a big org under traffic),
    /// all (every one in turn).
    #[arg(long, default_value = "steady")]
    pub scenario: String,
    /// Sessions that expire together in the storm scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub storm_sessions: usize,
    /// Sessions of the org tightened in the policy scenario.
    #[arg(long, default_value_t = 100_000)]
    pub policy_sessions: usize,
    /// Rounds of the ceiling scenario: healthz, auth and validate are measured in turn this many
    /// times and the ratios are the medians of the rounds' (a shared VM's speed drifts by tens
    /// of percent over a minute; alternating makes each ratio compare like with like); then auth
    /// at half its peak as many times, reported by its median round's p99.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Open loop: the least time in microseconds between two wake-ups of the pacer, which
    /// releases every request due by then (see `pace.rs`). Shorter spreads the requests more
    /// evenly but costs the generator more CPU on the cores it shares with the server;
    /// latency is counted from each request's slot either way, so the pacer's lateness is
    /// charged to the server, not hidden.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    pub pace_us: u64,
    /// Open loop: a request answered this many ms or more after its slot counts as slow; the
    /// slow requests are grouped into stall episodes in the report (`stalls.rs`).
    #[arg(long, default_value_t = 5.0)]
    pub slow_ms: f64,
    /// Open loop: sample the target's threads (CPU time, run-queue wait) and each core's steal
    /// every this many µs (at least 100), to say what each stall episode was (`sampler.rs`);
    /// 0: off.
    #[arg(long, default_value_t = 0)]
    pub sample_us: u64,
    /// Worker threads of the load generator itself.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The pid of a sessiond given as a URL (`http://`, `unix:`), to report its CPU time per
    /// request as for the targets this tool starts.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Extra argument for a sessiond this tool starts (repeat).
    #[arg(long = "sessiond-arg", allow_hyphen_values = true)]
    pub sessiond_args: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// A few seconds of every scenario at small sizes, failing on any error (CI). Adds the
    /// `redis` target when redis-server is installed.
    #[arg(long)]
    pub smoke: bool,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// Weighted operations.
#[derive(Debug, Clone)]
pub struct Mix(pub Vec<(Op, u32)>);

impl Mix {
    pub fn parse(s: &str) -> Result<Mix, String> {
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

    pub fn pick(&self, r: u64) -> Op {
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

    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(o, w)| format!("{}={w}", o.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Args {
    /// The pacer's quantum (`--pace-us`).
    pub fn pace(&self) -> Duration {
        Duration::from_micros(self.pace_us)
    }
}
