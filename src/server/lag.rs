//! The lag probe: how late each HTTP worker's event loop runs, for an operator (or a benchmark)
//! asking whether a latency tail was the daemon's. Every [`INTERVAL`] a task on each worker
//! wakes at a deadline and records how late it ran in
//! `sessiond_http_worker_delay_seconds{worker="i"}`, as Envoy's `poll_delay` and Node's event
//! loop delay do. A worker that is stuck in one long poll, blocked on a lock, waiting for a
//! CPU behind another thread, or whose virtual CPU the host took, runs its tick late by about as
//! long; an idle one runs it on time. The requests that waited on such a worker waited as long.
//!
//! Invariants (numbered as in `server`):
//! 17. A worker runs its probe for as long as it serves, ticking every [`INTERVAL`] while
//!     requests arrive: a tick after which no request came ([`request`], called per request)
//!     puts the probe to sleep until the next one, so an idle daemon is not woken 100 times a
//!     second per worker (on a 2-core VM that cost 1.3% of a core, idle). A busy worker is
//!     awake anyway: its ticks run between passes. Per request: two thread-local cell writes.
//! 18. The delay is counted from the tick's deadline to when the probe ran, at the resolution of
//!     tokio's timer (1 ms: a deadline is rounded up to the next millisecond, so delays under
//!     ~1 ms are the timer's rounding, not a stall). Missed ticks are not caught up: the next
//!     deadline is one interval after the probe ran, so one stall is one sample, as long as
//!     the stall. A stall that begins while the probe sleeps (no request for a tick) is seen
//!     from the first tick after the next request.

use std::cell::Cell;
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// Time between two ticks of the probe.
pub const INTERVAL: Duration = Duration::from_millis(10);

thread_local! {
    /// Whether a request arrived on this thread since the probe's last tick.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// The probe's waker while it sleeps for want of requests.
    static ASLEEP: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// A request arrived on this worker's thread: the probe ticks on (invariant 17).
#[inline]
pub(super) fn request() {
    ACTIVE.set(true);
    if let Some(w) = ASLEEP.take() {
        w.wake();
    }
}

/// Runs this worker's probe, as worker `worker`, until its task is dropped (invariants 17, 18).
pub(super) async fn run(worker: usize) {
    let delay = crate::metrics::worker_delay(worker);
    let mut deadline = Instant::now() + INTERVAL;
    loop {
        tokio::time::sleep_until(deadline).await;
        let now = Instant::now();
        delay.record(now.saturating_duration_since(deadline).as_secs_f64());
        if !ACTIVE.replace(false) {
            std::future::poll_fn(|cx| {
                if ACTIVE.get() {
                    return Poll::Ready(());
                }
                ASLEEP.set(Some(cx.waker().clone()));
                Poll::Pending
            })
            .await;
        }
        deadline = Instant::now() + INTERVAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, WORKER_DELAY};

    /// The bucket counts of worker `w`'s delay histogram, as rendered.
    fn buckets(w: &str) -> Vec<(String, u64)> {
        let text = Metrics::global().render_now();
        let prefix = format!("{WORKER_DELAY}_bucket{{worker=\"{w}\",le=\"");
        text.lines()
            .filter_map(|l| {
                let (le, n) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
                Some((le.to_string(), n.trim().parse().ok()?))
            })
            .collect()
    }

    /// A worker whose thread is stuck records a sample as late as the stall. Real time: tokio's
    /// paused clock cannot stall a thread (and the probe's idle sleep is tested below with it).
    #[test]
    fn a_stalled_worker_records_its_stall() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let probe = tokio::spawn(run(9_001));
            // Requests every 2 ms keep the probe ticking.
            for _ in 0..25 {
                request();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // The worker's thread stuck for 60 ms: the probe cannot run meanwhile.
            request();
            std::thread::sleep(Duration::from_millis(60));
            for _ in 0..10 {
                request();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            probe.abort();
        });
        let b = buckets("9001");
        let count = |le: &str| b.iter().find(|(l, _)| l == le).map(|x| x.1);
        let (Some(all), Some(under_50ms)) = (count("+Inf"), count("0.05")) else {
            panic!("no delay histogram for the worker: {b:?}");
        };
        assert!(all >= 5, "ticks recorded: {b:?}");
        // The stall is counted as late by more than 50 ms (a busy test machine may add more).
        assert!(all > under_50ms, "{b:?}");
    }

    /// Without requests the probe sleeps after one tick, and the next request wakes it.
    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_is_not_woken() {
        let probe = tokio::spawn(run(9_002));
        tokio::time::sleep(INTERVAL * 50).await;
        let idle = count("9002");
        assert_eq!(idle, Some(1), "one tick, then asleep");
        request();
        tokio::time::sleep(INTERVAL * 3 / 2).await;
        assert_eq!(
            count("9002"),
            Some(2),
            "the request woke it for one more tick"
        );
        probe.abort();
    }

    fn count(w: &str) -> Option<u64> {
        buckets(w)
            .into_iter()
            .find(|(le, _)| le == "+Inf")
            .map(|x| x.1)
    }
}
