//! Every row of the API table, on a daemon without API keys (loopback).

use crate::common::{Daemon, create};

#[test]
fn create_validate_touch_revoke_roundtrip() {
    let d = Daemon::start(&[]);
    let (token, s) = create(
        &d,
        &[],
        r#"{"user_id": "alice", "org_id": "acme", "metadata": {"ip": "10.0.0.1", "ua": "curl"}}"#,
    );
    assert_eq!(token.len(), 43);
    assert_eq!(s["id"].as_str().unwrap().len(), 32);
    assert_eq!(s["user_id"], "alice");
    assert_eq!(s["org_id"], "acme");
    assert_eq!(s["metadata"]["ip"], "10.0.0.1");
    assert_eq!(s["persistent"], false);
    assert_eq!(s["expires_in"], 1800);
    for f in [
        "created_at",
        "last_activity_at",
        "idle_expires_at",
        "absolute_expires_at",
        "expires_at",
    ] {
        let t = s[f].as_str().unwrap();
        assert!(
            t.len() == 24 && t.ends_with('Z') && t.as_bytes()[19] == b'.',
            "{f} = {t}"
        );
    }
    assert!(
        !serde_json::to_string(&s).unwrap().contains(&token),
        "token inside the session object"
    );

    let body = format!(r#"{{"token": "{token}"}}"#);
    let v = d.call("POST", "/v1/sessions/validate", Some(&body)).json();
    assert_eq!(v["valid"], true);
    assert_eq!(v["session"]["id"], s["id"]);

    std::thread::sleep(std::time::Duration::from_millis(20));
    let t = d.call("POST", "/v1/sessions/touch", Some(&body)).json();
    assert_eq!(t["valid"], true);
    assert!(t["session"]["last_activity_at"].as_str() > s["last_activity_at"].as_str());
    assert!(t["session"]["idle_expires_at"].as_str() > s["idle_expires_at"].as_str());

    let r = d.call("POST", "/v1/sessions/revoke", Some(&body));
    assert_eq!(r.status, 204);
    let v = d.call("POST", "/v1/sessions/validate", Some(&body)).json();
    assert_eq!(
        v,
        serde_json::json!({"valid": false, "reason": "not_found"})
    );
    // Revoking again, or an unknown token, is still 204 (logout is idempotent).
    assert_eq!(
        d.call("POST", "/v1/sessions/revoke", Some(&body)).status,
        204
    );
    let unknown = format!(r#"{{"token": "{}"}}"#, "A".repeat(43));
    assert_eq!(
        d.call("POST", "/v1/sessions/revoke", Some(&unknown)).status,
        204
    );
    let v = d
        .call(
            "POST",
            "/v1/sessions/validate",
            Some(r#"{"token": "nope"}"#),
        )
        .json();
    assert_eq!(v["reason"], "malformed");
}

#[test]
fn forward_auth_with_cookie_or_bearer() {
    let d = Daemon::start(&["--cookie-name", "sid"]);
    let (token, s) = create(&d, &[], r#"{"user_id": "bob", "org_id": "acme"}"#);
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Cookie", &format!("theme=dark; sid={token}"))],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-session-id"), s["id"].as_str());
    assert_eq!(r.header("x-user-id"), Some("bob"));
    assert_eq!(r.header("x-org-id"), Some("acme"));
    // Whole seconds left, rounded down: 1799 when a millisecond passed between touch and reply.
    assert!(
        matches!(r.header("x-session-expires-in"), Some("1800" | "1799")),
        "{:?}",
        r.header("x-session-expires-in")
    );
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!(r.status, 200);
    // Without a token, with the wrong cookie name, or with a dead token: 401.
    assert_eq!(d.call("GET", "/v1/auth", None).status, 401);
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Cookie", &format!("session={token}"))],
        None,
    );
    assert_eq!(r.status, 401);
    d.call(
        "POST",
        "/v1/sessions/revoke",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    );
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Cookie", &format!("sid={token}"))],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "unauthenticated");
    // A session without an org has no X-Org-Id.
    let (token, _) = create(&d, &[], r#"{"user_id": "carol"}"#);
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Cookie", &format!("sid={token}"))],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-org-id"), None);
}

#[test]
fn admin_session_views_and_bulk_revocation() {
    let d = Daemon::start(&[]);
    let (_, a1) = create(&d, &[], r#"{"user_id": "ann", "org_id": "o1"}"#);
    let (_, _a2) = create(&d, &[], r#"{"user_id": "ann", "org_id": "o2"}"#);
    let (_, _b1) = create(&d, &[], r#"{"user_id": "ben", "org_id": "o1"}"#);
    let id = a1["id"].as_str().unwrap();

    let r = d.call("GET", &format!("/v1/sessions/{id}"), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["user_id"], "ann");
    assert_eq!(
        d.call("GET", &format!("/v1/sessions/{}", "0".repeat(32)), None)
            .status,
        404
    );
    assert_eq!(d.call("GET", "/v1/sessions/not-hex", None).status, 400);

    let list = d.call("GET", "/v1/users/ann/sessions", None).json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(
        d.call("GET", "/v1/users/nobody/sessions", None).json()["sessions"],
        serde_json::json!([])
    );

    assert_eq!(
        d.call("DELETE", &format!("/v1/sessions/{id}"), None).status,
        204
    );
    assert_eq!(
        d.call("DELETE", &format!("/v1/sessions/{id}"), None).status,
        404
    );
    assert_eq!(
        d.call("GET", &format!("/v1/sessions/{id}"), None).status,
        404
    );

    assert_eq!(
        d.call("DELETE", "/v1/orgs/o1/sessions", None).json(),
        serde_json::json!({"revoked": 1})
    );
    assert_eq!(
        d.call("DELETE", "/v1/users/ann/sessions", None).json(),
        serde_json::json!({"revoked": 1})
    );
    assert_eq!(
        d.call("DELETE", "/v1/users/ann/sessions", None).json(),
        serde_json::json!({"revoked": 0})
    );
    assert_eq!(d.metric("sessiond_sessions_active"), 0.0);
    assert_eq!(d.metric("sessiond_sessions_revoked_total"), 3.0);
}

#[test]
fn policy_endpoints() {
    let d = Daemon::start(&[]);
    let app = d.call("GET", "/v1/policy", None).json();
    assert_eq!(
        app,
        serde_json::json!({"absolute_timeout": 86400, "idle_timeout_enabled": true, "idle_timeout": 1800, "persistent": false})
    );
    let r = d.call("PUT", "/v1/policy", Some(r#"{"absolute_timeout": {"value": 12, "unit": "HOURS"}, "idle_timeout_enabled": false, "persistent": true}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["absolute_timeout"], 43200);
    assert_eq!(r.json()["idle_timeout_enabled"], false);

    let org = d.call("GET", "/v1/orgs/acme/policy", None).json();
    assert_eq!(org["source"], "APPLICATION");
    assert_eq!(org["custom"], serde_json::Value::Null);
    assert_eq!(org["effective"]["absolute_timeout"], 43200);

    let r = d.call("PUT", "/v1/orgs/acme/policy", Some(r#"{"source": "CUSTOM", "absolute_timeout": {"value": 480, "unit": "MINUTES"}, "idle_timeout_enabled": true, "idle_timeout": {"value": 60, "unit": "MINUTES"}, "persistent": true}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["org_id"], "acme");
    assert_eq!(j["source"], "CUSTOM");
    assert_eq!(j["custom"]["absolute_timeout"], 28800);
    assert_eq!(
        j["effective"],
        serde_json::json!({"absolute_timeout": 28800, "idle_timeout_enabled": true, "idle_timeout": 3600, "persistent": true})
    );

    let j = d
        .call(
            "PATCH",
            "/v1/orgs/acme/policy",
            Some(r#"{"idle_timeout": 600}"#),
        )
        .json();
    assert_eq!(j["custom"]["idle_timeout"], 600);
    assert_eq!(j["custom"]["absolute_timeout"], 28800);
    // PATCH of an APPLICATION org starts from the effective values.
    let j = d
        .call(
            "PATCH",
            "/v1/orgs/beta/policy",
            Some(r#"{"persistent": false}"#),
        )
        .json();
    assert_eq!(j["source"], "CUSTOM");
    assert_eq!(j["custom"]["absolute_timeout"], 43200);

    let j = d.call("DELETE", "/v1/orgs/acme/policy", None).json();
    assert_eq!(j["source"], "APPLICATION");
    let j = d
        .call(
            "PUT",
            "/v1/orgs/beta/policy",
            Some(r#"{"source": "APPLICATION"}"#),
        )
        .json();
    assert_eq!(j["source"], "APPLICATION");
    assert!(d.metric("sessiond_policy_changes_total{source=\"api\"}") >= 5.0);
}

#[test]
fn ops_endpoints_and_metrics() {
    let d = Daemon::start(&[]);
    let r = d.call("GET", "/healthz", None);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert_eq!(d.call("GET", "/readyz", None).status, 200);
    let (token, _) = create(&d, &[], r#"{"user_id": "m"}"#);
    let body = format!(r#"{{"token": "{token}"}}"#);
    d.call("POST", "/v1/sessions/validate", Some(&body));
    d.call("POST", "/v1/sessions/validate", Some(r#"{"token": "x"}"#));
    let r = d.call("GET", "/metrics", None);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(d.metric("sessiond_sessions_active"), 1.0);
    assert_eq!(d.metric("sessiond_sessions_created_total"), 1.0);
    assert_eq!(
        d.metric("sessiond_validations_total{outcome=\"valid\"}"),
        1.0
    );
    assert_eq!(
        d.metric("sessiond_validations_total{outcome=\"malformed\"}"),
        1.0
    );
    let text = d.call("GET", "/metrics", None).body;
    assert!(
        text.contains(
            "sessiond_http_requests_total{route=\"/v1/sessions/validate\",status=\"200\"}"
        )
    );
    assert!(text.contains("sessiond_http_request_duration_seconds_bucket{route=\"/v1/sessions\""));
    assert_eq!(
        d.metric("sessiond_http_requests_total{route=\"/v1/sessions/validate\",status=\"200\"}"),
        2.0
    );
    // Every earlier connection was closed: only the one asking is open.
    crate::common::eventually(5, "closed connections leave the gauge", || {
        d.metric("sessiond_http_connections") == 1.0
    });
    assert!(!text.contains(&token), "token leaked into metrics");
    // Raw paths (with ids) never become labels.
    d.call("GET", "/v1/users/secret-user/sessions", None);
    assert!(!d.call("GET", "/metrics", None).body.contains("secret-user"));
}

/// The gateway's routes answer in the request's own header map, emptied (`json_body_in`):
/// nothing the request carried (its cookie, its bearer token, any other header) is in the
/// answer, on a fresh connection or on one kept alive across requests.
#[test]
fn hot_routes_answer_with_their_own_headers_only() {
    let d = Daemon::start(&[]);
    let (token, _) = create(&d, &[], r#"{"user_id": "u", "org_id": "o"}"#);
    let bearer = format!("Bearer {token}");
    let cookie = format!("session={token}");
    let body = format!(r#"{{"token": "{token}"}}"#);
    let sent = [
        ("authorization", bearer.as_str()),
        ("cookie", cookie.as_str()),
        ("x-probe", "probe-value"),
        ("content-type", "application/json"),
    ];
    let own = |path: &str| -> &[&str] {
        if path == "/v1/auth" {
            &[
                "x-session-id",
                "x-user-id",
                "x-org-id",
                "x-session-expires-in",
            ]
        } else {
            &["content-type"]
        }
    };
    let requests = [
        ("GET", "/v1/auth", None),
        ("POST", "/v1/sessions/validate", Some(body.as_str())),
        ("POST", "/v1/sessions/touch", Some(body.as_str())),
    ];
    let check = |path: &str, status: u16, headers: &[(String, String)]| {
        assert_eq!(status, 200, "{path}");
        let mut names: Vec<String> = headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| !matches!(k.as_str(), "content-length" | "date" | "connection"))
            .collect();
        names.sort();
        let mut want: Vec<String> = own(path).iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(names, want, "{path}: {headers:?}");
        for (_, v) in headers {
            assert!(!v.contains(&token) && v != "probe-value", "{path}: {v}");
        }
    };
    // Each on a connection of its own.
    for (method, path, body) in requests {
        let r = d.request(method, path, &sent, body);
        check(path, r.status, &r.headers);
    }
    // All on one connection, kept alive: each answer's map is the next request's.
    use std::io::{BufRead, BufReader, Read, Write};
    let mut conn = std::net::TcpStream::connect(d.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    for _ in 0..3 {
        for (method, path, body) in requests {
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            for (k, v) in sent {
                req += &format!("{k}: {v}\r\n");
            }
            let body = body.unwrap_or("");
            req += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
            conn.write_all(req.as_bytes()).unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
            let mut headers = Vec::new();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let Some((k, v)) = line.trim_end().split_once(": ") else {
                    break;
                };
                headers.push((k.to_owned(), v.to_owned()));
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            reader.read_exact(&mut vec![0; len]).unwrap();
            check(path, status, &headers);
        }
    }
}

/// The gateway's per-request routes are answered before the router (`http/hot.rs`): each
/// answers as through the router (Envoy's `/v1/auth/<path>` too) and is counted under its
/// route template; their other methods still get the router's 405.
#[test]
fn hot_routes_answer_and_are_counted_as_through_the_router() {
    let d = Daemon::start(&[]);
    let (token, _) = create(&d, &[], r#"{"user_id": "u", "org_id": "o"}"#);
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    for path in ["/v1/auth", "/v1/auth/", "/v1/auth/app/page?x=1"] {
        let r = d.request("GET", path, &auth, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(r.header("x-user-id"), Some("u"), "{path}");
        assert_eq!(d.request("GET", path, &[], None).status, 401, "{path}");
    }
    let body = format!(r#"{{"token": "{token}"}}"#);
    for path in ["/v1/sessions/validate", "/v1/sessions/touch"] {
        let r = d.call("POST", path, Some(&body));
        assert_eq!(r.json()["valid"], true, "{path}: {}", r.body);
        assert_eq!(d.call("GET", path, None).status, 405, "{path}");
        let bad = d.call("POST", path, Some("{"));
        assert_eq!((bad.status, bad.code().as_str()), (400, "invalid_json"));
    }
    assert_eq!(d.call("POST", "/v1/auth", None).status, 405);
    let count = |route: &str, status: u16| {
        d.metric(&format!(
            "sessiond_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(count("/v1/auth", 200), 1.0);
    assert_eq!(count("/v1/auth", 401), 1.0);
    assert_eq!(count("/v1/auth/", 200), 1.0);
    assert_eq!(count("/v1/auth/{*original_path}", 200), 1.0);
    assert_eq!(count("/v1/auth/{*original_path}", 401), 1.0);
    assert_eq!(count("/v1/sessions/validate", 200), 1.0);
    assert_eq!(count("/v1/sessions/validate", 400), 1.0);
    assert_eq!(count("/v1/sessions/touch", 200), 1.0);
    assert_eq!(count("/v1/sessions/touch", 400), 1.0);
}
