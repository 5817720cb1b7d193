//! What the load generator talks to: a sessiond it started itself (the release binary built by
//! `cargo bench`), a running sessiond at `http://host:port`, the nodes of a sessiond cluster
//! (`http://a:port,http://b:port,...`: connections spread over them, round robin), a sessiond
//! on a Unix domain socket (`unix:PATH` running, or `sessiond+unix` started here), or a Redis
//! server (started here, or at a `redis://host:port` URL). Also where memory and metrics are
//! read from (the first node of a list).
//!
//! Invariants:
//! 1. A target this tool starts is its own: a fresh scratch directory, a free port (or
//!    socket), and the process killed and the directory removed when the `Target` drops.
//! 2. A target given by address is only reached, never stopped; its CPU time is reported only
//!    when its pid is known (`--pid`, or on loopback Redis's own `INFO server`).
//! 3. Connection `i` goes to node `i mod N` of a list; metrics, memory, counts and admin
//!    requests go to the first node.

use crate::conn::{Addr, Conn, HttpConn, RedisConn, Reply};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sessiond,
    Redis,
}

/// A target under load, and the process behind it when this tool started it.
pub struct Target {
    pub label: String,
    pub kind: Kind,
    /// The (first) node: metrics, memory and admin requests go here.
    pub addr: Addr,
    /// Every node; connection `i` goes to `addrs[i % len]`.
    pub addrs: Vec<Addr>,
    next: std::sync::atomic::AtomicUsize,
    child: Option<Child>,
    /// The server's pid when known (to read its resident memory).
    pub pid: Option<u32>,
    scratch: Option<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.scratch {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn scratch_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sessiond-load-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

impl Target {
    /// A sessiond that runs already, at `addr` (its pid is `--pid`'s, if given).
    fn running(addr: Addr) -> Target {
        Target {
            label: format!("sessiond {addr}"),
            kind: Kind::Sessiond,
            addr: addr.clone(),
            addrs: vec![addr],
            next: Default::default(),
            child: None,
            pid: None,
            scratch: None,
        }
    }

    /// Parses a `--target`: `sessiond` (start one), `http://host:port` (a running sessiond),
    /// `http://a:port,http://b:port,...` (the nodes of a cluster), `redis` (start
    /// `redis-server`), or `redis://host:port` (a running Redis).
    pub fn open(spec: &str, extra_args: &[String]) -> Result<Target, String> {
        if spec.contains(',') {
            let addrs = spec
                .split(',')
                .map(|s| {
                    s.trim()
                        .strip_prefix("http://")
                        .ok_or_else(|| format!("{s:?}: a list of nodes is http://HOST:PORT,..."))
                        .and_then(|r| resolve(r.trim_end_matches('/')))
                        .map(Addr::Tcp)
                })
                .collect::<Result<Vec<_>, String>>()?;
            return Ok(Target {
                label: format!("sessiond cluster of {}", addrs.len()),
                kind: Kind::Sessiond,
                addr: addrs[0].clone(),
                addrs,
                next: Default::default(),
                child: None,
                pid: None,
                scratch: None,
            });
        }
        if spec == "sessiond" {
            return start_sessiond(extra_args, false);
        }
        if spec == "sessiond+unix" {
            return start_sessiond(extra_args, true);
        }
        if let Some(addr) = spec.strip_prefix("unix:").and_then(|_| Addr::parse(spec)) {
            return Ok(Target::running(addr));
        }
        if spec == "redis" {
            return start_redis();
        }
        if let Some(rest) = spec.strip_prefix("http://") {
            let addr = Addr::Tcp(resolve(rest.trim_end_matches('/'))?);
            return Ok(Target::running(addr));
        }
        if let Some(rest) = spec.strip_prefix("redis://") {
            let addr = resolve(rest.trim_end_matches('/'))?;
            return Ok(Target {
                label: format!("redis {addr}"),
                kind: Kind::Redis,
                addr: Addr::Tcp(addr),
                addrs: vec![Addr::Tcp(addr)],
                next: Default::default(),
                child: None,
                pid: redis_pid(addr),
                scratch: None,
            });
        }
        Err(format!(
            "unknown target {spec:?}: use sessiond, sessiond+unix, http://HOST:PORT, unix:PATH, redis \
             or redis://HOST:PORT"
        ))
    }

    /// A connection to the next node, round robin (the one node of a single target).
    pub async fn connect(&self) -> Result<Conn, String> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        connect(self.kind, &self.addrs[i % self.addrs.len()])
            .await
            .map_err(|e| format!("{}: {e:?}", self.label))
    }

    /// The same target without the process behind it (which stays this one's): for traffic
    /// driven from a task of its own.
    pub fn view(&self) -> Target {
        Target {
            label: self.label.clone(),
            kind: self.kind,
            addr: self.addr.clone(),
            addrs: self.addrs.clone(),
            next: Default::default(),
            child: None,
            pid: self.pid,
            scratch: None,
        }
    }

    /// The server's resident set size in bytes, when its pid is known.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// sessiond's `/metrics` text.
    pub async fn metrics(&self) -> Option<String> {
        if self.kind != Kind::Sessiond {
            return None;
        }
        let mut c = HttpConn::connect(&self.addr).await.ok()?;
        let (s, b) = c.send("GET", "/metrics", &[], None).await.ok()?;
        (s == 200).then(|| String::from_utf8_lossy(&b).into_owned())
    }

    /// The number of sessions (keys) the target holds now.
    pub async fn count(&self) -> Option<u64> {
        match self.kind {
            Kind::Sessiond => {
                metric(&self.metrics().await?, "sessiond_sessions_active").map(|v| v as u64)
            }
            Kind::Redis => {
                let mut c = RedisConn::connect(&self.addr).await.ok()?;
                match c.cmd(&[b"DBSIZE"]).await.ok()? {
                    Reply::Int(n) => Some(n as u64),
                    _ => None,
                }
            }
        }
    }

    /// An admin request to sessiond (policy writes in the scenarios).
    pub async fn admin(&self, method: &str, path: &str, body: &str) -> Result<String, String> {
        let mut c = HttpConn::connect(&self.addr)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (s, b) = c
            .send(method, path, &[], Some(&[body]))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let text = String::from_utf8_lossy(&b).into_owned();
        if s / 100 == 2 {
            Ok(text)
        } else {
            Err(format!("{method} {path}: {s} {text}"))
        }
    }
}

/// A connection of `kind` to `addr` (a worker's, and a worker's again after a reset).
pub async fn connect(kind: Kind, addr: &Addr) -> Result<Conn, crate::conn::Failure> {
    match kind {
        Kind::Sessiond => HttpConn::connect(addr).await.map(Conn::Http),
        Kind::Redis => RedisConn::connect(addr).await.map(Conn::Redis),
    }
}

/// One sample of a metric without labels (or with the labels spelled out in `name`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `(upper bound in seconds, cumulative count)` of a Prometheus histogram.
pub fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound under which at least `q` of the samples fall.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_sessiond(extra_args: &[String], unix: bool) -> Result<Target, String> {
    let dir = scratch_dir(if unix { "sessiond-unix" } else { "sessiond" });
    let bin = env!("CARGO_BIN_EXE_sessiond");
    let listen = if unix {
        format!("unix:{}", dir.join("sessiond.sock").display())
    } else {
        "127.0.0.1:0".into()
    };
    let mut child = Command::new(bin)
        .args(["--listen", &listen, "--log-level", "info"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {bin}: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for out in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // Keep draining after start-up so the daemon never blocks on a full pipe.
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("sessiond started")
            && let Some(addr) = line
                .split("listen=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(Addr::parse)
        {
            // With persistence (the default) the session routes answer 503 until the saved
            // sessions are loaded: wait for that line.
            if !extra_args.iter().any(|a| a == "--no-persist") {
                while let Ok(line) =
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    if line.contains("sessions loaded") {
                        break;
                    }
                }
            }
            let pid = child.id();
            return Ok(Target {
                label: if unix {
                    "sessiond (unix socket)"
                } else {
                    "sessiond"
                }
                .into(),
                kind: Kind::Sessiond,
                addr: addr.clone(),
                addrs: vec![addr],
                next: Default::default(),
                child: Some(child),
                pid: Some(pid),
                scratch: Some(dir),
            });
        }
        seen.push(line);
    }
    let _ = child.kill();
    Err(format!("sessiond did not start:\n{}", seen.join("\n")))
}

fn start_redis() -> Result<Target, String> {
    let dir = scratch_dir("redis");
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("start redis-server: {e} (install it: apt-get install -y redis-server)")
        })?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    Ok(Target {
        label: "redis".into(),
        kind: Kind::Redis,
        addr: Addr::Tcp(addr),
        addrs: vec![Addr::Tcp(addr)],
        next: Default::default(),
        child: Some(child),
        pid: Some(pid),
        scratch: Some(dir),
    })
}

/// Redis's pid from `INFO server`, if it runs on this machine.
fn redis_pid(addr: SocketAddr) -> Option<u32> {
    if !addr.ip().is_loopback() {
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let mut c = RedisConn::connect(&Addr::Tcp(addr)).await.ok()?;
        match c.cmd(&[b"INFO", b"server"]).await.ok()? {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b)
                .lines()
                .find_map(|l| l.strip_prefix("process_id:")?.trim().parse().ok()),
            _ => None,
        }
    })
}
