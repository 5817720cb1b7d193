//! Start-up, configuration errors and graceful shutdown of the real binary.

use crate::common::{Daemon, create, scratch};
use std::process::Command;

fn run_expecting_failure(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let d = Daemon::start(&[]);
    create(&d, &[], r#"{"user_id": "u"}"#);
    let status = d.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn logs_have_start_and_stop_lines_and_never_a_token() {
    let d = Daemon::start(&[]);
    let (token, _) = create(&d, &[], r#"{"user_id": "u", "org_id": "o"}"#);
    d.call(
        "POST",
        "/v1/sessions/validate",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    );
    d.call(
        "PUT",
        "/v1/orgs/o/policy",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 3600}"#),
    );
    crate::common::unsafe_free_kill(d.child.id(), "TERM");
    let mut lines = Vec::new();
    while let Ok(l) = d.logs.recv_timeout(std::time::Duration::from_secs(10)) {
        lines.push(l);
    }
    let all = lines.join("\n");
    assert!(all.contains("policy changed"), "{all}");
    assert!(all.contains("shutting down"), "{all}");
    assert!(all.contains("sessiond stopped"), "{all}");
    assert!(!all.contains(&token), "a token reached the log");
}

#[test]
fn every_config_problem_is_reported_before_exiting() {
    let (code, err) = run_expecting_failure(&[
        "--shards",
        "3",
        "--tick",
        "0ms",
        "--org-policy-mode",
        "lenient",
    ]);
    assert_eq!(code, 2);
    for needle in ["shards is 3", "tick \"0ms\"", "lenient"] {
        assert!(err.contains(needle), "{needle} missing in {err}");
    }
    let dir = scratch("cfg");
    let path = dir.join("sessiond.toml");
    std::fs::write(&path, "max_sessions = \"many\"\n").unwrap();
    let (code, err) = run_expecting_failure(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("max_sessions") && err.contains("line 1"),
        "{err}"
    );
}

/// Three typos in the file, one in a flag and one in a variable: one start names them all, each
/// with the nearest valid name, and exits 2, with a variable's bad value and a duration out of
/// range (saying how it was read) in the same list.
#[test]
fn every_typo_is_named_with_a_suggestion_in_one_start() {
    let dir = scratch("typos");
    let path = dir.join("sessiond.toml");
    std::fs::write(
        &path,
        "tikc = \"50ms\"\nmax_sesions_per_user = 5\n\n[application]\nidle_timout = 600\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "--shrads",
            "4",
            "--tick",
            "5",
        ])
        .env("SESSIOND_SNAPSHOT_INTERVALL", "1m")
        .env("SESSIOND_HTTP_WORKERS", "many")
        .env("SESSIOND_SNAPSHOT_INTERVAL", "5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "line 1: unknown key `tikc`; did you mean `tick`?",
        "line 2: unknown key `max_sesions_per_user`; did you mean `max_sessions_per_user`?",
        "line 5: [application] unknown key `idle_timout`; did you mean `idle_timeout`?",
        "unknown flag `--shrads`; did you mean `--shards`?",
        "SESSIOND_SNAPSHOT_INTERVALL; did you mean SESSIOND_SNAPSHOT_INTERVAL?",
        "invalid value 'many' for '--http-workers <HTTP_WORKERS>'",
        "(from SESSIOND_HTTP_WORKERS)",
        "tick \"5\" was read as 5s; it must be between 1ms and 1s (a bare number means seconds; \
         write \"5ms\" for milliseconds)",
        "snapshot_interval \"5\" was read as 5s; it must be between 10s and 1d (from \
         SESSIOND_SNAPSHOT_INTERVAL)",
    ] {
        assert!(err.contains(needle), "{needle} missing in {err}");
    }
    assert_eq!(err.matches("\n  - ").count(), 8, "{err}");
}

#[test]
fn non_loopback_without_keys_is_refused_unless_insecure() {
    let (code, err) = run_expecting_failure(&["--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--insecure-no-auth"), "{err}");
}

#[test]
fn environment_variables_configure_and_flags_win() {
    let d = Daemon::start_with_env(
        &[],
        &[
            ("SESSIOND_COOKIE_NAME", "envcookie"),
            ("SESSIOND_MAX_SESSIONS", "1"),
        ],
    );
    let (token, _) = create(&d, &[], r#"{"user_id": "u"}"#);
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Cookie", &format!("envcookie={token}"))],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        d.call("POST", "/v1/sessions", Some(r#"{"user_id": "v"}"#))
            .status,
        503
    );
    let d = Daemon::start_with_env(&["--max-sessions", "5"], &[("SESSIOND_MAX_SESSIONS", "1")]);
    create(&d, &[], r#"{"user_id": "u"}"#);
    create(&d, &[], r#"{"user_id": "v"}"#);
}

/// Requests in flight on any HTTP worker when SIGTERM arrives are answered before the exit.
#[test]
fn sigterm_drains_requests_in_flight_on_every_worker() {
    use std::io::{Read, Write};
    let d = Daemon::start(&["--http-workers", "3"]);
    let (token, _) = create(&d, &[], r#"{"user_id": "u"}"#);
    let body = format!(r#"{{"token": "{token}"}}"#);
    // Six connections, each with a request whose body has not fully arrived: the handlers are
    // waiting for it, spread over the workers by whichever accepted each connection.
    let mut conns: Vec<std::net::TcpStream> = (0..6)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(d.addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            write!(
                s,
                "POST /v1/sessions/validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                &body[..5]
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    crate::common::unsafe_free_kill(d.child.id(), "TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    for s in &mut conns {
        s.write_all(&body.as_bytes()[5..]).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#""valid":true"#), "{answer}");
    }
    assert_eq!(d.terminate().code(), Some(0));
}

/// A second daemon on a port in use fails to start instead of sharing the port.
#[test]
fn a_port_in_use_fails_start_up() {
    let d = Daemon::start(&[]);
    let dir = scratch("port-in-use");
    let (code, err) = run_expecting_failure(&[
        "--listen",
        &d.addr.to_string(),
        "--state-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot listen"), "{err}");
}

/// `--help` states the duration rule and what the state directory holds.
#[test]
fn help_states_the_duration_rule_and_the_state_directory() {
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for needle in [
        "the session journal and snapshots, and the policies set through the API",
        "a bare number means seconds",
        "write `5ms`",
    ] {
        assert!(help.contains(needle), "{needle} missing in {help}");
    }
}

/// `Cpus_allowed_list` of a process or thread, from `/proc/.../status`: `0-1`, `3`.
fn allowed_list(status_path: &str) -> String {
    let status = std::fs::read_to_string(status_path).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    line.trim().to_owned()
}

/// Each thread of `pid` by name, with the cores it may run on.
fn threads_and_cores(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap();
        let cores = allowed_list(&t.join("status").display().to_string());
        out.push((name.trim().to_owned(), cores));
    }
    out.sort();
    out
}

/// The cores listed as `0-3,6` expanded, ascending.
fn expand(list: &str) -> Vec<usize> {
    list.split(',')
        .flat_map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
        })
        .collect()
}

/// The daemon's log up to its "sessions loaded" line, which comes after the workers started.
fn logs_through_load(d: &Daemon) -> String {
    let mut lines = d.drain_logs();
    while !lines.iter().any(|l| l.contains("sessions loaded")) {
        match d.logs.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("no \"sessions loaded\" line: {lines:?}"),
        }
    }
    lines.join("\n")
}

/// `--pin-workers on` puts HTTP worker i on the i-th core the daemon may use and leaves every
/// other thread free; `auto` pins only a daemon confined to some of the machine's cores
/// (here by `taskset`) with one worker per core of those, and `off` never.
#[test]
fn http_workers_are_pinned_one_per_core_and_no_other_thread_is() {
    let mine = allowed_list("/proc/self/status");
    let cores = expand(&mine);
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let online = expand(online.trim()).len();

    let d = Daemon::start(&["--pin-workers", "on", "--http-workers", "2"]);
    let threads = threads_and_cores(d.child.id());
    for (i, want) in [cores[0], cores[1 % cores.len()]].into_iter().enumerate() {
        let name = format!("sessiond-http-{i}");
        assert!(
            threads.contains(&(name, want.to_string())),
            "worker {i} should be on core {want}: {threads:?}"
        );
    }
    for (name, list) in &threads {
        if !name.starts_with("sessiond-http-") {
            assert_eq!(list, &mine, "{name} was pinned: {threads:?}");
        }
    }
    assert!(
        threads.iter().any(|(n, _)| n == "sessiond-journa"),
        "{threads:?}"
    );
    d.terminate();

    // auto: one worker where the test runs is pinned only if the test itself is confined to
    // one of the machine's cores.
    let d = Daemon::start(&["--http-workers", "1"]);
    let pinned = logs_through_load(&d).contains("HTTP workers pinned");
    let confined_to_one = cores.len() == 1 && online > 1;
    assert_eq!(pinned, confined_to_one, "confined: {mine} of {online}");
    d.terminate();

    if online >= 2 {
        let last = cores[cores.len() - 1].to_string();
        let d = Daemon::start_wrapped(&["taskset", "-c", &last], &["--http-workers", "1"]);
        let logs = logs_through_load(&d);
        assert!(
            logs.contains(&format!("HTTP workers pinned cores=[{last}]")),
            "{logs}"
        );
        d.terminate();
        let d = Daemon::start_wrapped(
            &["taskset", "-c", &last],
            &["--http-workers", "1", "--pin-workers", "off"],
        );
        assert!(!logs_through_load(&d).contains("HTTP workers pinned"));
        d.terminate();
    }
}
