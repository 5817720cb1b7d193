//! Watches the policy file and reloads it when it changes, including the ways editors and
//! Kubernetes change files: in place, by atomic rename, and by swapping a symlink (`..data`).
//!
//! Invariants:
//! 1. The watch is on the file's *directory* (and the directory of its resolved target), never
//!    on the file's inode, so a rename or symlink swap that replaces the inode is still seen.
//! 2. Bursts of events are coalesced (a short debounce), and a reload happens only when the
//!    file's bytes differ from the last ones read, so unrelated files in the directory cost a
//!    read, not a re-application.

use crate::policy_source::PolicyManager;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DEBOUNCE: Duration = Duration::from_millis(100);

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

fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Starts watching; the watcher lives in the reload task for the rest of the process.
pub fn spawn(path: PathBuf, policies: Arc<PolicyManager>) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, EventKind::Access(_))
        {
            let _ = tx.try_send(());
        }
    })?;
    let mut watched: HashSet<PathBuf> = HashSet::new();
    for d in dirs_of(&path) {
        watcher.watch(&d, RecursiveMode::NonRecursive)?;
        watched.insert(d);
    }
    tracing::info!(path = %path.display(), dirs = ?watched, "watching the policy file");
    tokio::spawn(async move {
        let mut last = fingerprint(&path);
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            // A symlink swap may point the file into a new directory: watch that one too.
            for d in dirs_of(&path) {
                if !watched.contains(&d) && watcher.watch(&d, RecursiveMode::NonRecursive).is_ok() {
                    watched.insert(d);
                }
            }
            let now = fingerprint(&path);
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            let p = policies.clone();
            let _ = tokio::task::spawn_blocking(move || p.reload("file_watch")).await;
        }
    });
    Ok(())
}
