//! A worker's connections, told to finish when the shutdown begins: a flag and the tasks to
//! wake, kept per worker thread, so that a connection's task reads one flag per wake-up
//! instead of polling a shutdown future (a mutex-guarded waiter list, ~300 instructions per
//! poll, twice per request with the write gate).
//!
//! Invariants (numbered as in `server`):
//! 15. Once [`begin`] has run on a worker's thread, every connection task of that thread is
//!     told once ([`Member::told`] returns true once): a task asleep is woken, a task not yet
//!     polled is told at its first poll, and a task that ends leaves no waker behind.
//! 16. Per poll of a connection task: one thread-local read of the flag; the task's waker is
//!     stored once, at its first poll (a tokio task's waker is the same for every poll; a
//!     connection's task lives and ends on its worker's thread).

use std::cell::{Cell, RefCell};
use std::task::{Context, Waker};

/// This thread's connections: each live task's waker, and the free slots.
#[derive(Default)]
struct Drain {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

thread_local! {
    /// Whether the drain has begun on this thread: a `const` cell, one load to read.
    static BEGUN: Cell<bool> = const { Cell::new(false) };
    static DRAIN: RefCell<Drain> = RefCell::new(Drain::default());
}

/// Begins the drain on this thread: every connection task is told, the sleeping ones woken
/// (invariant 15).
pub(super) fn begin() {
    BEGUN.set(true);
    let wakers: Vec<Waker> = DRAIN.with(|d| {
        let mut d = d.borrow_mut();
        d.wakers.iter_mut().filter_map(Option::take).collect()
    });
    for w in wakers {
        w.wake();
    }
}

/// One connection task's place in its thread's drain.
#[derive(Default)]
pub(super) struct Member {
    slot: Option<usize>,
    told: bool,
}

impl Member {
    /// Whether the drain has begun and this task has not been told yet: true once
    /// (invariants 15 and 16).
    pub(super) fn told(&mut self, cx: &Context<'_>) -> bool {
        if self.told {
            return false;
        }
        if BEGUN.get() {
            self.told = true;
            return true;
        }
        if self.slot.is_none() {
            let waker = Some(cx.waker().clone());
            self.slot = Some(DRAIN.with(|d| {
                let mut d = d.borrow_mut();
                match d.free.pop() {
                    Some(i) => {
                        d.wakers[i] = waker;
                        i
                    }
                    None => {
                        d.wakers.push(waker);
                        d.wakers.len() - 1
                    }
                }
            }));
        }
        false
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            // `try_with`: a task dropped as its thread ends finds no drain left to clean.
            let _ = DRAIN.try_with(|d| {
                let mut d = d.borrow_mut();
                if let Some(w) = d.wakers.get_mut(i) {
                    *w = None;
                    d.free.push(i);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Poll, Wake};

    /// Counts its wake-ups.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn slots_in_use() -> usize {
        DRAIN.with(|d| {
            let d = d.borrow();
            d.wakers.len() - d.free.len()
        })
    }

    /// Each test runs on a thread of its own: the drain is per thread.
    fn on_a_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    #[test]
    fn a_sleeping_task_is_woken_and_told_once() {
        on_a_thread(|| {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            let cx = Context::from_waker(&waker);
            let (mut a, mut b) = (Member::default(), Member::default());
            assert!(
                !a.told(&cx) && !b.told(&cx),
                "nothing to tell before the drain"
            );
            assert_eq!(slots_in_use(), 2);
            begin();
            assert_eq!(
                count.0.load(Ordering::Relaxed),
                2,
                "both sleeping tasks are woken"
            );
            assert!(a.told(&cx) && !a.told(&cx), "told once");
            assert!(b.told(&cx));
        });
    }

    #[test]
    fn a_task_first_polled_after_the_drain_began_is_told_at_once() {
        on_a_thread(|| {
            begin();
            let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
            let mut m = Member::default();
            assert!(m.told(&Context::from_waker(&waker)));
            assert_eq!(slots_in_use(), 0, "no waker kept for a task already told");
        });
    }

    #[test]
    fn a_task_that_ends_leaves_no_waker_and_its_slot_is_reused() {
        on_a_thread(|| {
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            let cx = Context::from_waker(&waker);
            for _ in 0..100 {
                let mut m = Member::default();
                let _ = m.told(&cx);
            }
            assert_eq!(slots_in_use(), 0);
            assert_eq!(
                DRAIN.with(|d| d.borrow().wakers.len()),
                1,
                "one slot, reused"
            );
            begin();
            assert_eq!(count.0.load(Ordering::Relaxed), 0, "no ended task is woken");
        });
    }

    #[test]
    fn a_connection_task_is_told_when_its_worker_drains() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            // A task that never ends by itself, as an idle keep-alive connection.
            let task = tokio::spawn(async {
                let mut m = Member::default();
                std::future::poll_fn(|cx| match m.told(cx) {
                    true => Poll::Ready(()),
                    false => Poll::Pending,
                })
                .await
            });
            tokio::task::yield_now().await;
            assert!(!task.is_finished());
            begin();
            let told = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
            assert!(told.is_ok(), "the idle task was not woken by the drain");
        });
    }
}
