//! Section 6 of the operator's-bad-day review, from outside: a malformed API-keys file never
//! prints a key, ids with whitespace at either end are refused, and a daemon without keys
//! refuses what only a browser page would send (a body that is not `application/json`, a DNS
//! name in `Host`, a foreign `Origin`).

use crate::common::{ADMIN_KEY, Daemon, create, keys_file, scratch};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "SUPERSECRET-k3y-0123456789abcdef";

/// Runs the binary on `keys`, returns (exit code, everything it printed).
fn start_with_keys_file(keys: &str) -> (Option<i32>, String, String) {
    let dir = scratch("bad-keys");
    let path = dir.join("keys.toml");
    std::fs::write(&path, keys).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["--listen", "127.0.0.1:0", "--api-keys-file"])
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed, path.display().to_string())
}

#[test]
fn a_malformed_keys_file_names_file_line_and_field_never_the_key() {
    let head = "[[key]]\nname = \"gw\"\nrole = \"gateway\"\n";
    for (keys, line, what) in [
        (format!("{head}kye = \"{SECRET}\"\n"), "line 4", "`kye`"),
        (
            format!("{head}key = \"{SECRET}\n"),
            "line 4, column",
            "string",
        ),
        (
            format!("{head}key = \"{SECRET}\"\nkey = \"{SECRET}\"\n"),
            "line 5",
            "duplicate key",
        ),
        (format!("key = \"{SECRET}\"\n"), "line 1", "[[key]]"),
    ] {
        let (code, printed, path) = start_with_keys_file(&keys);
        assert!(
            !printed.contains("SUPERSECRET") && !printed.contains("0123456789abcdef"),
            "the key was printed:\n{printed}"
        );
        assert_eq!(code, Some(2), "exit {code:?}:\n{printed}");
        assert!(
            printed.contains(&path) && printed.contains(line) && printed.contains(what),
            "expected {path}, {line:?} and {what:?} in:\n{printed}"
        );
    }
}

#[test]
fn ids_with_whitespace_at_either_end_are_refused() {
    let d = Daemon::start(&[]);
    for body in [
        r#"{"user_id": " alice"}"#,
        r#"{"user_id": "alice "}"#,
        r#"{"user_id": "\u00a0alice"}"#,
        r#"{"user_id": "alice", "org_id": " acme"}"#,
        r#"{"user_id": "alice", "org_id": "acme\t"}"#,
    ] {
        let r = d.call("POST", "/v1/sessions", Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.code(), "invalid_field", "{body}");
        let m = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            m.contains("whitespace") || m.contains("control characters"),
            "{body}: {m}"
        );
    }
    for body in [
        r#"{"user_id": "   "}"#,
        r#"{"user_id": "a", "org_id": " "}"#,
    ] {
        let r = d.call("POST", "/v1/sessions", Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.contains("only whitespace"), "{}", r.body);
    }
    for (method, path) in [
        ("GET", "/v1/users/%20alice/sessions"),
        ("DELETE", "/v1/users/alice%20/sessions"),
        ("DELETE", "/v1/orgs/%20%20/sessions"),
        ("GET", "/v1/orgs/acme%20/policy"),
    ] {
        let r = d.call(method, path, None);
        assert_eq!(r.status, 400, "{method} {path}: {}", r.body);
        assert!(r.body.contains("whitespace"), "{}", r.body);
    }
    let r = d.call(
        "PUT",
        "/v1/orgs/%20acme/policy",
        Some(r#"{"source": "APPLICATION"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Inner spaces are part of an id.
    let (_, s) = create(&d, &[], r#"{"user_id": "alice smith"}"#);
    assert_eq!(s["user_id"], "alice smith");
}

#[test]
fn json_bodies_need_an_application_json_content_type() {
    let d = Daemon::start(&[]);
    let body = Some(r#"{"user_id": "alice"}"#);
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = d.request("POST", "/v1/sessions", &[("Content-Type", ct)], body);
        assert_eq!(r.status, 415, "{ct}: {}", r.body);
        assert_eq!(r.code(), "unsupported_media_type");
        assert!(r.body.contains("application/json"), "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let r = d.request(
        "POST",
        "/v1/sessions",
        &[("Content-Type", "application/json; charset=utf-8")],
        body,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let tok = format!(r#"{{"token": "{token}"}}"#);
    for path in [
        "/v1/sessions/validate",
        "/v1/sessions/touch",
        "/v1/sessions/revoke",
    ] {
        let r = d.request("POST", path, &[("Content-Type", "text/plain")], Some(&tok));
        assert_eq!(r.status, 415, "{path}: {}", r.body);
    }
    for (method, path) in [("PUT", "/v1/policy"), ("PATCH", "/v1/orgs/acme/policy")] {
        let r = d.request(
            method,
            path,
            &[("Content-Type", "text/plain")],
            Some(r#"{"idle_timeout": 60}"#),
        );
        assert_eq!(r.status, 415, "{method} {path}: {}", r.body);
    }
    assert!(
        crate::common::valid(&d, &token),
        "refused revoke changed nothing"
    );
    // With keys too.
    let dir = scratch("ct-keys");
    let keys = keys_file(&dir);
    let d = Daemon::start(&["--api-keys-file", keys.to_str().unwrap()]);
    let r = d.request(
        "POST",
        "/v1/sessions",
        &[("Content-Type", "text/plain"), ("X-API-Key", ADMIN_KEY)],
        body,
    );
    assert_eq!(r.status, 415, "{}", r.body);
}

#[test]
fn keyless_mode_refuses_dns_names_and_foreign_pages() {
    let d = Daemon::start(&[]);
    let port = d.addr.port();
    let body = Some(r#"{"user_id": "alice"}"#);
    // DNS rebinding: a name the attacker points at 127.0.0.1.
    for host in ["evil.example", &format!("evil.example:{port}")] {
        let r = d.request("POST", "/v1/policy/reload", &[("Host", host)], None);
        assert_eq!(r.status, 421, "{host}: {}", r.body);
        assert_eq!(r.code(), "host_not_allowed");
        let r = d.request("POST", "/v1/sessions", &[("Host", host)], body);
        assert_eq!(r.status, 421, "{host}: {}", r.body);
        let r = d.request("GET", "/v1/users/alice/sessions", &[("Host", host)], None);
        assert_eq!(r.status, 421, "{host}: {}", r.body);
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = d.request("POST", "/v1/policy/reload", &[("Host", &host)], None);
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
    // A page of another origin, even with the daemon's own address in Host.
    let (token, _) = create(&d, &[], r#"{"user_id": "alice"}"#);
    for origin in ["https://evil.example", "http://localhost:3000", "null"] {
        let r = d.request("POST", "/v1/sessions", &[("Origin", origin)], body);
        assert_eq!(r.status, 403, "{origin}: {}", r.body);
        assert_eq!(r.code(), "cross_origin_refused");
        let r = d.request("POST", "/v1/policy/reload", &[("Origin", origin)], None);
        assert_eq!(r.status, 403, "{origin}: {}", r.body);
        let r = d.request(
            "DELETE",
            "/v1/users/alice/sessions",
            &[("Origin", origin)],
            None,
        );
        assert_eq!(r.status, 403, "{origin}: {}", r.body);
    }
    assert!(crate::common::valid(&d, &token));
    // Forward-auth gets the browser's Host and Origin through the gateway: still answered.
    let bearer = format!("Bearer {token}");
    let r = d.request(
        "GET",
        "/v1/auth",
        &[
            ("Host", "app.example"),
            ("Origin", "https://app.example"),
            ("Authorization", &bearer),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-user-id"), Some("alice"));
    // Probes and scrapers may name the daemon as they like.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = d.request("GET", path, &[("Host", "sessiond.internal:8080")], None);
        assert_eq!(r.status, 200, "{path}");
    }
    // With keys, a page cannot present one: names are served.
    let dir = scratch("host-keys");
    let keys = keys_file(&dir);
    let d = Daemon::start(&["--api-keys-file", keys.to_str().unwrap()]);
    let r = d.request(
        "POST",
        "/v1/policy/reload",
        &[("Host", "sessiond.internal"), ("X-API-Key", ADMIN_KEY)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
