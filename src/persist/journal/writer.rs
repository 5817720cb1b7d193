//! The journal's disk side: `pending` frames written to the current generation's file, synced
//! per the policy, kept while the disk refuses them, and the state directory checked (the
//! module doc of `journal` states the invariants, 3 to 8, that this file keeps).

use super::{CHECK_INTERVAL, FsyncPolicy, Journal, REMIND_EVERY, Since, Unsaved};
use crate::persist::record::JOURNAL_MAGIC;
use crate::persist::state_dir::{self, LockError, StateDir};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) struct Segment {
    pub(super) file: File,
    /// Bytes of whole frames in the file (invariant 5).
    pub(super) len: u64,
}

pub(super) struct Lost {
    pub(super) generation: u64,
    pub(super) frames: u64,
    pub(super) since: Since,
    /// The state directory itself was lost.
    pub(super) whole_state: bool,
}

pub(super) struct Failure {
    pub(super) since: Instant,
    pub(super) reminded: Instant,
}

/// The journal thread's side, under one mutex.
pub(super) struct Writer {
    pub(super) dir: Option<StateDir>,
    pub(super) generation: u64,
    pub(super) seg: Option<Segment>,
    pub(super) pending: Vec<u8>,
    pub(super) pending_frames: u64,
    pub(super) pending_since: Option<Since>,
    pub(super) unsynced: bool,
    pub(super) unsynced_frames: u64,
    pub(super) unsynced_since: Option<Since>,
    pub(super) last_sync: Instant,
    pub(super) last_check: Instant,
    pub(super) written_frames: u64,
    pub(super) lost: Option<Lost>,
    /// Past the backlog limit: drained frames are dropped until the next rotation.
    pub(super) discarding: bool,
    pub(super) failure: Option<Failure>,
    /// The directory was lost and has not been locked again yet.
    pub(super) dir_lost: bool,
    pub(super) fenced: bool,
}

impl Writer {
    pub(super) fn new() -> Writer {
        Writer {
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
        }
    }
}

impl Journal {
    /// Moves the shard buffers into `pending`, or drops them (invariants 1, 6, 8).
    pub(super) fn drain(&self, w: &mut Writer) {
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
    pub(super) fn write_out(&self, w: &mut Writer, force_sync: bool) -> io::Result<()> {
        if w.fenced || w.dir_lost || force_sync || w.last_check.elapsed() >= CHECK_INTERVAL {
            self.check_dir(w, force_sync)?;
        }
        if w.seg.is_none() {
            self.open_segment_in(w)?;
        }
        let wrote = !w.pending.is_empty();
        if wrote {
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
        // Under `always` an answer means "on disk": a directory deleted since the last check
        // must not let a write to its unlinked journal count (invariant 8).
        if self.policy == FsyncPolicy::Always && wrote {
            self.check_dir(w, true)?;
        }
        Ok(())
    }

    /// Checks the state directory, and makes and locks it again if it was lost (invariant 8).
    pub(super) fn check_dir(&self, w: &mut Writer, now: bool) -> io::Result<()> {
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
            let at = dir.path().display();
            self.set_last_error(io::Error::other(format!("state directory {at}: {what}")));
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
                let newest = crate::persist::list(dir.path())
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
                    let at = dir.path().display();
                    self.set_last_error(io::Error::other(format!(
                        "{at} is locked by another sessiond"
                    )));
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

    pub(super) fn dir_error(&self, w: &Writer) -> io::Error {
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

    pub(super) fn open_segment_in(&self, w: &mut Writer) -> io::Result<()> {
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
    pub(super) fn settle(&self, w: &mut Writer, r: io::Result<()>, target: u64) -> io::Result<()> {
        if w.pending.len() > self.backlog {
            tracing::error!(
                changes = w.pending_frames,
                bytes = w.pending.len(),
                limit_bytes = self.backlog,
                "the journal backlog is full: dropping the changes kept in memory; a full \
                 snapshot replaces them as soon as the disk takes one (raise --journal-backlog-mib \
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
                    self.set_last_error(super::same_error(e));
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
}

impl Writer {
    /// Records `frames` changes as lost until a snapshot of a later generation (invariant 6).
    pub(super) fn lose(&mut self, frames: u64, since: Since, whole_state: bool) {
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
    pub(super) fn abandon(&mut self) {
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

    pub(super) fn unsaved(&self) -> Unsaved {
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

    pub(super) fn publish(&self) {
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
    let p = super::path(dir, generation);
    let mut file = state_dir::create_file(&p, true)?;
    let r = file
        .write_all(JOURNAL_MAGIC)
        .and_then(|()| file.sync_all())
        .and_then(|()| crate::persist::sync_dir(dir));
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
