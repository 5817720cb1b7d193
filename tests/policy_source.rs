//! Policy sources under a running daemon: file edits (in place, by rename, by symlink swap),
//! broken files, SIGHUP, the reload endpoint, and API policies surviving a restart.

use crate::common::{Daemon, create, eventually, scratch, unsafe_free_kill, valid};
use std::path::Path;
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
    eventually(3, "the tightened policy", || acme_absolute(d) == 1);
    eventually(3, "eviction of the too-old session", || !valid(d, &token));
    assert!(
        start.elapsed() < Duration::from_millis(1_500),
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
    std::fs::remove_dir_all(dir).ok();
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
    std::fs::remove_dir_all(dir).ok();
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
    std::fs::remove_dir_all(dir).ok();
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
    std::fs::remove_dir_all(dir).ok();
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
    std::fs::remove_dir_all(dir).ok();
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
    std::fs::remove_dir_all(dir).ok();
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
    std::fs::remove_dir_all(dir).ok();
}
