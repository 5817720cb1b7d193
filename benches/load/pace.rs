//! Open-loop pacing finer than tokio's timer.
//!
//! tokio's timer wheel has a resolution of 1 ms, so an open loop whose workers sleep on it sends
//! each millisecond's requests together: at 40k req/s a burst of 40 every millisecond, which
//! queues in the generator (it writes all 40 before it reads one answer) and in the server
//! alike. Independent clients behind a gateway do not arrive in lockstep with a millisecond
//! clock, so that burst is the generator's artefact and it inflates every percentile.
//!
//! A [`Pacer`] is one task on the generator's own runtime that sleeps on a `timerfd` until the
//! next worker's slot is due (microsecond resolution), then wakes every worker whose slot has
//! come. Passes are at least a quantum apart (`--pace-us`, 250 us by default), so a pass releases
//! a few requests instead of a millisecond's worth. Without that floor the next slot is always
//! due by the time a pass ends at tens of thousands of requests a second, and the generator's
//! thread would spin on timerfd syscalls instead of sleeping (measured: all of a core at 37k/s).
//! At 45k auth/s, 100 us cost the generator 82-85% of a core and gave a p99 of 4.8-8.3 ms;
//! 250 us cost 69-70% and gave 1.8-2.1 ms (the daemon 60-65% either way; runs alternated). Until session 7 it was an OS thread of its own: at 37k req/s that thread
//! woke 11k times a second, took a fifth of a core, and each of its wake-ups then had to wake
//! the generator's thread too, preempting whatever ran on the two cores (auth at 37k/s, p99
//! 5-21 ms with the thread, 0.4-3 ms with this task, same build of the daemon). As a task, the
//! timer wakes the generator directly and the workers it releases run on the same thread.
//!
//! Invariants:
//! 1. Worker `i`'s slots are `first[i] + k * interval`, the same sequence the worker walks; the
//!    pacer wakes it (`Notify::notify_one`) at or after each slot, never skipping a slot that a
//!    waiting worker may be waiting for.
//! 2. A wake-up is only a hint: the worker re-checks the clock and waits again if its slot has
//!    not come (a stored permit from a slot it did not wait for may wake it early).
//! 3. The pacer runs until `until` plus one interval, and its last pass comes after that time
//!    (however late the task wakes), so that no worker waits on a slot the pacer will not
//!    serve; dropping it aborts the task.
//!
//! The load generator has no test harness (`harness = false`): the smoke run checks the pacer,
//! as every missed wake-up is counted as a `pacer:missed_slot` error and an open-loop run that
//! reaches less than 3/4 of its rate is a smoke failure.

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::unix::pipe::Receiver;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub struct Pacer {
    gates: Vec<Arc<Notify>>,
    task: JoinHandle<()>,
}

impl Pacer {
    /// Starts the pacer for workers whose first slots are `first`, each then every `interval`,
    /// until `until`, with passes at least `quantum` apart. Must be called on the generator's
    /// runtime.
    pub fn start(
        first: Vec<Instant>,
        interval: Duration,
        quantum: Duration,
        until: Instant,
    ) -> Pacer {
        // Not expected to fail but in a process out of descriptors; paced on tokio's 1 ms timer
        // then, which is still correct (late wake-ups show as latency).
        let timer = Timer::new()
            .inspect_err(|e| {
                eprintln!("load: no timerfd for the pacer ({e}); pacing on tokio's 1 ms timer")
            })
            .ok();
        let gates: Vec<Arc<Notify>> = first.iter().map(|_| Arc::new(Notify::new())).collect();
        let task = tokio::spawn(run(
            timer,
            first,
            gates.clone(),
            interval,
            quantum.max(Duration::from_micros(1)),
            until + interval,
        ));
        Pacer { gates, task }
    }

    /// Worker `i`'s wake-ups.
    pub fn gate(&self, i: usize) -> Arc<Notify> {
        self.gates[i].clone()
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    mut timer: Option<Timer>,
    mut next: Vec<Instant>,
    gates: Vec<Arc<Notify>>,
    interval: Duration,
    quantum: Duration,
    end: Instant,
) {
    loop {
        let now = Instant::now();
        // The pass below runs even when this wake-up came after `end` (the task was held up
        // past it): slots before `end` still get their wake-up, and only then does the pacer
        // stop (invariant 3).
        let mut earliest = end;
        for (slot, gate) in next.iter_mut().zip(&gates) {
            if *slot <= now {
                gate.notify_one();
                // Slots passed while the worker was busy need no wake-up of their own: a worker
                // behind its schedule does not wait (invariant 1 holds: the next slot is still
                // served).
                while *slot <= now {
                    *slot += interval;
                }
            }
            earliest = earliest.min(*slot);
        }
        if now > end {
            return;
        }
        let wait = earliest
            .saturating_duration_since(Instant::now())
            .max(quantum);
        match &timer {
            Some(t) => {
                if let Err(e) = t.sleep(wait).await {
                    eprintln!("load: pacer timer failed ({e}); pacing on tokio's 1 ms timer");
                    timer = None;
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// A one-shot `timerfd` on tokio's reactor: sleeps with the kernel's hrtimer resolution where
/// `tokio::time` has 1 ms.
///
/// It is registered as a pipe's read end (`from_owned_fd_unchecked` skips the check that it is
/// a FIFO): tokio only waits for it to be readable and `read`s it, which a timerfd supports as
/// a pipe does. `AsyncFd` would say what it is, but its constructors are `unsafe` since tokio
/// 1.54 (it cannot check an arbitrary `AsRawFd`), and the crate forbids unsafe code
/// (`[lints.rust]` in Cargo.toml); the pipe takes an `OwnedFd`, which is safe.
struct Timer(Receiver);

impl Timer {
    fn new() -> io::Result<Timer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(Timer(Receiver::from_owned_fd_unchecked(fd)?))
    }

    /// Sleeps for `d` (> 0: a zero `it_value` would disarm the timer instead).
    async fn sleep(&self, d: Duration) -> io::Result<()> {
        let spec = Itimerspec {
            it_interval: Timespec::default(),
            it_value: Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos().max(1) as _,
            },
        };
        timerfd_settime(&self.0, TimerfdTimerFlags::empty(), &spec)?;
        loop {
            self.0.readable().await?;
            // The expiration count: 8 bytes, read to clear the readiness.
            let mut count = [0u8; 8];
            match self.0.try_read(&mut count) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits until `due` on `gate` (invariant 2).
pub async fn until(gate: &Notify, due: Instant) {
    while Instant::now() < due {
        gate.notified().await;
    }
}
