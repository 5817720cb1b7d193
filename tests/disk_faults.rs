//! An operator's bad day for the state directory (#22, sections 1 and 2), caused for real: a
//! small tmpfs that fills, SIGKILL and SIGTERM on a full disk, the directory deleted under
//! traffic, a second daemon on the remade directory while the first is stopped (SIGSTOP).
//!
//! The tmpfs scenes need root (mount); without it they say so and return.

use crate::common::{Daemon, Scratch, create, eventually, scratch, unsafe_free_kill, valid};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A 4 MiB tmpfs mounted on `mnt` in a scratch directory; unmounted on drop, and the scratch
/// directory removed after it.
struct Tmpfs(Scratch);

impl Tmpfs {
    /// The mount point.
    fn mnt(&self) -> PathBuf {
        self.0.join("mnt")
    }

    fn mount(name: &str) -> Option<Tmpfs> {
        let scratch_dir = scratch(name);
        let dir = scratch_dir.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: mounting a tmpfs needs root ({name})");
            return None;
        }
        Some(Tmpfs(scratch_dir))
    }

    fn state(&self) -> PathBuf {
        self.mnt().join("state")
    }

    /// Fills the disk to the last byte.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.mnt().join("filler")).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {
            byte[0] = byte[0].wrapping_add(1);
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.mnt().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
        // The scratch directory (field 0) is removed after this, when the fields are dropped.
    }
}

fn start(state: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--state-dir", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

fn kill9(d: Daemon) {
    unsafe_free_kill(d.child.id(), "KILL");
    drop(d);
}

fn revoke(d: &Daemon, token: &str) -> crate::common::Response {
    d.call(
        "POST",
        "/v1/sessions/revoke",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    )
}

fn new_sessions(d: &Daemon, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| create(d, &[], &format!(r#"{{"user_id": "{prefix}-{i}"}}"#)).0)
        .collect()
}

fn healthy(d: &Daemon) -> bool {
    d.metric("sessiond_persistence_healthy") == 1.0
}

fn logged(d: &Daemon, seen: &mut Vec<String>, what: &str) -> bool {
    seen.extend(d.logs.try_iter());
    seen.iter().any(|l| l.contains(what))
}

/// Issue #22, scene 1: revocations and creates answered while the disk was full survive the
/// disk coming back and a SIGKILL after it.
#[test]
fn a_full_disk_undoes_no_logout_and_loses_no_create_through_a_later_crash() {
    let Some(fs) = Tmpfs::mount("disk-full") else {
        return;
    };
    let d = start(&fs.state(), &[]);
    let before = new_sessions(&d, "before", 300);
    fs.fill();
    let (out, kept) = before.split_at(200);
    for t in out {
        assert_eq!(revoke(&d, t).status, 204);
    }
    let during = new_sessions(&d, "during", 1_000);
    eventually(5, "persistence reported failing", || !healthy(&d));
    assert!(d.metric("sessiond_persistence_unsaved_changes") > 0.0);
    assert!(d.metric("sessiond_journal_errors_total") > 0.0);
    let mut logs = Vec::new();
    assert!(logged(&d, &mut logs, "cannot write the journal"));
    fs.free();
    eventually(10, "persistence caught up", || healthy(&d));
    assert_eq!(d.metric("sessiond_persistence_unsaved_changes"), 0.0);
    eventually(5, "the caught-up line", || {
        logged(&d, &mut logs, "journal writes work again")
    });
    kill9(d);

    let d = start(&fs.state(), &[]);
    let undone = out.iter().filter(|t| valid(&d, t)).count();
    let lost = during.iter().chain(kept).filter(|t| !valid(&d, t)).count();
    assert_eq!(undone, 0, "revocations undone by the crash");
    assert_eq!(lost, 0, "sessions lost by the crash");
    assert!(healthy(&d));
}

/// Scene 1, the bound: past --journal-backlog-mib the kept changes are dropped, and a full
/// snapshot replaces them once the disk takes it.
#[test]
fn past_the_backlog_a_snapshot_replaces_the_dropped_changes() {
    let Some(fs) = Tmpfs::mount("disk-backlog") else {
        return;
    };
    let d = start(&fs.state(), &["--journal-backlog-mib", "1"]);
    let before = new_sessions(&d, "before", 20);
    fs.fill();
    let blob = "x".repeat(1_000);
    let during: Vec<String> = (0..1_200)
        .map(|i| {
            let body = format!(r#"{{"user_id": "big-{i}", "metadata": {{"blob": "{blob}"}}}}"#);
            create(&d, &[], &body).0
        })
        .collect();
    let mut logs = Vec::new();
    eventually(5, "the backlog-full line", || {
        logged(&d, &mut logs, "the journal backlog is full")
    });
    assert!(!healthy(&d));
    fs.free();
    eventually(15, "the snapshot that ends the loss", || {
        logged(&d, &mut logs, "the disk again equals the table")
    });
    eventually(5, "persistence healthy", || healthy(&d));
    kill9(d);

    let d = start(&fs.state(), &[]);
    let lost = before
        .iter()
        .chain(&during)
        .filter(|t| !valid(&d, t))
        .count();
    assert_eq!(lost, 0, "sessions lost after the snapshot");
}

/// Scene 1: SIGTERM on a full disk tells the truth and exits non-zero; start-up on the still
/// full disk loads and serves, and catches up when space comes back.
#[test]
fn sigterm_on_a_full_disk_exits_non_zero_and_start_up_on_it_serves() {
    let Some(fs) = Tmpfs::mount("disk-term") else {
        return;
    };
    let d = start(&fs.state(), &[]);
    let before = new_sessions(&d, "before", 100);
    fs.fill();
    let (out, kept) = before.split_at(40);
    for t in out {
        assert_eq!(revoke(&d, t).status, 204);
    }
    let _ = new_sessions(&d, "during", 600);
    eventually(5, "persistence reported failing", || !healthy(&d));
    let mut logs = Vec::new();
    let _ = logged(&d, &mut logs, "");
    let pid = d.child.id();
    unsafe_free_kill(pid, "TERM");
    let mut d = d;
    let status = d.child.wait().unwrap();
    assert!(!status.success(), "exit status after an unsaved shutdown");
    let _ = logged(&d, &mut logs, "");
    let all = logs.join("\n");
    assert!(all.contains("changes are not on disk"), "{all}");
    assert!(!all.contains("the journal keeps every change"), "{all}");
    drop(d);

    // Still full: start anyway, from what is on disk.
    let d = start(&fs.state(), &[]);
    assert!(!healthy(&d), "a full disk is reported at start");
    let readable = kept.iter().filter(|t| valid(&d, t)).count();
    assert!(readable > 0, "the sessions on disk were loaded");
    let fresh = new_sessions(&d, "on-full-disk", 50);
    for t in &kept[..10] {
        assert_eq!(revoke(&d, t).status, 204);
    }
    fs.free();
    eventually(10, "persistence caught up", || healthy(&d));
    kill9(d);
    let d = start(&fs.state(), &[]);
    assert_eq!(fresh.iter().filter(|t| !valid(&d, t)).count(), 0);
    assert_eq!(kept[..10].iter().filter(|t| valid(&d, t)).count(), 0);
}

/// Scene 1 under `--fsync always`: a revoke on a failing disk is refused with 503 not_durable
/// at once, yet applied in memory, and written when the disk comes back.
#[test]
fn under_fsync_always_a_failing_disk_refuses_but_keeps_the_logout() {
    let Some(fs) = Tmpfs::mount("disk-always") else {
        return;
    };
    let d = start(&fs.state(), &["--fsync", "always"]);
    let tokens = new_sessions(&d, "a", 300);
    fs.fill();
    // Fill the journal's last page too, so that writes fail from here on.
    let mut refused = None;
    for t in &tokens {
        let r = revoke(&d, t);
        if r.status == 503 {
            refused = Some((t.clone(), r));
            break;
        }
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let (token, r) = refused.expect("a revoke refused while the disk is full");
    assert_eq!(r.code(), "not_durable");
    assert!(r.body.contains("applied in memory"), "{}", r.body);
    assert!(
        !valid(&d, &token),
        "the refused revoke still logged the user out"
    );
    fs.free();
    eventually(10, "persistence caught up", || healthy(&d));
    kill9(d);
    let d = start(&fs.state(), &[]);
    assert!(!valid(&d, &token), "the logout survived the crash");
}

/// A read-only bind mount of a directory, unmounted on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn bind(dir: &Path, at: &Path) -> Option<ReadOnly> {
        std::fs::create_dir_all(at).unwrap();
        let run = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let (d, a) = (dir.to_str().unwrap(), at.to_str().unwrap());
        if !run(&["--bind", d, a]) {
            eprintln!("skipped: bind mounts need root");
            return None;
        }
        let me = ReadOnly(at.to_owned());
        assert!(run(&["-o", "remount,bind,ro", a]), "remount read-only");
        Some(me)
    }

    fn writable(&self) {
        let ok = Command::new("mount")
            .args(["-o", "remount,bind,rw"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount read-write");
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Scene 1: start-up on a read-only state directory loads and serves, reports persistence
/// failing, and catches up once the directory takes writes again.
#[test]
fn start_up_on_a_read_only_state_directory_serves_and_catches_up() {
    let root = scratch("read-only");
    let state = root.join("state");
    let d = start(&state, &[]);
    let before = new_sessions(&d, "before", 50);
    assert!(d.terminate().success());
    let Some(ro) = ReadOnly::bind(&state, &root.join("ro")) else {
        return;
    };
    let d = start(&ro.0, &[]);
    assert!(!healthy(&d), "a read-only directory is reported at start");
    assert!(
        before.iter().all(|t| valid(&d, t)),
        "the saved sessions load"
    );
    let fresh = new_sessions(&d, "read-only", 20);
    let (out, kept) = before.split_at(10);
    for t in out {
        assert_eq!(revoke(&d, t).status, 204);
    }
    ro.writable();
    eventually(10, "persistence caught up", || healthy(&d));
    kill9(d);
    let d = start(&ro.0, &[]);
    assert_eq!(out.iter().filter(|t| valid(&d, t)).count(), 0);
    assert!(fresh.iter().chain(kept).all(|t| valid(&d, t)));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Scene 2: `rm -rf` of the state directory under traffic is noticed, the directory made
/// again (owner-only) and a full snapshot written, so a crash after it loses nobody.
#[test]
fn a_deleted_state_directory_is_noticed_remade_and_snapshotted() {
    deleted_directory("everysec");
}

/// The same under `--fsync always`, where the check runs after every write.
#[test]
fn a_deleted_state_directory_under_fsync_always_loses_nothing_acknowledged() {
    deleted_directory("always");
}

fn deleted_directory(fsync: &str) {
    let scratch_dir = scratch("dir-deleted");
    let state = scratch_dir.join("state");
    let d = start(&state, &["--fsync", fsync]);
    assert_eq!(mode(&state), 0o700);
    for f in std::fs::read_dir(&state).unwrap() {
        let p = f.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    let before = new_sessions(&d, "before", 100);
    std::fs::remove_dir_all(&state).unwrap();
    let after = new_sessions(&d, "after", 100);
    let mut logs = Vec::new();
    eventually(5, "the lost-directory line", || {
        logged(&d, &mut logs, "the state directory was lost")
    });
    eventually(10, "the snapshot that ends the loss", || {
        logged(&d, &mut logs, "the disk again equals the table")
    });
    assert!(healthy(&d));
    assert_eq!(mode(&state), 0o700);
    let snapshots: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().contains("snapshot-"))
        .collect();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(mode(&snapshots[0]), 0o600);
    kill9(d);

    let d = start(&state, &[]);
    let lost = before
        .iter()
        .chain(&after)
        .filter(|t| !valid(&d, t))
        .count();
    assert_eq!(lost, 0, "sessions lost with the deleted directory");
}

/// Scene 2: after `rm -rf` + `mkdir`, a second daemon took the new directory while the first
/// was stopped. The first must not write into it: it refuses writes and reports not ready, and
/// takes the directory back (with a full snapshot) once the second is gone.
#[test]
fn a_second_daemon_on_the_remade_directory_fences_the_first() {
    let scratch_dir = scratch("dir-taken");
    let state = scratch_dir.join("state");
    let first = start(&state, &[]);
    let mine = new_sessions(&first, "first", 20);
    unsafe_free_kill(first.child.id(), "STOP");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let second = start(&state, &[]);
    let theirs = new_sessions(&second, "second", 20);
    unsafe_free_kill(first.child.id(), "CONT");

    let mut logs = Vec::new();
    eventually(5, "the fenced line", || {
        logged(&first, &mut logs, "another sessiond took")
    });
    assert_eq!(first.call("GET", "/readyz", None).status, 503);
    let r = first.call("POST", "/v1/sessions", Some(r#"{"user_id": "x"}"#));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.code(), "state_dir_taken");
    // Reads still answer.
    assert!(valid(&first, &mine[0]));

    // The second daemon's directory holds only its own sessions (the first is stopped
    // meanwhile, so that it cannot take the lock between the two).
    unsafe_free_kill(first.child.id(), "STOP");
    assert!(second.terminate().success());
    let check = start(&state, &[]);
    assert!(theirs.iter().all(|t| valid(&check, t)));
    assert!(mine.iter().all(|t| !valid(&check, t)));
    assert!(check.terminate().success());
    unsafe_free_kill(first.child.id(), "CONT");

    // With the lock free again, the first takes the directory back and snapshots everything.
    eventually(10, "the first daemon ready again", || {
        first.call("GET", "/readyz", None).status == 200
    });
    eventually(10, "the snapshot that ends the loss", || {
        logged(&first, &mut logs, "the disk again equals the table")
    });
    kill9(first);
    let d = start(&state, &[]);
    assert!(mine.iter().all(|t| valid(&d, t)));
}
