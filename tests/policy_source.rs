//! Policy sources under a running daemon: file edits (in place, by rename, by symlink swap),
//! broken files, SIGHUP, the reload endpoint, and API policies surviving a restart; a policy
//! file caught half-written (a slow in-place writer, a truncation, an empty file left behind),
//! a large file, and SIGTERM while a reload is stuck.

use crate::common::{Daemon, Scratch, create, eventually, scratch, unsafe_free_kill, valid};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LOOSE: &str = "[application]\nabsolute_timeout = { value = 24, unit = \"HOURS\" }\nidle_timeout = 1800\n\n[orgs.acme]\nsource = \"CUSTOM\"\nabsolute_timeout = { value = 8, unit = \"HOURS\" }\nidle_timeout_enabled = false\npersistent = true\n";
const TIGHT: &str = "[application]\nabsolute_timeout = { value = 24, unit = \"HOURS\" }\nidle_timeout = 1800\n\n[orgs.acme]\nsource = \"CUSTOM\"\nabsolute_timeout = 1\nidle_timeout_enabled = false\npersistent = true\n";

fn acme_absolute(d: &Daemon) -> i64 {
    d.call("GET", "/v1/orgs/acme/policy", None).json()["effective"]["absolute_timeout"]
        .as_i64()
        .unwrap()
}

/// Creates an acme session, waits until it is older than the tight policy allows, applies
/// `change`, and checks the session is evicted within a second and the effective policy shows.
fn tighten_and_observe(d: &Daemon, change: impl FnOnce()) {
    assert_eq!(acme_absolute(d), 28_800);
    let (token, _) = create(d, &[], r#"{"user_id": "u", "org_id": "acme"}"#);
    std::thread::sleep(Duration::from_millis(1_100));
    assert!(valid(d, &token));
    let start = Instant::now();
    change();
    // The file is read once unchanged for the settle window (1 s by default).
    eventually(4, "the tightened policy", || acme_absolute(d) == 1);
    eventually(4, "eviction of the too-old session", || !valid(d, &token));
    assert!(
        start.elapsed() < Duration::from_millis(2_500),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(d.metric("sessiond_sessions_active"), 0.0);
    assert!(d.metric("sessiond_sessions_expired_total{reason=\"absolute\"}") >= 1.0);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn file_edited_in_place() {
    let dir = scratch("pf-inplace");
    let file = dir.join("policy.toml");
    write(&file, LOOSE);
    let d = Daemon::start(&["--policy-file", file.to_str().unwrap()]);
    tighten_and_observe(&d, || write(&file, TIGHT));
    assert!(d.metric("sessiond_policy_changes_total{source=\"file_watch\"}") >= 1.0);
}

#[test]
fn file_replaced_by_rename() {
    let dir = scratch("pf-rename");
    let file = dir.join("policy.toml");
    write(&file, LOOSE);
    let d = Daemon::start(&["--policy-file", file.to_str().unwrap()]);
    tighten_and_observe(&d, || {
        let tmp = dir.join(".policy.toml.swp");
        write(&tmp, TIGHT);
        std::fs::rename(&tmp, &file).unwrap();
    });
}

#[test]
fn configmap_symlink_swap() {
    // The layout Kubernetes uses for a mounted ConfigMap:
    //   policy.toml -> ..data/policy.toml, ..data -> ..v1 ; an update swaps ..data to ..v2.
    let dir = scratch("pf-configmap");
    std::fs::create_dir_all(dir.join("..v1")).unwrap();
    write(&dir.join("..v1/policy.toml"), LOOSE);
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.toml", dir.join("policy.toml")).unwrap();
    let file = dir.join("policy.toml");
    let d = Daemon::start(&["--policy-file", file.to_str().unwrap()]);
    tighten_and_observe(&d, || {
        std::fs::create_dir_all(dir.join("..v2")).unwrap();
        write(&dir.join("..v2/policy.toml"), TIGHT);
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    });
}

/// A policy file with a typo stops the start with exit 2, a configuration problem like a bad
/// flag (systemd's `RestartPreventExitStatus=2` then does not restart it in a loop), naming the
/// line, the key and the nearest valid one.
#[test]
fn a_broken_file_at_start_exits_2_with_its_line_and_a_suggestion() {
    let dir = scratch("pf-broken-start");
    let file = dir.join("policy.toml");
    write(&file, "[orgs.acme]\nabsolute_timout = \"1h\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["--listen", "127.0.0.1:0", "--no-persist", "--policy-file"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "line 2: [orgs.acme] unknown key `absolute_timout`; did you mean `absolute_timeout`?"
        ),
        "{err}"
    );
}

#[test]
fn broken_file_keeps_the_last_good_policies() {
    let dir = scratch("pf-broken");
    let file = dir.join("policy.toml");
    write(&file, LOOSE);
    let d = Daemon::start(&["--policy-file", file.to_str().unwrap()]);
    let (token, _) = create(&d, &[], r#"{"user_id": "u", "org_id": "acme"}"#);
    write(
        &file,
        &TIGHT.replace("absolute_timeout = 1\n", "absolute_timeout = 0\n"),
    );
    eventually(3, "the reload error to be counted", || {
        d.metric("sessiond_policy_reload_errors_total") >= 1.0
    });
    assert_eq!(
        acme_absolute(&d),
        28_800,
        "a broken file changed the policy"
    );
    assert!(valid(&d, &token));
    assert_eq!(d.call("GET", "/readyz", None).status, 200);
    // The reload endpoint returns the error with line and field.
    let r = d.call("POST", "/v1/policy/reload", None);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.code(), "policy_source_invalid");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("line 7") && msg.contains("absolute_timeout is 0"),
        "{msg}"
    );
    // In file mode the API cannot write policies.
    let r = d.call(
        "PUT",
        "/v1/orgs/acme/policy",
        Some(r#"{"source": "APPLICATION"}"#),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "policy_source_is_file")
    );
    assert_eq!(
        d.call("PUT", "/v1/policy", Some(r#"{"absolute_timeout": 60}"#))
            .status,
        409
    );
}

#[test]
fn sighup_and_reload_endpoint_reread_the_source() {
    // API mode has no watcher, so only the explicit triggers can pick up a hand edit of the
    // state file.
    let dir = scratch("pf-hup");
    let state = dir.join("state");
    let d = Daemon::start(&["--state-dir", state.to_str().unwrap()]);
    let r = d.call(
        "PUT",
        "/v1/orgs/acme/policy",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 28800}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let file = state.join("policies.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("28800"), "{text}");

    write(&file, &text.replace("28800", "7200"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(acme_absolute(&d), 28_800, "changed without a trigger");
    unsafe_free_kill(d.child.id(), "HUP");
    eventually(3, "the SIGHUP reload", || acme_absolute(&d) == 7_200);
    assert_eq!(
        d.metric("sessiond_policy_changes_total{source=\"sighup\"}"),
        1.0
    );

    write(&file, &text.replace("28800", "3600"));
    let r = d.call("POST", "/v1/policy/reload", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed_orgs"], 1);
    assert_eq!(acme_absolute(&d), 3_600);
    assert_eq!(
        d.metric("sessiond_policy_changes_total{source=\"reload\"}"),
        1.0
    );
}

#[test]
fn api_policies_survive_a_restart() {
    let dir = scratch("pf-restart");
    let state = dir.join("state");
    let state_s = state.to_str().unwrap();
    let d = Daemon::start(&["--state-dir", state_s]);
    let r = d.call("PUT", "/v1/orgs/acme/policy", Some(r#"{"source": "CUSTOM", "absolute_timeout": {"value": 2, "unit": "HOURS"}, "persistent": true}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = d.call(
        "PUT",
        "/v1/policy",
        Some(r#"{"absolute_timeout": {"value": 12, "unit": "HOURS"}, "idle_timeout": 600}"#),
    );
    assert_eq!(r.status, 200);
    assert!(state.join("policies.json").exists());
    assert_eq!(d.terminate().code(), Some(0));

    let d = Daemon::start(&["--state-dir", state_s]);
    let org = d.call("GET", "/v1/orgs/acme/policy", None).json();
    assert_eq!(org["source"], "CUSTOM");
    assert_eq!(org["custom"]["absolute_timeout"], 7200);
    assert_eq!(org["custom"]["persistent"], true);
    let app = d.call("GET", "/v1/policy", None).json();
    assert_eq!(
        (
            app["absolute_timeout"].as_i64(),
            app["idle_timeout"].as_i64()
        ),
        (Some(43_200), Some(600))
    );
    // The reload endpoint re-reads the state file in API mode.
    assert_eq!(d.call("POST", "/v1/policy/reload", None).status, 200);
}

#[test]
fn unreadable_state_dir_fails_start_with_a_message() {
    let dir = scratch("pf-badstate");
    let blocker = dir.join("file");
    write(&blocker, "not a directory");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            blocker.join("sub").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("state directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The application policy is 1 s (in the file and in the configuration, which applies when the
/// file has no `[application]`); `org_target` keeps its sessions a day (`--org-policy-mode
/// override`). Any state of the file without `org_target`'s section evicts its sessions.
const APP_PART: &str = "[application]\nabsolute_timeout = 1\n";
const ORG_PART: &str =
    "\n[orgs.org_target]\nsource = \"CUSTOM\"\nabsolute_timeout = { value = 1, unit = \"DAYS\" }\n";

struct OrgScene {
    file: PathBuf,
    d: Daemon,
    tokens: Vec<String>,
    /// Last: removed after the daemon that watches the file in it is stopped.
    _dir: Scratch,
}

impl OrgScene {
    /// A daemon on the full file with 50 `org_target` sessions, older than the application
    /// policy allows.
    fn start(name: &str) -> OrgScene {
        let dir = scratch(name);
        let file = dir.join("policy.toml");
        write(&file, &format!("{APP_PART}{ORG_PART}"));
        let config = dir.join("sessiond.toml");
        write(&config, "[application]\nabsolute_timeout = 1\n");
        let d = Daemon::start(&[
            "--config",
            config.to_str().unwrap(),
            "--policy-file",
            file.to_str().unwrap(),
            "--org-policy-mode",
            "override",
        ]);
        let tokens = (0..50)
            .map(|i| {
                let body = format!(r#"{{"user_id": "u{i}", "org_id": "org_target"}}"#);
                create(&d, &[], &body).0
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1_100));
        let scene = OrgScene {
            _dir: dir,
            file,
            d,
            tokens,
        };
        scene.assert_untouched();
        scene
    }

    /// Every session still valid, `org_target` still CUSTOM for a day, nothing evicted.
    fn assert_untouched(&self) {
        let invalid = self.tokens.iter().filter(|t| !valid(&self.d, t)).count();
        assert_eq!(invalid, 0, "org_target sessions were evicted");
        let org = self
            .d
            .call("GET", "/v1/orgs/org_target/policy", None)
            .json();
        assert_eq!(org["source"], "CUSTOM", "{org}");
        assert_eq!(org["effective"]["absolute_timeout"], 86_400, "{org}");
        assert_eq!(
            self.d
                .metric("sessiond_sessions_expired_total{reason=\"absolute\"}"),
            0.0
        );
    }

    /// Waits for the watcher to have read the settled file (a debug log line).
    fn wait_settled(&self, changed: bool) {
        let want = format!("the policy file settled changed={changed}");
        wait_log(&self.d, 6, &want);
    }
}

/// Waits for a log line containing `want` (lines before it are consumed).
fn wait_log(d: &Daemon, secs: u64, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match d.logs.recv_timeout(left) {
            Ok(line) if line.contains(want) => return,
            Ok(_) => {}
            Err(_) => panic!("no log line with {want:?} within {secs} s"),
        }
    }
}

#[test]
fn a_slow_in_place_writer_is_applied_only_once_complete() {
    let s = OrgScene::start("pf-slow");
    // One save by a slow writer: truncate, the [application] section, and half a second later
    // the orgs (the prefix alone is valid TOML that would evict every org_target session).
    let other = "\n[orgs.other]\nsource = \"CUSTOM\"\nabsolute_timeout = 7200\n";
    {
        let mut f = std::fs::File::create(&s.file).unwrap();
        f.write_all(APP_PART.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        f.write_all(format!("{ORG_PART}{other}").as_bytes())
            .unwrap();
    }
    s.assert_untouched();
    s.wait_settled(true);
    eventually(3, "the complete file to be applied", || {
        s.d.call("GET", "/v1/orgs/other/policy", None).json()["effective"]["absolute_timeout"]
            == 7_200
    });
    s.assert_untouched();
    assert_eq!(
        s.d.metric("sessiond_policy_changes_total{source=\"file_watch\"}"),
        1.0,
        "only the complete file may be applied"
    );
    assert_eq!(s.d.metric("sessiond_policy_reload_errors_total"), 0.0);
}

#[test]
fn a_truncation_followed_by_the_content_changes_nothing() {
    let s = OrgScene::start("pf-trunc");
    {
        let mut f = std::fs::File::create(&s.file).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        f.write_all(format!("{APP_PART}{ORG_PART}").as_bytes())
            .unwrap();
    }
    s.assert_untouched();
    s.wait_settled(false);
    s.assert_untouched();
    assert_eq!(s.d.metric("sessiond_policy_reload_errors_total"), 0.0);
}

#[test]
fn an_empty_file_is_refused_and_orgs_keep_their_policies() {
    let s = OrgScene::start("pf-empty");
    let emptied = Instant::now();
    std::fs::File::create(&s.file).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.assert_untouched();
    eventually(5, "the empty file to be refused", || {
        s.d.metric("sessiond_policy_reload_errors_total") == 1.0
    });
    s.assert_untouched();
    // An explicit reload refuses it too, and says why.
    let r = s.d.call("POST", "/v1/policy/reload", None);
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "policy_source_invalid")
    );
    assert!(r.body.contains("the file is empty"), "{}", r.body);
    unsafe_free_kill(s.d.child.id(), "HUP");
    eventually(5, "the SIGHUP reload to be refused", || {
        s.d.metric("sessiond_policy_reload_errors_total") == 3.0
    });
    std::thread::sleep(Duration::from_millis(1_500).saturating_sub(emptied.elapsed()));
    s.assert_untouched();
    // The content comes back: nothing changed, nothing more counted.
    s.d.drain_logs();
    write(&s.file, &format!("{APP_PART}{ORG_PART}"));
    s.wait_settled(true);
    s.assert_untouched();
    assert_eq!(s.d.metric("sessiond_policy_reload_errors_total"), 3.0);
}

/// 10k orgs, not 50k: this is the debug build, and the point is that it loads at all (the
/// quadratic parse took minutes here); the release figures are in the commit that made it
/// linear.
#[test]
fn a_policy_file_with_10k_orgs_loads() {
    let dir = scratch("pf-10k");
    let file = dir.join("policy.toml");
    let mut text =
        String::from("[application]\nabsolute_timeout = { value = 24, unit = \"HOURS\" }\n");
    for i in 0..10_000 {
        text.push_str(&format!(
            "\n[orgs.org_{i:05}]\nsource = \"CUSTOM\"\nabsolute_timeout = {}\nidle_timeout = 900\n",
            3_600 + i
        ));
    }
    write(&file, &text);
    let d = Daemon::start(&["--policy-file", file.to_str().unwrap()]);
    let org = d.call("GET", "/v1/orgs/org_09999/policy", None).json();
    assert_eq!(org["effective"]["absolute_timeout"], 13_599, "{org}");
    // A mistake near the end is reported at its line.
    write(
        &file,
        &text.replace("absolute_timeout = 13599", "absolute_timeout = 0"),
    );
    let r = d.call("POST", "/v1/policy/reload", None);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("line 50001: [orgs.org_09999]"),
        "{}",
        r.body
    );
}

#[test]
fn sigterm_does_not_wait_for_a_stuck_reload() {
    // A reload whose read never ends (here a FIFO nobody writes, as a hung network mount would
    // behave) must not keep the process, and the state directory's lock, alive after SIGTERM.
    let dir = scratch("pf-stuck");
    let file = dir.join("policy.toml");
    let state = dir.join("state");
    write(&file, LOOSE);
    let args = [
        "--policy-file",
        file.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let d = Daemon::start(&args);
    let fifo = dir.join("fifo");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo failed");
    std::fs::rename(&fifo, &file).unwrap();
    unsafe_free_kill(d.child.id(), "HUP");
    wait_log(&d, 5, "re-reading the policy source");
    std::thread::sleep(Duration::from_millis(200));
    unsafe_free_kill(d.child.id(), "TERM");
    wait_log(&d, 15, "a policy reload is still running; it is abandoned");
    assert_eq!(d.terminate().code(), Some(0));
    // The lock went with the process: a new daemon starts on the same state directory.
    write(&dir.join("policy.toml.new"), LOOSE);
    std::fs::rename(dir.join("policy.toml.new"), &file).unwrap();
    let d = Daemon::start(&args);
    assert_eq!(acme_absolute(&d), 28_800);
    drop(d);
}
