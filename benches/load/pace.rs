//! Open-loop pacing finer than tokio's timer.
//!
//! tokio's timer wheel has a resolution of 1 ms, so an open loop whose workers sleep on it sends
//! each millisecond's requests together: at 40k req/s a burst of 40 every millisecond, which
//! queues in the generator (it writes all 40 before it reads one answer) and in the server
//! alike. Independent clients behind a gateway do not arrive in lockstep with a millisecond
//! clock, so that burst is the generator's artefact and it inflates every percentile.
//!
//! A [`Pacer`] is one OS thread that sleeps until the next worker's slot is due (the kernel's
//! timer slack makes that 50-100 us in practice), then wakes every worker whose slot has come:
//! a few requests per wake-up instead of a millisecond's worth.
//!
//! Invariants:
//! 1. Worker `i`'s slots are `first[i] + k * interval`, the same sequence the worker walks; the
//!    pacer wakes it (`Notify::notify_one`) at or after each slot, never skipping a slot that a
//!    waiting worker may be waiting for.
//! 2. A wake-up is only a hint: the worker re-checks the clock and waits again if its slot has
//!    not come (a stored permit from a slot it did not wait for may wake it early).
//! 3. The pacer runs until `until` plus one interval, and its last pass comes after that time
//!    (however late the thread wakes), so that no worker waits on a slot the pacer will not
//!    serve; dropping it stops the thread at its next wake-up (not joined: a
//!    run stopped early must not block its runtime for up to an interval).
//!
//! The load generator has no test harness (`harness = false`): the smoke run checks the pacer,
//! as every missed wake-up is counted as a `pacer:missed_slot` error and an open-loop run that
//! reaches less than 3/4 of its rate is a smoke failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct Pacer {
    gates: Vec<Arc<Notify>>,
    stop: Arc<AtomicBool>,
    _thread: JoinHandle<()>,
}

impl Pacer {
    /// Starts the pacer for workers whose first slots are `first`, each then every `interval`,
    /// until `until`.
    pub fn start(first: Vec<Instant>, interval: Duration, until: Instant) -> Pacer {
        let gates: Vec<Arc<Notify>> = first.iter().map(|_| Arc::new(Notify::new())).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let gates = gates.clone();
            let stop = stop.clone();
            let end = until + interval;
            std::thread::Builder::new()
                .name("load-pacer".into())
                .spawn(move || {
                    let mut next = first;
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        // The pass below runs even when this wake-up came after `end` (the
                        // thread was descheduled past it): slots before `end` still get their
                        // wake-up, and only then does the pacer stop (invariant 3).
                        let mut earliest = end;
                        for (slot, gate) in next.iter_mut().zip(&gates) {
                            if *slot <= now {
                                gate.notify_one();
                                // Slots passed while the worker was busy need no wake-up of
                                // their own: a worker behind its schedule does not wait
                                // (invariant 1 holds: the next slot is still served).
                                while *slot <= now {
                                    *slot += interval;
                                }
                            }
                            earliest = earliest.min(*slot);
                        }
                        if now > end {
                            break;
                        }
                        if let Some(wait) = earliest.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                })
                .expect("spawn the pacer thread")
        };
        Pacer {
            gates,
            stop,
            _thread: thread,
        }
    }

    /// Worker `i`'s wake-ups.
    pub fn gate(&self, i: usize) -> Arc<Notify> {
        self.gates[i].clone()
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until `due` on `gate` (invariant 2).
pub async fn until(gate: &Notify, due: Instant) {
    while Instant::now() < due {
        gate.notified().await;
    }
}
