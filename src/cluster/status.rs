//! Who is in the cluster and how far behind each node is: every node puts its status in the
//! key-value bucket `<stream>_NODES` every [`STATUS_INTERVAL`] and watches the bucket, so that
//! `GET /v1/cluster` on any node lists the nodes seen recently with the stream sequence each
//! has applied.
//!
//! Invariants:
//! 1. A node's entry is its own name as key and its [`NodeStatus`] as JSON; the bucket keeps an
//!    entry [`NODE_TTL`] after its last update, so a node that died drops out of the list by
//!    itself (and a clean stop deletes its entry at once).
//! 2. The stream's head is asked every [`STATUS_INTERVAL`]; `behind` (head minus applied) is
//!    computed against it, for this node and, from their reports, for the others.
//! 3. The view holds no session data: names, sequences and times only.

use super::Cluster;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a node reports and asks for the stream's head.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// How long the bucket keeps a report that is not renewed.
pub const NODE_TTL: Duration = Duration::from_secs(30);

/// What a node reports of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// This run of the node (it changes at each start).
    pub run: String,
    pub applied_sequence: u64,
    pub caught_up: bool,
    pub outbox_bytes: u64,
    /// Unix milliseconds of the report, by the node's clock.
    pub reported_at_ms: u64,
    pub version: String,
}

/// The peers' reports, by node name.
#[derive(Default)]
pub struct Peers(parking_lot::Mutex<BTreeMap<String, NodeStatus>>);

impl Peers {
    pub fn all(&self) -> Vec<NodeStatus> {
        self.0.lock().values().cloned().collect()
    }
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub node: String,
    pub stream: String,
    pub ack: String,
    pub connected: bool,
    pub caught_up: bool,
    pub stream_head: u64,
    pub applied_sequence: u64,
    pub behind: u64,
    pub outbox_bytes: u64,
    /// The snapshot for joining nodes in the object store, as this node last saw it.
    pub snapshot: Option<super::seed::Published>,
    /// Every node that reported within [`NODE_TTL`], this one included, by name.
    pub nodes: Vec<PeerView>,
}

#[derive(Debug, Serialize)]
pub struct PeerView {
    pub node: String,
    pub applied_sequence: u64,
    pub behind: u64,
    pub caught_up: bool,
    pub reported_at_ms: u64,
    pub version: String,
}

impl Cluster {
    /// This node's report now.
    fn own_status(&self, now_ms: u64) -> NodeStatus {
        NodeStatus {
            node: self.settings.node.clone(),
            run: self.run.clone(),
            applied_sequence: self.applied(),
            caught_up: self.caught_up(),
            outbox_bytes: self.outbox.backlog() as u64,
            reported_at_ms: now_ms,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The view `GET /v1/cluster` answers (invariant 3).
    pub fn view(&self, now_ms: u64) -> ClusterView {
        let head = self.head.load(Ordering::Acquire);
        let own = self.own_status(now_ms);
        let mut all: BTreeMap<String, NodeStatus> = self
            .peers
            .all()
            .into_iter()
            .map(|s| (s.node.clone(), s))
            .collect();
        // A report past its time to live may still be here if no event came since (invariant 1).
        let cutoff = now_ms.saturating_sub(NODE_TTL.as_millis() as u64);
        all.retain(|_, s| s.reported_at_ms >= cutoff);
        all.insert(own.node.clone(), own.clone());
        ClusterView {
            node: own.node.clone(),
            stream: self.settings.stream.clone(),
            ack: self.settings.ack.to_string(),
            connected: self.connected(),
            caught_up: own.caught_up,
            stream_head: head,
            applied_sequence: own.applied_sequence,
            behind: head.saturating_sub(own.applied_sequence),
            outbox_bytes: own.outbox_bytes,
            snapshot: self.snapshot.lock().clone(),
            nodes: all
                .into_values()
                .map(|s| PeerView {
                    behind: head.saturating_sub(s.applied_sequence),
                    node: s.node,
                    applied_sequence: s.applied_sequence,
                    caught_up: s.caught_up,
                    reported_at_ms: s.reported_at_ms,
                    version: s.version,
                })
                .collect(),
        }
    }

    /// Deletes this node's report (a clean stop; invariant 1).
    pub async fn leave(&self) {
        let kv = self.nodes_bucket.get().cloned();
        if let Some(kv) = kv {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), kv.delete(&self.settings.node)).await;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Reports this node, learns the stream's head and watches the others, forever.
pub async fn run(c: Arc<Cluster>, js: jetstream::Context, stream: jetstream::stream::Stream) {
    let name = format!("{}_NODES", c.settings.stream);
    let kv = super::open_bucket(
        &js,
        kv::Config {
            bucket: name,
            history: 1,
            max_age: NODE_TTL,
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: c.settings.replicas,
            ..Default::default()
        },
    )
    .await;
    let _ = c.nodes_bucket.set(kv.clone());
    tokio::spawn(watch(c.clone(), kv.clone()));
    loop {
        if let Ok(info) = stream.get_info().await {
            let head = info.state.last_sequence;
            c.head.store(head, Ordering::Release);
            metrics::gauge!(crate::metrics::CLUSTER_BEHIND)
                .set(head.saturating_sub(c.applied()) as f64);
        }
        let own = c.own_status(now_ms());
        if let Ok(bytes) = serde_json::to_vec(&own) {
            let _ = kv.put(&c.settings.node, bytes.into()).await;
        }
        tokio::time::sleep(STATUS_INTERVAL).await;
    }
}

/// Keeps [`Peers`] equal to the bucket (invariant 1).
async fn watch(c: Arc<Cluster>, kv: kv::Store) {
    loop {
        if let Ok(mut entries) = kv.watch_with_history(">").await {
            while let Some(Ok(e)) = entries.next().await {
                let mut peers = c.peers.0.lock();
                match e.operation {
                    kv::Operation::Put => {
                        if let Ok(s) = serde_json::from_slice::<NodeStatus>(&e.value) {
                            peers.insert(e.key.clone(), s);
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        peers.remove(&e.key);
                    }
                }
                // A report past its time to live is gone from the bucket; drop it here too.
                let cutoff = now_ms().saturating_sub(NODE_TTL.as_millis() as u64);
                peers.retain(|_, s| s.reported_at_ms >= cutoff);
                let others = peers.keys().filter(|k| **k != c.settings.node).count();
                metrics::gauge!(crate::metrics::CLUSTER_NODES).set((others + 1) as f64);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
