//! Every error path answers a 4xx with `{"error": {"code", "message"}}` naming the problem.

use crate::common::{Daemon, create, request_bytes};

fn expect(r: &crate::common::Response, status: u16, code: &str, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.code(), code, "{}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

#[test]
fn bad_json_types_fields_and_ids() {
    let d = Daemon::start(&[]);
    expect(
        &d.call("POST", "/v1/sessions", Some("{not json")),
        400,
        "invalid_json",
        "invalid JSON",
    );
    expect(
        &d.call("POST", "/v1/sessions", Some("")),
        400,
        "invalid_json",
        "empty",
    );
    expect(
        &d.call("POST", "/v1/sessions", Some(r#"{"user_id": 5}"#)),
        400,
        "invalid_json",
        "invalid type",
    );
    expect(
        &d.call(
            "POST",
            "/v1/sessions",
            Some(r#"{"user_id": "u", "role": "x"}"#),
        ),
        400,
        "invalid_json",
        "unknown field `role`",
    );
    expect(
        &d.call("POST", "/v1/sessions", Some(r#"{"org_id": "o"}"#)),
        400,
        "invalid_json",
        "missing field `user_id`",
    );
    expect(
        &d.call("POST", "/v1/sessions", Some(r#"{"user_id": ""}"#)),
        400,
        "invalid_field",
        "user_id must not be empty",
    );
    let long = format!(r#"{{"user_id": "{}"}}"#, "u".repeat(257));
    expect(
        &d.call("POST", "/v1/sessions", Some(&long)),
        400,
        "invalid_field",
        "257 bytes",
    );
    expect(
        &d.call("POST", "/v1/sessions", Some(r#"{"user_id": "a\nb"}"#)),
        400,
        "invalid_field",
        "control characters",
    );
    let meta: Vec<String> = (0..17).map(|i| format!(r#""k{i}": "v""#)).collect();
    let body = format!(r#"{{"user_id": "u", "metadata": {{{}}}}}"#, meta.join(","));
    expect(
        &d.call("POST", "/v1/sessions", Some(&body)),
        400,
        "invalid_field",
        "17 keys",
    );
    let body = format!(
        r#"{{"user_id": "u", "metadata": {{"k": "{}"}}}}"#,
        "v".repeat(1100)
    );
    expect(
        &d.call("POST", "/v1/sessions", Some(&body)),
        400,
        "invalid_field",
        "1101 bytes",
    );
    expect(
        &d.call(
            "POST",
            "/v1/sessions",
            Some(r#"{"user_id": "u", "metadata": {"k": 1}}"#),
        ),
        400,
        "invalid_json",
        "invalid type",
    );
    expect(
        &d.call("POST", "/v1/sessions/validate", Some(r#"{"token": 42}"#)),
        400,
        "invalid_json",
        "invalid type",
    );
    expect(
        &d.call("POST", "/v1/sessions/touch", Some("[]")),
        400,
        "invalid_json",
        "expected a JSON object",
    );
    expect(
        &d.call("POST", "/v1/sessions/validate", Some(r#"["AAAA"]"#)),
        400,
        "invalid_json",
        "expected a JSON object",
    );
    let long_user = format!("/v1/users/{}/sessions", "u".repeat(300));
    expect(
        &d.call("GET", &long_user, None),
        400,
        "invalid_field",
        "300 bytes",
    );
    assert_eq!(
        d.metric("sessiond_sessions_active"),
        0.0,
        "nothing was created by bad input"
    );
}

#[test]
fn oversized_body_is_413() {
    let d = Daemon::start(&[]);
    let body = format!(r#"{{"user_id": "{}"}}"#, "u".repeat(20_000));
    let r = request_bytes(d.addr, "POST", "/v1/sessions", &[], Some(body.as_bytes()));
    expect(&r, 413, "payload_too_large", "16384");
}

#[test]
fn bad_policies_name_the_field_and_value() {
    let d = Daemon::start(&[]);
    expect(
        &d.call("PUT", "/v1/policy", Some(r#"{"absolute_timeout": 0}"#)),
        400,
        "invalid_policy",
        "absolute_timeout is 0 seconds",
    );
    expect(
        &d.call(
            "PUT",
            "/v1/policy",
            Some(r#"{"absolute_timeout": {"value": 401, "unit": "DAYS"}}"#),
        ),
        400,
        "invalid_policy",
        "34646400",
    );
    expect(
        &d.call(
            "PUT",
            "/v1/policy",
            Some(r#"{"absolute_timeout": 60, "idle_timeout_enabled": true}"#),
        ),
        400,
        "invalid_policy",
        "idle_timeout is required",
    );
    expect(
        &d.call(
            "PUT",
            "/v1/policy",
            Some(r#"{"absolute_timeout": {"value": 1, "unit": "WEEKS"}}"#),
        ),
        400,
        "invalid_json",
        "WEEKS",
    );
    expect(
        &d.call(
            "PUT",
            "/v1/policy",
            Some(r#"{"absolute_timeout": 60, "ttl": 5}"#),
        ),
        400,
        "invalid_json",
        "ttl",
    );
    expect(
        &d.call(
            "PUT",
            "/v1/orgs/o/policy",
            Some(r#"{"absolute_timeout": 60}"#),
        ),
        400,
        "invalid_policy",
        "source is required",
    );
    expect(
        &d.call("PUT", "/v1/orgs/o/policy", Some(r#"{"source": "MINE"}"#)),
        400,
        "invalid_policy",
        "MINE",
    );
    expect(
        &d.call(
            "PUT",
            "/v1/orgs/o/policy",
            Some(r#"{"source": "APPLICATION", "persistent": true}"#),
        ),
        400,
        "invalid_policy",
        "no policy fields",
    );
    expect(
        &d.call(
            "PATCH",
            "/v1/orgs/o/policy",
            Some(r#"{"idle_timeout": -1}"#),
        ),
        400,
        "invalid_json",
        "negative",
    );
    // Nothing above changed anything.
    assert_eq!(
        d.call("GET", "/v1/policy", None).json()["absolute_timeout"],
        86400
    );
    assert_eq!(
        d.call("GET", "/v1/orgs/o/policy", None).json()["source"],
        "APPLICATION"
    );
}

#[test]
fn unknown_routes_and_methods() {
    let d = Daemon::start(&[]);
    expect(
        &d.call("GET", "/v2/nothing", None),
        404,
        "not_found",
        "/v2/nothing",
    );
    expect(
        &d.call("GET", "/v1/sessions/validate", None),
        405,
        "method_not_allowed",
        "GET",
    );
    expect(
        &d.call("DELETE", "/v1/policy", None),
        405,
        "method_not_allowed",
        "DELETE",
    );
}

#[test]
fn full_table_is_503_and_disturbs_nothing() {
    let d = Daemon::start(&["--max-sessions", "2"]);
    let (t1, _) = create(&d, &[], r#"{"user_id": "a"}"#);
    let (_t2, _) = create(&d, &[], r#"{"user_id": "b"}"#);
    expect(
        &d.call("POST", "/v1/sessions", Some(r#"{"user_id": "c"}"#)),
        503,
        "capacity_exceeded",
        "max-sessions",
    );
    let v = d
        .call(
            "POST",
            "/v1/sessions/validate",
            Some(&format!(r#"{{"token": "{t1}"}}"#)),
        )
        .json();
    assert_eq!(v["valid"], true);
    assert_eq!(
        d.metric("sessiond_sessions_refused_total{reason=\"capacity\"}"),
        1.0
    );
}

#[test]
fn per_user_limit() {
    let d = Daemon::start(&["--max-sessions-per-user", "1"]);
    create(&d, &[], r#"{"user_id": "a"}"#);
    expect(
        &d.call("POST", "/v1/sessions", Some(r#"{"user_id": "a"}"#)),
        409,
        "user_session_limit",
        "1 sessions",
    );
    let d = Daemon::start(&[
        "--max-sessions-per-user",
        "1",
        "--per-user-limit-action",
        "evict_oldest",
    ]);
    let (t1, _) = create(&d, &[], r#"{"user_id": "a"}"#);
    let (t2, _) = create(&d, &[], r#"{"user_id": "a"}"#);
    let v1 = d
        .call(
            "POST",
            "/v1/sessions/validate",
            Some(&format!(r#"{{"token": "{t1}"}}"#)),
        )
        .json();
    let v2 = d
        .call(
            "POST",
            "/v1/sessions/validate",
            Some(&format!(r#"{{"token": "{t2}"}}"#)),
        )
        .json();
    assert_eq!(
        (v1["valid"].as_bool(), v2["valid"].as_bool()),
        (Some(false), Some(true))
    );
}
