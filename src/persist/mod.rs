//! Sessions on disk: a journal of every change and periodic snapshots in the state directory,
//! so that a restart signs nobody out and a crash loses at most the last moment.
//!
//! Files in the state directory (next to `policies.json`):
//! - `lock`: held with an exclusive `flock` for the daemon's life; a second daemon on the same
//!   directory refuses to start.
//! - `snapshot-<gen>`: every session at the time generation `gen` began (see `snapshot`).
//! - `journal-<gen>`: the changes since (see `journal`); replayed in generation order.
//!
//! Invariants:
//! 1. Nothing on disk holds a token: sessions are keyed by id (a hash of the token).
//! 2. Start-up = newest snapshot + journals of its generation and later (see `load`); the
//!    journal goes on in a generation higher than any on disk, so no file is appended to by
//!    two runs.
//! 3. At most one snapshot runs at a time (`snapshotting`).
//! 4. A disk's bad day never stops the daemon: start-up needs no free space (the journal's
//!    first file is opened when the disk takes it), failed writes are kept and retried, and a
//!    snapshot is retried every [`SNAPSHOT_RETRY`] while changes wait for one (see `journal`).
//!    The shutdown says what did not reach the disk and fails ([`ShutdownError`]).
//! 5. **No snapshot cuts what another listener still needs.** While the hold that a cluster
//!    node sets ([`Persistence::hold_snapshots`]: NATS out of reach and its outbox holding
//!    changes the stream does not have) is on, no snapshot is taken, periodic or last: the
//!    journal keeps those changes, so the next start finds the revocations among them and
//!    publishes them again (`cluster`, invariant 6), after a clean stop as after a crash.

pub mod journal;
pub mod load;
pub mod record;
pub mod snapshot;
pub mod state_dir;

use crate::engine::Engine;
use crate::shutdown::{Shutdown, Stage};
use journal::{FsyncPolicy, Journal};
use parking_lot::Mutex;
use state_dir::StateDir;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A journal generation this large triggers a snapshot before the interval is over
/// (replaying 1 GiB, ~13M frames, takes a few seconds).
pub const JOURNAL_SNAPSHOT_BYTES: u64 = 1 << 30;
/// How often a failed snapshot is tried again while changes wait for one.
pub const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);
/// Failed snapshots in a row between two log lines (about a minute at [`SNAPSHOT_RETRY`]).
const SNAPSHOT_LOG_EVERY: u32 = 60;
/// How often the snapshot thread looks at the journal (its size, a snapshot it waits for);
/// the interval and the shutdown wake it by themselves.
const JOURNAL_CHECK: Duration = Duration::from_millis(100);

/// Persistence settings, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Time between periodic snapshots.
    pub snapshot_interval: Duration,
    /// Keep what precedes damage instead of refusing to start.
    pub recover: bool,
    /// Journal bytes kept in memory while the disk refuses them (see `journal`).
    pub journal_backlog: usize,
}

/// The kinds of file this module owns in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Snapshot,
    Journal,
    /// A snapshot being written (or abandoned by a crash).
    Temp,
}

/// The snapshots, journals and unfinished snapshots in `dir`, with their generations.
pub fn list(dir: &Path) -> io::Result<Vec<(Kind, u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let parsed = if let Some(rest) = name.strip_prefix("snapshot-") {
            match rest.strip_suffix(".tmp") {
                Some(g) => g.parse().ok().map(|g| (Kind::Temp, g)),
                None => rest.parse().ok().map(|g| (Kind::Snapshot, g)),
            }
        } else if let Some(rest) = name.strip_prefix("journal-") {
            rest.parse().ok().map(|g| (Kind::Journal, g))
        } else {
            None
        };
        if let Some((kind, g)) = parsed {
            out.push((kind, g, entry.path()));
        }
    }
    Ok(out)
}

/// Makes renames and creations in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why persistence could not start.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(
        "state directory {0} is in use by another sessiond (its lock file is held); give each daemon its own --state-dir"
    )]
    Locked(PathBuf),
    #[error("state directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Load(#[from] load::LoadError),
}

/// What start-up loaded, for the one log line.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub report: load::Report,
    /// Sessions dropped because their deadline passed while the daemon was down.
    pub expired: u64,
}

/// What a shutdown could not write (the process then exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error(
        "{} changes are not on disk (the oldest from {} s ago){}: they are lost with this \
         process",
        .0.changes,
        .0.since.map_or(0, |s| s.at.elapsed().as_secs()),
        if .0.needs_snapshot { ", and the state directory needs a full snapshot" } else { "" }
    )]
    Unsaved(journal::Unsaved),
    #[error(
        "the last snapshot failed ({0}); nothing is lost: the journal holds every change, and \
         the next start replays it"
    )]
    Snapshot(io::Error),
}

/// The running persistence layer (see the module doc).
pub struct Persistence {
    settings: Settings,
    journal: Arc<Journal>,
    /// The locked directory, until [`Persistence::start`] hands it to the journal.
    dir: Mutex<Option<StateDir>>,
    snapshotting: Mutex<()>,
    /// Consecutive failed snapshots, for one log line per streak.
    snapshot_failures: Mutex<u32>,
    /// The daemon's shutdown signal: its threads end at [`Stage::Exiting`], which
    /// [`Persistence::shutdown`] reaches after the last snapshot.
    shutdown: Shutdown,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// While it answers true, no snapshot is taken (invariant 5).
    hold: std::sync::OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl Persistence {
    /// Creates and locks the state directory; sessions are not loaded yet. A full or read-only
    /// disk does not stop this (see `state_dir`); only a directory that cannot be made, read
    /// or locked does.
    pub fn open(
        settings: Settings,
        shards: usize,
        shutdown: Shutdown,
    ) -> Result<Persistence, PersistError> {
        let dir = StateDir::lock(&settings.dir).map_err(|e| match e {
            state_dir::LockError::Held => PersistError::Locked(settings.dir.clone()),
            state_dir::LockError::Io(source) => PersistError::Io {
                dir: settings.dir.clone(),
                source,
            },
        })?;
        Ok(Persistence {
            journal: Arc::new(
                Journal::new(shards, settings.fsync).with_backlog(settings.journal_backlog),
            ),
            settings,
            dir: Mutex::new(Some(dir)),
            snapshotting: Mutex::new(()),
            snapshot_failures: Mutex::new(0),
            shutdown,
            threads: Mutex::new(Vec::new()),
            hold: std::sync::OnceLock::new(),
        })
    }

    /// Holds every snapshot while `hold` answers true (invariant 5); set once, by a cluster
    /// node, before the daemon serves.
    pub fn hold_snapshots(&self, hold: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.hold.set(Box::new(hold));
    }

    /// Whether snapshots are held now (invariant 5).
    fn held(&self) -> bool {
        self.hold.get().is_some_and(|h| h())
    }

    /// The journal the engine must be built with.
    pub fn journal(&self) -> Arc<Journal> {
        self.journal.clone()
    }

    /// Loads the state into `engine`, starts the journal, drops the sessions that expired
    /// while the daemon was down (journaling their removal), and starts the journal and
    /// snapshot threads. A disk that takes no writes does not stop it: the journal keeps the
    /// changes and retries.
    pub fn start(self: &Arc<Self>, engine: &Arc<Engine>) -> Result<Loaded, PersistError> {
        let dir = &self.settings.dir;
        let io_err = |source| PersistError::Io {
            dir: dir.clone(),
            source,
        };
        // Exported from the start, so that rate() and alerts see them before any error.
        metrics::counter!(crate::metrics::JOURNAL_ERRORS).increment(0);
        metrics::counter!(crate::metrics::SNAPSHOT_ERRORS).increment(0);
        metrics::gauge!(crate::metrics::PERSIST_HEALTHY).set(1.0);
        metrics::gauge!(crate::metrics::PERSIST_UNSAVED).set(0.0);
        metrics::gauge!(crate::metrics::PERSIST_UNSAVED_AGE).set(0.0);
        let report = load::load(engine, dir, self.settings.recover)?;
        let locked = self
            .dir
            .lock()
            .take()
            .ok_or_else(|| io_err(io::Error::other("persistence started twice")))?;
        self.journal.start_in(locked, report.next_generation);
        let writer = self
            .journal
            .clone()
            .spawn_writer(self.shutdown.at(Stage::Exiting))
            .map_err(io_err)?;
        self.threads.lock().push(writer);
        let expired = engine.sweep_expired().total();
        if !report.recovered.is_empty() {
            // The damaged files were cut; a snapshot now supersedes them (or, if the disk
            // refuses it, the periodic one does: the cut files load the same meanwhile).
            let _ = self.snapshot(engine);
        }
        let me = self.clone();
        let engine = engine.clone();
        let periodic = std::thread::Builder::new()
            .name("sessiond-snapshot".into())
            .spawn(move || me.periodic(&engine))
            .map_err(io_err)?;
        self.threads.lock().push(periodic);
        Ok(Loaded { report, expired })
    }

    /// The snapshot thread: a snapshot every interval, and earlier when the journal asks for
    /// one; it ends as soon as the shutdown reaches [`Stage::Exiting`].
    fn periodic(&self, engine: &Engine) {
        let stop = self.shutdown.at(Stage::Exiting);
        let mut last_snapshot = Instant::now();
        let mut last_try: Option<Instant> = None;
        loop {
            let interval_at = last_snapshot + self.settings.snapshot_interval;
            // A failed snapshot is not tried again before SNAPSHOT_RETRY.
            let next = last_try.map_or(interval_at, |t| interval_at.max(t + SNAPSHOT_RETRY));
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(JOURNAL_CHECK);
            if stop.wait_timeout(wait) {
                return;
            }
            let now = Instant::now();
            // Early when the journal grows large, so that start-up never replays much of it,
            // and as soon as the disk takes one when changes wait for it.
            let due = now >= interval_at
                || self.journal.segment_bytes() >= JOURNAL_SNAPSHOT_BYTES
                || (self.journal.needs_snapshot() && !self.journal.fenced());
            // Held: tried again at the next check, once the stream has what the journal keeps.
            if due && !self.held() && last_try.is_none_or(|t| now - t >= SNAPSHOT_RETRY) {
                last_try = Some(now);
                if self.snapshot(engine).is_ok() {
                    last_snapshot = Instant::now();
                }
            }
        }
    }

    /// Takes a snapshot now (waiting for one in progress), logging and counting the outcome.
    pub fn snapshot(&self, engine: &Engine) -> io::Result<snapshot::Stats> {
        let _one = self.snapshotting.lock();
        let r = snapshot::take(engine, &self.journal, &self.settings.dir);
        let mut failures = self.snapshot_failures.lock();
        match r {
            Ok(stats) => {
                tracing::info!(
                    generation = stats.generation,
                    sessions = stats.sessions,
                    bytes = stats.bytes,
                    took_ms = stats.took.as_millis() as u64,
                    after_failures = *failures,
                    "snapshot written"
                );
                *failures = 0;
                snapshot::record_metrics(&stats);
                Ok(stats)
            }
            Err(e) => {
                metrics::counter!(crate::metrics::SNAPSHOT_ERRORS).increment(1);
                // One line per streak, and one a minute while it lasts.
                if (*failures).is_multiple_of(SNAPSHOT_LOG_EVERY) {
                    let u = self.journal.unsaved();
                    if u.is_empty() && !self.journal.failing() {
                        tracing::error!(error = %e, failures = *failures + 1, "snapshot failed; nothing is lost: the journal holds every change since the last snapshot");
                    } else {
                        tracing::error!(
                            error = %e,
                            failures = *failures + 1,
                            unsaved_changes = u.changes,
                            unsaved_since_unix = u.since.map(|s| s.unix_secs()),
                            needs_snapshot = u.needs_snapshot,
                            "snapshot failed, and changes are not on disk; retrying"
                        );
                    }
                }
                *failures += 1;
                Err(e)
            }
        }
    }

    /// At shutdown: a last snapshot (so the next start replays no journal), then the shutdown
    /// reaches [`Stage::Exiting`]: the journal thread writes and syncs what is left and stops.
    /// Says what did not reach the disk.
    pub fn shutdown(&self, engine: &Engine) -> Result<(), ShutdownError> {
        let held = self.held();
        if held {
            tracing::warn!(
                "no last snapshot: the cluster's stream lacks changes this node made, and the \
                 journal keeps them for the next start to publish"
            );
        }
        let snap = if self.journal.generation().is_some() && !self.journal.fenced() && !held {
            self.snapshot(engine).err()
        } else {
            None
        };
        self.shutdown.advance(Stage::Exiting);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        let unsaved = self.journal.unsaved();
        if !unsaved.is_empty() {
            return Err(ShutdownError::Unsaved(unsaved));
        }
        match snap {
            Some(e) => Err(ShutdownError::Snapshot(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
