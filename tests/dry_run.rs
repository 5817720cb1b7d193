//! `?dry_run=true` on policy writes: the answer against the live sessions, and that nothing
//! changed (policy, sessions, state directory, metrics but the dry-run counter).

use crate::common::{Daemon, create, scratch, valid};
use std::time::Duration;

const TIGHT: &str = r#"{"source": "CUSTOM", "absolute_timeout": 1, "idle_timeout": 1}"#;

#[test]
fn dry_run_predicts_the_eviction_and_changes_nothing() {
    let d = Daemon::start(&[]);
    let acme: Vec<String> = (0..3)
        .map(|i| {
            create(
                &d,
                &[],
                &format!(r#"{{"user_id": "u{i}", "org_id": "acme"}}"#),
            )
            .0
        })
        .collect();
    let (other, _) = create(&d, &[], r#"{"user_id": "v", "org_id": "other"}"#);
    std::thread::sleep(Duration::from_millis(1_100));
    let policies_file = d.dir.join("state/policies.json");
    let on_disk = std::fs::read(&policies_file).ok();
    let before = d.call("GET", "/v1/orgs/acme/policy", None).body;
    let changes = d.metric("sessiond_policy_changes_total{source=\"api\"}");

    let r = d.call("PUT", "/v1/orgs/acme/policy?dry_run=true", Some(TIGHT));
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["org_id"], "acme");
    assert_eq!(j["source"], "CUSTOM");
    assert_eq!(j["custom"]["absolute_timeout"], 1);
    assert_eq!(j["effective"]["absolute_timeout"], 1);
    // Created together and never touched: the idle and absolute deadlines tie, which counts as
    // absolute (the engine's rule); the org "other" is not governed by acme's policy.
    assert_eq!(
        j["sessions"],
        serde_json::json!({"affected": 3, "would_evict": {"idle": 0, "absolute": 3},
                           "deadline_earlier": 0, "deadline_later": 0})
    );

    // Nothing changed.
    assert_eq!(d.call("GET", "/v1/orgs/acme/policy", None).body, before);
    assert!(acme.iter().all(|t| valid(&d, t)));
    assert_eq!(std::fs::read(&policies_file).ok(), on_disk);
    assert_eq!(
        d.metric("sessiond_policy_changes_total{source=\"api\"}"),
        changes
    );
    assert_eq!(
        d.metric("sessiond_policy_dry_runs_total{target=\"org\"}"),
        1.0
    );

    // The real write does what the dry run said.
    let r = d.call("PUT", "/v1/orgs/acme/policy", Some(TIGHT));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(acme.iter().all(|t| !valid(&d, t)));
    assert!(valid(&d, &other));
    assert_eq!(d.metric("sessiond_sessions_active"), 1.0);

    // PATCH, DELETE and the application policy take it too.
    let r = d.call(
        "PATCH",
        "/v1/orgs/other/policy?dry_run=true",
        Some(r#"{"absolute_timeout": {"value": 1, "unit": "SECONDS"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["sessions"]["would_evict"]["absolute"], 1);
    let r = d.call("DELETE", "/v1/orgs/acme/policy?dry_run=true", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["source"], "APPLICATION");
    assert_eq!(
        d.call("GET", "/v1/orgs/acme/policy", None).json()["source"],
        "CUSTOM"
    );
    let r = d.call(
        "PUT",
        "/v1/policy?dry_run=true",
        Some(r#"{"absolute_timeout": 1, "idle_timeout_enabled": false}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(
        (j["org_id"].clone(), j["source"].clone()),
        (serde_json::Value::Null, "APPLICATION".into())
    );
    assert_eq!(j["sessions"]["would_evict"]["absolute"], 1);
    assert!(valid(&d, &other));
    assert_eq!(
        d.metric("sessiond_policy_dry_runs_total{target=\"application\"}"),
        1.0
    );
}

#[test]
fn dry_run_validates_like_the_write_and_refuses_unknown_parameters() {
    let d = Daemon::start(&[]);
    // The same 400 as the real write.
    let r = d.call(
        "PUT",
        "/v1/orgs/acme/policy?dry_run=true",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 0}"#),
    );
    let real = d.call(
        "PUT",
        "/v1/orgs/acme/policy",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 0}"#),
    );
    assert_eq!((r.status, r.body), (400, real.body));
    // A misspelt or bad flag is refused, never taken as a real write.
    for q in ["dryrun=true", "dry_run=yes", "dry_run=true&force=1"] {
        let r = d.call("PUT", &format!("/v1/orgs/acme/policy?{q}"), Some(TIGHT));
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_query".to_owned()),
            "{q}"
        );
    }
    assert_eq!(
        d.call("GET", "/v1/orgs/acme/policy", None).json()["source"],
        "APPLICATION"
    );
    // dry_run=false is a real write.
    assert_eq!(
        d.call("PUT", "/v1/orgs/acme/policy?dry_run=false", Some(TIGHT))
            .status,
        200
    );
    assert_eq!(
        d.call("GET", "/v1/orgs/acme/policy", None).json()["source"],
        "CUSTOM"
    );
}

#[test]
fn dry_run_is_allowed_when_policies_come_from_a_file() {
    let dir = scratch("dry-run-file");
    let file = dir.join("policies.toml");
    std::fs::write(&file, "[application]\nabsolute_timeout = 3600\n").unwrap();
    let d = Daemon::start(&["--policy-file", file.to_str().unwrap()]);
    create(&d, &[], r#"{"user_id": "u", "org_id": "acme"}"#);
    assert_eq!(
        d.call("PUT", "/v1/orgs/acme/policy", Some(TIGHT)).status,
        409
    );
    let r = d.call("PUT", "/v1/orgs/acme/policy?dry_run=true", Some(TIGHT));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["sessions"]["affected"], 1);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "[application]\nabsolute_timeout = 3600\n"
    );
    std::fs::remove_dir_all(dir).ok();
}
