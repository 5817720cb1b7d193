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
}

/// A dry run, then the real write on the same state: the write's `sessions` block says what it
/// did with the dry run's fields (its evictions under `evicted`), and they are equal, for every
/// kind of write. The policy fields of the answers are kept.
#[test]
fn a_write_reports_what_its_dry_run_predicted() {
    let d = Daemon::start(&[]);
    let org = |u: &str| format!(r#"{{"user_id": "{u}", "org_id": "acme"}}"#);
    for u in ["old1", "old2"] {
        create(&d, &[], &org(u));
    }
    // The old ones are past a 2 s lifetime, the new ones 2 s from it.
    std::thread::sleep(Duration::from_millis(2_500));
    let new: Vec<String> = ["new1", "new2"]
        .iter()
        .map(|u| create(&d, &[], &org(u)).0)
        .collect();
    let compare = |method: &str, path: &str, body: Option<&str>| {
        let dry = d.call(method, &format!("{path}?dry_run=true"), body);
        assert_eq!(dry.status, 200, "{}", dry.body);
        let real = d.call(method, path, body);
        assert_eq!(real.status, 200, "{}", real.body);
        let (dry, real) = (dry.json(), real.json());
        let (ds, rs) = (&dry["sessions"], &real["sessions"]);
        for field in ["affected", "deadline_earlier", "deadline_later"] {
            assert_eq!(
                ds[field], rs[field],
                "{method} {path}: {field}: {dry} vs {real}"
            );
        }
        assert_eq!(
            ds["would_evict"], rs["evicted"],
            "{method} {path}: {dry} vs {real}"
        );
        assert!(rs.get("would_evict").is_none(), "{real}");
        rs.clone()
    };
    let s = compare(
        "PUT",
        "/v1/orgs/acme/policy",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 2, "idle_timeout_enabled": false}"#),
    );
    assert_eq!(
        s,
        serde_json::json!({"affected": 4, "evicted": {"idle": 0, "absolute": 2},
                           "deadline_earlier": 2, "deadline_later": 0})
    );
    assert!(new.iter().all(|t| valid(&d, t)));
    let s = compare(
        "PATCH",
        "/v1/orgs/acme/policy",
        Some(r#"{"absolute_timeout": 3600}"#),
    );
    assert_eq!(
        (s["affected"].clone(), s["deadline_later"].clone()),
        (2.into(), 2.into())
    );
    // Back to the application policy: in `stricter` mode its 30-minute idle limit governed
    // already, so the deadlines stay where they were.
    let s = compare("DELETE", "/v1/orgs/acme/policy", None);
    assert_eq!(
        s,
        serde_json::json!({"affected": 2, "evicted": {"idle": 0, "absolute": 0},
                           "deadline_earlier": 0, "deadline_later": 0})
    );
    let s = compare(
        "PUT",
        "/v1/policy",
        Some(r#"{"absolute_timeout": 7200, "idle_timeout_enabled": false}"#),
    );
    assert_eq!(
        (s["affected"].clone(), s["deadline_later"].clone()),
        (2.into(), 2.into())
    );

    // The answers keep their fields beside `sessions`.
    let j = d
        .call("PUT", "/v1/policy", Some(r#"{"absolute_timeout": 7200}"#))
        .json();
    assert_eq!(
        (j["absolute_timeout"].clone(), j["persistent"].clone()),
        (7200.into(), false.into())
    );
    assert_eq!(j["sessions"]["affected"], 0);
    let j = d.call("DELETE", "/v1/orgs/acme/policy", None).json();
    assert_eq!(
        (j["org_id"].clone(), j["source"].clone()),
        ("acme".into(), "APPLICATION".into())
    );
    assert_eq!(j["effective"]["absolute_timeout"], 7200);
    // A read has no `sessions` block.
    assert!(
        d.call("GET", "/v1/orgs/acme/policy", None)
            .json()
            .get("sessions")
            .is_none()
    );
}

/// An unknown field of an org policy is named with the nearest one, `source` included.
#[test]
fn unknown_org_policy_fields_are_named_with_a_suggestion() {
    let d = Daemon::start(&[]);
    let r = d.call(
        "PUT",
        "/v1/orgs/acme/policy",
        Some(r#"{"sorce": "CUSTOM", "absolute_timout": 60, "zzz": 1}"#),
    );
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_json".to_owned()),
        "{}",
        r.body
    );
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    for needle in [
        "unknown field `sorce`; did you mean `source`?",
        "unknown field `absolute_timout`; did you mean `absolute_timeout`?",
        "unknown field `zzz`; expected one of `source`, `absolute_timeout`, `idle_timeout_enabled`, `idle_timeout`, `persistent`",
    ] {
        assert!(msg.contains(needle), "{needle} missing in {msg}");
    }
}
