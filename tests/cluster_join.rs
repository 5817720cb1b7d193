//! Joining a cluster whose stream no longer holds its beginning: a node that starts empty, and
//! one whose saved state is older than the stream's first message, both start from the
//! snapshot the nodes publish to the JetStream object store, then read the stream after it.
//! The stream's beginning is cut as retention would cut it, by purging it (real NATS). And a
//! stream made by a release before direct reads is brought up to date by the first node.

use crate::common::nats::{Nats, find_nats, node};
use crate::common::{Daemon, create, eventually, scratch, valid};

/// The published snapshot's stream sequence as `d` last saw it (0 when none).
fn snapshot_sequence(d: &Daemon) -> u64 {
    let v = d.call("GET", "/v1/cluster", None).json();
    v["snapshot"]["sequence"].as_u64().unwrap_or(0)
}

/// The stream's (first, last) sequence, after purging everything before `purge_before` if set.
fn stream_bounds(urls: &str, purge_before: Option<u64>) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(urls).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("SESSIOND").await.expect("the stream");
        if let Some(seq) = purge_before {
            stream.purge().sequence(seq).await.expect("purge");
        }
        let info = stream.info().await.expect("stream info");
        (info.state.first_sequence, info.state.last_sequence)
    })
}

#[test]
fn cluster_nodes_join_from_the_published_snapshot_when_the_stream_lost_its_beginning() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let fast = ["--cluster-snapshot-interval", "1s"];
    let a = node(&nats, "a", 1, &fast);
    let scratch_dir = scratch("cluster-join");
    let state = scratch_dir.join("state");
    let state_arg = state.to_str().unwrap();
    let with_state = ["--state-dir", state_arg];
    let c = node(&nats, "c", 1, &with_state);

    // 30 sessions that C saves, then C stops.
    let pre: Vec<String> = (0..30)
        .map(|i| create(&a, &[], &format!(r#"{{"user_id": "u{}"}}"#, i % 10)).0)
        .collect();
    assert!(pre.iter().all(|t| valid(&c, t)));
    assert!(c.terminate().success());

    // While C is down: revocations by token and user-wide (u9 holds pre[9], [19], [29]).
    for t in &pre[..5] {
        let r = a.call(
            "POST",
            "/v1/sessions/revoke",
            Some(&format!(r#"{{"token": "{t}"}}"#)),
        );
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let r = a.call("DELETE", "/v1/users/u9/sessions", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, head) = stream_bounds(&nats.urls(), None);
    eventually(20, "a snapshot covering the revocations", || {
        snapshot_sequence(&a) >= head
    });
    let published = snapshot_sequence(&a);

    // After the snapshot: more sessions and one more revocation, kept in the stream.
    let post: Vec<String> = (0..5)
        .map(|i| create(&a, &[], &format!(r#"{{"user_id": "p{i}"}}"#)).0)
        .collect();
    let r = a.call(
        "POST",
        "/v1/sessions/revoke",
        Some(&format!(r#"{{"token": "{}"}}"#, pre[5])),
    );
    assert_eq!(r.status, 204, "{}", r.body);

    // The stream loses everything up to the snapshot, as retention would cut it.
    let (first, last) = stream_bounds(&nats.urls(), Some(published + 1));
    assert_eq!(
        first,
        published + 1,
        "the purge kept messages it should cut"
    );
    assert!(last > published);

    let b = node(&nats, "b", 1, &[]);
    let c = node(&nats, "c", 1, &with_state);
    for (d, n) in [(&b, "b"), (&c, "c")] {
        assert_eq!(
            d.metric("sessiond_cluster_snapshots_loaded_total"),
            1.0,
            "{n} did not load the published snapshot"
        );
        for (i, t) in pre.iter().enumerate() {
            let live = i > 5 && i % 10 != 9;
            assert_eq!(valid(d, t), live, "session pre[{i}] on {n}");
        }
        assert!(post.iter().all(|t| valid(d, t)), "a later session on {n}");
        assert_eq!(
            d.metric("sessiond_sessions_active"),
            a.metric("sessiond_sessions_active"),
            "{n} and a disagree"
        );
    }
    // GET /v1/cluster says which snapshot a node saw.
    assert!(snapshot_sequence(&b) >= published);
}

/// A node that finds the stream made by an earlier release (without direct gets) allows them,
/// so that it and the others can read the stream while JetStream has no meta leader.
#[test]
fn cluster_a_stream_made_before_direct_reads_is_updated_to_allow_them() {
    let Some(bin) = find_nats() else { return };
    let nats = Nats::start(bin, 1);
    let urls = nats.urls();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let allow_direct = |create: bool| {
        rt.block_on(async {
            let client = async_nats::connect(urls.as_str()).await.expect("connect");
            let js = async_nats::jetstream::new(client);
            if create {
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: "SESSIOND".into(),
                    subjects: vec!["SESSIOND.changes.*".into()],
                    ..Default::default()
                })
                .await
                .expect("create the stream as an earlier release did");
            }
            let mut stream = js.get_stream("SESSIOND").await.expect("the stream");
            let direct = stream.info().await.expect("info").config.allow_direct;
            let first = if direct {
                stream.direct_get(1).await.ok().map(|m| m.sequence)
            } else {
                None
            };
            (direct, first)
        })
    };
    assert_eq!(allow_direct(true), (false, None));
    let a = node(&nats, "a", 1, &[]);
    let b = node(&nats, "b", 1, &[]);
    let (token, _) = create(&a, &[], r#"{"user_id": "alice"}"#);
    assert!(valid(&b, &token));
    assert_eq!(allow_direct(false), (true, Some(1)));
}
