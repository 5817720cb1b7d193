//! Cookies that honour the effective policy's `persistent`, logout clearing, and forward-auth
//! clearing a dead cookie.

use crate::common::Daemon;

fn cookie_of(d: &Daemon, body: &str) -> (String, String) {
    let r = d.call("POST", "/v1/sessions", Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    let j = r.json();
    (
        j["token"].as_str().unwrap().to_owned(),
        j["cookie"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn persistent_orgs_get_max_age_and_others_a_browser_session_cookie() {
    let d = Daemon::start(&[]);
    // Stricter mode: persistent needs the application policy to allow it too.
    d.call("PUT", "/v1/policy", Some(r#"{"absolute_timeout": {"value": 1, "unit": "DAYS"}, "idle_timeout": 1800, "persistent": true}"#));
    d.call("PUT", "/v1/orgs/p/policy", Some(r#"{"source": "CUSTOM", "absolute_timeout": {"value": 2, "unit": "HOURS"}, "persistent": true}"#));
    d.call("PUT", "/v1/orgs/np/policy", Some(r#"{"source": "CUSTOM", "absolute_timeout": {"value": 2, "unit": "HOURS"}, "persistent": false}"#));

    let (token, cookie) = cookie_of(&d, r#"{"user_id": "u", "org_id": "p"}"#);
    assert_eq!(
        cookie,
        format!("session={token}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=7200")
    );
    let (token, cookie) = cookie_of(&d, r#"{"user_id": "u", "org_id": "np"}"#);
    assert_eq!(
        cookie,
        format!("session={token}; Path=/; HttpOnly; Secure; SameSite=Lax")
    );
    assert!(!cookie.contains("Expires"));

    // An org that switches: new sessions follow its new effective policy.
    d.call(
        "PUT",
        "/v1/orgs/sw/policy",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 600, "persistent": true}"#),
    );
    let (_, before) = cookie_of(&d, r#"{"user_id": "u", "org_id": "sw"}"#);
    assert!(before.ends_with("; Max-Age=600"), "{before}");
    d.call(
        "PATCH",
        "/v1/orgs/sw/policy",
        Some(r#"{"persistent": false}"#),
    );
    let (_, after) = cookie_of(&d, r#"{"user_id": "u", "org_id": "sw"}"#);
    assert!(!after.contains("Max-Age"), "{after}");
    // The default application policy is not persistent.
    let d = Daemon::start(&[]);
    let (_, c) = cookie_of(&d, r#"{"user_id": "u"}"#);
    assert!(!c.contains("Max-Age"), "{c}");
}

#[test]
fn logout_and_dead_cookies_are_cleared_with_the_same_attributes() {
    let d = Daemon::start(&[
        "--cookie-name",
        "sid",
        "--cookie-domain",
        "example.com",
        "--cookie-path",
        "/app",
        "--cookie-same-site",
        "strict",
    ]);
    let (token, cookie) = cookie_of(&d, r#"{"user_id": "u"}"#);
    assert_eq!(
        cookie,
        format!("sid={token}; Path=/app; Domain=example.com; HttpOnly; Secure; SameSite=Strict")
    );
    let clear = "sid=; Path=/app; Domain=example.com; HttpOnly; Secure; SameSite=Strict; Max-Age=0";

    // A live session: 200 and never a Set-Cookie.
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Cookie", &format!("sid={token}"))],
        None,
    );
    assert_eq!((r.status, r.header("set-cookie")), (200, None));

    let r = d.call(
        "POST",
        "/v1/sessions/revoke",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("set-cookie"), Some(clear));

    // The browser still sends the dead cookie: the 401 clears it ...
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Cookie", &format!("sid={token}"))],
        None,
    );
    assert_eq!((r.status, r.header("set-cookie")), (401, Some(clear)));
    // ... but a bearer token or no credential at all gets no cookie.
    let r = d.request(
        "GET",
        "/v1/auth",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!((r.status, r.header("set-cookie")), (401, None));
    let r = d.call("GET", "/v1/auth", None);
    assert_eq!((r.status, r.header("set-cookie")), (401, None));
}

#[test]
fn insecure_cookies_are_for_local_development_and_say_so() {
    let d = Daemon::start(&["--cookie-secure", "false"]);
    let (_, c) = cookie_of(&d, r#"{"user_id": "u"}"#);
    assert!(!c.contains("Secure"), "{c}");
    let logs = d.drain_logs().join("\n");
    assert!(logs.contains("cookie_secure is false"), "{logs}");
}

/// The cookies docs/http-api.md shows for its create examples are the daemon's, token aside: the
/// default policy's is a browser-session cookie (no `Max-Age`), the persistent org's has one.
#[test]
fn the_documented_create_cookies_are_the_real_ones() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/http-api.md")).unwrap();
    let lines: Vec<&str> = doc.lines().collect();
    let examples: Vec<(&str, &str)> = lines
        .windows(2)
        .filter(|w| w[0].starts_with("$ curl") && w[0].ends_with("| jq -r .cookie"))
        .map(|w| {
            let body = w[0]
                .split("--json '")
                .nth(1)
                .unwrap()
                .split('\'')
                .next()
                .unwrap();
            (body, w[1])
        })
        .collect();
    assert_eq!(examples.len(), 2, "{examples:?}");
    let d = Daemon::start(&[]);
    let token_aside = |cookie: &str| {
        let (name, rest) = cookie.split_once('=').unwrap();
        format!("{name}=TOKEN{}", &rest[rest.find(';').unwrap()..])
    };
    for (i, (body, shown)) in examples.iter().enumerate() {
        if i == 1 {
            // The persistent org of the second example: 8 hours, persistent (stricter mode needs
            // the application policy to allow it too).
            d.call(
                "PUT",
                "/v1/policy",
                Some(r#"{"absolute_timeout": 86400, "idle_timeout": 1800, "persistent": true}"#),
            );
            d.call(
                "PUT",
                "/v1/orgs/kiosk/policy",
                Some(r#"{"source": "CUSTOM", "absolute_timeout": "8h", "persistent": true}"#),
            );
        }
        let (_, cookie) = cookie_of(&d, body);
        assert_eq!(
            token_aside(&cookie),
            token_aside(shown),
            "the example {body}"
        );
    }
}
