//! A randomized fault run in the spirit of Jepsen: three NATS servers and three sessiond nodes
//! (`--cluster-ack sync`), clients creating, revoking and validating sessions on random nodes,
//! while a nemesis kills (SIGKILL) and restarts nodes, pauses them (SIGSTOP/SIGCONT) and kills
//! and restarts NATS servers (at most one down at a time). Then everything heals and the
//! history is checked:
//! - every create that was answered 201 is valid on every node, unless a revocation of it was
//!   asked for (one answered 503 or cut may still take effect: it is kept and published);
//! - every revocation answered 204 is refused on every node.
//!
//! CI runs a short version (`SESSIOND_FAULT_SECS`, default 8 s, with a fixed seed unless
//! `SESSIOND_FAULT_SEED` is set); people run longer ones, e.g.
//! `SESSIOND_FAULT_SECS=300 cargo test --test blackbox cluster_faults -- --nocapture`.

use crate::common::nats::{Nats, find_nats};
use crate::common::{Daemon, eventually, scratch, try_request_bytes, unsafe_free_kill, valid};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tiny xorshift generator: the run is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One sessiond node: its state directory outlives its processes.
struct Node {
    name: &'static str,
    state: String,
    daemon: Option<Daemon>,
    paused: bool,
}

fn start(nats: &Nats, name: &str, state: &str) -> Daemon {
    let urls = nats.urls();
    let d = Daemon::spawn_with_env(
        &[
            "--cluster",
            &urls,
            "--node-name",
            name,
            "--cluster-replicas",
            "3",
            "--state-dir",
            state,
        ],
        &[],
    );
    d.wait_ready();
    d
}

#[derive(Default)]
struct History {
    /// Tokens whose create was answered 201.
    created: Vec<String>,
    /// Tokens whose revocation was answered 204.
    revoked: Vec<String>,
    /// Tokens whose revocation was asked for, whatever the answer: one refused with 503
    /// `not_replicated` or cut by a node's death may still take effect (it is kept and
    /// published later), so such a session may be valid or not.
    revoke_tried: Vec<String>,
    refused: usize,
}

fn client(
    addrs: Arc<Mutex<Vec<Option<SocketAddr>>>>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let Some(addr) = addrs.lock().unwrap()[rng.below(3) as usize] else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let known: Option<String> = {
                let h = history.lock().unwrap();
                (!h.created.is_empty())
                    .then(|| h.created[rng.below(h.created.len() as u64) as usize].clone())
            };
            match (rng.below(10), known) {
                (0..=5, _) | (_, None) => {
                    let body = format!(r#"{{"user_id": "c{seed}-{i}"}}"#);
                    match try_request_bytes(
                        addr,
                        "POST",
                        "/v1/sessions",
                        &[],
                        Some(body.as_bytes()),
                    ) {
                        Some(r) if r.status == 201 => {
                            let t = r.json()["token"].as_str().unwrap().to_owned();
                            history.lock().unwrap().created.push(t);
                        }
                        _ => history.lock().unwrap().refused += 1,
                    }
                }
                (6, Some(t)) => {
                    history.lock().unwrap().revoke_tried.push(t.clone());
                    let body = format!(r#"{{"token": "{t}"}}"#);
                    match try_request_bytes(
                        addr,
                        "POST",
                        "/v1/sessions/revoke",
                        &[],
                        Some(body.as_bytes()),
                    ) {
                        Some(r) if r.status == 204 => history.lock().unwrap().revoked.push(t),
                        _ => history.lock().unwrap().refused += 1,
                    }
                }
                (_, Some(t)) => {
                    let body = format!(r#"{{"token": "{t}"}}"#);
                    let _ = try_request_bytes(
                        addr,
                        "POST",
                        "/v1/sessions/validate",
                        &[],
                        Some(body.as_bytes()),
                    );
                }
            }
        }
    })
}

#[test]
fn cluster_faults_lose_no_acknowledged_create_or_revocation() {
    let Some(bin) = find_nats() else { return };
    let secs: u64 = std::env::var("SESSIOND_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("SESSIOND_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5e55_10d5);
    eprintln!("fault run: {secs} s, seed {seed}");
    let mut rng = Rng(seed | 1);
    let mut nats = Nats::start(bin, 3);
    let dir = scratch("cluster-faults");
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let state = dir.join(name).display().to_string();
            Node {
                name,
                daemon: Some(start(&nats, name, &state)),
                state,
                paused: false,
            }
        })
        .collect();
    let addrs = Arc::new(Mutex::new(
        nodes
            .iter()
            .map(|n| n.daemon.as_ref().map(|d| d.addr))
            .collect::<Vec<_>>(),
    ));
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (1..=4)
        .map(|k| {
            client(
                addrs.clone(),
                history.clone(),
                stop.clone(),
                seed.wrapping_mul(k) | 1,
            )
        })
        .collect();

    let mut nats_down: Option<usize> = None;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut faults = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
        let i = rng.below(3) as usize;
        match rng.below(4) {
            // Kill a node, or bring a dead one back.
            0 => {
                let n = &mut nodes[i];
                if let Some(d) = n.daemon.take() {
                    if n.paused {
                        unsafe_free_kill(d.child.id(), "CONT");
                        n.paused = false;
                    }
                    unsafe_free_kill(d.child.id(), "KILL");
                    addrs.lock().unwrap()[i] = None;
                    faults.push(format!("kill {}", n.name));
                } else {
                    let d = start(&nats, n.name, &n.state);
                    addrs.lock().unwrap()[i] = Some(d.addr);
                    n.daemon = Some(d);
                    faults.push(format!("restart {}", n.name));
                }
            }
            // Pause a node, or let a paused one go on.
            1 => {
                let n = &mut nodes[i];
                if let Some(d) = &n.daemon {
                    let sig = if n.paused { "CONT" } else { "STOP" };
                    unsafe_free_kill(d.child.id(), sig);
                    n.paused = !n.paused;
                    faults.push(format!("{sig} {}", n.name));
                }
            }
            // Kill a NATS server (one at a time), or bring it back.
            _ => match nats_down {
                None => {
                    nats.stop_server(i);
                    nats_down = Some(i);
                    faults.push(format!("kill nats {i}"));
                }
                Some(j) => {
                    nats.start_server(j);
                    nats_down = None;
                    faults.push(format!("restart nats {j}"));
                }
            },
        }
    }
    // Heal: every NATS server up, every node running and ready.
    if let Some(j) = nats_down {
        nats.start_server(j);
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        match &n.daemon {
            Some(d) if n.paused => {
                unsafe_free_kill(d.child.id(), "CONT");
                n.paused = false;
            }
            Some(_) => {}
            None => {
                let d = start(&nats, n.name, &n.state);
                addrs.lock().unwrap()[i] = Some(d.addr);
                n.daemon = Some(d);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let h = history.lock().unwrap();
    eprintln!(
        "faults: {}\nacknowledged: {} creates, {} revocations; {} requests refused or cut",
        faults.join(", "),
        h.created.len(),
        h.revoked.len(),
        h.refused
    );
    let live: Vec<&Daemon> = nodes.iter().map(|n| n.daemon.as_ref().unwrap()).collect();
    for d in &live {
        d.wait_ready();
    }
    // Quiet now: every node catches up with the stream.
    eventually(30, "every node caught up", || {
        live.iter().all(|d| {
            let v = d.call("GET", "/v1/cluster", None).json();
            v["behind"] == 0 && v["outbox_bytes"] == 0
        })
    });
    let revoked: std::collections::HashSet<&String> = h.revoke_tried.iter().collect();
    for (n, d) in live.iter().enumerate() {
        for t in &h.revoked {
            assert!(
                !valid(d, t),
                "an acknowledged revocation is not in force on node {n}"
            );
        }
        for t in h.created.iter().filter(|t| !revoked.contains(t)) {
            assert!(
                valid(d, t),
                "an acknowledged create is not valid on node {n}"
            );
        }
    }
    // The nodes agree, but for sessions nobody was told of: a create cut by a node's death,
    // kept in its journal but not in the stream, may exist on that node only (docs/cluster.md).
    // Each is a request that got no 201, so the counts differ by at most those.
    let counts: Vec<f64> = live
        .iter()
        .map(|d| d.metric("sessiond_sessions_active"))
        .collect();
    eprintln!("sessions per node: {counts:?}");
    let spread = counts.iter().cloned().fold(f64::MIN, f64::max)
        - counts.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread <= h.refused as f64,
        "the nodes disagree by {spread} sessions, more than the {} requests refused or cut: \
         {counts:?}",
        h.refused
    );
    assert!(h.created.len() > 20, "too few creates to mean anything");
}
