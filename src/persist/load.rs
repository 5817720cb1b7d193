//! Start-up: the newest snapshot, then every journal from its generation on, replayed into the
//! engine.
//!
//! Invariants:
//! 1. Replay is idempotent (see `record`), so a snapshot plus the journals from its generation
//!    rebuild exactly the state at the crash (minus what was never written).
//! 2. A torn last frame of a journal is dropped with a warning and the file cut there; any other
//!    damage stops the start with the file and byte offset, unless `recover` is set: then
//!    everything before the damage is kept, the damaged file is copied aside as
//!    `<name>.damaged` and cut, and the report says how many bytes were dropped.
//! 3. Entries are applied by one thread per core, each owning the shards `i % threads == its
//!    number`, in batches of one shard's: a session's entries all go to one thread, in file
//!    order, and no two threads contend for a shard lock. A user- or org-wide mark is applied
//!    when read, so it also reaches the sessions before it still waiting in a batch (a mark
//!    revokes what was made before it, wherever it stands in the file).
//! 4. Sessions whose deadlines passed while the daemon was down are *not* dropped here: the
//!    caller sweeps them once replay is complete (a later `ACTIVITY` frame may still save one)
//!    and counts them.
//! 5. Loading needs no free space: tidying that a full or read-only disk refuses (deleting an
//!    unfinished snapshot, cutting a torn tail) is left as it is, with a warning.

use super::record::{Damage, Entry, JOURNAL_MAGIC, Reader, SNAPSHOT_MAGIC, decode, decode_create};
use super::{Kind, list};
use crate::engine::{Engine, Replay};
use crate::session::{RemoveReason, Saved};
use crate::token::SessionId;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a load found and did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Sessions in the table after replay (before the sweep of expired ones).
    pub sessions: usize,
    /// Sessions read from the snapshot.
    pub from_snapshot: u64,
    /// The snapshot generation loaded, if any.
    pub snapshot: Option<u64>,
    /// Journal files and frames replayed.
    pub journals: usize,
    pub replayed: u64,
    /// Torn tails ignored (invariant 2), one line each.
    pub torn: Vec<String>,
    /// Damage skipped under `--recover`, one line each.
    pub recovered: Vec<String>,
    /// The generation the journal should go on with.
    pub next_generation: u64,
    /// Ids of the sessions the journals say were revoked (by the API or the per-user limit)
    /// since the snapshot: a cluster node publishes them again, in case they never reached the
    /// stream before it stopped.
    pub revoked: Vec<u128>,
    pub took: Duration,
}

/// A start-up that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{file} is damaged at byte offset {offset}: {reason}. Nothing was loaded. Start with \
         --recover to keep everything before the damage (the rest of that file is dropped and \
         a copy kept as {file}.damaged)"
    )]
    Damaged {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the snapshot {file} is damaged at byte offset {offset}: {reason}; not loaded")]
    DamagedImport {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("cannot read {file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(file: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        file: file.to_owned(),
        source,
    }
}

/// Loads `dir` into `engine` (see the module doc).
pub fn load(engine: &Engine, dir: &Path, recover: bool) -> Result<Report, LoadError> {
    let start = Instant::now();
    let files = list(dir).map_err(io_err(dir))?;
    let mut report = Report {
        next_generation: files.iter().map(|f| f.1).max().unwrap_or(0) + 1,
        ..Report::default()
    };
    for (kind, _, p) in &files {
        if *kind == Kind::Temp {
            tracing::info!(file = %p.display(), "deleting an unfinished snapshot left by a crash");
            tolerate(std::fs::remove_file(p), p).map_err(io_err(p))?;
        }
    }
    let snapshot = files
        .iter()
        .filter(|f| f.0 == Kind::Snapshot)
        .max_by_key(|f| f.1);
    // Room for the snapshot's sessions, made by the replay threads: a session with 16-byte
    // user and org ids takes 78 bytes in a snapshot.
    let expected = snapshot
        .and_then(|s| std::fs::metadata(&s.2).ok())
        .map_or(0, |m| (m.len() / 72) as usize);
    let from = snapshot.map_or(0, |s| s.1);
    let mut journals: Vec<_> = files
        .iter()
        .filter(|f| f.0 == Kind::Journal && f.1 >= from)
        .collect();
    journals.sort_by_key(|f| f.1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(engine.shard_count());
    std::thread::scope(|scope| {
        let mut sink = Sink::new(engine, threads, expected, scope);
        if let Some((_, g, p)) = snapshot {
            report.snapshot = Some(*g);
            load_snapshot(&mut sink, p, recover, &mut report)?;
        }
        for (_, _, p) in journals {
            replay_journal(&mut sink, p, recover, &mut report)?;
            report.journals += 1;
        }
        sink.finish();
        Ok::<(), LoadError>(())
    })?;
    report.sessions = engine.len();
    report.took = start.elapsed();
    Ok(report)
}

/// Routes entries to the replay threads, in batches of one shard's (invariant 3).
struct Sink<'e> {
    engine: &'e Engine,
    /// One batch per shard.
    batches: Vec<Vec<Replay>>,
    /// One per replay thread; none when replay runs on the reading thread.
    senders: Vec<std::sync::mpsc::SyncSender<(usize, Vec<Replay>)>>,
}

/// Entries per batch: enough that a shard's locks are taken once per many sessions.
const BATCH: usize = 2_048;

impl<'e> Sink<'e> {
    /// Starts `threads` replay threads (none if 1) in `scope`, each first making room for its
    /// shards' share of `expected` sessions.
    fn new<'s>(
        engine: &'e Engine,
        threads: usize,
        expected: usize,
        scope: &'s std::thread::Scope<'s, 'e>,
    ) -> Self {
        let shards = engine.shard_count();
        let per_shard = expected.div_ceil(shards);
        // Thread `t` of `step` owns shards t, t + step, ...: it sizes their tables.
        let reserve = move |t: usize, step: usize| {
            if per_shard > 0 {
                for shard in (t..shards).step_by(step) {
                    engine.reserve_in_shard(shard, per_shard);
                }
            }
        };
        let mut senders = Vec::new();
        if threads > 1 {
            for t in 0..threads {
                let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<Replay>)>(16);
                scope.spawn(move || {
                    reserve(t, threads);
                    for (shard, batch) in rx {
                        engine.restore_in_shard(shard, batch);
                    }
                });
                senders.push(tx);
            }
        } else {
            reserve(0, 1);
        }
        Sink {
            engine,
            batches: (0..shards).map(|_| Vec::new()).collect(),
            senders,
        }
    }

    /// Routes a saved session (a snapshot's frame) to its shard's batch.
    fn push_create(&mut self, s: Saved) {
        self.route(s.id, Replay::Create(s));
    }

    fn push(&mut self, e: Entry) {
        let (id, r) = match e {
            Entry::Create(s) => (s.id, Replay::Create(s)),
            Entry::Activity { id, last_ms } => (id, Replay::Activity { id, last_ms }),
            Entry::Remove { id, .. } => (id, Replay::Remove { id }),
            Entry::End { .. } => return,
            // Not per session: applied here, before the sessions that follow in the file.
            Entry::NotBefore {
                scope,
                id,
                before_ms,
            } => {
                self.engine.apply_not_before(scope, &id, before_ms);
                return;
            }
            Entry::StreamSeq { seq } => return self.engine.set_stream_applied(seq),
        };
        self.route(id, r);
    }

    /// Adds `r`, an entry of session `id`, to its shard's batch, sent once full.
    fn route(&mut self, id: u128, r: Replay) {
        let shard = self.engine.shard_of(SessionId(id));
        let batch = &mut self.batches[shard];
        if batch.capacity() == 0 {
            batch.reserve_exact(BATCH);
        }
        batch.push(r);
        if batch.len() >= BATCH {
            let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
            self.send(shard, full);
        }
    }

    fn send(&self, shard: usize, batch: Vec<Replay>) {
        if self.senders.is_empty() {
            return self.engine.restore_in_shard(shard, batch);
        }
        // A worker only stops when its sender is dropped (or it panicked, which the scope
        // re-raises).
        let _ = self.senders[shard % self.senders.len()].send((shard, batch));
    }

    /// Sends what is left and lets the threads finish (the scope joins them).
    fn finish(mut self) {
        for (shard, batch) in std::mem::take(&mut self.batches).into_iter().enumerate() {
            if !batch.is_empty() {
                self.send(shard, batch);
            }
        }
    }
}

fn open(p: &Path, magic: &[u8; 16]) -> Result<Result<Reader<File>, Damage>, LoadError> {
    let file = File::open(p).map_err(io_err(p))?;
    let len = file.metadata().map_err(io_err(p))?.len();
    Reader::open(file, len, magic).map_err(io_err(p))
}

fn load_snapshot(
    sink: &mut Sink<'_>,
    p: &Path,
    recover: bool,
    report: &mut Report,
) -> Result<(), LoadError> {
    let d = match open(p, SNAPSHOT_MAGIC)? {
        Ok(reader) => match read_snapshot(sink, reader, report).map_err(io_err(p))? {
            Ok(()) => return Ok(()),
            Err(d) => d,
        },
        Err(d) => d,
    };
    damaged(p, d, recover, report, true)
}

/// Reads one snapshot's frames into `sink`: the damage, if any (a torn snapshot is damaged: one
/// is renamed into place, or published, only when complete).
fn read_snapshot<R: io::Read>(
    sink: &mut Sink<'_>,
    mut reader: Reader<R>,
    report: &mut Report,
) -> io::Result<Result<(), Damage>> {
    let damage = |offset: u64, reason: String| Damage::Corrupt { offset, reason };
    let mut ended = false;
    loop {
        let at = reader.offset();
        // A session goes straight into its batch; any other frame comes back here.
        let next = reader.read_next_with(|body| {
            if !ended && let Some(saved) = decode_create(body) {
                sink.push_create(saved);
                report.from_snapshot += 1;
                return Some(None);
            }
            decode(body).map(|e| Some(Box::new(e)))
        })?;
        let next = match next {
            Ok(Some((_, None))) => continue,
            Ok(Some((at, Some(e)))) => Ok(Some((at, *e))),
            Ok(None) => Ok(None),
            Err(d) => Err(d),
        };
        let d = match next {
            Ok(Some((_, e @ (Entry::NotBefore { .. } | Entry::StreamSeq { .. })))) if !ended => {
                sink.push(e);
                continue;
            }
            Ok(Some((_, Entry::End { count }))) if !ended => {
                if count == report.from_snapshot {
                    ended = true;
                    continue;
                }
                damage(
                    at,
                    format!(
                        "the snapshot says it holds {count} sessions but {} precede its end",
                        report.from_snapshot
                    ),
                )
            }
            Ok(Some(_)) => damage(at, "unexpected frame in a snapshot".into()),
            Ok(None) if ended => return Ok(Ok(())),
            Ok(None) => damage(at, "the snapshot ends before its END frame".into()),
            Err(Damage::Torn { offset }) => damage(offset, "the snapshot is cut short".into()),
            Err(d) => d,
        };
        return Ok(Err(d));
    }
}

/// Loads a snapshot of `len` bytes read from `r` (a cluster node's, from the object store)
/// into `engine`, over what it holds; `name` says where it came from in errors. Returns the
/// sessions it held. Nothing is dropped or recovered: damage is an error.
pub fn import(
    engine: &Engine,
    r: impl io::Read + Send,
    len: u64,
    name: &Path,
) -> Result<u64, LoadError> {
    let mut report = Report::default();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(engine.shard_count());
    std::thread::scope(|scope| {
        let mut sink = Sink::new(engine, threads, 0, scope);
        let d = match Reader::open(r, len, SNAPSHOT_MAGIC).map_err(io_err(name))? {
            Ok(reader) => read_snapshot(&mut sink, reader, &mut report).map_err(io_err(name))?,
            Err(d) => Err(d),
        };
        sink.finish();
        d.map_err(|d| LoadError::DamagedImport {
            file: name.to_owned(),
            offset: d.offset(),
            reason: match d {
                Damage::Corrupt { reason, .. } => reason,
                Damage::Torn { .. } => "the snapshot is cut short".into(),
            },
        })
    })?;
    Ok(report.from_snapshot)
}

fn replay_journal(
    sink: &mut Sink<'_>,
    p: &Path,
    recover: bool,
    report: &mut Report,
) -> Result<(), LoadError> {
    let mut reader = match open(p, JOURNAL_MAGIC)? {
        Ok(r) => r,
        Err(d) => return damaged(p, d, recover, report, false),
    };
    loop {
        let at = reader.offset();
        match reader.read_next().map_err(io_err(p))? {
            Ok(None) => return Ok(()),
            Ok(Some((_, entry))) => {
                if let Entry::Remove {
                    id,
                    reason: RemoveReason::Revoked | RemoveReason::Displaced,
                } = entry
                {
                    report.revoked.push(id);
                }
                if let Entry::End { .. } = entry {
                    let d = Damage::Corrupt {
                        offset: at,
                        reason: "a snapshot END frame inside a journal".into(),
                    };
                    return damaged(p, d, recover, report, false);
                }
                sink.push(entry);
                report.replayed += 1;
            }
            Err(d) => return damaged(p, d, recover, report, false),
        }
    }
}

/// Handles damage in `p` (invariant 2).
fn damaged(
    p: &Path,
    d: Damage,
    recover: bool,
    report: &mut Report,
    snapshot: bool,
) -> Result<(), LoadError> {
    let len = std::fs::metadata(p).map_err(io_err(p))?.len();
    let offset = d.offset();
    let dropped = len - offset;
    match d {
        Damage::Torn { offset } if !snapshot => {
            let line = format!(
                "{}: ignored a torn last record at byte offset {offset} ({dropped} bytes, written when the daemon stopped mid-write)",
                p.display()
            );
            tracing::warn!("{line}");
            report.torn.push(line);
            if offset == 0 {
                // Not even the header made it: the file was created just before the crash.
                return tolerate(std::fs::remove_file(p), p).map_err(io_err(p));
            }
            tolerate(cut(p, offset), p).map_err(io_err(p))
        }
        Damage::Torn { .. } => unreachable!("a torn snapshot is reported as corrupt"),
        Damage::Corrupt { offset, reason } if !recover => Err(LoadError::Damaged {
            file: p.to_owned(),
            offset,
            reason,
        }),
        Damage::Corrupt { offset, reason } => {
            let aside = PathBuf::from(format!("{}.damaged", p.display()));
            std::fs::copy(p, &aside).map_err(io_err(&aside))?;
            cut(p, offset).map_err(io_err(p))?;
            let line = format!(
                "{}: {reason} at byte offset {offset}; --recover kept everything before it and dropped {dropped} bytes (copy kept as {})",
                p.display(),
                aside.display()
            );
            tracing::warn!("{line}");
            report.recovered.push(line);
            Ok(())
        }
    }
}

/// Tidying that a full or read-only disk refuses is left for a later start (invariant 5): the
/// file is never written again, and reads the same way next time.
fn tolerate(r: io::Result<()>, p: &Path) -> io::Result<()> {
    match r {
        Err(e) if super::state_dir::transient(&e) => {
            tracing::warn!(file = %p.display(), error = %e, "cannot tidy a state file now; loading it as it is");
            Ok(())
        }
        r => r,
    }
}

/// Cuts `p` to `len` bytes, durably. A snapshot cut this way has no `END` frame, so after a
/// recovery the caller takes a fresh snapshot at once.
fn cut(p: &Path, len: u64) -> io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(p)?;
    f.set_len(len)?;
    f.sync_all()
}
