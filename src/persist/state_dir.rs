//! The state directory itself: created owner-only, locked for the daemon's life, and watched for
//! being deleted or replaced under the running daemon.
//!
//! Invariants:
//! 1. The directory is created `0700` and every file this module's callers create in it `0600`
//!    ([`create_file`]): they hold user ids and metadata.
//! 2. `lock` is held with an exclusive `flock` while the daemon runs. A full or read-only disk does
//!    not prevent it: an existing lock file that cannot be opened for writing is opened read-only
//!    (`flock` needs only a descriptor).
//! 3. The directory's identity (device, inode) is recorded when it is locked; [`StateDir::check`]
//!    says whether the path still names that directory and the open journal file is still linked
//!    into it, so an `rm -rf` (with or without a `mkdir` after it) is noticed at the next check.
//! 4. [`transient`] tells the disk's bad days (full, read-only, quota, I/O error), which the daemon
//!    rides out and retries, from mistakes (permissions, a file where the directory should be),
//!    which stop it at start.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A locked (or, in tests and benchmarks, merely opened) state directory.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    lock: Option<File>,
    dev: u64,
    ino: u64,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another sessiond holds the lock file")]
    Held,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Whether `e` is a disk's bad day rather than a mistake in the setup (invariant 4).
pub fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), StorageFull | ReadOnlyFilesystem | QuotaExceeded)
        || e.raw_os_error() == Some(5) // EIO
}

/// Creates `path` (and its parents) with mode `0700` if it does not exist.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Creates `path` with mode `0600`: a new file opened for appending when `new` is set (and an
/// error if it exists), else an empty one for writing.
pub fn create_file(path: &Path, new: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.mode(0o600);
    if new {
        o.append(true).create_new(true);
    } else {
        o.write(true).create(true).truncate(true);
    }
    o.open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl StateDir {
    /// Creates `path` if needed and takes its lock (invariants 1, 2).
    pub fn lock(path: &Path) -> Result<StateDir, LockError> {
        create_dir(path)?;
        // A directory made by an older version or by hand may be world-readable.
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        }
        let lock_path = path.join("lock");
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
        {
            Ok(f) => f,
            Err(e) if transient(&e) => File::open(&lock_path)?,
            Err(e) => return Err(e.into()),
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LockError::Held),
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let m = std::fs::metadata(path)?;
        Ok(StateDir {
            path: path.to_owned(),
            lock: Some(lock),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// `path` without a lock (tests and benchmarks that own their directory).
    pub fn unlocked(path: &Path) -> io::Result<StateDir> {
        create_dir(path)?;
        let m = std::fs::metadata(path)?;
        Ok(StateDir {
            path: path.to_owned(),
            lock: None,
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Err(what happened)` if the path no longer names the directory that was locked, or
    /// `journal` (the open journal file, if any) was unlinked from it (invariant 3).
    pub fn check(&self, journal: Option<&File>) -> Result<(), String> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {}
            Ok(_) => return Err("it was deleted and another directory made in its place".into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err("it was deleted".into());
            }
            // Cannot tell (EIO, ...): the journal write that follows will say more.
            Err(_) => return Ok(()),
        }
        if let Some(f) = journal
            && f.metadata().is_ok_and(|m| m.nlink() == 0)
        {
            return Err("the journal file in it was deleted".into());
        }
        Ok(())
    }

    /// After [`StateDir::check`] failed: makes the directory again and takes its lock anew.
    /// [`LockError::Held`] means another daemon has started on the new directory meanwhile.
    pub fn relock(&mut self) -> Result<(), LockError> {
        let fresh = if self.lock.is_some() {
            StateDir::lock(&self.path)?
        } else {
            StateDir::unlocked(&self.path)?
        };
        *self = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("sessiond-statedir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn created_owner_only_and_locked_once() {
        let d = scratch("modes");
        let a = StateDir::lock(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let lock_mode = std::fs::metadata(d.join("lock"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(lock_mode, 0o600);
        assert!(matches!(StateDir::lock(&d), Err(LockError::Held)));
        drop(a);
        StateDir::lock(&d).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_deleted_or_replaced_directory_is_noticed_and_relocked() {
        let d = scratch("deleted");
        let mut s = StateDir::lock(&d).unwrap();
        let f = create_file(&d.join("journal-1"), true).unwrap();
        assert_eq!(s.check(Some(&f)), Ok(()));
        std::fs::remove_file(d.join("journal-1")).unwrap();
        assert!(s.check(Some(&f)).unwrap_err().contains("journal file"));
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(s.check(None), Err("it was deleted".into()));
        std::fs::create_dir(&d).unwrap();
        assert!(s.check(None).unwrap_err().contains("another directory"));
        // A second daemon took the new directory's lock first.
        let other = StateDir::lock(&d).unwrap();
        assert!(matches!(s.relock(), Err(LockError::Held)));
        drop(other);
        s.relock().unwrap();
        assert_eq!(s.check(None), Ok(()));
        let _ = std::fs::remove_dir_all(&d);
    }
}
