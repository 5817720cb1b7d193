//! The one shutdown signal of the daemon, shared by the HTTP server, the reaper and persistence.
//!
//! A shutdown goes through stages, in the order linkerd2-proxy's `main` drains: stop
//! accepting and finish what is in flight, then stop the background work, then save, then
//! exit. Each part is handed a [`Stop`] for the stage at which it must end, so the order lives
//! in one place ([`Stage`]) instead of in one flag per part.
//!
//! Invariants:
//! 1. The stage only moves forward ([`Shutdown::advance`] to an earlier or equal stage does
//!    nothing), so a [`Stop`] once set stays set.
//! 2. Whoever waits wakes at once when its stage is reached: a task awaiting [`Stop::wait`]
//!    (a `watch` channel) and a thread in [`Stop::wait_timeout`] (a condition variable) alike;
//!    nobody polls a flag.
//! 3. The stages are reached in this order, each by one owner:
//!    [`Stage::Draining`] by the daemon on SIGTERM/SIGINT (the acceptor stops, the HTTP
//!    workers answer what is in flight and close); [`Stage::Drained`] by the daemon once they
//!    have, or the grace period is over (the reaper stops); [`Stage::Exiting`] by
//!    `Persistence::shutdown` after the last snapshot (the snapshot and journal threads write
//!    and sync what is left, and stop).

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where a shutdown stands (invariant 3); ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Serving.
    Running,
    /// A stop was asked: no new connection is accepted; requests in flight are answered.
    Draining,
    /// The requests are answered, or the grace period is over: the reaper stops.
    Drained,
    /// The last snapshot is taken (or failed): the persistence threads finish and stop.
    Exiting,
}

/// The shared signal; clones are the same signal.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    /// For threads (invariant 2).
    stage: Mutex<Stage>,
    changed: Condvar,
    /// For tasks (invariant 2); sent under `stage`'s lock, so both always agree.
    tx: watch::Sender<Stage>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            inner: Arc::new(Inner {
                stage: Mutex::new(Stage::Running),
                changed: Condvar::new(),
                tx: watch::Sender::new(Stage::Running),
            }),
        }
    }

    /// Moves the shutdown on to `to` (never back: invariant 1) and wakes every waiter whose
    /// stage is now reached.
    pub fn advance(&self, to: Stage) {
        let mut stage = self.inner.stage.lock();
        if to <= *stage {
            return;
        }
        *stage = to;
        self.inner.tx.send_replace(to);
        self.inner.changed.notify_all();
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        *self.inner.stage.lock()
    }

    /// The handle of a part that must end at `stage`.
    pub fn at(&self, stage: Stage) -> Stop {
        Stop {
            shutdown: self.clone(),
            stage,
        }
    }
}

/// The signal as one part sees it: set once the shutdown reaches the part's stage.
#[derive(Clone)]
pub struct Stop {
    shutdown: Shutdown,
    stage: Stage,
}

impl Stop {
    /// Whether the part must end now.
    pub fn is_set(&self) -> bool {
        self.shutdown.stage() >= self.stage
    }

    /// Blocks the thread until the stage is reached or `timeout` has passed; whether it is
    /// reached (invariant 2).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut stage = self.shutdown.inner.stage.lock();
        while *stage < self.stage {
            if self
                .shutdown
                .inner
                .changed
                .wait_until(&mut stage, deadline)
                .timed_out()
            {
                return *stage >= self.stage;
            }
        }
        true
    }

    /// Resolves once the stage is reached (invariant 2).
    pub async fn wait(&self) {
        let mut rx = self.shutdown.inner.tx.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = rx.wait_for(|s| *s >= self.stage).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_only_move_forward_and_set_each_stop_in_order() {
        let s = Shutdown::new();
        let (drain, reap, exit) = (
            s.at(Stage::Draining),
            s.at(Stage::Drained),
            s.at(Stage::Exiting),
        );
        assert!(!drain.is_set());
        s.advance(Stage::Drained);
        assert!(drain.is_set() && reap.is_set() && !exit.is_set());
        s.advance(Stage::Draining);
        assert_eq!(s.stage(), Stage::Drained);
        assert!(!exit.wait_timeout(Duration::from_millis(10)));
        s.advance(Stage::Exiting);
        assert!(exit.is_set() && exit.wait_timeout(Duration::ZERO));
    }

    /// A thread waiting a long time and a task both wake when their stage is reached, not when
    /// their timeout runs out.
    #[test]
    fn waiters_wake_when_their_stage_is_reached() {
        let s = Shutdown::new();
        let stop = s.at(Stage::Drained);
        let (tx, woke) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = tx.send(stop.wait_timeout(Duration::from_secs(60)));
        });
        let stop = s.at(Stage::Draining);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let task = rt.spawn(async move { stop.wait().await });
        std::thread::sleep(Duration::from_millis(20));
        assert!(!thread.is_finished());
        s.advance(Stage::Draining);
        rt.block_on(task).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!thread.is_finished(), "woke before its stage");
        s.advance(Stage::Drained);
        // Woken by the stage, long before its own timeout.
        assert_eq!(woke.recv_timeout(Duration::from_secs(30)), Ok(true));
        thread.join().unwrap();
    }
}
