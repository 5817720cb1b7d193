//! The reaper: a dedicated thread that advances every shard's wheel once per tick and evicts
//! what is due.
//!
//! Invariants:
//! 1. It wakes just after each tick boundary of the engine's clock, so an eviction lags its
//!    deadline by at most one tick plus scheduling delay; each eviction's lag is recorded in
//!    `sessiond_expiry_lag_seconds`.
//! 2. It holds a shard's lock for at most [`REAP_BATCH`] evictions at a time, so an expiry storm
//!    never stalls validate and touch for long.
//! 3. It runs on its own OS thread, not a tokio worker: a storm cannot starve request handling.
//!    A panic in it aborts the process (release profile `panic = "abort"`), so a daemon that
//!    answers but never expires cannot exist.
//! 4. It stops as soon as its [`Stop`] is set (it waits on the shutdown signal, not a sleep).
//! 5. Expired sessions a create evicted at a limit before the reaper came to them (`engine`,
//!    invariant 6) are counted in `sessiond_sessions_expired_total` by its next pass, with no
//!    lag sample: they left the table within a tick of their deadline.

use crate::engine::{Engine, REAP_BATCH};
use crate::metrics::Metrics;
use crate::session::ExpiryReason;
use crate::shutdown::Stop;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One pass over every shard, each at the clock's `now` read under its lock; returns how many
/// sessions were evicted (those evicted at a limit since the last pass included).
pub fn sweep(engine: &Engine, metrics: &Metrics) -> u64 {
    // Expired sessions a create evicted at a limit since the last pass (invariant 5).
    let early = engine.take_limit_evictions();
    metrics.expired(ExpiryReason::Idle, early.idle);
    metrics.expired(ExpiryReason::Absolute, early.absolute);
    let mut total = early.total();
    for i in 0..engine.shard_count() {
        loop {
            let (ev, more) = engine.advance_shard(i, REAP_BATCH, &mut |reason, lag_ms| {
                metrics.evicted(reason, lag_ms)
            });
            total += ev.total();
            if !more {
                break;
            }
            std::thread::yield_now();
        }
    }
    total
}

/// Starts the reaper thread; it stops when `stop` is set (invariant 4).
pub fn spawn(
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    stop: Stop,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sessiond-reaper".into())
        .spawn(move || {
            let tick = engine.tick_ms();
            let mut upkeep_at = 0u64;
            while !stop.is_set() {
                sweep(&engine, &metrics);
                let now = engine.now_ms();
                if now >= upkeep_at {
                    metrics.upkeep();
                    upkeep_at = now + 5_000;
                }
                // Sleep to 1 ms past the next tick boundary (invariant 1).
                let wait = tick - now % tick + 1;
                if stop.wait_timeout(Duration::from_millis(wait)) {
                    break;
                }
            }
        })
}
