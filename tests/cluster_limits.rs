//! Limits a cluster node keeps when it answers for the whole cluster: unknown tokens cannot make
//! it flood NATS (misses share one question for the stream's head), and a per-user session
//! limit counts the user's sessions made on every node, its `evict_oldest` displacement
//! reaching every node. Real `nats-server` (`common::nats`) and real sessiond nodes.

use crate::common::nats::{Nats, find_nats, node};
use crate::common::{Daemon, create, eventually, request};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// A well-formed token no node has made: 43 base64url characters, the last one with its two
/// low bits zero (one secret, one spelling), drawn from a xorshift generator seeded by `seed`.
fn random_token(seed: &mut u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let mut s: String = (0..42)
        .map(|_| ALPHABET[(next() % 64) as usize] as char)
        .collect();
    s.push(ALPHABET[(next() % 16 * 4) as usize] as char);
    s
}

/// Validates `per_thread` random unknown tokens on `d` from each of `threads` threads, started
/// together; returns how many were answered valid and the slowest answer.
fn validate_random(d: &Daemon, threads: usize, per_thread: usize) -> (usize, Duration) {
    let (addr, barrier) = (d.addr, Barrier::new(threads));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut seed = 0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) << 32) ^ t as u64;
                    let tokens: Vec<String> =
                        (0..per_thread).map(|_| random_token(&mut seed)).collect();
                    barrier.wait();
                    let (mut valid, mut slowest) = (0, Duration::ZERO);
                    for token in tokens {
                        let started = Instant::now();
                        let r = request(
                            addr,
                            "POST",
                            "/v1/sessions/validate",
                            &[],
                            Some(&format!(r#"{{"token": "{token}"}}"#)),
                        );
                        slowest = slowest.max(started.elapsed());
                        assert_eq!(r.status, 200, "{}", r.body);
                        if r.json()["valid"] != false {
                            valid += 1;
                        }
                    }
                    (valid, slowest)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, Duration::ZERO), |(v, m), (wv, wm)| (v + wv, m.max(wm)))
    })
}

#[test]
fn cluster_random_tokens_share_catch_ups_and_cannot_make_a_node_flood_nats() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let a = node(&nats, "a", 1, &[]);
    let b = node(&nats, "b", 1, &[]);
    // A known session on the other node, so the stream is not empty.
    let (known, _) = create(&b, &[], r#"{"user_id": "alice"}"#);
    assert!(crate::common::valid(&a, &known));

    // 1. NATS up: 320 misses from 32 threads at once. Each miss waits for the stream's head,
    // and `sessiond_cluster_catch_ups_total` counts every lookup that waited, so it must equal
    // the misses: it cannot show sharing. What a flood would multiply is the questions to NATS
    // (stream info requests), which nats-server counts (`/jsz`): the head is asked once per
    // round trip for all the misses that arrived meanwhile (link, invariant 3). How many
    // share one question depends on how many arrive per round trip (3 to 6 seen on a loaded
    // 2-core machine): the bound, half the misses, is one that a question per miss breaks
    // whatever the machine.
    let misses = 32 * 10;
    let (api_before, catch_ups_before) = (
        nats.api_requests(0),
        a.metric("sessiond_cluster_catch_ups_total"),
    );
    let (valid, slowest) = validate_random(&a, 32, 10);
    let questions = nats.api_requests(0) - api_before;
    let catch_ups = a.metric("sessiond_cluster_catch_ups_total") - catch_ups_before;
    eprintln!(
        "NATS up: {misses} misses, {catch_ups} catch-ups, {questions} JetStream API requests, \
         slowest answer {slowest:?}"
    );
    assert_eq!(valid, 0, "a random token was answered valid");
    assert_eq!(
        catch_ups, misses as f64,
        "every miss waits for the stream's head (read-your-writes)"
    );
    assert!(
        questions <= misses as u64 / 2,
        "{questions} JetStream API requests for {misses} misses: the misses do not share"
    );

    // 2. NATS slow (its server paused): a question in flight goes unanswered for the
    // JetStream context's 2 s timeout, and every miss meanwhile waits for its answer (at most
    // 500 ms) and is then answered from memory, not found. Without sharing, each of the 320
    // misses would leave a question queued for the server; with it, one question at a time,
    // plus a few from the consumer and status tasks: misses / 10 is the bound (seen: < 10).
    let api_before = nats.api_requests(0);
    let catch_ups_before = a.metric("sessiond_cluster_catch_ups_total");
    nats.signal_server(0, "STOP");
    let (valid, slowest) = validate_random(&a, 64, 5);
    nats.signal_server(0, "CONT");
    // A create on a, answered once the stream has it (sync), comes after the questions a
    // queued on its connection while the server was paused: once it is answered, the server
    // has read them all.
    create(&a, &[], r#"{"user_id": "carol"}"#);
    let questions = nats.api_requests(0) - api_before;
    let catch_ups = a.metric("sessiond_cluster_catch_ups_total") - catch_ups_before;
    eprintln!(
        "NATS paused: {misses} misses, {catch_ups} catch-ups, {questions} JetStream API \
         requests, slowest answer {slowest:?}"
    );
    assert_eq!(valid, 0, "a random token was answered valid");
    assert_eq!(catch_ups, misses as f64);
    assert!(
        questions <= misses as u64 / 10,
        "{questions} JetStream API requests for {misses} misses with NATS paused"
    );
    // Each miss waited at most the bounded 500 ms (generous slack for a loaded machine).
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    // And the node still answers for what it knows, and catches up again.
    assert!(crate::common::valid(&a, &known));
    let (later, _) = create(&b, &[], r#"{"user_id": "bob"}"#);
    eventually(10, "a session made on b after the pause valid on a", || {
        crate::common::valid(&a, &later)
    });
}

/// The ids of `user`'s sessions as `d` lists them (admin read from its own view), oldest first.
fn user_session_ids(d: &Daemon, user: &str) -> Vec<String> {
    let r = d.call("GET", &format!("/v1/users/{user}/sessions"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut sessions = r.json()["sessions"].as_array().unwrap().clone();
    sessions.sort_by_key(|s| s["created_at"].as_str().unwrap().to_owned());
    sessions
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn cluster_per_user_limit_counts_every_nodes_sessions_and_evicts_the_oldest_everywhere() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let limit = [
        "--max-sessions-per-user",
        "3",
        "--per-user-limit-action",
        "evict_oldest",
    ];
    let nodes = [
        node(&nats, "a", 1, &limit),
        node(&nats, "b", 1, &limit),
        node(&nats, "c", 1, &limit),
    ];
    // The limit holds cluster-wide up to the replication lag (docs/cluster.md, "Reads and
    // limits"): each create waits until every node lists the sessions so far, so no two
    // creates fall within the lag and the limit must hold exactly.
    let mut made: Vec<(String, String)> = Vec::new();
    let mut create_on = |n: usize| {
        let (token, session) = create(&nodes[n], &[], r#"{"user_id": "alice"}"#);
        let id = session["id"].as_str().unwrap().to_owned();
        made.push((token, id));
        let want: Vec<&str> = made
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(|(_, id)| id.as_str())
            .collect();
        for (i, d) in nodes.iter().enumerate() {
            eventually(
                5,
                &format!("alice's sessions {want:?} listed on node {i}"),
                || user_session_ids(d, "alice") == want,
            );
        }
        // Creation times in milliseconds: the next one is strictly younger.
        std::thread::sleep(Duration::from_millis(5));
        made.last().unwrap().clone()
    };
    // Three sessions spread over a and b: at the limit on every node.
    let (oldest, _) = create_on(0);
    let (second, _) = create_on(1);
    let (third, _) = create_on(0);
    // A fourth on c, which made none of them: c counts a's and b's sessions, so it is over the
    // limit and displaces the oldest (a's), and that revocation reaches every node.
    let (fourth, _) = create_on(2);
    for (i, d) in nodes.iter().enumerate() {
        eventually(
            5,
            &format!("the oldest session refused on node {i}"),
            || !crate::common::valid(d, &oldest),
        );
        for (name, t) in [("second", &second), ("third", &third), ("fourth", &fourth)] {
            assert!(
                crate::common::valid(d, t),
                "the {name} session lost on node {i}"
            );
        }
    }
    // Once more, on b: the second session (made on b) is now the oldest and goes everywhere.
    let (fifth, _) = create_on(1);
    for (i, d) in nodes.iter().enumerate() {
        eventually(
            5,
            &format!("the second session refused on node {i}"),
            || !crate::common::valid(d, &second),
        );
        for t in [&third, &fourth, &fifth] {
            assert!(
                crate::common::valid(d, t),
                "a newer session lost on node {i}"
            );
        }
        assert!(!crate::common::valid(d, &oldest));
        assert_eq!(
            d.metric("sessiond_sessions_active"),
            3.0,
            "node {i} holds other than alice's three"
        );
    }
}
