//! The journal: every create, coalesced activity, revocation and eviction, appended to
//! `journal-<gen>` in batches by one writer thread and fsynced on the configured policy, and
//! kept in memory while the disk refuses it.
//!
//! The request path never touches the file: it encodes a frame into its shard's buffer (a
//! mutex per shard, taken only by that shard's writers and the journal thread) and goes on. The
//! journal thread moves the buffers into `pending` every [`BATCH_INTERVAL`] (at once under
//! `always`), writes `pending` as one batch and syncs.
//!
//! Invariants:
//! 1. **Per-session order**: a session's frames go to its shard's buffer while the shard lock
//!    is held (write lock for create and removal; touch holds the read lock, but no removal can
//!    run beside it), and buffers are drained in order into `pending`, which is written in
//!    order, so a session's frames reach the file in the order they happened. Frames of
//!    different sessions may interleave freely (replay is per session, see `record`).
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
//! 8. The state directory's identity is checked every [`CHECK_INTERVAL`] and before a
//!    rotation (see `state_dir`). A lost directory is made again and locked again, and the whole
//!    state counts as lost, so a full snapshot follows at once. While another daemon holds the
//!    new directory's lock, this one is **fenced**: it writes nothing there, drops what it
//!    drains (the snapshot after it gets the lock back holds it) and refuses writes. Once it
//!    has the lock, it goes on above every generation in the directory, so its snapshot is the
//!    one the next start loads (what another daemon left there is superseded).

use super::record::JOURNAL_MAGIC;
use super::state_dir::{self, LockError, StateDir};
use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

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
    Failing(String),
    #[error(
        "another sessiond holds this daemon's state directory ({0}); the change is applied in \
         memory only, and this daemon refuses writes until it gets the directory back"
    )]
    Fenced(String),
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

struct Segment {
    file: File,
    /// Bytes of whole frames in the file (invariant 5).
    len: u64,
}

struct Lost {
    generation: u64,
    frames: u64,
    since: Since,
    /// The state directory itself was lost.
    whole_state: bool,
}

struct Failure {
    since: Instant,
    reminded: Instant,
}

/// The journal thread's side, under one mutex.
struct Writer {
    dir: Option<StateDir>,
    generation: u64,
    seg: Option<Segment>,
    pending: Vec<u8>,
    pending_frames: u64,
    pending_since: Option<Since>,
    unsynced: bool,
    unsynced_frames: u64,
    unsynced_since: Option<Since>,
    last_sync: Instant,
    last_check: Instant,
    written_frames: u64,
    lost: Option<Lost>,
    /// Past the backlog limit: drained frames are dropped until the next rotation.
    discarding: bool,
    failure: Option<Failure>,
    /// The directory was lost and has not been locked again yet.
    dir_lost: bool,
    fenced: bool,
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
    last_error: Mutex<String>,
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
            out: Mutex::new(Writer {
                dir: None,
                generation: 0,
                seg: None,
                pending: Vec::new(),
                pending_frames: 0,
                pending_since: None,
                unsynced: false,
                unsynced_frames: 0,
                unsynced_since: None,
                last_sync: Instant::now(),
                last_check: Instant::now(),
                written_frames: 0,
                lost: None,
                discarding: false,
                failure: None,
                dir_lost: false,
                fenced: false,
            }),
            policy,
            backlog: DEFAULT_BACKLOG,
            segment_bytes: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            needs_snapshot: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
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
            return Err(JournalError::Fenced(self.last_error.lock().clone()));
        }
        if self.policy != FsyncPolicy::Always || !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.failing() {
            return Err(JournalError::Failing(self.last_error.lock().clone()));
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
            _ if self.failing() => Err(JournalError::Failing(self.last_error.lock().clone())),
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

    /// Moves the shard buffers into `pending`, or drops them (invariants 1, 6, 8).
    fn drain(&self, w: &mut Writer) {
        let before = w.pending.len();
        for b in self.bufs.iter() {
            let mut b = b.0.lock();
            w.pending.extend_from_slice(&b);
            b.clear();
            if b.capacity() > 1 << 20 {
                *b = Vec::new();
            }
        }
        if w.pending.len() == before {
            return;
        }
        let frames = count_frames(&w.pending[before..]);
        if w.discarding || w.fenced {
            w.pending.truncate(before);
            w.lose(frames, Since::now(), false);
        } else {
            w.pending_frames += frames;
            w.pending_since.get_or_insert_with(Since::now);
        }
    }

    /// Writes `pending` and syncs per the policy (invariants 3, 5, 6, 8).
    fn write_out(&self, w: &mut Writer, force_sync: bool) -> io::Result<()> {
        if w.fenced || w.dir_lost || force_sync || w.last_check.elapsed() >= CHECK_INTERVAL {
            self.check_dir(w, force_sync)?;
        }
        if w.seg.is_none() {
            self.open_segment_in(w)?;
        }
        if !w.pending.is_empty() {
            let seg = w.seg.as_mut().expect("opened above");
            if let Err(e) = seg.file.write_all(&w.pending) {
                if seg.file.set_len(seg.len).is_err() {
                    w.abandon();
                }
                return Err(e);
            }
            let n = w.pending.len() as u64;
            seg.len += n;
            self.segment_bytes.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(crate::metrics::JOURNAL_BYTES).increment(n);
            w.unsynced = true;
            w.unsynced_frames += w.pending_frames;
            w.written_frames = w.pending_frames;
            if w.unsynced_since.is_none() {
                w.unsynced_since = w.pending_since;
            }
            w.pending.clear();
            w.pending_frames = 0;
            w.pending_since = None;
            if w.pending.capacity() > 4 << 20 {
                w.pending = Vec::new();
            }
        }
        let sync = match self.policy {
            FsyncPolicy::Always => true,
            // Catching up after a failure is on disk before it is said to be.
            FsyncPolicy::Everysec => {
                force_sync || w.failure.is_some() || w.last_sync.elapsed() >= Duration::from_secs(1)
            }
            FsyncPolicy::No => force_sync,
        };
        if sync && w.unsynced {
            let t = Instant::now();
            let seg = w.seg.as_mut().expect("written above");
            if let Err(e) = seg.file.sync_data() {
                // Invariant 6: those pages may be gone; only a snapshot is sure to hold them.
                let since = w.unsynced_since.unwrap_or_else(Since::now);
                w.lose(w.unsynced_frames, since, false);
                w.unsynced_frames = 0;
                w.abandon();
                return Err(e);
            }
            metrics::histogram!(crate::metrics::JOURNAL_FSYNC).record(t.elapsed().as_secs_f64());
            w.unsynced = false;
            w.unsynced_frames = 0;
            w.unsynced_since = None;
        }
        if sync {
            w.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Checks the state directory, and makes and locks it again if it was lost (invariant 8).
    fn check_dir(&self, w: &mut Writer, now: bool) -> io::Result<()> {
        if (w.fenced || w.dir_lost) && !now && w.last_check.elapsed() < CHECK_INTERVAL {
            return Err(self.dir_error(w));
        }
        w.last_check = Instant::now();
        let dir = w.dir.as_ref().expect("started");
        if !w.fenced && !w.dir_lost {
            let Err(what) = dir.check(w.seg.as_ref().map(|s| &s.file)) else {
                return Ok(());
            };
            tracing::error!(
                dir = %dir.path().display(),
                what,
                "the state directory was lost under the running daemon, and every saved session \
                 with it: making it again, taking its lock and writing a full snapshot"
            );
            *self.last_error.lock() = format!("state directory {}: {what}", dir.path().display());
            w.seg = None;
            w.unsynced = false;
            w.unsynced_frames = 0;
            w.unsynced_since = None;
            w.generation += 1;
            w.lose(0, Since::now(), true);
            w.dir_lost = true;
        }
        let dir = w.dir.as_mut().expect("started");
        match dir.relock() {
            Ok(()) => {
                tracing::warn!(
                    dir = %dir.path().display(),
                    "the state directory is back and locked; a full snapshot follows"
                );
                // Another daemon may have written there meanwhile: go on above its files, so
                // that the snapshot that follows is the newest (invariant 8).
                let newest = super::list(dir.path())
                    .map(|files| files.iter().map(|f| f.1).max().unwrap_or(0))
                    .unwrap_or(0);
                w.generation = w.generation.max(newest + 1);
                w.dir_lost = false;
                w.fenced = false;
                self.fenced.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(LockError::Held) => {
                if !w.fenced {
                    tracing::error!(
                        dir = %dir.path().display(),
                        "another sessiond took the remade state directory's lock: this daemon \
                         writes nothing there, refuses writes and reports not ready until it \
                         can take the lock back"
                    );
                    *self.last_error.lock() =
                        format!("{} is locked by another sessiond", dir.path().display());
                }
                w.fenced = true;
                self.fenced.store(true, Ordering::Relaxed);
                // What was kept for writing belongs to the snapshot after the lock comes back.
                let (frames, since) = (w.pending_frames, w.pending_since);
                if let Some(since) = since {
                    w.lose(frames, since, false);
                }
                w.pending.clear();
                w.pending_frames = 0;
                w.pending_since = None;
                Err(self.dir_error(w))
            }
            Err(LockError::Io(e)) => Err(e),
        }
    }

    fn dir_error(&self, w: &Writer) -> io::Error {
        let dir = w.dir.as_ref().map_or(Path::new(""), |d| d.path());
        if w.fenced {
            io::Error::other(format!("{} is locked by another sessiond", dir.display()))
        } else {
            io::Error::other(format!(
                "{} was lost and cannot be made again",
                dir.display()
            ))
        }
    }

    fn open_segment_in(&self, w: &mut Writer) -> io::Result<()> {
        let dir = w.dir.as_ref().expect("started").path().to_owned();
        loop {
            match open_segment(&dir, w.generation) {
                Ok(file) => {
                    w.seg = Some(Segment {
                        file,
                        len: JOURNAL_MAGIC.len() as u64,
                    });
                    self.segment_bytes.store(0, Ordering::Relaxed);
                    return Ok(());
                }
                // Left by an earlier try whose clean-up failed.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => w.generation += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Bookkeeping after a write: the backlog bound, health, logs, gauges, and the durable
    /// mark (invariants 2, 6, 7).
    fn settle(&self, w: &mut Writer, r: io::Result<()>, target: u64) -> io::Result<()> {
        if w.pending.len() > self.backlog {
            tracing::error!(
                changes = w.pending_frames,
                bytes = w.pending.len(),
                limit_bytes = self.backlog,
                "the journal backlog is full: dropping the changes kept in memory; a full \
                 snapshot replaces them as soon as the disk takes one (raise --journal-backlog \
                 to keep more)"
            );
            let since = w.pending_since.unwrap_or_else(Since::now);
            w.lose(w.pending_frames, since, false);
            w.pending = Vec::new();
            w.pending_frames = 0;
            w.pending_since = None;
            w.discarding = true;
        }
        match &r {
            Ok(()) => {
                if let Some(f) = w.failure.take() {
                    let lost = w.lost.as_ref().map_or(0, |l| l.frames);
                    tracing::info!(
                        failing_for_ms = f.since.elapsed().as_millis() as u64,
                        changes_written = w.written_frames,
                        changes_waiting_for_snapshot = lost,
                        "journal writes work again: the changes kept in memory are on disk"
                    );
                }
                if w.lost.is_none() && !w.unsynced && w.pending.is_empty() {
                    self.durable.send_replace(target);
                }
            }
            Err(e) => {
                metrics::counter!(crate::metrics::JOURNAL_ERRORS).increment(1);
                let u = w.unsaved();
                match &mut w.failure {
                    // The fenced line said it all.
                    None if w.fenced => {
                        w.failure = Some(Failure {
                            since: Instant::now(),
                            reminded: Instant::now(),
                        });
                    }
                    None => {
                        tracing::error!(
                            error = %e,
                            unsaved_changes = u.changes,
                            backlog_limit_bytes = self.backlog,
                            "cannot write the journal: changes are kept in memory and written \
                             as soon as the disk takes them; a crash before then loses them"
                        );
                        w.failure = Some(Failure {
                            since: Instant::now(),
                            reminded: Instant::now(),
                        });
                    }
                    Some(f) if f.reminded.elapsed() >= REMIND_EVERY => {
                        tracing::warn!(
                            error = %e,
                            failing_for_s = f.since.elapsed().as_secs(),
                            unsaved_changes = u.changes,
                            unsaved_since_unix = u.since.map(|s| s.unix_secs()),
                            "the journal still cannot be written"
                        );
                        f.reminded = Instant::now();
                    }
                    Some(_) => {}
                }
                if !w.fenced {
                    *self.last_error.lock() = e.to_string();
                }
            }
        }
        self.failing.store(w.failure.is_some(), Ordering::Relaxed);
        if r.is_err() && self.policy == FsyncPolicy::Always {
            self.durable.send_modify(|_| ());
        }
        self.needs_snapshot
            .store(w.lost.is_some(), Ordering::Relaxed);
        w.publish();
        r
    }

    /// Writes and syncs the current generation, then opens the next one and returns its number
    /// (invariant 4). Refused while the current one cannot be written: what it holds must not
    /// be left behind by a snapshot that may fail.
    pub fn rotate(&self) -> io::Result<u64> {
        let mut w = self.out.lock();
        if w.dir.is_none() {
            return Err(io::Error::other("the journal is not started"));
        }
        let target = self.appended.load(Ordering::Acquire);
        self.drain(&mut w);
        let r = self.write_out(&mut w, true);
        self.settle(&mut w, r, target)?;
        let (old_seg, old_generation) = (w.seg.take(), w.generation);
        w.generation += 1;
        if let Err(e) = self.open_segment_in(&mut w) {
            w.seg = old_seg;
            w.generation = old_generation;
            return Err(e);
        }
        // From here on every change is kept again: the snapshot holds only what precedes it.
        w.discarding = false;
        Ok(w.generation)
    }

    /// A snapshot of `generation` is on disk: every loss before that generation is in it
    /// (invariant 6).
    pub fn snapshot_written(&self, generation: u64) {
        let mut w = self.out.lock();
        if let Some(l) = &w.lost
            && l.generation < generation
        {
            tracing::info!(
                changes = l.frames,
                whole_state = l.whole_state,
                not_on_disk_for_ms = l.since.at.elapsed().as_millis() as u64,
                "the snapshot holds the changes that had not reached the disk: the disk again \
                 equals the table"
            );
            w.lost = None;
        }
        self.needs_snapshot
            .store(w.lost.is_some(), Ordering::Relaxed);
        w.publish();
        drop(w);
        self.kick();
    }

    /// Runs the journal thread until `stop` is set, then writes and syncs what is left.
    pub fn spawn_writer(
        self: Arc<Self>,
        stop: Arc<AtomicBool>,
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
                    let stopping = stop.load(Ordering::Acquire);
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

impl Writer {
    /// Records `frames` changes as lost until a snapshot of a later generation (invariant 6).
    fn lose(&mut self, frames: u64, since: Since, whole_state: bool) {
        let generation = self.generation;
        match &mut self.lost {
            Some(l) => {
                l.frames += frames;
                l.generation = l.generation.max(generation);
                l.whole_state |= whole_state;
            }
            None => {
                self.lost = Some(Lost {
                    generation,
                    frames,
                    since,
                    whole_state,
                })
            }
        }
    }

    /// Leaves the current file for good: the next write opens the next generation
    /// (invariant 5). What it holds unsynced is synced if possible, else lost.
    fn abandon(&mut self) {
        if let Some(seg) = self.seg.take()
            && self.unsynced
            && seg.file.sync_data().is_err()
        {
            let since = self.unsynced_since.unwrap_or_else(Since::now);
            self.lose(self.unsynced_frames, since, false);
        }
        self.unsynced = false;
        self.unsynced_frames = 0;
        self.unsynced_since = None;
        self.generation += 1;
    }

    fn unsaved(&self) -> Unsaved {
        let lost = self.lost.as_ref();
        let since = [self.pending_since, lost.map(|l| l.since)]
            .into_iter()
            .flatten()
            .min_by_key(|s| s.at);
        Unsaved {
            changes: self.pending_frames + lost.map_or(0, |l| l.frames),
            needs_snapshot: lost.is_some(),
            since,
        }
    }

    fn publish(&self) {
        let u = self.unsaved();
        let healthy = self.failure.is_none() && self.lost.is_none() && !self.fenced;
        metrics::gauge!(crate::metrics::PERSIST_HEALTHY).set(if healthy { 1.0 } else { 0.0 });
        metrics::gauge!(crate::metrics::PERSIST_UNSAVED).set(u.changes as f64);
        metrics::gauge!(crate::metrics::PERSIST_UNSAVED_AGE)
            .set(u.since.map_or(0.0, |s| s.at.elapsed().as_secs_f64()));
    }
}

/// Frames in `bytes`, which holds whole frames only (each starts with its body's length).
fn count_frames(mut bytes: &[u8]) -> u64 {
    let mut n = 0;
    while bytes.len() >= 8 {
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        bytes = &bytes[(8 + len).min(bytes.len())..];
        n += 1;
    }
    n
}

/// Creates journal `generation` in `dir` with its header, durably; on failure nothing of it
/// is left behind if the disk allows.
fn open_segment(dir: &Path, generation: u64) -> io::Result<File> {
    let p = path(dir, generation);
    let mut file = state_dir::create_file(&p, true)?;
    let r = file
        .write_all(JOURNAL_MAGIC)
        .and_then(|()| file.sync_all())
        .and_then(|()| super::sync_dir(dir));
    match r {
        // Opened for appending: after a cut (invariant 5) the next write lands at the new end.
        Ok(()) => Ok(file),
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&p);
            Err(io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        }
    }
}
