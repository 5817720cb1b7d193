//! The watch that notices changes to the policy file, including the ways editors and Kubernetes
//! change files: in place, by atomic rename, and by swapping a symlink (`..data`). What it then
//! reads is read only once settled (see [`super::settle`]).
//!
//! Invariants:
//! 1. The watch is on the file's *directory* (and the directory of its resolved target), never
//!    on the file's inode, so a rename or symlink swap that replaces the inode is still seen.
//!    Events only start a settle; the file's own stat decides when it is done, so a busy
//!    directory delays nothing.
//! 2. The watcher never opens anything but a regular file (a FIFO would block it), and a
//!    settled file is applied only when its bytes differ from the last ones the watcher read, so
//!    unrelated files in the directory cost a stat, not a re-application. An empty file is
//!    refused by the parser (see the parent module, `policy_source`), so a truncation that stays is counted as a
//!    reload error and applies nothing.
//! 3. The watcher runs on a thread of its own, not on the async runtime: a reload in progress
//!    never holds up shutdown (the thread ends with the process).
use crate::policy_source::PolicyManager;
use crate::policy_source::settle::read_settled;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError, sync_channel};
use std::time::Duration;

fn dirs_of(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let mut dirs = vec![parent(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let d = parent(&real);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Whether an event may mean the file changed. Reads (ours included) are not; a close after
/// writing is, like any write (module doc: a hint, not proof of a complete file).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts watching; the watcher lives in the watch thread for the rest of the process.
pub fn spawn(path: PathBuf, settle: Duration, policies: Arc<PolicyManager>) -> anyhow::Result<()> {
    // One pending wake-up is enough: a settle looks at the file itself, not at the events.
    let (tx, rx) = sync_channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && is_change(&ev.kind)
        {
            let _ = tx.try_send(());
        }
    })?;
    let mut watched: HashSet<PathBuf> = HashSet::new();
    for d in dirs_of(&path) {
        watcher.watch(&d, RecursiveMode::NonRecursive)?;
        watched.insert(d);
    }
    tracing::info!(path = %path.display(), dirs = ?watched, settle_ms = settle.as_millis() as u64, "watching the policy file");
    let last = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => std::fs::read(&path).ok().map(|b| fingerprint(&b)),
        _ => None,
    };
    std::thread::Builder::new()
        .name("sessiond-policy-watch".into())
        .spawn(move || watch_loop(path, settle, policies, rx, watcher, watched, last))?;
    Ok(())
}

fn watch_loop(
    path: PathBuf,
    settle: Duration,
    policies: Arc<PolicyManager>,
    rx: Receiver<()>,
    mut watcher: notify::RecommendedWatcher,
    mut watched: HashSet<PathBuf>,
    mut last: Option<u64>,
) {
    while rx.recv().is_ok() {
        // Events that came while the file settled are covered by the settle that follows.
        match rx.try_recv() {
            Ok(()) | Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return,
        }
        let read = read_settled(&path, settle, false, None);
        // A symlink swap may point the file into a new directory: watch that one too.
        for d in dirs_of(&path) {
            if !watched.contains(&d) && watcher.watch(&d, RecursiveMode::NonRecursive).is_ok() {
                watched.insert(d);
            }
        }
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "the policy file is gone; the last policies stay in force until it is back");
            }
            Ok(bytes) => {
                let now = Some(fingerprint(&bytes));
                tracing::debug!(changed = now != last, "the policy file settled");
                if now != last {
                    last = now;
                    let _ = policies.reload_watched(Ok(bytes));
                }
            }
            Err(e) => {
                last = None;
                let _ = policies.reload_watched(Err(e));
            }
        }
    }
}
