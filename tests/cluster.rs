//! The cluster against real NATS: three `nats-server` processes with JetStream in one cluster
//! on loopback (`sync_interval: always`) and three sessiond nodes replicating through them.
//! The NATS harness is `common::nats`.

use crate::common::nats::{Nats, find_nats, node, three_nodes};
use crate::common::{Daemon, create, eventually, free_port, request, scratch, valid};
use std::time::{Duration, Instant};

fn revoke(d: &Daemon, token: &str) {
    let r = d.call(
        "POST",
        "/v1/sessions/revoke",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

/// How long until `token` stops validating on `d` (panics past 5 s).
pub(crate) fn refused_after(d: &Daemon, token: &str, since: Instant) -> Duration {
    loop {
        if !valid(d, token) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still valid after 5 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100) - 1]
}

#[test]
fn cluster_any_node_answers_for_every_session_and_revocations_reach_all() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 3);
    let nodes = three_nodes(&nats);

    // Read-your-writes: a session created on one node validates on the others at once (no
    // sleep between), through the API and through forward-auth.
    let mut tokens = Vec::new();
    for i in 0..150 {
        let (token, _) = create(
            &nodes[i % 3],
            &[],
            &format!(
                r#"{{"user_id": "user-{}", "org_id": "org-{}"}}"#,
                i % 10,
                i % 4
            ),
        );
        for other in [(i + 1) % 3, (i + 2) % 3] {
            assert!(
                valid(&nodes[other], &token),
                "session {i} made on node {} not valid on node {other}",
                i % 3
            );
        }
        let auth = nodes[(i + 1) % 3].request(
            "GET",
            "/v1/auth",
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        );
        assert_eq!(auth.status, 200, "{}", auth.body);
        tokens.push(token);
    }

    // A logout on one node is refused on the others within a bounded lag.
    let mut lags = Vec::new();
    for (i, token) in tokens.iter().enumerate().take(30) {
        revoke(&nodes[i % 3], token);
        let since = Instant::now();
        for other in [(i + 1) % 3, (i + 2) % 3] {
            lags.push(refused_after(&nodes[other], token, since));
        }
    }
    eprintln!(
        "revocation lag over {} observations: p99 {:?}, max {:?}",
        lags.len(),
        p99(lags.clone()),
        lags.iter().max().unwrap()
    );

    // A user-wide revocation on one node (user-3's sessions were made on all three).
    let r = nodes[1].call("DELETE", "/v1/users/user-3/sessions", None);
    assert_eq!(r.status, 200, "{}", r.body);
    // An org-wide one on another.
    let r = nodes[2].call("DELETE", "/v1/orgs/org-1/sessions", None);
    assert_eq!(r.status, 200, "{}", r.body);
    for (i, token) in tokens.iter().enumerate().skip(30) {
        let gone = i % 10 == 3 || i % 4 == 1;
        for (n, d) in nodes.iter().enumerate() {
            if gone {
                eventually(5, &format!("session {i} refused on node {n}"), || {
                    !valid(d, token)
                });
            } else {
                assert!(valid(d, token), "session {i} lost on node {n}");
            }
        }
    }
    // Every node sees the three, none behind once quiet.
    eventually(10, "three nodes in /v1/cluster, none behind", || {
        let v = nodes[0].call("GET", "/v1/cluster", None).json();
        let listed = v["nodes"].as_array().map_or(0, |n| n.len());
        listed == 3
            && v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["behind"] == 0 && n["caught_up"] == true)
    });
    let v = nodes[1].call("GET", "/v1/cluster", None).json();
    assert_eq!(v["node"], "b");
    assert_eq!(v["ack"], "sync");
    assert!(v["stream_head"].as_u64().unwrap() > 0, "{v}");
    assert!(nodes[2].metric("sessiond_cluster_replication_lag_seconds_count") > 0.0);
    // The alert rules' cluster metrics are what a cluster node exports.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/sessiond-rules.yml"
    ))
    .unwrap();
    let have = crate::deploy::exported(&nodes[0].call("GET", "/metrics", None).body);
    let cluster_rules: Vec<String> = crate::deploy::referenced(&rules)
        .into_iter()
        .filter(|m| m.starts_with("sessiond_cluster_"))
        .collect();
    assert!(cluster_rules.len() >= 2, "{cluster_rules:?}");
    for m in &cluster_rules {
        assert!(
            have.contains(m),
            "the alert rules use {m}, which a cluster node does not export"
        );
    }
    // Every node holds the same sessions.
    let counts: Vec<f64> = nodes
        .iter()
        .map(|d| d.metric("sessiond_sessions_active"))
        .collect();
    assert!(counts.iter().all(|c| *c == counts[0]), "{counts:?}");
    assert!(nodes[0].metric("sessiond_cluster_frames_applied_total") > 0.0);
}

#[test]
fn cluster_activity_on_one_node_keeps_a_session_alive_on_another() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let dir = scratch("cluster-idle");
    let config = dir.join("sessiond.toml");
    std::fs::write(
        &config,
        "[application]\nidle_timeout = 2\nabsolute_timeout = 3600\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let a = node(&nats, "a", 1, &["--config", config, "--tick", "10ms"]);
    let b = node(&nats, "b", 1, &["--config", config, "--tick", "10ms"]);
    let (kept, _) = create(&a, &[], r#"{"user_id": "alice"}"#);
    let (left, _) = create(&a, &[], r#"{"user_id": "bob"}"#);
    assert!(valid(&b, &kept) && valid(&b, &left));
    // Touched on A every 0.5 s for 5 s (2.5 idle timeouts): valid on B throughout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let r = a.call(
            "POST",
            "/v1/sessions/touch",
            Some(&format!(r#"{{"token": "{kept}"}}"#)),
        );
        assert_eq!(r.json()["valid"], true, "{}", r.body);
        for _ in 0..5 {
            assert!(
                valid(&b, &kept),
                "kept alive on A, refused on B after {:?}",
                start.elapsed()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The untouched one idled out on both, each by its own wheel.
    assert!(!valid(&a, &left) && !valid(&b, &left));
}

/// A logout on a node that no longer holds the session still ends it on the node that does.
/// Evictions are each node's own: with a 16 s idle timeout (2 s activity windows), activity on
/// A within a session's first window is not sent, so B evicts the session at 16 s by its view
/// while A holds it until 17.5 s. A revoke by token and a delete by id on B then reach A.
#[test]
fn cluster_a_logout_on_a_node_that_evicted_the_session_ends_it_everywhere() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let dir = scratch("cluster-revoke-evicted");
    let config = dir.join("sessiond.toml");
    std::fs::write(
        &config,
        "[application]\nidle_timeout = 16\nabsolute_timeout = 3600\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let a = node(&nats, "a", 1, &["--config", config, "--tick", "10ms"]);
    let b = node(&nats, "b", 1, &["--config", config, "--tick", "10ms"]);
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // Both nodes read this machine's clock: start at the beginning of a 2 s window.
    while wall_ms() % 2_000 > 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let window = wall_ms() / 2_000;
    let start = Instant::now();
    let (by_token, _) = create(&a, &[], r#"{"user_id": "alice"}"#);
    let (by_id, s) = create(&a, &[], r#"{"user_id": "bob"}"#);
    let id = s["id"].as_str().unwrap().to_owned();
    assert!(valid(&b, &by_token) && valid(&b, &by_id));
    let touch = |d: &Daemon, token: &str| {
        let r = d.call(
            "POST",
            "/v1/sessions/touch",
            Some(&format!(r#"{{"token": "{token}"}}"#)),
        );
        assert_eq!(r.json()["valid"], true, "{}", r.body);
    };
    std::thread::sleep(Duration::from_millis(1_500).saturating_sub(start.elapsed()));
    touch(&a, &by_token);
    touch(&a, &by_id);
    assert_eq!(wall_ms() / 2_000, window, "the touches left their window");
    // B evicts both at 16 s, by its view (validate says not_found once they are swept).
    std::thread::sleep(Duration::from_millis(16_000).saturating_sub(start.elapsed()));
    for t in [&by_token, &by_id] {
        eventually(2, "evicted on B", || {
            let r = b.call(
                "POST",
                "/v1/sessions/validate",
                Some(&format!(r#"{{"token": "{t}"}}"#)),
            );
            r.json()["reason"] == "not_found"
        });
        // A still holds it: used again, it stays there for another 16 s.
        touch(&a, t);
    }
    revoke(&b, &by_token);
    let r = b.call("DELETE", &format!("/v1/sessions/{id}"), None);
    assert_eq!(r.status, 404, "{}", r.body);
    for t in [&by_token, &by_id] {
        eventually(2, "the session refused on A", || !valid(&a, t));
    }
}

#[test]
fn cluster_a_node_restarted_catches_up_before_it_is_ready() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let a = node(&nats, "a", 1, &[]);
    let scratch_dir = scratch("cluster-restart");
    let state = scratch_dir.join("state");
    let state_arg = state.to_str().unwrap();
    let b = node(&nats, "b", 1, &["--state-dir", state_arg]);
    let (before, _) = create(&a, &[], r#"{"user_id": "u1"}"#);
    let (revoked, _) = create(&a, &[], r#"{"user_id": "u2"}"#);
    assert!(valid(&b, &before) && valid(&b, &revoked));
    crate::common::unsafe_free_kill(b.child.id(), "KILL");
    drop(b);
    // While B is down: one session revoked, others made.
    revoke(&a, &revoked);
    let made: Vec<String> = (0..50)
        .map(|i| create(&a, &[], &format!(r#"{{"user_id": "m{i}"}}"#)).0)
        .collect();
    let b = node(&nats, "b", 1, &["--state-dir", state_arg]);
    // Ready means caught up: no waiting here.
    assert!(valid(&b, &before));
    assert!(!valid(&b, &revoked));
    for t in &made {
        assert!(valid(&b, t));
    }
    assert_eq!(b.metric("sessiond_sessions_active"), 51.0);

    // A clean stop writes a snapshot with B's place in the stream: the next start reads the
    // stream from there, not from its first message.
    assert!(b.terminate().success());
    let (later, _) = create(&a, &[], r#"{"user_id": "later"}"#);
    revoke(&a, &made[0]);
    let b = node(&nats, "b", 1, &["--state-dir", state_arg]);
    // Written before the node says ready; the harness's log reader may pass it on later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Ok(l) = b.logs.recv_timeout(Duration::from_millis(100))
            && l.contains("reading the cluster's stream")
        {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no line saying where the stream is read from"
        );
    };
    let from: u64 = line
        .split("from=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(from > 10, "{line}");
    assert!(valid(&b, &later) && valid(&b, &before));
    assert!(!valid(&b, &made[0]) && !valid(&b, &revoked));
    assert_eq!(b.metric("sessiond_sessions_active"), 51.0);
}

#[test]
fn cluster_without_nats_validation_answers_and_sync_creates_are_refused() {
    let Some(bin) = find_nats() else { return };
    let mut nats = Nats::start(bin, 1);
    let sync = node(&nats, "sync", 1, &[]);
    let asynchronous = node(&nats, "async", 1, &["--cluster-ack", "async"]);
    let (token, _) = create(&sync, &[], r#"{"user_id": "u"}"#);
    assert!(valid(&asynchronous, &token));
    nats.stop_server(0);
    // Validate, touch and auth answer from memory, quickly, with NATS gone.
    let t = Instant::now();
    assert!(valid(&sync, &token) && valid(&asynchronous, &token));
    let unknown = "A".repeat(43);
    assert!(!valid(&sync, &unknown));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // sync: refused after a bounded wait, saying what happened; async: answered.
    let r = sync.call("POST", "/v1/sessions", Some(r#"{"user_id": "v"}"#));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.code(), "not_replicated");
    let r = asynchronous.call("POST", "/v1/sessions", Some(r#"{"user_id": "w"}"#));
    assert_eq!(r.status, 201, "{}", r.body);
    let kept = r.json()["token"].as_str().unwrap().to_owned();
    assert!(sync.metric("sessiond_cluster_not_replicated_total") >= 1.0);
    // NATS back: what async kept reaches the other node.
    nats.start_server(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !valid(&sync, &kept) {
        assert!(
            Instant::now() < deadline,
            "the async node's create never reached the sync node; published {} errors {}, applied seq {}",
            asynchronous.metric("sessiond_cluster_messages_published_total"),
            asynchronous.metric("sessiond_cluster_publish_errors_total"),
            sync.metric("sessiond_cluster_applied_sequence")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn org_policy(d: &Daemon, org: &str) -> serde_json::Value {
    let r = d.call("GET", &format!("/v1/orgs/{org}/policy"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn cluster_a_policy_written_on_one_node_applies_on_every_node() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let nodes = [
        node(&nats, "a", 1, &["--tick", "10ms"]),
        node(&nats, "b", 1, &["--tick", "10ms"]),
        node(&nats, "c", 1, &["--tick", "10ms"]),
    ];
    let acme: Vec<String> = (0..20)
        .map(|i| {
            create(
                &nodes[i % 3],
                &[],
                &format!(r#"{{"user_id": "u{i}", "org_id": "acme"}}"#),
            )
            .0
        })
        .collect();
    let (other, _) = create(&nodes[0], &[], r#"{"user_id": "v", "org_id": "other"}"#);

    // Tightened on B: acme's sessions end on every node, other orgs' stay.
    let r = nodes[1].call(
        "PUT",
        "/v1/orgs/acme/policy",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 1}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for (n, d) in nodes.iter().enumerate() {
        eventually(5, &format!("acme's policy on node {n}"), || {
            org_policy(d, "acme")["source"] == "CUSTOM"
        });
        eventually(5, &format!("acme's sessions evicted on node {n}"), || {
            acme.iter().all(|t| !valid(d, t))
        });
        assert!(valid(d, &other), "another org's session lost on node {n}");
    }

    // The application policy written on C reaches A; acme back on APPLICATION from A reaches B.
    let r = nodes[2].call("PUT", "/v1/policy", Some(r#"{"absolute_timeout": 7200}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(5, "the application policy on node 0", || {
        nodes[0].call("GET", "/v1/policy", None).json()["absolute_timeout"] == 7200
    });
    let r = nodes[0].call("DELETE", "/v1/orgs/acme/policy", None);
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(5, "acme back on APPLICATION on node 1", || {
        org_policy(&nodes[1], "acme")["source"] == "APPLICATION"
    });

    // A node that joins later reads every policy before it says ready.
    let r = nodes[1].call(
        "PUT",
        "/v1/orgs/beta/policy",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 600}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let d = node(&nats, "d", 1, &[]);
    assert_eq!(org_policy(&d, "beta")["source"], "CUSTOM");
    assert_eq!(org_policy(&d, "acme")["source"], "APPLICATION");
    assert_eq!(
        d.call("GET", "/v1/policy", None).json()["absolute_timeout"],
        7200
    );
}

#[test]
fn cluster_a_user_revocation_catches_a_session_made_concurrently_elsewhere() {
    let Some(bin) = find_nats() else { return };
    let mut nats = Nats::start(bin, 1);
    let a = node(&nats, "a", 1, &["--cluster-ack", "async"]);
    let b = node(&nats, "b", 1, &["--cluster-ack", "async"]);
    let c = node(&nats, "c", 1, &[]);
    let (old, _) = create(&a, &[], r#"{"user_id": "alice"}"#);
    assert!(valid(&b, &old) && valid(&c, &old));

    // NATS gone: what the nodes do meanwhile reaches the others only later, in any order.
    nats.stop_server(0);
    // On B: a login of alice, answered (async) and kept for the stream.
    let (concurrent, _) = create(&b, &[], r#"{"user_id": "alice"}"#);
    std::thread::sleep(Duration::from_millis(20));
    // On A, after it: "sign alice out everywhere". A does not know B's session.
    let r = a.call("DELETE", "/v1/users/alice/sessions", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!valid(&a, &old));
    std::thread::sleep(Duration::from_millis(20));
    // On B, after the revocation: a new login, which must stand.
    let (later, _) = create(&b, &[], r#"{"user_id": "alice"}"#);
    assert!(
        valid(&b, &concurrent),
        "B cannot know of the revocation yet"
    );

    nats.start_server(0);
    for (d, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        eventually(15, &format!("the later login valid on {n}"), || {
            valid(d, &later)
        });
        eventually(
            15,
            &format!("the concurrent session refused on {n}"),
            || !valid(d, &concurrent),
        );
        assert!(!valid(d, &old), "the old session came back on {n}");
    }
}

/// Creates sessions on `addr` until `stop`; returns the tokens answered 201 and the number of
/// other answers (refusals while a node or a NATS server dies).
fn create_until(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tag: &'static str,
) -> std::thread::JoinHandle<(Vec<String>, usize)> {
    std::thread::spawn(move || {
        let (mut ok, mut other) = (Vec::new(), 0);
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let body = format!(r#"{{"user_id": "{tag}-{i}"}}"#);
            match crate::common::try_request_bytes(
                addr,
                "POST",
                "/v1/sessions",
                &[],
                Some(body.as_bytes()),
            ) {
                Some(r) if r.status == 201 => {
                    ok.push(r.json()["token"].as_str().unwrap().to_owned());
                }
                Some(_) => other += 1,
                None => {
                    other += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        (ok, other)
    })
}

#[test]
fn cluster_a_lost_node_or_nats_server_loses_no_acknowledged_session() {
    let Some(bin) = find_nats() else { return };
    let mut nats = Nats::start(bin, 3);
    let a = node(&nats, "a", 3, &[]);
    let b = node(&nats, "b", 3, &[]);
    let scratch_dir = scratch("cluster-lost");
    let state = scratch_dir.join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let c = node(&nats, "c", 3, &["--state-dir", &state_arg]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = [
        create_until(a.addr, stop.clone(), "a"),
        create_until(b.addr, stop.clone(), "b"),
        create_until(c.addr, stop.clone(), "c"),
    ];
    std::thread::sleep(Duration::from_millis(800));
    // A machine lost: SIGKILL, while it answers creates.
    crate::common::unsafe_free_kill(c.child.id(), "KILL");
    std::thread::sleep(Duration::from_millis(800));
    // One NATS server of three lost too.
    nats.stop_server(0);
    // Creates are answered again once JetStream has moved the stream's leadership off the dead
    // server (its election takes seconds; meanwhile a create waits up to 5 s, then gets 503
    // not_replicated).
    let killed = Instant::now();
    let created_after = |d: &Daemon| loop {
        let r = d.call("POST", "/v1/sessions", Some(r#"{"user_id": "after"}"#));
        if r.status == 201 {
            return r.json()["token"].as_str().unwrap().to_owned();
        }
        assert_eq!(r.code(), "not_replicated", "{}", r.body);
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no create answered for 30 s"
        );
    };
    let after_a = created_after(&a);
    let after_b = created_after(&b);
    eprintln!(
        "creates answered again {:?} after a NATS server died",
        killed.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: Vec<(Vec<String>, usize)> =
        writers.into_iter().map(|w| w.join().unwrap()).collect();
    drop(c);
    for (n, (ok, _)) in answered.iter().enumerate() {
        assert!(ok.len() > 10, "node {n} answered only {} creates", ok.len());
    }
    eprintln!(
        "answered: a {} b {} c {}; refused or cut: {:?}",
        answered[0].0.len(),
        answered[1].0.len(),
        answered[2].0.len(),
        answered.iter().map(|(_, o)| o).collect::<Vec<_>>()
    );
    // Read-your-writes across nodes holds as soon as the stream takes writes again, even when
    // the dead server led JetStream's meta group (no consumer can be made until the next
    // election; nodes read the stream directly meanwhile).
    let answered_at = Instant::now();
    while !(valid(&a, &after_b) && valid(&b, &after_a)) {
        if answered_at.elapsed() > Duration::from_secs(2) {
            for (name, d) in [("a", &a), ("b", &b)] {
                eprintln!("--- node {name}'s log");
                for l in d
                    .drain_logs()
                    .iter()
                    .filter(|l| l.contains("cluster") || l.contains("NATS"))
                {
                    eprintln!("{l}");
                }
            }
            panic!("the creates after the failover were not valid on the other node within 2 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every acknowledged create, the dead node's included, is valid on the survivors.
    for (ok, _) in &answered {
        for t in ok {
            assert!(
                valid(&a, t) && valid(&b, t),
                "an acknowledged session was lost"
            );
        }
    }
    // The dead node comes back and catches up before it says ready.
    let c = node(&nats, "c", 3, &["--state-dir", &state_arg]);
    for (ok, _) in &answered {
        for t in ok {
            assert!(
                valid(&c, t),
                "the restarted node misses an acknowledged session"
            );
        }
    }
}

#[test]
fn cluster_view_on_a_single_node_says_there_is_none() {
    let d = Daemon::start(&[]);
    let r = d.call("GET", "/v1/cluster", None);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.code(), "not_clustered");
}

#[test]
fn cluster_behind_nginx_a_dead_node_costs_a_retry_not_an_error() {
    let Some(bin) = find_nats() else { return };
    let Some(nginx) = crate::nginx::find_nginx() else {
        crate::common::missing_tool("nginx", "apt-get install -y nginx");
        return;
    };
    let nats = Nats::start(bin, 1);
    let dir = scratch("cluster-nginx");
    let keys = crate::common::keys_file(&dir);
    let keys = keys.to_str().unwrap();
    let nodes = [
        node(&nats, "a", 1, &["--api-keys-file", keys]),
        node(&nats, "b", 1, &["--api-keys-file", keys]),
        node(&nats, "c", 1, &["--api-keys-file", keys]),
    ];
    let app = crate::nginx::echo_upstream();
    let port = free_port();
    let addrs: Vec<_> = nodes.iter().map(|d| d.addr).collect();
    let _nginx = crate::nginx::start_nginx_for(&nginx, &dir, &addrs, app, port);
    let front: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let gw = [("X-API-Key", crate::common::GATEWAY_KEY)];
    let tokens: Vec<String> = (0..30)
        .map(|i| create(&nodes[i % 3], &gw, &format!(r#"{{"user_id": "u{i}"}}"#)).0)
        .collect();
    let pass = |token: &str| {
        crate::common::request(
            front,
            "GET",
            "/app",
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        )
        .status
    };
    for t in &tokens {
        assert_eq!(pass(t), 200);
    }
    // One node dies: nginx retries its requests on the next node, and every one passes.
    crate::common::unsafe_free_kill(nodes[1].child.id(), "KILL");
    for round in 0..3 {
        for t in &tokens {
            assert_eq!(
                pass(t),
                200,
                "round {round}: a request failed with a node dead"
            );
        }
    }
    // A stopped node (SIGSTOP: connections accepted, never answered) costs a timeout, then a
    // retry.
    crate::common::unsafe_free_kill(nodes[2].child.id(), "STOP");
    for t in tokens.iter().take(10) {
        assert_eq!(pass(t), 200, "a request failed with a node stopped");
    }
    crate::common::unsafe_free_kill(nodes[2].child.id(), "CONT");
    // A revoked session is refused whichever node answers.
    let r = nodes[0].request(
        "POST",
        "/v1/sessions/revoke",
        &gw,
        Some(&format!(r#"{{"token": "{}"}}"#, tokens[0])),
    );
    assert_eq!(r.status, 204);
    eventually(5, "the revoked session refused through nginx", || {
        (0..6).all(|_| pass(&tokens[0]) == 401)
    });
}

#[test]
fn cluster_a_revocation_made_without_nats_outlives_its_nodes_crash() {
    let Some(bin) = find_nats() else { return };
    let mut nats = Nats::start(bin, 1);
    let a = node(&nats, "a", 1, &[]);
    let scratch_dir = scratch("cluster-outbox");
    let state = scratch_dir.join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let b_args = ["--cluster-ack", "async", "--state-dir", state_arg.as_str()];
    let b = node(&nats, "b", 1, &b_args);
    let (token, _) = create(&a, &[], r#"{"user_id": "alice"}"#);
    assert!(valid(&b, &token));
    // NATS gone; B logs alice out (async: answered at once, kept for the stream), its journal
    // writes it within a second, and then B dies before NATS is back.
    nats.stop_server(0);
    revoke(&b, &token);
    std::thread::sleep(Duration::from_millis(1_300));
    crate::common::unsafe_free_kill(b.child.id(), "KILL");
    drop(b);
    nats.start_server(0);
    // A never heard of it; B, back, publishes it again from its journal.
    assert!(valid(&a, &token));
    let b = node(&nats, "b", 1, &b_args);
    assert!(
        !valid(&b, &token),
        "the revocation did not survive B's crash on B"
    );
    eventually(10, "B's revocation reaches A", || !valid(&a, &token));
}

/// The same with a clean stop (SIGTERM) in place of the crash, under `sync`: the logout is
/// answered 503 ("kept and published after"), and no snapshot, periodic or last, cuts it from
/// the journal while the stream lacks it (`persist`, invariant 5), so the next start
/// publishes it.
#[test]
fn cluster_a_revocation_made_without_nats_outlives_a_clean_stop() {
    let Some(bin) = find_nats() else { return };
    let mut nats = Nats::start(bin, 1);
    let a = node(&nats, "a", 1, &[]);
    let scratch_dir = scratch("cluster-outbox-stop");
    let state = scratch_dir.join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let b_args = ["--state-dir", state_arg.as_str()];
    let b = node(&nats, "b", 1, &b_args);
    let (token, _) = create(&a, &[], r#"{"user_id": "alice"}"#);
    assert!(valid(&b, &token));
    nats.stop_server(0);
    let r = b.call(
        "POST",
        "/v1/sessions/revoke",
        Some(&format!(r#"{{"token": "{token}"}}"#)),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("not_replicated"), "{}", r.body);
    assert!(b.terminate().success());
    nats.start_server(0);
    assert!(valid(&a, &token));
    let b = node(&nats, "b", 1, &b_args);
    assert!(
        !valid(&b, &token),
        "the revocation did not survive B's stop on B"
    );
    eventually(10, "B's revocation reaches A", || !valid(&a, &token));
}

/// A node restarted while the cluster's stream cannot answer (`down`: which NATS servers
/// to stop, of `servers`) is not ready while it may catch up, then ready with what it saved
/// after `--cluster-ready-timeout`, so that authentication does not depend on NATS; once the
/// servers are back it catches up.
fn serves_its_saved_state_while_the_stream_is_silent(servers: usize, down: &[usize]) {
    let Some(bin) = find_nats() else { return };
    let mut nats = Nats::start(bin, servers);
    let scratch_dir = scratch("cluster-stale");
    let state = scratch_dir.join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let (urls, replicas) = (nats.urls(), servers.to_string());
    let args = [
        "--cluster",
        urls.as_str(),
        "--node-name",
        "a",
        "--cluster-replicas",
        replicas.as_str(),
        "--cluster-ready-timeout",
        "2s",
        "--state-dir",
        state_arg.as_str(),
    ];
    let a = Daemon::start(&args);
    let (token, _) = create(&a, &[], r#"{"user_id": "alice"}"#);
    assert!(a.terminate().success());
    for &i in down {
        nats.stop_server(i);
    }
    let a = Daemon::spawn_with_env(&args, &[]);
    let started = Instant::now();
    assert_eq!(a.call("GET", "/readyz", None).status, 503);
    a.wait_ready();
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    assert!(valid(&a, &token));
    let view = a.call("GET", "/v1/cluster", None).json();
    assert_eq!(view["caught_up"], false, "{view}");
    for &i in down {
        nats.start_server(i);
    }
    eventually(30, "caught up once the stream answers", || {
        a.call("GET", "/v1/cluster", None).json()["caught_up"] == true
    });
}

#[test]
fn cluster_a_node_restarted_while_nats_is_down_serves_its_saved_state_after_a_while() {
    serves_its_saved_state_while_the_stream_is_silent(1, &[0]);
}

/// The same when NATS answers but its JetStream cannot (two of three servers down: no
/// quorum): the node is connected, yet the stream's head never comes.
#[test]
fn cluster_a_node_restarted_while_jetstream_has_no_quorum_serves_its_saved_state_after_a_while() {
    serves_its_saved_state_while_the_stream_is_silent(3, &[1, 2]);
}

#[test]
fn cluster_two_policy_writes_at_once_on_two_nodes_leave_every_node_on_the_same_one() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let nodes = [
        node(&nats, "a", 1, &[]),
        node(&nats, "b", 1, &[]),
        node(&nats, "c", 1, &[]),
    ];
    let customs = |nodes: &[Daemon]| -> Vec<serde_json::Value> {
        nodes
            .iter()
            .map(|d| org_policy(d, "o1")["custom"].clone())
            .collect()
    };
    // Each round, A and B take a different policy for o1 at the same moment: whichever the
    // bucket took last, every node ends on it (not each on the one it took).
    for round in 0..30 {
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for (n, d) in nodes[..2].iter().enumerate() {
                let (barrier, addr) = (&barrier, d.addr);
                s.spawn(move || {
                    let body = format!(
                        r#"{{"source": "CUSTOM", "absolute_timeout": {}}}"#,
                        1000 + 2 * round + n
                    );
                    barrier.wait();
                    let r = request(addr, "PUT", "/v1/orgs/o1/policy", &[], Some(&body));
                    assert_eq!(r.status, 200, "round {round}, node {n}: {}", r.body);
                });
            }
        });
        eventually(
            5,
            &format!("one policy for o1 on every node, round {round}"),
            || {
                let c = customs(&nodes);
                let t = c[0]["absolute_timeout"].as_u64().unwrap_or(0);
                c.iter().all(|p| *p == c[0])
                    && (1000 + 2 * round..1002 + 2 * round).contains(&(t as usize))
            },
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let c = customs(&nodes);
    assert!(c.iter().all(|p| *p == c[0]), "{c:?}");
}
