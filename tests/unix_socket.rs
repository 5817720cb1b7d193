//! `--listen unix:PATH` (issue #27): a real nginx in front of a sessiond on a Unix domain socket
//! (`proxy_pass http://unix:PATH:`), the socket's mode, a stale socket replaced at start, a
//! live one refused, the file removed at a clean stop, and bad settings refused with exit 2.
//!
//! `.ci/run` installs nginx. Outside CI (`CI` unset) the nginx test says it is skipped when
//! nginx is missing; in CI a missing nginx fails it.

use crate::common::{GATEWAY_KEY, free_port, keys_file, request, scratch};
use crate::nginx::{Nginx, echo_upstream, find_nginx, run_nginx};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A sessiond on a Unix socket; killed on drop.
struct UnixDaemon {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl UnixDaemon {
    /// Starts `sessiond --listen unix:<dir>/s.sock <args>` and waits until it is ready.
    fn start(dir: &Path, args: &[&str]) -> UnixDaemon {
        let sock = dir.join("s.sock");
        let d = UnixDaemon::spawn(dir, &sock, args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&sock, "/readyz", &[]).is_none_or(|a| !a.starts_with("HTTP/1.1 200")) {
            assert!(
                Instant::now() < deadline,
                "sessiond did not become ready on {}: {}",
                sock.display(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn spawn(dir: &Path, sock: &Path, args: &[&str]) -> UnixDaemon {
        let log = dir.join(format!("sessiond-{}.log", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(args)
            .stdout(append(&log))
            .stderr(append(&log))
            .spawn()
            .unwrap();
        UnixDaemon {
            child,
            sock: sock.into(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        crate::common::unsafe_free_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "sessiond did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for UnixDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// One `GET` over the socket (`Connection: close`); the whole answer, or `None` if the socket
/// does not answer.
fn get(sock: &Path, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: sessiond\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Creates a session over the socket with the gateway key; its token.
fn create_over(sock: &Path, user: &str, org: &str) -> String {
    let body = format!(r#"{{"user_id": "{user}", "org_id": "{org}"}}"#);
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "POST /v1/sessions HTTP/1.1\r\nHost: sessiond\r\nConnection: close\r\nX-API-Key: {GATEWAY_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    json["token"].as_str().unwrap().to_owned()
}

/// sessiond's exit status and stderr for `args`, when it refuses to start.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn unix_socket_mode_stale_file_in_use_and_clean_stop() {
    let dir = scratch("unix");
    let sock = dir.join("s.sock");
    // A stale socket (a daemon killed without its clean stop leaves one): replaced at start.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let d = UnixDaemon::start(&dir, &["--listen-mode", "0640", "--no-persist"]);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert!(d.log().contains("listen=unix:"), "{}", d.log());
    let probe = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["--probe", "--listen", &format!("unix:{}", sock.display())])
        .output()
        .unwrap();
    assert!(probe.status.success(), "{probe:?}");

    // A second daemon on the same path: refused with a clear message, the first untouched.
    let second = UnixDaemon::spawn(&dir, &sock, &["--no-persist"]);
    let mut second = second;
    let status = second.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        second
            .log()
            .contains("another process accepts connections on this socket"),
        "{}",
        second.log()
    );
    assert!(
        get(&sock, "/healthz", &[])
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );

    // A clean stop removes the file.
    assert!(d.terminate().success());
    assert!(!sock.exists(), "the socket file outlived a clean stop");

    // The default mode is 0660.
    let d = UnixDaemon::start(&dir, &["--no-persist"]);
    let mode = std::fs::symlink_metadata(&sock)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    drop(d);

    // A plain file at the path is never removed.
    let _ = std::fs::remove_file(&sock);
    std::fs::write(&sock, "not a socket").unwrap();
    let (code, err) = refused(&[
        "--listen",
        &format!("unix:{}", sock.display()),
        "--no-persist",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not a socket");

    // Bad settings: exit 2 with what to do.
    let (code, err) = refused(&["--listen", "127.0.0.1:0", "--listen-mode", "0660"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listen_mode is for a Unix socket"), "{err}");
    let (code, err) = refused(&["--listen", "unix:/tmp/x.sock", "--listen-mode", "rw"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("octal"), "{err}");
    let (code, err) = refused(&["--listen", "unix:"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("has no path"), "{err}");
}

/// nginx's `auth_request` reaches sessiond over its Unix socket: a live session passes with
/// its identity, none is refused.
#[test]
fn nginx_auth_request_through_a_unix_socket() {
    let Some(nginx) = find_nginx() else {
        crate::common::missing_tool("nginx", "apt-get install -y nginx");
        return;
    };
    let dir = scratch("unix-nginx");
    let keys = keys_file(&dir);
    let d = UnixDaemon::start(
        &dir,
        &["--api-keys-file", keys.to_str().unwrap(), "--no-persist"],
    );
    let app = echo_upstream();
    let port = free_port();
    let _nginx = start_nginx(&nginx, &dir, &d.sock, app, port);
    let front: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let token = create_over(&d.sock, "alice", "acme");
    let cookie = format!("session={token}");
    let r = request(front, "GET", "/page", &[("Cookie", &cookie)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("x-user-id: alice\r\n"), "{}", r.body);
    assert!(r.body.contains("x-org-id: acme\r\n"), "{}", r.body);
    assert_eq!(request(front, "GET", "/page", &[], None).status, 401);
}

/// nginx, as its own user would run it in front of a local sessiond: `auth_request` to
/// `proxy_pass http://unix:SOCK:/v1/auth`.
fn start_nginx(
    nginx: &Path,
    dir: &Path,
    sock: &Path,
    app: std::net::SocketAddr,
    port: u16,
) -> Nginx {
    let d = dir.display();
    let s = sock.display();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp/body;\n\
         proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
         uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n\
         location = /_sessiond {{\n      internal;\n      proxy_pass http://unix:{s}:/v1/auth;\n\
         proxy_pass_request_body off;\n      proxy_set_header Content-Length \"\";\n\
         proxy_set_header X-API-Key {GATEWAY_KEY};\n    }}\n\
         location / {{\n      auth_request /_sessiond;\n\
         auth_request_set $user $upstream_http_x_user_id;\n\
         auth_request_set $org $upstream_http_x_org_id;\n\
         proxy_set_header X-User-Id $user;\n      proxy_set_header X-Org-Id $org;\n\
         proxy_pass http://{app};\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    run_nginx(nginx, dir, port)
}
