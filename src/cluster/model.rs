//! Property test: random operations spread over simulated nodes (engines on one clock, each
//! with its outbox), their batches put in one stream in any order that keeps each node's own,
//! and applied by every node at random moments. Once everything is delivered, every node holds
//! the same sessions as one node that ran the same operations in the same order.
//!
//! The operations a gateway makes on one node are made on sessions that node knows (the HTTP
//! layer catches up before answering a miss; the engine alone does not), but for a revoke: on
//! a node that does not know the session, it first catches up as the HTTP layer does (the
//! creator's batch in the stream, as under `sync` before the token was answered, and the
//! stream applied), then revokes, which sends the revocation even when the node does not hold
//! the session (engine invariant 7). Idle expiry is
//! off: idle eviction is each node's own by design, and a node that has not yet applied another
//! node's activity may evict sooner (docs/cluster.md says how far). Absolute deadlines follow
//! from the creation time every node has, so they evict alike. Each operation happens at a
//! millisecond of its own (see `run`).

use super::apply::apply;
use super::outbox::Outbox;
use crate::changes::Changes;
use crate::clock::ManualClock;
use crate::engine::{Engine, EngineConfig};
use crate::policy::Policy;
use crate::session::{NewSession, SavedRef, Validation};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const NODES: usize = 3;
const USERS: usize = 3;
const ORGS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Create {
        node: usize,
        user: usize,
        org: Option<usize>,
    },
    /// Touch / revoke the i-th session (mod count) made so far, on a node that knows it.
    Touch(usize, usize),
    Revoke(usize, usize),
    RevokeUser(usize, usize),
    RevokeOrg(usize, usize),
    /// A node's outbox into the stream.
    Publish(usize),
    /// A node applies what it has not yet applied of the stream.
    Consume(usize),
    Advance(u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NODES, 0..USERS, proptest::option::of(0..ORGS))
            .prop_map(|(node, user, org)| Op::Create { node, user, org }),
        3 => (0..NODES, 0usize..64).prop_map(|(n, i)| Op::Touch(n, i)),
        1 => (0..NODES, 0usize..64).prop_map(|(n, i)| Op::Revoke(n, i)),
        1 => (0..NODES, 0..USERS).prop_map(|(n, u)| Op::RevokeUser(n, u)),
        1 => (0..NODES, 0..ORGS).prop_map(|(n, o)| Op::RevokeOrg(n, o)),
        3 => (0..NODES).prop_map(Op::Publish),
        3 => (0..NODES).prop_map(Op::Consume),
        3 => (0u64..4_000).prop_map(Op::Advance),
    ]
}

struct Node {
    engine: Engine,
    outbox: Arc<Outbox>,
    /// How much of the stream it has applied.
    applied: usize,
}

fn config() -> EngineConfig {
    EngineConfig {
        shards: 4,
        // 30 s absolute, idle off (see the module doc).
        application_policy: Policy {
            absolute_timeout_secs: 30,
            idle_timeout_enabled: false,
            idle_timeout_secs: None,
            persistent: false,
        },
        cluster: true,
        ..EngineConfig::default()
    }
}

/// What a node holds: id to (user, org, created), after sweeping what is due.
fn table(e: &Engine) -> BTreeMap<u128, (String, Option<String>, u64)> {
    e.sweep_expired();
    let mut out = BTreeMap::new();
    for shard in 0..e.shard_count() {
        let mut from = 0;
        loop {
            let next = e.visit_chunk(shard, from, 64, &mut |s: SavedRef<'_>| {
                out.insert(
                    s.id,
                    (s.user.to_owned(), s.org.map(str::to_owned), s.created_ms),
                );
            });
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
    }
    out
}

fn run(ops: Vec<Op>) {
    let clock = ManualClock::new(1_800_000_000_000);
    let nodes: Vec<Node> = (0..NODES)
        .map(|_| {
            let outbox = Arc::new(Outbox::new(Engine::shards_for(&config())));
            Node {
                engine: Engine::with_changes(
                    config(),
                    clock.clone(),
                    Some(outbox.clone() as Arc<dyn Changes>),
                ),
                outbox,
                applied: 0,
            }
        })
        .collect();
    let mut nodes = nodes;
    let single = Engine::new(config(), clock.clone());
    // The stream: (origin, batch).
    let mut stream: Vec<(usize, Vec<u8>)> = Vec::new();
    // Each token with the node that made it.
    let mut tokens: Vec<(String, usize)> = Vec::new();
    let user = |u: usize| format!("user-{u}");
    let org = |o: usize| format!("org-{o}");
    let knows = |n: &Node, t: &str| matches!(n.engine.validate(t), Validation::Valid(_));
    let publish = |n: &Node, stream: &mut Vec<(usize, Vec<u8>)>, i: usize| {
        let mut b = Vec::new();
        let seen = n.outbox.drain(&mut b);
        n.outbox.acknowledged(seen, b.len());
        if !b.is_empty() {
            stream.push((i, b));
        }
    };
    let consume = |node: &mut Node, stream: &[(usize, Vec<u8>)], n: usize| {
        for (origin, batch) in &stream[node.applied..] {
            if *origin != n {
                let a = apply(&node.engine, batch);
                assert_eq!(a.damaged_at, None);
            }
        }
        node.applied = stream.len();
    };
    for op in ops {
        // Every operation at a millisecond of its own: a user-wide revocation and a create in
        // the same millisecond on two nodes are concurrent, and the mark lets the create stand
        // everywhere, where one node would have ordered them.
        clock.advance(1);
        match op {
            Op::Create {
                node,
                user: u,
                org: o,
            } => {
                let new = NewSession {
                    user_id: user(u),
                    org_id: o.map(org),
                    ..Default::default()
                };
                let c = nodes[node].engine.create(new.clone()).unwrap();
                // The single node takes the same session (same id, same time).
                let saved = crate::session::Saved {
                    id: c.session.id.0,
                    created_ms: c.session.created_at_ms,
                    last_ms: c.session.created_at_ms,
                    user: new.user_id.into(),
                    org: new.org_id.map(Into::into),
                    metadata: None,
                };
                single.restore(saved);
                tokens.push((c.token.expose().to_owned(), node));
            }
            Op::Touch(n, i) | Op::Revoke(n, i) if !tokens.is_empty() => {
                let (t, made_on) = &tokens[i % tokens.len()];
                if matches!(op, Op::Touch(..)) {
                    if knows(&nodes[n], t) {
                        let _ = nodes[n].engine.touch(t);
                        let _ = single.touch(t);
                    }
                    continue;
                }
                if !knows(&nodes[n], t) {
                    // The HTTP layer's catch-up (see the module doc).
                    publish(&nodes[*made_on], &mut stream, *made_on);
                    consume(&mut nodes[n], &stream, n);
                }
                nodes[n].engine.revoke(t);
                single.revoke(t);
            }
            Op::Touch(..) | Op::Revoke(..) => {}
            Op::RevokeUser(n, u) => {
                nodes[n].engine.revoke_user(&user(u));
                single.revoke_user(&user(u));
            }
            Op::RevokeOrg(n, o) => {
                nodes[n].engine.revoke_org(&org(o));
                single.revoke_org(&org(o));
            }
            Op::Publish(n) => publish(&nodes[n], &mut stream, n),
            Op::Consume(n) => consume(&mut nodes[n], &stream, n),
            Op::Advance(ms) => clock.advance(ms),
        }
    }
    // Everything delivered everywhere.
    for (i, n) in nodes.iter().enumerate() {
        publish(n, &mut stream, i);
    }
    let want = table(&single);
    for (i, n) in nodes.iter().enumerate() {
        for (origin, batch) in &stream[n.applied..] {
            if *origin != i {
                apply(&n.engine, batch);
            }
        }
        assert_eq!(table(&n.engine), want, "node {i} differs from one node");
        n.engine.check();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn nodes_converge_to_one_nodes_table(ops in proptest::collection::vec(arb_op(), 1..200)) {
        run(ops);
    }
}
