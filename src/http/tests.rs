//! Handler tests through the router with `tower::ServiceExt::oneshot`, on a manual clock.

use super::{AppState, router};
use crate::api_keys::ApiKeys;
use crate::clock::ManualClock;
use crate::engine::{Engine, EngineConfig};
use crate::metrics::Metrics;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tower::ServiceExt;

const T0: u64 = 1_800_000_000_000;

/// A state directory of its own for each router under test.
fn unique_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sessiond-http-test-{}-{n}", std::process::id()))
}

fn app(keys: Option<ApiKeys>) -> (axum::Router, Arc<ManualClock>) {
    let (router, clock, _) = app_loading(keys, true);
    (router, clock)
}

/// A router whose sessions are loaded when `loaded` is (the flag is returned to flip it).
fn app_loading(
    keys: Option<ApiKeys>,
    loaded: bool,
) -> (axum::Router, Arc<ManualClock>, Arc<AtomicBool>) {
    let clock = ManualClock::new(T0);
    let engine = Arc::new(Engine::new(
        EngineConfig {
            shards: 2,
            ..EngineConfig::default()
        },
        clock.clone(),
    ));
    let dir = unique_dir();
    let policies = Arc::new(crate::policy_source::PolicyManager::new(
        engine.clone(),
        Metrics::global(),
        crate::policy_source::Source::Api { state_dir: dir },
        crate::policy::DEFAULT_POLICY,
    ));
    let state = AppState::new(crate::http::Shared {
        policies,
        engine,
        metrics: Metrics::global(),
        keys: keys.map(Arc::new),
        cookie: Arc::new(crate::cookie::CookieSettings::default()),
        ready: Arc::new(AtomicBool::new(true)),
        loaded: Arc::new(AtomicBool::new(loaded)),
        journal: None,
        cluster: None,
        body_read_timeout: std::time::Duration::from_secs(10),
    });
    let loaded = state.loaded.clone();
    (router(state), clock, loaded)
}

/// The value of one sample in the process's metrics (0 when absent).
fn metric(line_prefix: &str) -> f64 {
    Metrics::global()
        .render(0)
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn session_routes_answer_loading_until_loaded_and_every_answer_is_counted_once() {
    let (app, _, loaded) = app_loading(None, false);
    // A label no other test produces: the process's metrics are shared between tests.
    let refused =
        r#"sessiond_http_requests_total{route="/v1/orgs/{org_id}/sessions",status="503"}"#;
    let done = r#"sessiond_http_requests_total{route="/v1/orgs/{org_id}/sessions",status="200"}"#;
    let (r0, d0) = (metric(refused), metric(done));
    let (s, j, h) = call(&app, "DELETE", "/v1/orgs/acme/sessions", &[], "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(j["error"]["code"], "loading");
    assert_eq!(h["retry-after"], "1");
    let (s, _, _) = call(&app, "GET", "/v1/auth", &[("cookie", "session=x")], "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    // Routes that do not read sessions answer meanwhile.
    let (s, _, _) = call(&app, "GET", "/healthz", &[], "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(&app, "GET", "/v1/policy", &[], "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(metric(refused), r0 + 1.0);

    loaded.store(true, std::sync::atomic::Ordering::Release);
    let (s, j, _) = call(&app, "DELETE", "/v1/orgs/acme/sessions", &[], "").await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(metric(refused), r0 + 1.0);
    assert_eq!(metric(done), d0 + 1.0);
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json, headers)
}

#[tokio::test]
async fn idle_expiry_through_the_router_without_sleeping() {
    let (app, clock) = app(None);
    let (s, j, _) = call(&app, "POST", "/v1/sessions", &[], r#"{"user_id": "u"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let token = j["token"].as_str().unwrap().to_owned();
    let body = format!(r#"{{"token": "{token}"}}"#);
    clock.advance(29 * 60_000);
    let (_, j, _) = call(&app, "POST", "/v1/sessions/touch", &[], &body).await;
    assert_eq!(j["valid"], true);
    assert_eq!(j["session"]["expires_in"], 1800);
    clock.advance(30 * 60_000);
    let (_, j, _) = call(&app, "POST", "/v1/sessions/validate", &[], &body).await;
    assert_eq!(
        j,
        serde_json::json!({"valid": false, "reason": "expired_idle"})
    );
    let (s, _, _) = call(
        &app,
        "GET",
        "/v1/auth",
        &[("cookie", &format!("session={token}"))],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn timestamps_are_rfc3339_from_the_clock() {
    let (app, _) = app(None);
    let (_, j, _) = call(&app, "POST", "/v1/sessions", &[], r#"{"user_id": "u"}"#).await;
    assert_eq!(j["session"]["created_at"], "2027-01-15T08:00:00.000Z");
    assert_eq!(
        j["session"]["absolute_expires_at"],
        "2027-01-16T08:00:00.000Z"
    );
    assert_eq!(j["session"]["idle_expires_at"], "2027-01-15T08:30:00.000Z");
    assert_eq!(j["session"]["org_id"], serde_json::Value::Null);
    assert_eq!(j["session"]["metadata"], serde_json::json!({}));
}

#[tokio::test]
async fn roles_and_error_body_shape() {
    let keys = ApiKeys::parse(
        "[[key]]\nname = \"gw\"\nrole = \"gateway\"\nkey = \"gateway-key-0123456789\"\n",
    )
    .unwrap();
    let (app, _) = app(Some(keys));
    let (s, j, h) = call(&app, "GET", "/v1/policy", &[], "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(j["error"]["code"], "unauthorized");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-API-Key")
    );
    let (s, j, _) = call(
        &app,
        "GET",
        "/v1/policy",
        &[("x-api-key", "gateway-key-0123456789")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(j["error"]["code"], "forbidden");
    let (s, _, _) = call(
        &app,
        "POST",
        "/v1/sessions",
        &[("x-api-key", "gateway-key-0123456789")],
        r#"{"user_id": "u"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn forward_auth_takes_envoys_appended_path() {
    // Envoy's ext_authz sends GET {path_prefix}{original path}.
    let (app, _) = app(None);
    let (_, j, _) = call(
        &app,
        "POST",
        "/v1/sessions",
        &[],
        r#"{"user_id": "u", "org_id": "o"}"#,
    )
    .await;
    let cookie = format!("session={}", j["token"].as_str().unwrap());
    for path in ["/v1/auth", "/v1/auth/", "/v1/auth/app/dashboard?x=1"] {
        let (s, _, h) = call(&app, "GET", path, &[("cookie", &cookie)], "").await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!(h["x-user-id"], "u");
        assert_eq!(h["x-org-id"], "o");
    }
    let (s, _, _) = call(
        &app,
        "GET",
        "/v1/auth/app",
        &[("cookie", "session=nope")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// A key given twice is refused wherever a body holds a map of its own, never the last value
/// kept (`extract`, invariant 2): metadata, an org policy's fields, and its `source`.
#[tokio::test]
async fn a_key_given_twice_is_refused_not_the_last_one_kept() {
    let (app, _) = app(None);
    let body = r#"{"user_id": "u", "metadata": {"role": "admin", "role": "user"}}"#;
    let (s, j, _) = call(&app, "POST", "/v1/sessions", &[], body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
    assert_eq!(j["error"]["code"], "invalid_field");
    let message = j["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"role\" appears twice"), "{message}");
    for (body, field) in [
        (
            r#"{"source": "CUSTOM", "absolute_timeout": "9999d", "absolute_timeout": "8h"}"#,
            "absolute_timeout",
        ),
        (r#"{"source": "CUSTOM", "source": "APPLICATION"}"#, "source"),
    ] {
        for method in ["PUT", "PATCH"] {
            let (s, j, _) = call(&app, method, "/v1/orgs/acme/policy", &[], body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {body}: {j}");
            assert_eq!(j["error"]["code"], "invalid_json");
            let message = j["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("{field:?} is given twice")),
                "{message}"
            );
        }
    }
    // Nothing was written.
    let (s, j, _) = call(&app, "GET", "/v1/orgs/acme/policy", &[], "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["source"], "APPLICATION", "{j}");
    // Once each, the same bodies pass.
    let body = r#"{"user_id": "u", "metadata": {"role": "admin", "team": "a"}}"#;
    assert_eq!(
        call(&app, "POST", "/v1/sessions", &[], body).await.0,
        StatusCode::CREATED
    );
    let body = r#"{"source": "CUSTOM", "absolute_timeout": "8h"}"#;
    assert_eq!(
        call(&app, "PUT", "/v1/orgs/acme/policy", &[], body).await.0,
        StatusCode::OK
    );
}

/// An unknown path or a wrong method is answered without a token that was put in the path,
/// and a 405 is counted like every other answer.
#[tokio::test]
async fn unknown_paths_are_shown_without_tokens_and_405s_are_counted() {
    let (app, _) = app(None);
    let token = "jm7hvMxiJEuUNq_vIoAmk0sU9UHIgVXSpqcc0e_l5DM";
    let (s, j, _) = call(&app, "GET", &format!("/v1/session/{token}"), &[], "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let message = j["error"]["message"].as_str().unwrap();
    assert_eq!(message, "no such endpoint: GET /v1/session/{...}");
    let counted = "sessiond_http_requests_total{route=\"/healthz\",status=\"405\"}";
    let before = metric(counted);
    let (s, j, _) = call(&app, "DELETE", &format!("/healthz?{token}"), &[], "").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(j["error"]["message"], "DELETE is not allowed on /healthz");
    assert_eq!(metric(counted), before + 1.0);
}

/// The admin session routes take no query string: `?limit=10` is refused, not ignored (the
/// answer would hold every session, not a page of them).
#[tokio::test]
async fn admin_session_routes_refuse_a_query_string() {
    let (app, _) = app(None);
    let id = "0123456789abcdef0123456789abcdef";
    for (method, path) in [
        ("GET", "/v1/users/u/sessions".to_owned()),
        ("DELETE", "/v1/users/u/sessions".to_owned()),
        ("DELETE", "/v1/orgs/o/sessions".to_owned()),
        ("GET", format!("/v1/sessions/{id}")),
        ("DELETE", format!("/v1/sessions/{id}")),
    ] {
        let (s, j, _) = call(&app, method, &format!("{path}?limit=10"), &[], "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {j}");
        assert_eq!(j["error"]["code"], "invalid_query", "{method} {path}");
        let (s, _, _) = call(&app, method, &path, &[], "").await;
        assert_ne!(s, StatusCode::BAD_REQUEST, "{method} {path}");
    }
}
