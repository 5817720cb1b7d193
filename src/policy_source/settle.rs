//! Reading a file only once it has stopped changing: the policy file, whichever trigger asks
//! (a watch event, SIGHUP, the reload endpoint, start-up).
//!
//! Why a settle window. An in-place save (truncate, then write) passes through states that are
//! valid TOML but not what the operator wrote: the empty file, or `[application]` without the
//! orgs below it. Applying one evicts the sessions of every org it lacks, and nothing undoes
//! that when the rest of the file arrives. Nothing in the file says it is complete, and the
//! events do not either: inotify's close-after-write comes after each `write(2)`-and-close of a
//! writer that reopens the file per chunk (`>>` in a shell, some editors, config tools), so it is
//! a hint that something changed, never proof that the file is whole. What can be checked is
//! that the file has stopped changing: its device, inode, size, mtime and ctime unchanged for
//! a whole settle window (`--policy-file-settle`, 1 s by default), taken as the longer of how
//! long we have watched it unchanged and how long ago its ctime says it last changed (the kernel
//! sets ctime on every write, truncate, rename and `utimes`, so a writer cannot make a fresh
//! change look old; an NFS server whose clock runs behind ours can, and that is why atomic
//! replacement is still what the README recommends). Replacement by rename is covered by the same
//! rule: the new inode is checked like any other.
//!
//! Invariants:
//! 1. A file is returned only as bytes read after its stat had been unchanged for the settle
//!    window and that it still has after the read ([`read_settled`]); the bytes checked are the
//!    bytes the caller parses (no second read).
//! 2. A non-regular file (a FIFO would block the reader) is opened only when the caller says so
//!    (an explicit reload), never for the watcher.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// The default settle window.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);

/// What says whether a file changed: the inode behind the path and its size and timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    regular: bool,
}

impl Stat {
    fn of(path: &Path) -> std::io::Result<Stat> {
        let m = std::fs::metadata(path)?;
        Ok(Stat {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            regular: m.is_file(),
        })
    }

    /// How long ago the ctime says the file last changed (zero if it is in the future).
    fn ctime_age(&self) -> Duration {
        let (s, ns) = self.ctime;
        let Ok(secs) = u64::try_from(s) else {
            return Duration::ZERO;
        };
        let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, ns.clamp(0, 999_999_999) as u32);
        SystemTime::now()
            .duration_since(changed)
            .unwrap_or(Duration::ZERO)
    }
}

/// How often a settling file is looked at.
fn tick(settle: Duration) -> Duration {
    (settle / 10).clamp(Duration::from_millis(10), Duration::from_millis(100))
}

/// Reads `path` once it has settled (invariant 1). A non-regular file (a FIFO, `<(...)`) is
/// read as it is when `open_special`, refused otherwise. With `deadline`, a file still changing
/// then is an error.
pub fn read_settled(
    path: &Path,
    settle: Duration,
    open_special: bool,
    deadline: Option<Instant>,
) -> std::io::Result<Vec<u8>> {
    let started = Instant::now();
    // The stat being watched and since when it has been seen unchanged.
    let mut seen: Option<(Stat, Instant)> = None;
    loop {
        let now = Stat::of(path)?;
        if !now.regular {
            if open_special {
                return std::fs::read(path);
            }
            return Err(std::io::Error::other(
                "not a regular file (the watcher reads only regular files; reload explicitly to read a FIFO)",
            ));
        }
        let since = match seen {
            Some((s, since)) if s == now => since,
            _ => {
                let t = Instant::now();
                seen = Some((now, t));
                t
            }
        };
        if since.elapsed().max(now.ctime_age()) >= settle {
            let bytes = std::fs::read(path)?;
            if Stat::of(path)? == now {
                return Ok(bytes);
            }
            seen = None;
            continue;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(std::io::Error::other(format!(
                "it kept changing for {:.1} s without being unchanged for the settle window ({} ms); \
                 is something writing it continuously?",
                started.elapsed().as_secs_f64(),
                settle.as_millis()
            )));
        }
        std::thread::sleep(tick(settle));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sessiond-settle-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_old_file_is_read_at_once_and_a_fresh_one_after_the_window() {
        let d = scratch("fresh");
        let p = d.join("p.toml");
        std::fs::write(&p, "a").unwrap();
        let t = Instant::now();
        assert_eq!(
            read_settled(&p, Duration::from_millis(300), false, None).unwrap(),
            b"a"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        read_settled(&p, Duration::from_millis(300), false, None).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn a_write_inside_the_window_restarts_it_and_its_bytes_are_read() {
        let d = scratch("slow");
        let p = d.join("p.toml");
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::File::create(&p).unwrap();
                f.write_all(b"first half\n").unwrap();
                std::thread::sleep(Duration::from_millis(200));
                f.write_all(b"second half\n").unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let got = read_settled(&p, Duration::from_millis(400), false, None).unwrap();
        writer.join().unwrap();
        assert_eq!(got, b"first half\nsecond half\n");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn a_file_that_never_settles_is_an_error_at_the_deadline() {
        let d = scratch("busy");
        let p = d.join("p.toml");
        std::fs::write(&p, "0").unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    std::fs::write(&p, i.to_string()).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let deadline = Instant::now() + Duration::from_millis(600);
        let e = read_settled(&p, Duration::from_millis(300), false, Some(deadline)).unwrap_err();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(e.to_string().contains("kept changing"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn the_watcher_never_opens_a_special_file() {
        let d = scratch("dir");
        let e = read_settled(&d, Duration::from_millis(10), false, None).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }
}
