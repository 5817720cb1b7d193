//! The journal: every create, coalesced activity, revocation and eviction, appended to
//! `journal-<gen>` in batches by one writer thread and fsynced on the configured policy.
//!
//! The request path never touches the file: it encodes a frame into its shard's buffer (a
//! mutex per shard, taken only by that shard's writers and the journal thread) and goes on. The
//! journal thread swaps the buffers out every [`BATCH_INTERVAL`] (at once under `always`),
//! writes them as one batch and syncs.
//!
//! Invariants:
//! 1. **Per-session order**: a session's frames go to its shard's buffer while the shard lock
//!    is held (write lock for create and removal; touch holds the read lock, but no removal can
//!    run beside it), and buffers are drained in order, so a session's frames reach the file in
//!    the order they happened. Frames of different sessions may interleave freely (replay is
//!    per session, see `record`).
//! 2. Under `always`, `appended` is bumped after the frame is in its buffer; the thread reads it
//!    *before* draining, so after a sync everything up to that reading is durable, and a
//!    mutating request waits ([`Journal::wait_durable`]) until `durable` reaches the count it
//!    saw: group commit, one fsync for every request that arrived meanwhile. The other policies
//!    wait for nothing and do not count: one counter bumped by every touch on every worker
//!    would only move its cache line from core to core.
//! 3. `everysec` syncs at least once a second while there is anything unsynced, and the batch
//!    reaches the OS within [`BATCH_INTERVAL`]: a crash of the process loses nothing it wrote; a
//!    crash of the machine loses at most the last second.
//! 4. [`Journal::rotate`] drains and syncs the current file before opening the next
//!    generation; frames appended meanwhile stay in the buffers and land in the new file. A
//!    snapshot started after the rotation therefore needs only the journals from its own
//!    generation on.

use super::record::JOURNAL_MAGIC;
use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the journal thread writes out the shard buffers (`everysec` and `no`).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// How long a request waits for its fsync under `always` before it is refused.
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The journal could not be written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal was not made durable within {0:?}; the change may be lost")]
    Timeout(Duration),
}

/// Path of journal generation `gen` in `dir`.
pub fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:020}"))
}

struct Segment {
    file: File,
    generation: u64,
    dir: PathBuf,
    unsynced: bool,
    last_sync: Instant,
    batch: Vec<u8>,
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
    out: Mutex<Option<Segment>>,
    policy: FsyncPolicy,
    /// Bytes written to the current generation (a snapshot is due early when it grows large).
    segment_bytes: AtomicU64,
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
            out: Mutex::new(None),
            policy,
            segment_bytes: AtomicU64::new(0),
        }
    }

    /// Opens generation `generation` in `dir` and starts recording.
    pub fn start(&self, dir: &Path, generation: u64) -> io::Result<()> {
        let seg = open_segment(dir, generation)?;
        *self.out.lock() = Some(seg);
        self.enabled.store(true, Ordering::Release);
        Ok(())
    }

    /// Bytes written to the current generation so far.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.load(Ordering::Relaxed)
    }

    /// The generation being written, if started.
    pub fn generation(&self) -> Option<u64> {
        self.out.lock().as_ref().map(|s| s.generation)
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

    /// Under `always`, waits until everything appended so far is on disk (invariant 2); at once
    /// otherwise.
    pub async fn wait_durable(&self) -> Result<(), JournalError> {
        if self.policy != FsyncPolicy::Always || !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let seen = self.appended.load(Ordering::Acquire);
        let mut rx = self.durable.subscribe();
        if *rx.borrow() >= seen {
            return Ok(());
        }
        self.kick();
        match tokio::time::timeout(DURABLE_TIMEOUT, rx.wait_for(|d| *d >= seen)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(JournalError::Timeout(DURABLE_TIMEOUT)),
        }
    }

    /// Writes the buffers out and syncs if the policy (or `force_sync`) says so.
    pub fn flush(&self, force_sync: bool) -> io::Result<()> {
        let mut out = self.out.lock();
        let Some(seg) = out.as_mut() else {
            return Ok(());
        };
        self.drain_into(seg, force_sync)
    }

    fn drain_into(&self, seg: &mut Segment, force_sync: bool) -> io::Result<()> {
        let target = self.appended.load(Ordering::Acquire);
        seg.batch.clear();
        for b in self.bufs.iter() {
            let mut b = b.0.lock();
            seg.batch.extend_from_slice(&b);
            b.clear();
            if b.capacity() > 1 << 20 {
                *b = Vec::new();
            }
        }
        if !seg.batch.is_empty() {
            seg.file.write_all(&seg.batch)?;
            seg.unsynced = true;
            self.segment_bytes
                .fetch_add(seg.batch.len() as u64, Ordering::Relaxed);
            metrics::counter!(crate::metrics::JOURNAL_BYTES).increment(seg.batch.len() as u64);
        }
        let sync = match self.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Everysec => {
                force_sync || seg.last_sync.elapsed() >= Duration::from_secs(1)
            }
            FsyncPolicy::No => force_sync,
        };
        if sync && seg.unsynced {
            let t = Instant::now();
            seg.file.sync_data()?;
            metrics::histogram!(crate::metrics::JOURNAL_FSYNC).record(t.elapsed().as_secs_f64());
            seg.unsynced = false;
        }
        if sync {
            seg.last_sync = Instant::now();
        }
        if !seg.unsynced {
            self.durable.send_replace(target);
        }
        if seg.batch.capacity() > 4 << 20 {
            seg.batch = Vec::new();
        }
        Ok(())
    }

    /// Drains and syncs the current generation, then opens the next one and returns its number
    /// (invariant 4).
    pub fn rotate(&self) -> io::Result<u64> {
        let mut out = self.out.lock();
        let seg = out
            .as_mut()
            .ok_or_else(|| io::Error::other("the journal is not started"))?;
        self.drain_into(seg, true)?;
        let next = open_segment(&seg.dir, seg.generation + 1)?;
        *seg = next;
        self.segment_bytes.store(0, Ordering::Relaxed);
        Ok(seg.generation)
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
                let mut failing = false;
                loop {
                    {
                        let mut w = self.wake.lock();
                        if !*w {
                            self.wake_cv.wait_for(&mut w, idle);
                        }
                        *w = false;
                    }
                    let stopping = stop.load(Ordering::Acquire);
                    match self.flush(stopping) {
                        Ok(()) => {
                            if failing {
                                tracing::info!("journal writes work again");
                            }
                            failing = false;
                        }
                        Err(e) => {
                            metrics::counter!(crate::metrics::JOURNAL_ERRORS).increment(1);
                            if !failing {
                                tracing::error!(error = %e, "cannot write the journal; changes since are not durable");
                            }
                            failing = true;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    if stopping {
                        break;
                    }
                }
            })
    }
}

fn open_segment(dir: &Path, generation: u64) -> io::Result<Segment> {
    let p = path(dir, generation);
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&p)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
    file.write_all(JOURNAL_MAGIC)?;
    file.sync_all()?;
    super::sync_dir(dir)?;
    Ok(Segment {
        file,
        generation,
        dir: dir.to_owned(),
        unsynced: false,
        last_sync: Instant::now(),
        batch: Vec::new(),
    })
}
