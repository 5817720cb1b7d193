//! Access control with `--api-keys-file`: missing key 401, wrong role 403.

use crate::common::{ADMIN_KEY, Daemon, GATEWAY_KEY, create, keys_file, scratch};

#[test]
fn roles_are_enforced() {
    let dir = scratch("keys");
    let keys = keys_file(&dir);
    let d = Daemon::start(&["--api-keys-file", keys.to_str().unwrap()]);
    let gw = [("X-API-Key", GATEWAY_KEY)];
    let admin = [("X-API-Key", ADMIN_KEY)];

    let r = d.call("POST", "/v1/sessions", Some(r#"{"user_id": "u"}"#));
    assert_eq!((r.status, r.code().as_str()), (401, "unauthorized"));
    let r = d.request(
        "POST",
        "/v1/sessions",
        &[("X-API-Key", "wrong-key-wrong-key")],
        Some(r#"{"user_id": "u"}"#),
    );
    assert_eq!(r.status, 401);

    let (token, s) = create(&d, &gw, r#"{"user_id": "u", "org_id": "o"}"#);
    let body = format!(r#"{{"token": "{token}"}}"#);
    for path in ["/v1/sessions/validate", "/v1/sessions/touch"] {
        assert_eq!(d.request("POST", path, &gw, Some(&body)).status, 200);
    }
    let cookie = format!("session={token}");
    assert_eq!(
        d.request("GET", "/v1/auth", &[gw[0], ("Cookie", &cookie)], None)
            .status,
        200
    );
    assert_eq!(
        d.request("GET", "/v1/auth", &[("Cookie", &cookie)], None)
            .status,
        401
    );

    let id = s["id"].as_str().unwrap();
    let admin_only: Vec<(&str, String, Option<&str>)> = vec![
        ("GET", format!("/v1/sessions/{id}"), None),
        ("DELETE", format!("/v1/sessions/{}", "0".repeat(32)), None),
        ("GET", "/v1/users/u/sessions".into(), None),
        ("DELETE", "/v1/users/x/sessions".into(), None),
        ("DELETE", "/v1/orgs/x/sessions".into(), None),
        ("GET", "/v1/policy".into(), None),
        (
            "PUT",
            "/v1/policy".into(),
            Some(r#"{"absolute_timeout": 86400, "idle_timeout": 1800}"#),
        ),
        ("GET", "/v1/orgs/o/policy".into(), None),
        (
            "PUT",
            "/v1/orgs/o/policy".into(),
            Some(r#"{"source": "APPLICATION"}"#),
        ),
        (
            "PATCH",
            "/v1/orgs/o/policy".into(),
            Some(r#"{"persistent": false}"#),
        ),
        ("DELETE", "/v1/orgs/o/policy".into(), None),
    ];
    for (method, path, body) in &admin_only {
        let r = d.request(method, path, &gw, *body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "forbidden"),
            "{method} {path}"
        );
        let r = d.call(method, path, *body);
        assert_eq!(r.status, 401, "{method} {path} without a key");
        let r = d.request(method, path, &admin, *body);
        assert!(
            r.status < 300 || r.status == 404,
            "{method} {path} as admin: {} {}",
            r.status,
            r.body
        );
    }
    // Admin keys may also do what gateways do.
    assert_eq!(
        d.request("POST", "/v1/sessions/revoke", &admin, Some(&body))
            .status,
        204
    );
    // Probes and metrics need no key.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(d.call("GET", path, None).status, 200, "{path}");
    }
}
