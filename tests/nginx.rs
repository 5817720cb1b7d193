//! A real nginx with `deploy/nginx/sessiond.conf` in front of the daemon and a test upstream:
//! the identity contract (forged headers, bearer, a dead cookie cleared), and the whole journey
//! of a browser through the shipped site with the stand-in application of `common::app` (login
//! page, login, protected page, logout, redirected again, expired and revoked cookies), beside
//! a Debian-like default site on the same port.
//!
//! `.ci/run` installs nginx; a missing nginx fails the test (`common::missing_tool`) unless
//! `SESSIOND_SKIP_MISSING_TOOLS=1` is set outside CI.

use crate::common::{Daemon, GATEWAY_KEY, create, free_port, keys_file, request, scratch};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// An upstream that answers every request with the request's header lines as its body.
pub(crate) fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line.to_ascii_lowercase());
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    if out.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

pub(crate) struct Nginx(pub(crate) Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown; it runs without a master (see the conf), so no
        // worker outlives it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(
    nginx: &Path,
    dir: &Path,
    sessiond: SocketAddr,
    app: SocketAddr,
    port: u16,
) -> Nginx {
    start_nginx_for(nginx, dir, &[sessiond], app, port)
}

/// nginx with the shipped site, its `upstream sessiond` listing every address of `nodes`.
pub(crate) fn start_nginx_for(
    nginx: &Path,
    dir: &Path,
    nodes: &[SocketAddr],
    app: SocketAddr,
    port: u16,
) -> Nginx {
    launch(nginx, dir, nodes, app, port, "")
}

/// What Debian's enabled default site (`sites-enabled/default`) puts on the site's port: the
/// `default_server` for `_`, answering every host name that no other server claims.
const DEBIAN_DEFAULT_SITE: &str = "server { listen 127.0.0.1:PORT default_server; server_name _; return 200 \"welcome to nginx\"; }";

/// The shipped site's host name, which requests give in `Host` where the default site is on.
const SITE: &str = "app.example.com";

/// The shipped site, `before` (other servers) ahead of it in the `http` block.
fn launch(
    nginx: &Path,
    dir: &Path,
    nodes: &[SocketAddr],
    app: SocketAddr,
    port: u16,
    before: &str,
) -> Nginx {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx/sessiond.conf"
    ))
    .unwrap();
    let line = "    server 127.0.0.1:8080 max_fails=1 fail_timeout=5s;\n";
    assert!(shipped.contains(line), "the shipped upstream line changed");
    let servers: String = nodes
        .iter()
        .map(|a| line.replace("127.0.0.1:8080", &a.to_string()))
        .collect();
    let conf = shipped
        .replace(line, &servers)
        .replace("127.0.0.1:9000", &app.to_string())
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("REPLACE-WITH-GATEWAY-KEY", GATEWAY_KEY);
    std::fs::write(dir.join("sessiond.conf"), conf).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nworker_processes 1;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
             {before}\n  include {d}/sessiond.conf;\n}}\n"
        ),
    )
    .unwrap();
    let check = Command::new(nginx)
        .args([
            "-t",
            "-p",
            &d.to_string(),
            "-e",
            &format!("{d}/error.log"),
            "-c",
            &format!("{d}/nginx.conf"),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "nginx -t: {said}");
    // Beside a default site too, the shipped server has a name of its own: no server is ignored.
    assert!(!said.contains("[warn]"), "nginx -t: {said}");
    run_nginx(nginx, dir, port)
}

/// Runs `nginx` on `dir/nginx.conf` (prefix and error log in `dir`) and waits until it listens
/// on `port`; stopped when the guard drops.
pub(crate) fn run_nginx(nginx: &Path, dir: &Path, port: u16) -> Nginx {
    let d = dir.display();
    let child = Command::new(nginx)
        .args([
            "-p",
            &d.to_string(),
            "-e",
            &format!("{d}/error.log"),
            "-c",
            &format!("{d}/nginx.conf"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

#[test]
fn nginx_auth_request_passes_identity_upstream_and_refuses_strangers() {
    let Some(nginx) = find_nginx() else {
        crate::common::missing_tool("nginx", "apt-get install -y nginx");
        return;
    };
    let dir = scratch("nginx");
    let keys = keys_file(&dir);
    let d = Daemon::start(&["--api-keys-file", keys.to_str().unwrap()]);
    let app = echo_upstream();
    let port = free_port();
    let _nginx = start_nginx(&nginx, &dir, d.addr, app, port);
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let (token, s) = create(
        &d,
        &[("X-API-Key", GATEWAY_KEY)],
        r#"{"user_id": "alice", "org_id": "acme"}"#,
    );
    let cookie = format!("session={token}");
    let r = request(
        front,
        "GET",
        "/dashboard",
        &[("Cookie", &cookie), ("X-User-Id", "mallory")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The browser-facing answer of an accepted request carries no cookie from sessiond.
    assert_eq!(r.header("set-cookie"), None, "{:?}", r.headers);
    assert!(r.body.contains("x-user-id: alice\r\n"), "{}", r.body);
    assert!(r.body.contains("x-org-id: acme\r\n"), "{}", r.body);
    assert!(
        r.body
            .contains(&format!("x-session-id: {}\r\n", s["id"].as_str().unwrap())),
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("mallory"),
        "a forged identity header reached the upstream"
    );

    // Bearer works too.
    let r = request(
        front,
        "GET",
        "/api",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!(r.status, 200);

    // No session, a forged header, or a revoked session: refused before the upstream.
    assert_eq!(request(front, "GET", "/dashboard", &[], None).status, 401);
    assert_eq!(
        request(front, "GET", "/dashboard", &[("X-User-Id", "alice")], None).status,
        401
    );
    d.request(
        "POST",
        "/v1/sessions/revoke",
        &[("X-API-Key", GATEWAY_KEY)],
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    );
    // The browser still holds the dead cookie: nginx relays sessiond's clearing Set-Cookie, with
    // the attributes the cookie was issued with, so the browser drops it.
    let r = request(front, "GET", "/dashboard", &[("Cookie", &cookie)], None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("set-cookie"),
        Some("session=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0"),
        "browser-facing headers: {:?}",
        r.headers
    );
    // A refusal without a cookie (bearer, or nothing) sets no cookie.
    let r = request(
        front,
        "GET",
        "/dashboard",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!((r.status, r.header("set-cookie")), (401, None));
    assert!(d.metric("sessiond_touches_total{outcome=\"valid\"}") >= 2.0);
}

/// The `name=value` part of a `Set-Cookie`.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

#[test]
fn nginx_site_login_journey_with_a_stand_in_application() {
    let Some(nginx) = find_nginx() else {
        crate::common::missing_tool("nginx", "apt-get install -y nginx");
        return;
    };
    let dir = scratch("nginx-site");
    let keys = keys_file(&dir);
    let d = Daemon::start(&["--api-keys-file", keys.to_str().unwrap(), "--tick", "50ms"]);
    let app = crate::common::app::start(d.addr);
    let port = free_port();
    let default_site = DEBIAN_DEFAULT_SITE.replace("PORT", &port.to_string());
    let _nginx = launch(&nginx, &dir, &[d.addr], app, port, &default_site);
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut all = vec![("Host", SITE)];
        all.extend_from_slice(headers);
        request(front, "GET", path, &all, None)
    };
    let post_form = |path: &str, cookie: Option<&str>, form: &str| {
        let mut all = vec![
            ("Host", SITE),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", html),
        ];
        all.extend(cookie.map(|c| ("Cookie", c)));
        request(front, "POST", path, &all, Some(form))
    };

    // Any other host name gets the distribution's default site, as Debian's does.
    assert_eq!(
        request(front, "GET", "/login", &[], None).body,
        "welcome to nginx"
    );

    // Public without a session: the login page, its assets, health; a forged identity is
    // removed on the way.
    let r = get("/login", &[("Accept", html), ("X-User-Id", "mallory")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("login page"), "{}", r.body);
    assert!(!r.body.contains("mallory"), "{}", r.body);
    assert_eq!(get("/static/app.css", &[("Accept", html)]).body, "body {}");
    assert_eq!(get("/healthz", &[]).body, "ok");

    // A browser navigation without a session goes to the login page with its way back,
    // urlencoded (sessiond's X-Login-Next); a navigation is told by Sec-Fetch-Mode, else Accept.
    let asked = "/reports/q3?year=2026&q=a%26b+c";
    let to_login = "/login?next=/reports/q3%3Fyear%3D2026%26q%3Da%2526b%2Bc";
    let r = get(asked, &[("Accept", html)]);
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some(to_login)),
        "{r:?}"
    );
    assert_eq!(
        r.header("set-cookie"),
        None,
        "no cookie was sent, none to clear"
    );
    let r = get(asked, &[("Sec-Fetch-Mode", "navigate"), ("Accept", "*/*")]);
    assert_eq!((r.status, r.header("location")), (302, Some(to_login)));
    // API calls and a script's fetch keep a 401.
    for headers in [
        &[("Accept", "application/json")][..],
        &[][..],
        &[("Sec-Fetch-Mode", "cors"), ("Accept", html)][..],
    ] {
        let r = get(asked, headers);
        assert_eq!((r.status, r.header("location")), (401, None), "{headers:?}");
    }
    // A way back that would leave the site is not carried.
    let r = get("//evil.example/x", &[("Accept", html)]);
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("/login?next="))
    );

    // Log in: the application creates the session and sets sessiond's cookie, then sends the
    // browser back where it was going.
    let next = to_login.strip_prefix("/login?next=").unwrap();
    let r = post_form("/login", None, &format!("user=alice&org=acme&next={next}"));
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some(asked)),
        "{r:?}"
    );
    let cookie = cookie_pair(r.header("set-cookie").unwrap());
    assert!(
        cookie.starts_with("session=") && cookie.len() > 40,
        "{cookie}"
    );

    // The protected page, with sessiond's identity and never the client's.
    let r = get(
        asked,
        &[
            ("Accept", html),
            ("Cookie", &cookie),
            ("X-User-Id", "mallory"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("page\r\n"), "{}", r.body);
    let host = format!("host: {SITE}\r\n");
    for line in [
        "x-user-id: alice\r\n",
        "x-org-id: acme\r\n",
        "x-session-id: ",
        // The host and scheme the browser asked for, not the upstream's name.
        &host,
        "x-forwarded-proto: http\r\n",
        "x-forwarded-for: 127.0.0.1\r\n",
    ] {
        assert!(r.body.contains(line), "{line:?} missing: {}", r.body);
    }
    assert!(r.body.contains("x-session-expires-in: "), "{}", r.body);
    assert!(
        !r.body.contains("mallory") && !r.body.contains("x-api-key"),
        "{}",
        r.body
    );
    assert_eq!(r.header("set-cookie"), None);
    let api = get(
        "/api/me",
        &[("Accept", "application/json"), ("Cookie", &cookie)],
    );
    assert_eq!(api.status, 200);

    // Log out: the application revokes the session and clears the cookie ...
    let clear = "session=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0";
    let r = post_form("/logout", Some(&cookie), "");
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/login")),
        "{r:?}"
    );
    assert_eq!(r.header("set-cookie"), Some(clear));
    // ... and a browser that still sends the revoked cookie is redirected again, the cookie
    // cleared; an API call with it gets a 401 that clears it too.
    let r = get(asked, &[("Accept", html), ("Cookie", &cookie)]);
    assert_eq!((r.status, r.header("location")), (302, Some(to_login)));
    assert_eq!(r.header("set-cookie"), Some(clear));
    let r = get(
        "/api/me",
        &[("Accept", "application/json"), ("Cookie", &cookie)],
    );
    assert_eq!((r.status, r.header("set-cookie")), (401, Some(clear)));

    // An expired session: the same, once its idle deadline (1 s for org "brief") has passed.
    let r = d.request(
        "PUT",
        "/v1/orgs/brief/policy",
        &[("X-API-Key", crate::common::ADMIN_KEY)],
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 60, "idle_timeout_enabled": true, "idle_timeout": 1}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post_form("/login", None, "user=bob&org=brief&next=%2Fhome");
    assert_eq!((r.status, r.header("location")), (303, Some("/home")));
    let cookie = cookie_pair(r.header("set-cookie").unwrap());
    assert_eq!(
        get("/home", &[("Accept", html), ("Cookie", &cookie)]).status,
        200
    );
    std::thread::sleep(Duration::from_millis(1100));
    let r = get("/home", &[("Accept", html), ("Cookie", &cookie)]);
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("/login?next=/home")),
        "{r:?}"
    );
    assert_eq!(r.header("set-cookie"), Some(clear));
}
