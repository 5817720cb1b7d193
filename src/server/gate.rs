//! The write gate: the answers a worker makes in one pass over its ready connections go out
//! together, at the end of that pass, as Redis writes its replies before it sleeps.
//!
//! Why: on one host (a gateway over loopback or a Unix socket, or the load generator), an
//! answer that reaches a client asleep in `epoll_wait` wakes it, and the wake-up (an
//! inter-processor interrupt, a VM exit under a hypervisor) is paid in the daemon's `send`.
//! Answers written as each is made arrive spread over the pass, so the client falls asleep
//! between them and is woken for most; written back to back, they wake it once per pass.
//! Measured with the load generator on a core of its own: it was woken 0.31 times per answer
//! without the gate (median of 7 rounds, up to 0.70), 0.033 with it (Redis: 0.027), and
//! validate's daemon CPU per request fell 17-23% (`docs/performance.md`). That is over TCP
//! loopback; over a Unix socket a client that reads an answer faster than the burst writes the
//! next (each write is a poll of its connection's task) still sleeps between them, and there
//! the gate measured neither a gain nor a loss beyond the noise.
//!
//! Invariants (numbered as in `server`):
//! 13. Where the gate runs (a worker thread, [`run`]), a connection's first write of an
//!     answer is held ([`hold`]) until the gate task has run; the gate task is queued behind
//!     every task that was ready when the first answer of the pass was held, so a held write
//!     waits at most one pass of the worker's run queue (tokio's is first-in first-out), and
//!     at low load (one ready connection) one extra poll of its task.
//! 14. No task stays held: when the gate ends (the worker drains and stops, or its task is
//!     dropped), it wakes every task still held, and a thread without a running gate holds
//!     nothing.

use std::cell::RefCell;
use std::task::{Poll, Waker};

/// This thread's gate: whether it runs, the tasks held, and the gate task's waker.
#[derive(Default)]
struct Gate {
    running: bool,
    held: Vec<Waker>,
    opener: Option<Waker>,
}

thread_local! {
    static GATE: RefCell<Gate> = RefCell::new(Gate::default());
}

/// Holds the calling task (its `waker`) until the gate opens, and returns true; returns false
/// at once where no gate runs on this thread (invariant 14), and the caller writes now.
pub(super) fn hold(waker: &Waker) -> bool {
    GATE.with(|g| {
        let mut g = g.borrow_mut();
        if !g.running {
            return false;
        }
        g.held.push(waker.clone());
        if g.held.len() == 1 {
            // The first held of this pass: the gate task goes to the back of the run queue.
            if let Some(opener) = g.opener.take() {
                opener.wake();
            }
        }
        true
    })
}

/// Whether a gate runs on this thread (for tests of the worker's setting).
#[cfg(test)]
pub(super) fn running() -> bool {
    GATE.with(|g| g.borrow().running)
}

/// Runs the gate on this thread until dropped: each time a task is held, after the tasks
/// queued before it, it wakes every task held since (invariant 13).
pub(super) async fn run() {
    let _running = Running::start();
    let mut batch = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            GATE.with(|g| {
                let mut g = g.borrow_mut();
                if g.held.is_empty() {
                    g.opener = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    std::mem::swap(&mut g.held, &mut batch);
                    Poll::Ready(())
                }
            })
        })
        .await;
        // Outside the borrow: a waker may run code that holds again (another runtime's).
        for w in batch.drain(..) {
            w.wake();
        }
    }
}

/// Marks the gate running on this thread; when dropped, releases every held task and stops
/// holding (invariant 14).
struct Running;

impl Running {
    fn start() -> Running {
        GATE.with(|g| g.borrow_mut().running = true);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let held = GATE.with(|g| {
            let mut g = g.borrow_mut();
            g.running = false;
            g.opener = None;
            std::mem::take(&mut g.held)
        });
        for w in held {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A task that does its work, then writes: through the gate (held once), or at once.
    async fn answer(log: Rc<RefCell<Vec<String>>>, name: &'static str) {
        log.borrow_mut().push(format!("work {name}"));
        let mut held = false;
        std::future::poll_fn(|cx| {
            if !held && hold(cx.waker()) {
                held = true;
                return Poll::Pending;
            }
            Poll::Ready(())
        })
        .await;
        log.borrow_mut().push(format!("write {name}"));
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn the_answers_of_one_pass_are_written_together_after_it() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime(), async {
            let gate = tokio::task::spawn_local(run());
            tokio::task::yield_now().await; // the gate is running and waits
            let tasks: Vec<_> = ["a", "b", "c"]
                .into_iter()
                .map(|n| tokio::task::spawn_local(answer(log.clone(), n)))
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            gate.abort();
        });
        assert_eq!(
            *log.borrow(),
            [
                "work a", "work b", "work c", "write a", "write b", "write c"
            ]
        );
    }

    #[test]
    fn without_a_gate_each_answer_is_written_at_once() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime(), async {
            let tasks: Vec<_> = ["a", "b"]
                .into_iter()
                .map(|n| tokio::task::spawn_local(answer(log.clone(), n)))
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        assert_eq!(*log.borrow(), ["work a", "write a", "work b", "write b"]);
    }

    #[test]
    fn a_gate_that_ends_releases_the_tasks_it_holds() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime(), async {
            // A gate marked running whose task never opens it: only its end can release.
            let running = Running::start();
            let task = tokio::task::spawn_local(answer(log.clone(), "a"));
            while log.borrow().is_empty() {
                tokio::task::yield_now().await;
            }
            tokio::task::yield_now().await;
            assert_eq!(*log.borrow(), ["work a"], "held");
            drop(running);
            task.await.unwrap();
            assert!(!GATE.with(|g| g.borrow().running));
        });
        assert_eq!(*log.borrow(), ["work a", "write a"]);
    }
}
