//! The journal: every create, coalesced activity, revocation and eviction, appended to
//! `journal-<gen>` in batches by one writer thread and fsynced on the configured policy, and
//! kept in memory while the disk refuses it.
//!
//! The request path never touches the file: it encodes a frame into its shard's buffer (a
//! mutex per shard, taken only by that shard's writers and the journal thread) and goes on. The
//! journal thread moves the buffers into `pending` every [`BATCH_INTERVAL`] (at once under
//! `always`), writes `pending` as one batch and syncs.
//!
//! The journal is the engine's [`Changes`] implementation: each reported change becomes one
//! frame (see `record`) in the buffer of the shard that reported it.
//!
//! Invariants:
//! 1. **Per-session order**: a session's frames go to its shard's buffer while the shard lock
//!    is held (`changes`, invariant 3: write lock for create and removal; touch holds the read
//!    lock, but no removal can run beside it), and buffers are drained in order into
//!    `pending`, which is written in order, so a session's frames reach the file in the order
//!    they happened. Frames of different sessions may interleave freely (replay is per
//!    session, see `record`).
//! 2. Under `always`, `appended` is bumped after the frame is in its buffer; the thread reads it
//!    *before* draining, so once everything drained is written and synced, with nothing lost
//!    (invariant 6), everything up to that reading is durable, and a mutating request waits
//!    ([`Journal::wait_durable`]) until `durable` reaches the count it saw: group commit. While
//!    writes fail it is refused at once instead. The other policies wait for nothing and do not
//!    count: one counter bumped by every touch on every worker would only move its cache line
//!    from core to core.
//! 3. `everysec` syncs at least once a second while there is anything unsynced, and the batch
//!    reaches the OS within [`BATCH_INTERVAL`]: a crash of the process loses nothing it wrote; a
//!    crash of the machine loses at most the last second.
//! 4. [`Journal::rotate`] writes and syncs the current file before opening the next
//!    generation; frames appended meanwhile stay in the buffers and land in the new file. A
//!    snapshot started after the rotation therefore needs only the journals from its own
//!    generation on.
//! 5. **A failed write drops nothing.** Drained frames stay in `pending`, in order, until one
//!    write of all of them succeeds; the thread retries every [`RETRY_INTERVAL`]. A write that
//!    fails partway is cut back to the last whole frame (`set_len`) before anything else is
//!    written; if even the cut fails the file is abandoned (its partial frame is then its last,
//!    a torn tail that start-up drops) and the next generation is opened when the disk allows.
//! 6. **Bounded, and lost only into a snapshot.** Past the backlog limit the pending frames are
//!    dropped, and so are the frames drained until the next rotation; a failed fsync loses what
//!    was written since the last good one the same way (the kernel may have dropped those
//!    pages). Each loss is recorded with its generation, and only a snapshot of a later
//!    generation, which the snapshot thread takes as soon as the disk takes one
//!    ([`Journal::needs_snapshot`]), clears it: the snapshot holds the table, so the disk again
//!    equals it.
//! 7. Operators are told: one log line when writes start failing (and a reminder a minute),
//!    one when they work again (how many changes, after how long), one when a snapshot ends a
//!    loss; gauges for health, unsaved changes and the age of the oldest; the error counter at
//!    each failed try. [`Journal::unsaved`] gives the same figures to the shutdown.
//! 8. The state directory's identity is checked every [`CHECK_INTERVAL`], before a rotation,
//!    and under `always` after every write, before it counts as durable (see `state_dir`). A lost directory is made again and locked again, and the whole
//!    state counts as lost, so a full snapshot follows at once. While another daemon holds the
//!    new directory's lock, this one is **fenced**: it writes nothing there, drops what it
//!    drains (the snapshot after it gets the lock back holds it) and refuses writes. Once it
//!    has the lock, it goes on above every generation in the directory, so its snapshot is the
//!    one the next start loads (what another daemon left there is superseded).

mod writer;

use super::record;
use super::state_dir::StateDir;
use crate::changes::{Change, Changes};
use parking_lot::{Condvar, Mutex};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use writer::Writer;

/// How often the journal thread writes out the shard buffers (`everysec` and `no`).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// How long a request waits for its fsync under `always` before it is refused.
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the journal thread waits before it tries a failed write again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// How often the state directory's identity is checked (invariant 8).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Default limit of journal bytes kept in memory while the disk refuses them (invariant 6):
/// about a million changes.
pub const DEFAULT_BACKLOG: usize = 64 << 20;
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// When the journal is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before a mutating request is answered (group commit).
    Always,
    /// Once a second (the default).
    #[default]
    Everysec,
    /// Never explicitly; the OS writes back when it likes.
    No,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::Everysec),
            "no" => Ok(FsyncPolicy::No),
            other => Err(format!(
                "fsync {other:?} is not one of always, everysec, no"
            )),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Everysec => "everysec",
            FsyncPolicy::No => "no",
        })
    }
}

/// Why a change was not made durable.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the change is applied in memory but was not on disk within {0:?}; it is kept and written \
         when the disk takes it, and a crash before then loses it"
    )]
    Timeout(Duration),
    #[error(
        "the state directory cannot be written ({0}); the change is applied in memory and kept, \
         and is written as soon as the disk takes it, but a crash before then loses it"
    )]
    Failing(#[source] Arc<io::Error>),
    #[error(
        "another sessiond holds this daemon's state directory ({0}); the change is applied in \
         memory only, and this daemon refuses writes until it gets the directory back"
    )]
    Fenced(#[source] Arc<io::Error>),
}

/// Path of journal generation `gen` in `dir`.
pub fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:020}"))
}

/// A moment by both clocks: the monotonic one for ages, the wall one for logs.
#[derive(Debug, Clone, Copy)]
pub struct Since {
    pub at: Instant,
    pub wall: SystemTime,
}

impl Since {
    fn now() -> Since {
        Since {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Seconds since the Unix epoch, for log fields.
    pub fn unix_secs(&self) -> u64 {
        self.wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Changes not on disk (invariant 7).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unsaved {
    /// Changes kept in memory for writing plus those lost until the next snapshot.
    pub changes: u64,
    /// Whether only a snapshot brings the disk back to the table (invariant 6).
    pub needs_snapshot: bool,
    /// When the oldest of them happened.
    pub since: Option<Since>,
}

impl Unsaved {
    pub fn is_empty(&self) -> bool {
        self.changes == 0 && !self.needs_snapshot
    }
}

/// One shard's buffer, alone on its cache line: the buffers beside it are written by other
/// workers at the same moment, and sharing a line would move it between their cores.
#[repr(align(64))]
struct ShardBuf(Mutex<Vec<u8>>);

/// The journal (see the module doc).
pub struct Journal {
    bufs: Box<[ShardBuf]>,
    /// Off while the state is being loaded (replay must not journal itself).
    enabled: AtomicBool,
    /// Frames appended, counted under `always` only (invariant 2).
    appended: AtomicU64,
    durable: tokio::sync::watch::Sender<u64>,
    wake: Mutex<bool>,
    wake_cv: Condvar,
    out: Mutex<Writer>,
    policy: FsyncPolicy,
    backlog: usize,
    /// Bytes written to the current generation (a snapshot is due early when it grows large).
    segment_bytes: AtomicU64,
    /// The writer's state as the request path reads it, without its lock.
    failing: AtomicBool,
    fenced: AtomicBool,
    needs_snapshot: AtomicBool,
    /// Why the journal last failed (a write, the state directory, its lock), shared with every
    /// request refused for it.
    last_error: Mutex<Arc<io::Error>>,
}

impl Journal {
    /// A journal for `shards` shards; it records nothing until [`Journal::start`].
    pub fn new(shards: usize, policy: FsyncPolicy) -> Journal {
        Journal {
            bufs: (0..shards)
                .map(|_| ShardBuf(Mutex::new(Vec::new())))
                .collect(),
            enabled: AtomicBool::new(false),
            appended: AtomicU64::new(0),
            durable: tokio::sync::watch::Sender::new(0),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            out: Mutex::new(Writer::new()),
            policy,
            backlog: DEFAULT_BACKLOG,
            segment_bytes: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            needs_snapshot: AtomicBool::new(false),
            last_error: Mutex::new(Arc::new(io::Error::other("no journal write has failed"))),
        }
    }

    /// Keeps at most `bytes` of unwritten journal in memory (invariant 6).
    pub fn with_backlog(mut self, bytes: usize) -> Journal {
        self.backlog = bytes;
        self
    }

    /// Opens generation `generation` in `dir` (not locked: tests and benchmarks) and starts
    /// recording.
    pub fn start(&self, dir: &Path, generation: u64) -> io::Result<()> {
        self.start_in(StateDir::unlocked(dir)?, generation);
        Ok(())
    }

    /// Starts recording into `dir` at `generation`. The first file is opened now if the disk
    /// takes it, else by the journal thread's retries: start-up never waits for free space.
    pub fn start_in(&self, dir: StateDir, generation: u64) {
        let mut w = self.out.lock();
        w.dir = Some(dir);
        w.generation = generation;
        let r = self.open_segment_in(&mut w);
        self.enabled.store(true, Ordering::Release);
        let target = self.appended.load(Ordering::Acquire);
        let _ = self.settle(&mut w, r, target);
    }

    /// Bytes written to the current generation so far.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.load(Ordering::Relaxed)
    }

    /// The generation being written, if started.
    pub fn generation(&self) -> Option<u64> {
        let w = self.out.lock();
        w.dir.as_ref().map(|_| w.generation)
    }

    /// Whether a loss waits for a snapshot (invariant 6).
    pub fn needs_snapshot(&self) -> bool {
        self.needs_snapshot.load(Ordering::Relaxed)
    }

    /// Whether writes are failing now.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Whether another daemon holds the state directory (invariant 8).
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Why the journal last failed, for the requests refused for it.
    fn last_error(&self) -> Arc<io::Error> {
        self.last_error.lock().clone()
    }

    /// Records why the journal fails (the writer's side).
    fn set_last_error(&self, e: io::Error) {
        *self.last_error.lock() = Arc::new(e);
    }

    /// The changes not on disk now (invariant 7).
    pub fn unsaved(&self) -> Unsaved {
        self.out.lock().unsaved()
    }

    /// Appends one frame, built by `f`, to shard `shard`'s buffer (invariants 1, 2).
    #[inline]
    pub fn append(&self, shard: usize, f: impl FnOnce(&mut Vec<u8>)) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let mut b = self.bufs[shard].0.lock();
        f(&mut b);
        if self.policy == FsyncPolicy::Always {
            self.appended.fetch_add(1, Ordering::Release);
            drop(b);
            self.kick();
        }
    }

    fn kick(&self) {
        let mut w = self.wake.lock();
        *w = true;
        self.wake_cv.notify_one();
    }

    /// Refuses writes while fenced; under `always`, waits until everything appended so far is
    /// on disk (invariant 2), or refuses at once while writes fail. At once otherwise.
    pub async fn wait_durable(&self) -> Result<(), JournalError> {
        if self.fenced() {
            return Err(JournalError::Fenced(self.last_error()));
        }
        if self.policy != FsyncPolicy::Always || !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Boxed, so that the wait's channel and timer (~350 bytes) are not part of every
        // request's future: the hot handlers' futures, boxed by axum, then stay within glibc's
        // per-thread cache (1,032 bytes) and skip its slow path (issue #27).
        Box::pin(self.wait_synced()).await
    }

    /// [`Journal::wait_durable`] under `always`.
    async fn wait_synced(&self) -> Result<(), JournalError> {
        if self.failing() {
            return Err(JournalError::Failing(self.last_error()));
        }
        let seen = self.appended.load(Ordering::Acquire);
        let mut rx = self.durable.subscribe();
        if *rx.borrow() >= seen {
            return Ok(());
        }
        self.kick();
        // A failed write wakes the waiters too (`settle`): they are refused at once.
        let durable_or_failing = rx.wait_for(|d| *d >= seen || self.failing());
        match tokio::time::timeout(DURABLE_TIMEOUT, durable_or_failing).await {
            Ok(Ok(d)) if *d >= seen => Ok(()),
            _ if self.failing() => Err(JournalError::Failing(self.last_error())),
            _ => Err(JournalError::Timeout(DURABLE_TIMEOUT)),
        }
    }

    /// Writes the buffers out and syncs if the policy (or `force_sync`) says so.
    pub fn flush(&self, force_sync: bool) -> io::Result<()> {
        let mut w = self.out.lock();
        if w.dir.is_none() {
            return Ok(());
        }
        let target = self.appended.load(Ordering::Acquire);
        self.drain(&mut w);
        let r = self.write_out(&mut w, force_sync);
        self.settle(&mut w, r, target)
    }

    /// Runs the journal thread until `stop` is set, then writes and syncs what is left.
    pub fn spawn_writer(
        self: Arc<Self>,
        stop: crate::shutdown::Stop,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("sessiond-journal".into())
            .spawn(move || {
                let idle = match self.policy {
                    FsyncPolicy::Always => Duration::from_millis(100),
                    _ => BATCH_INTERVAL,
                };
                loop {
                    {
                        let mut w = self.wake.lock();
                        if !*w {
                            self.wake_cv.wait_for(&mut w, idle);
                        }
                        *w = false;
                    }
                    let stopping = stop.is_set();
                    let failed = self.flush(stopping).is_err();
                    if stopping {
                        break;
                    }
                    if failed {
                        std::thread::sleep(RETRY_INTERVAL);
                    }
                }
            })
    }
}

impl Changes for Journal {
    /// One frame into `shard`'s buffer, under that buffer's own mutex; the journal thread does
    /// the I/O (`changes`, invariant 4).
    #[inline]
    fn record(&self, shard: usize, change: Change<'_>) {
        self.append(shard, |b| match change {
            Change::Created(s) => record::put_saved(b, s),
            Change::Activity { id, last_ms, .. } => record::put_activity(b, id, last_ms),
            Change::Removed { id, reason } => record::put_remove(b, id, reason),
            // This node's journal has the removals themselves; marks are for other nodes (a
            // cluster node reads them from the stream again at start).
            Change::NotBefore { .. } => {}
        });
    }
}

/// A copy of `e` for the requests it refuses, while the original goes back to the caller
/// (`io::Error` is not `Clone`): the same OS error where it is one, else its kind and words.
pub(super) fn same_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request refused while writes fail carries the write's own error as its source (the
    /// same OS error), and the message the HTTP answer shows keeps its words.
    #[test]
    fn a_refusal_keeps_the_failed_write_as_its_source() {
        let os = io::Error::from_raw_os_error(28);
        let e = JournalError::Failing(Arc::new(same_error(&os)));
        let source = std::error::Error::source(&e).expect("the io error is kept");
        let source = source
            .downcast_ref::<Arc<io::Error>>()
            .expect("an io error");
        assert_eq!(source.raw_os_error(), Some(28));
        assert!(e.to_string().contains(&os.to_string()), "{e}");

        let fenced = io::Error::other("/state is locked by another sessiond");
        let copy = same_error(&fenced);
        assert_eq!(
            (copy.kind(), copy.to_string()),
            (fenced.kind(), fenced.to_string())
        );
    }
}
