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

pub mod journal;
pub mod load;
pub mod record;
pub mod snapshot;

use crate::engine::Engine;
use journal::{FsyncPolicy, Journal};
use parking_lot::Mutex;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A journal generation this large triggers a snapshot before the interval is over
/// (replaying 1 GiB, ~13M frames, takes a few seconds).
pub const JOURNAL_SNAPSHOT_BYTES: u64 = 1 << 30;

/// Persistence settings, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Time between periodic snapshots.
    pub snapshot_interval: Duration,
    /// Keep what precedes damage instead of refusing to start.
    pub recover: bool,
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

/// The running persistence layer (see the module doc).
pub struct Persistence {
    settings: Settings,
    journal: Arc<Journal>,
    _lock: File,
    snapshotting: Mutex<()>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Persistence {
    /// Creates and locks the state directory; sessions are not loaded yet.
    pub fn open(settings: Settings, shards: usize) -> Result<Persistence, PersistError> {
        let dir = &settings.dir;
        let io_err = |source| PersistError::Io {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(PersistError::Locked(dir.clone()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        Ok(Persistence {
            journal: Arc::new(Journal::new(shards, settings.fsync)),
            settings,
            _lock: lock,
            snapshotting: Mutex::new(()),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        })
    }

    /// The journal the engine must be built with.
    pub fn journal(&self) -> Arc<Journal> {
        self.journal.clone()
    }

    /// Loads the state into `engine`, starts the journal, drops the sessions that expired
    /// while the daemon was down (journaling their removal), and starts the journal and
    /// snapshot threads.
    pub fn start(self: &Arc<Self>, engine: &Arc<Engine>) -> Result<Loaded, PersistError> {
        let dir = &self.settings.dir;
        let io_err = |source| PersistError::Io {
            dir: dir.clone(),
            source,
        };
        // Exported from the start at 0, so that rate() and alerts see them before any error.
        metrics::counter!(crate::metrics::JOURNAL_ERRORS).increment(0);
        metrics::counter!(crate::metrics::SNAPSHOT_ERRORS).increment(0);
        let report = load::load(engine, dir, self.settings.recover)?;
        self.journal
            .start(dir, report.next_generation)
            .map_err(io_err)?;
        let writer = self
            .journal
            .clone()
            .spawn_writer(self.stop.clone())
            .map_err(io_err)?;
        self.threads.lock().push(writer);
        let expired = engine.sweep_expired().total();
        if !report.recovered.is_empty() {
            // The damaged files were cut; a snapshot now supersedes them.
            self.snapshot(engine).map_err(io_err)?;
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

    fn periodic(&self, engine: &Engine) {
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(step);
            waited += step;
            // Early when the journal grows large, so that start-up never replays much of it.
            if waited >= self.settings.snapshot_interval
                || self.journal.segment_bytes() >= JOURNAL_SNAPSHOT_BYTES
            {
                waited = Duration::ZERO;
                let _ = self.snapshot(engine);
            }
        }
    }

    /// Takes a snapshot now (waiting for one in progress), logging and counting the outcome.
    pub fn snapshot(&self, engine: &Engine) -> io::Result<snapshot::Stats> {
        let _one = self.snapshotting.lock();
        match snapshot::take(engine, &self.journal, &self.settings.dir) {
            Ok(stats) => {
                tracing::info!(
                    generation = stats.generation,
                    sessions = stats.sessions,
                    bytes = stats.bytes,
                    took_ms = stats.took.as_millis() as u64,
                    "snapshot written"
                );
                crate::metrics::snapshot_written(&stats);
                Ok(stats)
            }
            Err(e) => {
                tracing::error!(error = %e, "snapshot failed; the journal keeps every change meanwhile");
                metrics::counter!(crate::metrics::SNAPSHOT_ERRORS).increment(1);
                Err(e)
            }
        }
    }

    /// At shutdown: a last snapshot (so the next start replays no journal), then the journal
    /// thread is stopped after writing and syncing what is left.
    pub fn shutdown(&self, engine: &Engine) {
        if self.journal.generation().is_some() {
            let _ = self.snapshot(engine);
        }
        self.stop.store(true, Ordering::Release);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
