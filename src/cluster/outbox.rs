//! The outbox: the cluster's [`Changes`] listener. It encodes the changes other nodes must
//! apply into per-shard buffers, in the journal's frame format (`persist::record`), for the
//! publisher (`link`) to send to the stream as one message per batch.
//!
//! Invariants:
//! 1. **Only what other nodes must apply leaves.** Creates, activity, the removals a person
//!    asked for (revoked through the API, displaced by the per-user limit) and the "not
//!    before" marks of user- and org-wide revocations are encoded; idle
//!    and absolute evictions are not: each node evicts by its own view, and a node that saw
//!    later activity must not lose the session to another node's older view. For the same
//!    reason a revocation of a session this node no longer holds (evicted by its view) leaves
//!    too (the engine reports it, engine invariant 7): the nodes that hold it remove it.
//! 2. **Per-session order**, as the journal's (its invariant 1): a session's frames go to its
//!    shard's buffer under the shard lock, buffers are drained in order, and batches are
//!    published one at a time, in order, each retried until the stream has it.
//! 3. **Counted for `sync`.** `appended` is bumped after a frame is in its buffer and read by the
//!    publisher *before* it drains; once everything drained is acknowledged by the stream,
//!    everything up to that reading is replicated (`acked`). A create or revoke waits until
//!    `acked` reaches the count it saw ([`Outbox::wait_replicated`]): group commit. A frame
//!    counted just after a drain read the count may still be drained by it: the next drain
//!    then finds nothing, and its reading is acknowledged at once (`link`), so that count too
//!    is reached without waiting for another change.
//! 4. **Quick** (`changes`, invariant 4): encode under a mutex of its own, never I/O.
//! 5. **Bounded.** Past [`MAX_BACKLOG`] bytes waiting (NATS unreachable for long), new frames
//!    are dropped and counted (`dropped`); a create or revoke under `sync` is refused meanwhile
//!    rather than acknowledged without a copy elsewhere.
//! 6. **Activity once per window.** A session's activity leaves when it crosses into a new
//!    window of [`activity_window_ms`] (its idle timeout / 8, whole seconds, 1 to 60 s; 60 s
//!    with idle off), not every second as the journal has it: another node's view of the
//!    last activity is then less than a window behind (plus the replication lag), so its idle
//!    deadline comes at most idle/8 early, and a session used more often than 7/8 of its idle
//!    timeout is never evicted there. Windows are whole seconds, so every window crossing is
//!    among the crossings the engine reports (`changes`, invariant 2).

use crate::changes::{Change, Changes};
use crate::persist::record;
use crate::session::RemoveReason;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The replication window of a session's activity (invariant 6): its idle timeout / 8 in whole
/// seconds, within 1 to 60 s; 60 s when idle expiry is off.
pub fn activity_window_ms(idle_ms: u64) -> u64 {
    if idle_ms == 0 {
        return 60_000;
    }
    (idle_ms / 8 / 1_000).clamp(1, 60) * 1_000
}

/// Bytes of frames kept while the stream does not take them (about 2M creates).
pub const MAX_BACKLOG: usize = 256 << 20;

/// Why a change could not be confirmed as replicated.
#[derive(Debug, thiserror::Error)]
pub enum NotReplicated {
    #[error(
        "the cluster's stream has not acknowledged the change within {0:?}; it is applied on this node and will be published when NATS answers"
    )]
    Timeout(Duration),
    #[error(
        "the cluster's stream is unreachable and this node's outbox is full; the change is applied on this node only"
    )]
    Full,
}

/// See the module doc.
pub struct Outbox {
    bufs: Box<[Mutex<Vec<u8>>]>,
    /// Bytes in the buffers and in the publisher's hands (invariant 5).
    held: AtomicUsize,
    appended: AtomicU64,
    acked: watch::Sender<u64>,
    dropped: AtomicU64,
    full: AtomicBool,
    /// Wakes the publisher when a frame is appended.
    pub(super) wake: Notify,
}

impl Outbox {
    pub fn new(shards: usize) -> Outbox {
        Outbox {
            bufs: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            held: AtomicUsize::new(0),
            appended: AtomicU64::new(0),
            acked: watch::Sender::new(0),
            dropped: AtomicU64::new(0),
            full: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// The count to hand [`Outbox::acknowledged`] once everything drained after it is in the
    /// stream, and every shard's frames, moved into `into` (invariant 3).
    pub fn drain(&self, into: &mut Vec<u8>) -> u64 {
        let seen = self.appended.load(Ordering::Acquire);
        for b in self.bufs.iter() {
            let mut b = b.lock();
            into.extend_from_slice(&b);
            b.clear();
        }
        seen
    }

    /// The stream has everything drained up to `seen`; `bytes` of it leave the backlog.
    pub fn acknowledged(&self, seen: u64, bytes: usize) {
        let held = self.held.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        if held < MAX_BACKLOG / 2 {
            self.full.store(false, Ordering::Release);
        }
        self.acked.send_if_modified(|a| {
            let moved = seen > *a;
            *a = (*a).max(seen);
            moved
        });
    }

    /// Frames dropped because the backlog was full (invariant 5).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Bytes waiting for the stream.
    pub fn backlog(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Waits until every change appended so far is in the stream, at most `wait`.
    pub async fn wait_replicated(&self, wait: Duration) -> Result<(), NotReplicated> {
        if self.full.load(Ordering::Acquire) {
            return Err(NotReplicated::Full);
        }
        let seen = self.appended.load(Ordering::Acquire);
        let mut rx = self.acked.subscribe();
        if *rx.borrow() >= seen {
            return Ok(());
        }
        match tokio::time::timeout(wait, rx.wait_for(|a| *a >= seen)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NotReplicated::Timeout(wait)),
        }
    }

    /// Revocations this node made before it stopped, read back from its journal, published
    /// again (they may never have reached the stream; a second copy changes nothing).
    pub fn requeue_revocations(&self, ids: &[u128]) {
        for &id in ids {
            self.append(0, |b| record::put_remove(b, id, RemoveReason::Revoked));
        }
    }

    fn append(&self, shard: usize, f: impl FnOnce(&mut Vec<u8>)) {
        if self.full.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut b = self.bufs[shard].lock();
        let before = b.len();
        f(&mut b);
        let added = b.len() - before;
        self.appended.fetch_add(1, Ordering::Release);
        drop(b);
        if self.held.fetch_add(added, Ordering::AcqRel) + added > MAX_BACKLOG {
            self.full.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }
}

impl Changes for Outbox {
    #[inline]
    fn record(&self, shard: usize, change: Change<'_>) {
        match change {
            Change::Created(s) => self.append(shard, |b| record::put_saved(b, s)),
            Change::Activity {
                id,
                last_ms,
                prev_ms,
                idle_ms,
            } => {
                // Invariant 6: once per activity window.
                let w = activity_window_ms(idle_ms);
                if last_ms / w > prev_ms / w {
                    self.append(shard, |b| record::put_activity(b, id, last_ms))
                }
            }
            Change::Removed { id, reason } => match reason {
                RemoveReason::Revoked | RemoveReason::Displaced => {
                    self.append(shard, |b| record::put_remove(b, id, reason))
                }
                // Invariant 1: evictions stay local.
                RemoveReason::Idle | RemoveReason::Absolute => {}
            },
            Change::NotBefore {
                scope,
                id,
                before_ms,
            } => self.append(shard, |b| record::put_not_before(b, scope, id, before_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SavedRef;

    fn created(id: u128) -> SavedRef<'static> {
        SavedRef {
            id,
            created_ms: 1,
            last_ms: 1,
            user: "u",
            org: None,
            metadata: None,
        }
    }

    #[test]
    fn evictions_stay_local_and_revocations_leave() {
        let o = Outbox::new(2);
        o.record(0, Change::Created(created(1)));
        o.record(
            1,
            Change::Removed {
                id: 1,
                reason: RemoveReason::Idle,
            },
        );
        o.record(
            1,
            Change::Removed {
                id: 2,
                reason: RemoveReason::Absolute,
            },
        );
        o.record(
            1,
            Change::Removed {
                id: 3,
                reason: RemoveReason::Revoked,
            },
        );
        o.record(
            0,
            Change::Removed {
                id: 4,
                reason: RemoveReason::Displaced,
            },
        );
        o.record(
            0,
            Change::Activity {
                id: 1,
                last_ms: 60_000,
                prev_ms: 1,
                idle_ms: 0,
            },
        );
        let mut buf = Vec::new();
        let seen = o.drain(&mut buf);
        assert_eq!(seen, 4);
        let entries: Vec<_> = record::decode_all(&buf).map(Result::unwrap).collect();
        let ids: Vec<u128> = entries
            .iter()
            .map(|e| match e {
                record::Entry::Create(s) => s.id,
                record::Entry::Activity { id, .. } | record::Entry::Remove { id, .. } => *id,
                record::Entry::End { .. }
                | record::Entry::NotBefore { .. }
                | record::Entry::StreamSeq { .. } => 0,
            })
            .collect();
        // Shard 0's frames, then shard 1's; in order within each.
        assert_eq!(ids, vec![1, 4, 1, 3]);
        assert_eq!(o.backlog(), buf.len());
        o.acknowledged(seen, buf.len());
        assert_eq!(o.backlog(), 0);
    }

    #[tokio::test]
    async fn a_change_waits_for_its_acknowledgement() {
        let o = Outbox::new(1);
        o.record(0, Change::Created(created(1)));
        let wait = Duration::from_millis(20);
        assert!(matches!(
            o.wait_replicated(wait).await,
            Err(NotReplicated::Timeout(_))
        ));
        let mut buf = Vec::new();
        let seen = o.drain(&mut buf);
        // A change after the drain is not covered by its acknowledgement.
        o.record(
            0,
            Change::Activity {
                id: 1,
                last_ms: 2_000,
                prev_ms: 1_000,
                idle_ms: 8_000,
            },
        );
        o.acknowledged(seen, buf.len());
        assert!(o.wait_replicated(wait).await.is_err());
        let mut more = Vec::new();
        let seen = o.drain(&mut more);
        o.acknowledged(seen, more.len());
        assert!(o.wait_replicated(wait).await.is_ok());
    }

    #[test]
    fn activity_leaves_once_per_window() {
        assert_eq!(activity_window_ms(0), 60_000);
        assert_eq!(activity_window_ms(2_000), 1_000);
        assert_eq!(activity_window_ms(30 * 60_000), 60_000);
        assert_eq!(activity_window_ms(80_000), 10_000);
        assert_eq!(activity_window_ms(95_000), 11_000);
        let o = Outbox::new(1);
        let touch = |prev_ms, last_ms| {
            o.record(
                0,
                Change::Activity {
                    id: 1,
                    last_ms,
                    prev_ms,
                    idle_ms: 80_000,
                },
            )
        };
        // 10 s windows: seconds 11..19 stay in the window [10 s, 20 s); 20 s crosses.
        touch(10_500, 11_000);
        touch(18_900, 19_000);
        touch(19_900, 20_100);
        touch(20_100, 21_000);
        let mut buf = Vec::new();
        o.drain(&mut buf);
        let sent: Vec<_> = record::decode_all(&buf).map(Result::unwrap).collect();
        assert_eq!(
            sent,
            vec![record::Entry::Activity {
                id: 1,
                last_ms: 20_100
            }]
        );
    }

    #[test]
    fn a_full_backlog_drops_and_refuses() {
        let o = Outbox::new(1);
        o.held.store(MAX_BACKLOG, Ordering::Relaxed);
        o.record(0, Change::Created(created(1)));
        assert!(o.full.load(Ordering::Relaxed));
        o.record(0, Change::Created(created(2)));
        assert_eq!(o.dropped(), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(o.wait_replicated(Duration::from_millis(1))),
            Err(NotReplicated::Full)
        ));
    }
}
