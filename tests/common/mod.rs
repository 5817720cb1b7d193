//! Test harness: starts the real `sessiond` binary on an ephemeral port and talks HTTP/1.1 to it
//! with a tiny blocking client (no client crate: one less dependency to build on CI).

#![allow(dead_code)]

pub mod app;
pub mod nats;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const GATEWAY_KEY: &str = "gateway-key-for-tests-0123456789";
pub const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub logs: mpsc::Receiver<String>,
    /// Its scratch directory (the state directory is `state` in it unless the test names one).
    pub dir: Scratch,
    /// Lines printed before the start-up line (warnings about the configuration, ...).
    pub startup_logs: Vec<String>,
}

/// A scratch directory under the system's temporary directory, made by [`scratch`], removed
/// with everything in it when dropped. A failing test (a panic unwinding) keeps it and prints
/// its path, for a look at what the daemon or the servers left there.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh scratch directory named after `name`, removed when the returned guard is dropped.
pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!(
        "sessiond-test-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ (rand_u64() & 0xffff_ffff) as u128
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

pub fn keys_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("keys.toml");
    std::fs::write(
        &path,
        format!(
            "[[key]]\nname = \"gw\"\nrole = \"gateway\"\nkey = \"{GATEWAY_KEY}\"\n\
             [[key]]\nname = \"ops\"\nrole = \"admin\"\nkey = \"{ADMIN_KEY}\"\n"
        ),
    )
    .unwrap();
    path
}

impl Daemon {
    /// Starts `sessiond --listen 127.0.0.1:0 <args>` and waits for its start-up line.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_with_env(args, &[])
    }

    /// As [`Daemon::start`], with extra environment variables; returns once `/readyz` says
    /// ready (the saved sessions are loaded).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let d = Self::spawn_with_env(args, env);
        d.wait_ready();
        d
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.call("GET", "/readyz", None).status != 200 {
            assert!(
                Instant::now() < deadline,
                "sessiond never became ready; logs:\n{}",
                self.drain_logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the daemon and returns at its start-up line, before it is ready.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::spawn_wrapped(&[], args, env)
    }

    /// As [`Daemon::start`], run through `wrapper` (e.g. `["prlimit", "--nofile=64:128", "--"]`).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Daemon {
        let d = Self::spawn_wrapped(wrapper, args, &[]);
        d.wait_ready();
        d
    }

    fn spawn_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = scratch("daemon");
        let bin = env!("CARGO_BIN_EXE_sessiond");
        let mut command = match wrapper.split_first() {
            None => Command::new(bin),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
            .args(args)
            // Each daemon gets its own state directory unless the test names one (a later
            // --state-dir wins).
            .args(if args.contains(&"--state-dir") {
                vec![]
            } else {
                vec![
                    "--state-dir".to_owned(),
                    dir.join("state").display().to_string(),
                ]
            })
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sessiond");
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line
                        .split("listen=")
                        .nth(1)
                        .filter(|_| line.contains("sessiond started"))
                    {
                        let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                        seen.push(line.clone());
                        return Daemon {
                            child,
                            addr,
                            logs: rx,
                            dir,
                            startup_logs: seen,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sessiond did not start; output:\n{}", seen.join("\n"));
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Response {
        request(self.addr, method, path, headers, body)
    }

    /// Admin-less convenience (daemon started without keys).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        self.request(method, path, &[], body)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_free_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sessiond did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Collects log lines printed so far, start-up included.
    pub fn drain_logs(&self) -> Vec<String> {
        self.startup_logs
            .iter()
            .cloned()
            .chain(self.logs.try_iter())
            .collect()
    }

    /// Reads one metric sample value from `/metrics` (0 if absent).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.call("GET", "/metrics", None).body;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|v| v.strip_prefix(' '))
            })
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` is removed after this, when the fields are dropped.
    }
}

/// Sends a signal with the `kill` command (the crate forbids unsafe code, and so do its tests).
pub fn unsafe_free_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{signal} {pid} failed");
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    request_bytes(addr, method, path, headers, body.map(str::as_bytes))
}

pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    try_request_bytes(addr, method, path, headers, body).expect("connect to sessiond")
}

/// As [`request_bytes`], `None` if the daemon cannot be reached (a response cut short by the
/// daemon's death has status 0).
pub fn try_request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Option<Response> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // Host and Content-Type as a well-behaved client sends them, unless the test gives its own.
    let given = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !given("host") {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        if !given("content-type") {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    Some(parse_response(&raw))
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Creates a session and returns (token, session json).
pub fn create(d: &Daemon, headers: &[(&str, &str)], body: &str) -> (String, serde_json::Value) {
    let r = d.request("POST", "/v1/sessions", headers, Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    let j = r.json();
    (
        j["token"].as_str().unwrap().to_owned(),
        j["session"].clone(),
    )
}

/// Waits until `f` is true or panics after `secs`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port that was free a moment ago (for servers the tests start beside the daemon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `token` validates now.
pub fn valid(d: &Daemon, token: &str) -> bool {
    d.call(
        "POST",
        "/v1/sessions/validate",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    )
    .json()["valid"]
        == true
}

/// Called when a tool a test needs (nginx, nats-server, promtool, ...) is not installed; the
/// caller then returns. A test that did not run must not print a plain `ok` as if it had: so
/// this fails the test, saying how to install the tool, unless `SESSIOND_SKIP_MISSING_TOOLS=1`
/// asks to skip such tests, and then it says SKIPPED on stderr (`cargo test -- --nocapture`
/// shows it). In CI (`CI` set) it always fails: `.ci/run` installs every tool.
pub fn missing_tool(name: &str, install: &str) {
    let ci = std::env::var_os("CI").is_some();
    let skip = std::env::var("SESSIOND_SKIP_MISSING_TOOLS").is_ok_and(|v| v == "1");
    assert!(
        skip && !ci,
        "{name} is not installed and this test needs it: {install} (`.ci/run` installs every tool \
         the tests use){}",
        if ci {
            ""
        } else {
            "; or set SESSIOND_SKIP_MISSING_TOOLS=1 to skip the tests whose tool is missing"
        }
    );
    eprintln!("SKIPPED (SESSIOND_SKIP_MISSING_TOOLS=1): {name} is not installed ({install})");
}
