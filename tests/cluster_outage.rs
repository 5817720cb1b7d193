//! Every NATS server of a three-server cluster down at once, under three sessiond nodes with
//! `--cluster-ack sync`: authentication keeps answering from memory on every node, creates and
//! revocations are refused with 503 `not_replicated` but kept on the node that made them, and
//! once NATS is back what they kept reaches every node (docs/cluster.md, "NATS is
//! unreachable"). `cluster.rs`'s `cluster_without_nats_...` covers one server, validation and
//! the `async` mode; this one covers the whole cluster's outage, `/v1/auth` and convergence.

use crate::common::nats::{Nats, find_nats, three_nodes};
use crate::common::{Daemon, Response, create, eventually, request, valid};
use std::time::{Duration, Instant};

/// The ids of `user`'s sessions as `d` lists them (its own view).
fn listed(d: &Daemon, user: &str) -> Vec<String> {
    let r = d.call("GET", &format!("/v1/users/{user}/sessions"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `/v1/auth` for `token`, as a bearer token or as the session cookie.
fn auth(d: &Daemon, token: &str, cookie: bool) -> Response {
    let (name, value) = if cookie {
        ("Cookie", format!("theme=dark; session={token}"))
    } else {
        ("Authorization", format!("Bearer {token}"))
    };
    d.request("GET", "/v1/auth", &[(name, &value)], None)
}

/// `f()`, asserting it answered within `limit` (auth never waits for NATS).
fn quickly<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let r = f();
    assert!(
        started.elapsed() < limit,
        "{what} took {:?} with NATS down",
        started.elapsed()
    );
    r
}

#[test]
fn cluster_with_every_nats_server_down_auth_answers_and_kept_changes_reach_every_node_after() {
    let Some(bin) = find_nats() else { return };
    let mut nats = Nats::start(bin, 3);
    let nodes = three_nodes(&nats);
    // One session made on each node before the outage, and one that c will revoke during it.
    let before: Vec<(String, String)> = (0..3)
        .map(|i| {
            let (t, s) = create(
                &nodes[i],
                &[],
                &format!(r#"{{"user_id": "u{i}", "org_id": "acme"}}"#),
            );
            (t, s["id"].as_str().unwrap().to_owned())
        })
        .collect();
    let (doomed, _) = create(&nodes[0], &[], r#"{"user_id": "dora"}"#);
    for d in &nodes {
        assert!(before.iter().all(|(t, _)| valid(d, t)) && valid(d, &doomed));
    }

    for i in 0..3 {
        nats.stop_server(i);
    }

    // Validate, touch and /v1/auth (bearer and cookie) answer on every node for every session,
    // from memory, each at once (a miss waits for the stream only while NATS is reachable).
    let second = Duration::from_secs(2);
    let unknown = "A".repeat(43);
    for (n, d) in nodes.iter().enumerate() {
        for (token, id) in &before {
            assert!(quickly("validate", second, || valid(d, token)), "node {n}");
            for cookie in [false, true] {
                let r = quickly("/v1/auth", second, || auth(d, token, cookie));
                assert_eq!(r.status, 200, "node {n}, cookie {cookie}: {}", r.body);
                assert_eq!(r.header("x-session-id"), Some(id.as_str()));
            }
            let r = quickly("touch", second, || {
                d.call(
                    "POST",
                    "/v1/sessions/touch",
                    Some(&format!(r#"{{"token": "{token}"}}"#)),
                )
            });
            assert_eq!(r.json()["valid"], true, "node {n}: {}", r.body);
        }
        assert!(!quickly("a miss", second, || valid(d, &unknown)));
        let r = quickly("/v1/auth of a miss", second, || auth(d, &unknown, false));
        assert_eq!(r.status, 401, "node {n}: {}", r.body);
    }

    // Under sync, a create on b and a revocation on c are refused with 503 not_replicated
    // after the bounded wait (5 s; both at once), each applied on its node and kept for the
    // stream.
    let (b, c) = (nodes[1].addr, nodes[2].addr);
    let (created, revoked) = std::thread::scope(|s| {
        let create = s.spawn(|| {
            request(
                b,
                "POST",
                "/v1/sessions",
                &[],
                Some(r#"{"user_id": "carol"}"#),
            )
        });
        let revoke = s.spawn(|| {
            let body = format!(r#"{{"token": "{doomed}"}}"#);
            request(c, "POST", "/v1/sessions/revoke", &[], Some(&body))
        });
        (create.join().unwrap(), revoke.join().unwrap())
    });
    for (what, r) in [("create", &created), ("revocation", &revoked)] {
        assert_eq!(r.status, 503, "{what}: {}", r.body);
        assert_eq!(r.code(), "not_replicated", "{what}: {}", r.body);
    }
    assert!(nodes[1].metric("sessiond_cluster_not_replicated_total") >= 1.0);
    assert!(nodes[2].metric("sessiond_cluster_not_replicated_total") >= 1.0);
    // The refused create returned no token, but b holds the session (its user's listing shows
    // it); the others cannot know of it yet. c refuses the revoked session; the others cannot
    // know of that either: the nodes disagree until NATS is back.
    let carol = listed(&nodes[1], "carol");
    assert_eq!(carol.len(), 1, "b does not hold the create it refused");
    assert!(listed(&nodes[0], "carol").is_empty() && listed(&nodes[2], "carol").is_empty());
    assert!(!valid(&nodes[2], &doomed));
    assert!(valid(&nodes[0], &doomed) && valid(&nodes[1], &doomed));

    // NATS back (the same servers and stores): what b and c kept reaches every node.
    for i in 0..3 {
        nats.start_server(i);
    }
    let back = Instant::now();
    for (n, d) in nodes.iter().enumerate() {
        eventually(
            30,
            &format!("carol's kept session listed on node {n}"),
            || listed(d, "carol") == carol,
        );
        eventually(
            30,
            &format!("the kept revocation in force on node {n}"),
            || !valid(d, &doomed),
        );
        for (token, _) in &before {
            assert!(
                valid(d, token),
                "a session made before the outage lost on {n}"
            );
        }
    }
    eprintln!(
        "every node converged {:?} after NATS came back",
        back.elapsed()
    );
    // And creates are acknowledged again, and read on the other nodes at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let r = nodes[0].call("POST", "/v1/sessions", Some(r#"{"user_id": "erin"}"#));
        if r.status == 201 {
            break r.json()["token"].as_str().unwrap().to_owned();
        }
        assert_eq!(r.code(), "not_replicated", "{}", r.body);
        assert!(Instant::now() < deadline, "no create answered 201 for 30 s");
    };
    assert!(valid(&nodes[1], &token) && valid(&nodes[2], &token));
    let counts: Vec<f64> = nodes
        .iter()
        .map(|d| d.metric("sessiond_sessions_active"))
        .collect();
    assert_eq!(counts, [5.0; 3], "the nodes disagree on their sessions");
}
