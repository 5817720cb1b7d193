//! Snapshots: every session in the table, written to `snapshot-<gen>.tmp`, fsynced, renamed to
//! `snapshot-<gen>`, after which the journals and snapshots of earlier generations are deleted.
//! The engine hands out what is saved of each live session ([`Engine::visit_chunk`]); the
//! encoding into `CREATE` frames is done here (see `record`).
//!
//! Invariants:
//! 1. **No stop-the-world.** The table is walked one chunk of [`CHUNK`] slab entries at a time
//!    under that shard's *read* lock: validate and touch (read locks) never wait, creates and
//!    revokes wait for at most one chunk.
//! 2. **Consistency without a freeze.** The journal is rotated to generation `gen` *before*
//!    the walk, so every change the walk may miss is in journal `gen` or later; replaying those
//!    over the snapshot is idempotent (see `record`), so the state they rebuild is exact.
//! 3. A snapshot counts only once its `END` frame, with the number of sessions before it, is
//!    on disk under its final name; a `.tmp` left by a crash is deleted at start-up, and one
//!    left by a failed write is cut and deleted at once (a full disk gets its space back).
//! 4. Once it counts, the journal is told ([`Journal::snapshot_written`]): changes that had
//!    not reached the disk before its generation are in it.
//! 5. A cluster node's snapshot starts with the stream sequence it had applied before the walk
//!    (every message up to it is in the table the walk sees; later ones are read from the
//!    stream again at start, idempotently) and the "not before" marks in force.
//! 6. **Shards interleaved, a group at a time**: the walk takes one chunk of each shard of a
//!    group in turn, and the groups one after the other; a group is as many consecutive shards
//!    as this machine has cores. A start-up on the same machine runs one replay thread per
//!    core, each owning the shards `i % threads`, so the file feeds every thread at once
//!    (written shard after shard, it kept one busy at a time), and each thread fills one
//!    shard's tables at a time instead of going round all of its own (fewer cache and TLB
//!    misses: a 10M start-up took ~9% less time on a 2-core machine). Any order loads the
//!    same table; a start-up on another machine is only a little slower.

use super::journal::Journal;
use super::record::{SNAPSHOT_MAGIC, put_end, put_not_before, put_saved, put_stream_seq};
use crate::engine::Engine;
use crate::metrics::{SNAPSHOT_BYTES, SNAPSHOT_DURATION, SNAPSHOT_LAST_SUCCESS, SNAPSHOT_SESSIONS};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Slab entries encoded per read-lock hold.
pub const CHUNK: usize = 4_096;

/// Path of snapshot generation `gen` in `dir`.
pub fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation:020}"))
}

/// What one snapshot wrote.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub generation: u64,
    pub sessions: u64,
    pub bytes: u64,
    pub took: Duration,
}

/// Takes a snapshot of `engine` into `dir` (see the module doc).
pub fn take(engine: &Engine, journal: &Journal, dir: &Path) -> io::Result<Stats> {
    let start = Instant::now();
    let generation = journal.rotate()?;
    let final_path = path(dir, generation);
    let tmp = final_path.with_extension("tmp");
    let written = write(engine, &tmp);
    let (sessions, bytes) = match written {
        Ok(w) => w,
        Err(e) => {
            // Invariant 3: a half-written snapshot must not hold the space a full disk needs.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, &final_path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(with_path(&final_path, e));
    }
    super::sync_dir(dir)?;
    // Everything before this generation is now covered by the snapshot (invariant 2).
    for (kind, g, p) in super::list(dir)? {
        let old = match kind {
            super::Kind::Snapshot | super::Kind::Journal => g < generation,
            super::Kind::Temp => false,
        };
        if old && let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(file = %p.display(), error = %e, "cannot delete a superseded state file");
        }
    }
    journal.snapshot_written(generation);
    Ok(Stats {
        generation,
        sessions,
        bytes,
        took: start.elapsed(),
    })
}

/// Writes every session to `tmp` and syncs it: (sessions, bytes).
fn write(engine: &Engine, tmp: &Path) -> io::Result<(u64, u64)> {
    let file = super::state_dir::create_file(tmp, false)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let written = encode(engine, &mut w)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().map_err(|e| with_path(tmp, e))?;
    Ok(written)
}

/// Writes a snapshot of every session to `w` (invariants 1 and 5): (sessions, bytes). A
/// cluster node publishes one this way (`cluster::seed`).
pub fn encode(engine: &Engine, w: &mut impl Write) -> io::Result<(u64, u64)> {
    w.write_all(SNAPSHOT_MAGIC)?;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut sessions = 0;
    let mut bytes = SNAPSHOT_MAGIC.len() as u64;
    // A cluster node's place in the stream, read before the walk (invariant 5), and the
    // "not before" marks in force, so that a restart resumes the stream after it and still
    // drops the older sessions they revoke.
    let seq = engine.stream_applied();
    if seq > 0 {
        put_stream_seq(&mut buf, seq);
    }
    for (scope, id, before_ms) in engine.marks_list() {
        put_not_before(&mut buf, scope, &id, before_ms);
    }
    w.write_all(&buf)?;
    bytes += buf.len() as u64;
    // One chunk of each shard of a group in turn, a group after the other (invariant 6).
    let shards = engine.shard_count();
    let group = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, shards);
    for first in (0..shards).step_by(group) {
        let mut next: Vec<Option<u32>> = vec![Some(0); group.min(shards - first)];
        while next.iter().any(Option::is_some) {
            for (k, from) in next.iter_mut().enumerate() {
                let Some(at) = *from else { continue };
                buf.clear();
                *from = engine.visit_chunk(first + k, at, CHUNK, &mut |s| {
                    put_saved(&mut buf, s);
                    sessions += 1;
                });
                w.write_all(&buf)?;
                bytes += buf.len() as u64;
            }
        }
    }
    buf.clear();
    put_end(&mut buf, sessions);
    w.write_all(&buf)?;
    bytes += buf.len() as u64;
    w.flush()?;
    Ok((sessions, bytes))
}

fn with_path(p: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// Exports a finished snapshot's figures.
pub fn record_metrics(stats: &Stats) {
    metrics::gauge!(SNAPSHOT_DURATION).set(stats.took.as_secs_f64());
    metrics::gauge!(SNAPSHOT_SESSIONS).set(stats.sessions as f64);
    metrics::gauge!(SNAPSHOT_BYTES).set(stats.bytes as f64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(SNAPSHOT_LAST_SUCCESS).set(now);
}
