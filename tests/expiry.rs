//! Idle and absolute expiry observed end to end, with policies of a few seconds.

use crate::common::{Daemon, create, eventually};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn validate(d: &Daemon, token: &str) -> serde_json::Value {
    d.call(
        "POST",
        "/v1/sessions/validate",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    )
    .json()
}

fn touch(d: &Daemon, token: &str) -> serde_json::Value {
    d.call(
        "POST",
        "/v1/sessions/touch",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    )
    .json()
}

#[test]
fn idle_expiry_slides_with_activity_then_evicts() {
    let d = Daemon::start(&["--tick", "50ms"]);
    let r = d.call(
        "PUT",
        "/v1/policy",
        Some(r#"{"absolute_timeout": 60, "idle_timeout": 1}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (token, _) = create(&d, &[], r#"{"user_id": "idle"}"#);
    // Activity every 400 ms keeps it alive well past one idle period.
    for _ in 0..5 {
        sleep(Duration::from_millis(400));
        assert_eq!(touch(&d, &token)["valid"], true);
    }
    let quiet = Instant::now();
    eventually(5, "idle eviction", || {
        d.metric("sessiond_sessions_expired_total{reason=\"idle\"}") == 1.0
    });
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "evicted before its idle deadline"
    );
    let v = validate(&d, &token);
    assert_eq!(v["valid"], false);
    assert_eq!(v["reason"], "not_found");
    assert_eq!(d.metric("sessiond_sessions_active"), 0.0);
    assert!(d.metric("sessiond_expiry_lag_seconds_count") >= 1.0);
}

#[test]
fn absolute_expiry_ignores_activity() {
    let d = Daemon::start(&["--tick", "50ms"]);
    let r = d.call(
        "PUT",
        "/v1/policy",
        Some(r#"{"absolute_timeout": 2, "idle_timeout": 1}"#),
    );
    assert_eq!(r.status, 200);
    let (token, s) = create(&d, &[], r#"{"user_id": "abs"}"#);
    let absolute = s["absolute_expires_at"].as_str().unwrap().to_owned();
    let start = Instant::now();
    let mut last_valid = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(4) {
        let t = touch(&d, &token);
        if t["valid"] == true {
            last_valid = start.elapsed();
            assert!(
                t["session"]["expires_at"].as_str().unwrap() <= absolute.as_str(),
                "touch moved past the absolute deadline"
            );
        } else {
            assert!(
                matches!(t["reason"].as_str(), Some("expired_absolute" | "not_found")),
                "{t}"
            );
        }
        sleep(Duration::from_millis(300));
    }
    assert!(
        last_valid < Duration::from_millis(2_100),
        "valid after its absolute deadline: {last_valid:?}"
    );
    assert!(last_valid >= Duration::from_millis(1_500));
    eventually(3, "absolute eviction", || {
        d.metric("sessiond_sessions_expired_total{reason=\"absolute\"}") == 1.0
    });
}

#[test]
fn tightened_org_policy_evicts_existing_sessions_at_once() {
    let d = Daemon::start(&[]);
    let (old, _) = create(&d, &[], r#"{"user_id": "u1", "org_id": "acme"}"#);
    let (other, _) = create(&d, &[], r#"{"user_id": "u2", "org_id": "other"}"#);
    sleep(Duration::from_millis(2_100));
    let (young, _) = create(&d, &[], r#"{"user_id": "u3", "org_id": "acme"}"#);
    let r = d.call(
        "PUT",
        "/v1/orgs/acme/policy",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 2, "idle_timeout_enabled": false}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // No waiting: the old session is gone the moment the write returns.
    assert_eq!(validate(&d, &old)["reason"], "not_found");
    assert_eq!(validate(&d, &young)["valid"], true);
    assert_eq!(validate(&d, &other)["valid"], true);
    assert_eq!(
        d.metric("sessiond_sessions_expired_total{reason=\"absolute\"}"),
        1.0
    );
    assert_eq!(d.metric("sessiond_sessions_active"), 2.0);
    // Loosening again extends the young one.
    d.call("DELETE", "/v1/orgs/acme/policy", None);
    sleep(Duration::from_millis(2_100));
    assert_eq!(validate(&d, &young)["valid"], true);
}
