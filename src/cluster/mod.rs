//! The cluster: N identical nodes that replicate their changes through a NATS JetStream stream.
//! Every node holds every session and answers any request; consensus and durability are
//! JetStream's (an R3 stream), not ours. See `docs/cluster.md` for the design and its limits.
//!
//! The data's path: the engine reports a change (`changes`) to the journal and to the
//! [`Outbox`]; the publisher (`link`) sends the outbox to the stream subject
//! `<stream>.changes.<node>`; every node's consumer applies every other run's messages to its
//! table (`apply`), in stream order. Policies set through the API live in a key-value bucket
//! that every node watches (`policies`). A snapshot in the object store lets a node whose
//! state the stream no longer covers (or an empty one) start from it (`seed`).
//!
//! Invariants:
//! 1. **Session state merges**: activity is a maximum, a revocation removes, a create is
//!    unique by id (`apply`), so nodes that applied the same messages hold the same sessions
//!    whatever interleaving of nodes the stream has. Evictions are each node's own
//!    (`outbox`, invariant 1); so a revocation leaves even from a node that no longer holds
//!    the session, for the nodes that still do (engine invariant 7).
//! 2. **Read-your-writes**: a lookup of a well-formed token that misses waits (at most
//!    [`CATCH_UP_WAIT`]) until this node has applied the stream up to its head as of the miss,
//!    then looks again ([`Cluster::catch_up`]); misses share one question (`link`,
//!    invariant 3). With the stream unreachable it answers at once from memory.
//! 3. **Acknowledged means replicated** under `--cluster-ack sync`: a create or revocation is
//!    answered only once the stream has it ([`Cluster::replicated`]), else 503
//!    `not_replicated` after [`REPLICATE_WAIT`], the change applied here and kept for the
//!    stream. `async` answers at once.
//! 4. **Ready after catching up**: `/readyz` says ready once this node has applied the stream
//!    up to its head as of start and, in API mode, the policy bucket's full set
//!    ([`Cluster::caught_up`]), so a reachable cluster is never answered from a view that may
//!    miss its revocations or policies. The one exception keeps auth independent of NATS: when
//!    the stream has not answered `--cluster-ready-timeout` (30 s) after start (NATS
//!    unreachable, or reachable with JetStream unable to give the stream's head for want of a
//!    quorum), the node says ready with what it saved, and says so in its log
//!    ([`Cluster::ready`]). A node that has the head and is still reading up to it waits.
//! 5. Validate, touch and `/v1/auth` never wait for NATS beyond invariant 2's bounded miss.
//! 6. **A revocation outlives a crash.** The revocations this node's journal holds since its
//!    snapshot may never have reached the stream (NATS unreachable, then the node stopped):
//!    once caught up, the node applies them again (over any create the stream brought back)
//!    and publishes them again (a copy of one already published changes nothing).

pub mod apply;
mod link;
#[cfg(test)]
mod model;
pub mod outbox;
pub mod policies;
pub mod seed;
mod settings;
pub mod status;

use crate::engine::Engine;
pub use outbox::{NotReplicated, Outbox};
pub use settings::{Ack, Settings, Tls, default_node_name, valid_name};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Longest a lookup that misses waits for the stream (invariant 2).
pub const CATCH_UP_WAIT: Duration = Duration::from_millis(500);
/// Longest a create or revocation waits for the stream under `sync` (invariant 3): longer than
/// JetStream usually takes to elect a new stream leader when a NATS server dies (seen: 2-8 s
/// on a loaded 2-core machine; a create answered 503 meanwhile is kept and published after).
pub const REPLICATE_WAIT: Duration = Duration::from_secs(5);
/// How long the stream's duplicate window remembers a message id (`link`, invariant 1).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the NATS credentials file {path}")]
    Creds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {urls}")]
    Connect {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// The key-value bucket `config.bucket`, made with `config` if it does not exist; retried
/// until NATS answers.
async fn open_bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> async_nats::jetstream::kv::Store {
    loop {
        let r = match js.get_key_value(&config.bucket).await {
            Ok(kv) => Ok(kv),
            Err(_) => js
                .create_key_value(config.clone())
                .await
                .map_err(|e| e.to_string()),
        };
        match r {
            Ok(kv) => return kv,
            Err(error) => {
                tracing::debug!(%error, bucket = %config.bucket, "cannot open the bucket yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// This node's side of the cluster (see the module doc).
pub struct Cluster {
    pub settings: Settings,
    /// This run of this node: `<node>.<random>`; its own messages are not applied again.
    pub run: String,
    pub outbox: Arc<Outbox>,
    engine: Arc<Engine>,
    applied_tx: watch::Sender<u64>,
    /// The stream's head as of start, once known; ready when applied reaches it (invariant 4).
    start_head: watch::Sender<Option<u64>>,
    caught_up: AtomicBool,
    head_wanted: AtomicU64,
    head_wake: Notify,
    /// (round answered, head then).
    heads: watch::Sender<(u64, u64)>,
    client: parking_lot::Mutex<Option<async_nats::Client>>,
    /// Wakes the direct reader: a catch-up found this node behind, or the consumer cannot be
    /// made (`link`, invariant 2).
    resync: Notify,
    /// Held while a stream message is applied (`link`, invariant 2).
    apply_lock: parking_lot::Mutex<()>,
    /// The policy bucket (API mode; `policies`).
    pub policy_bucket: policies::PolicyBucket,
    /// Whether policies come from the bucket, and whether its full set has been applied.
    policies_from_bucket: AtomicBool,
    policies_synced: AtomicBool,
    /// The stream's head as last asked (`status`).
    head: AtomicU64,
    /// The other nodes' reports (`status`).
    peers: status::Peers,
    nodes_bucket: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// Revocations from this node's journal, applied again and published once caught up
    /// (invariant 6).
    journal_revocations: parking_lot::Mutex<Vec<u128>>,
    /// The stream silent for `ready_timeout` after start: serving from saved state (invariant 4).
    serving_stale: AtomicBool,
    /// When this run started, by the engine's clock (`seed`, invariant 3).
    started_ms: u64,
    /// The object store's snapshot as last seen (`seed`).
    snapshot: parking_lot::Mutex<Option<seed::Published>>,
}

impl Cluster {
    /// The cluster of `engine`, whose changes go to `outbox` (nothing connects yet).
    pub fn new(settings: Settings, outbox: Arc<Outbox>, engine: Arc<Engine>) -> Arc<Cluster> {
        let mut r = [0u8; 8];
        // A run id only tells this run's messages from earlier runs'; the time will do if the
        // OS generator fails.
        if getrandom::fill(&mut r).is_err() {
            r = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64)
                .to_le_bytes();
        }
        let run = format!("{}.{:016x}", settings.node, u64::from_le_bytes(r));
        metrics::gauge!(crate::metrics::CLUSTER_HEALTHY).set(1.0);
        for c in [
            crate::metrics::CLUSTER_PUBLISHED,
            crate::metrics::CLUSTER_PUBLISH_ERRORS,
            crate::metrics::CLUSTER_APPLIED,
            crate::metrics::CLUSTER_DAMAGED,
            crate::metrics::CLUSTER_CATCH_UPS,
            crate::metrics::CLUSTER_DIRECT_READS,
            crate::metrics::CLUSTER_NOT_REPLICATED,
            crate::metrics::CLUSTER_SNAPSHOTS_PUBLISHED,
            crate::metrics::CLUSTER_SNAPSHOTS_LOADED,
            crate::metrics::CLUSTER_SNAPSHOT_ERRORS,
        ] {
            metrics::counter!(c).increment(0);
        }
        Arc::new(Cluster {
            settings,
            run,
            outbox,
            started_ms: engine.now_ms(),
            snapshot: parking_lot::Mutex::new(None),
            engine,
            applied_tx: watch::Sender::new(0),
            start_head: watch::Sender::new(None),
            caught_up: AtomicBool::new(false),
            head_wanted: AtomicU64::new(0),
            head_wake: Notify::new(),
            heads: watch::Sender::new((0, 0)),
            client: parking_lot::Mutex::new(None),
            resync: Notify::new(),
            apply_lock: parking_lot::Mutex::new(()),
            policy_bucket: Default::default(),
            policies_from_bucket: AtomicBool::new(false),
            policies_synced: AtomicBool::new(false),
            head: AtomicU64::new(0),
            peers: Default::default(),
            nodes_bucket: tokio::sync::OnceCell::new(),
            journal_revocations: parking_lot::Mutex::new(Vec::new()),
            serving_stale: AtomicBool::new(false),
        })
    }

    /// Connects (in the background when NATS is not up yet) and starts the publisher, the
    /// consumer and the head fetcher on the current runtime; with `policies` in API mode, the
    /// policy bucket's watch too (`policies`).
    pub async fn start(
        self: &Arc<Self>,
        policies: Arc<crate::policy_source::PolicyManager>,
    ) -> Result<(), ClusterError> {
        let s = &self.settings;
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("sessiond {}", s.node))
            .retry_on_initial_connect()
            .max_reconnects(None)
            // Back within a second of a server's return (the default waits up to 4 s).
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1_000))
            })
            // A pull consumer asks again by itself after a reconnect (async-nats).
            .event_callback({
                let node = s.node.clone();
                move |event| {
                    let node = node.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                tracing::info!(%node, "connected to NATS");
                            }
                            async_nats::Event::Disconnected => tracing::warn!(
                                %node,
                                "lost the connection to NATS; validation goes on from memory, reconnecting"
                            ),
                            other => tracing::debug!(%node, event = %other, "NATS event"),
                        }
                    }
                }
            });
        if let Some(path) = &s.creds {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|source| ClusterError::Creds {
                    path: path.clone(),
                    source,
                })?;
        }
        if let Some(tls) = &s.tls {
            opts = opts.require_tls(true);
            if let Some(ca) = &tls.ca {
                opts = opts.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let client =
            opts.connect(s.urls.clone())
                .await
                .map_err(|source| ClusterError::Connect {
                    urls: s.urls.join(","),
                    source,
                })?;
        *self.client.lock() = Some(client.clone());
        // API requests time out in 2 s, not the client's 10 s: while a new JetStream cluster
        // elects its leader the first requests go unanswered, and a retry soon after succeeds.
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client);
        if policies.is_api() {
            self.policies_from_bucket.store(true, Ordering::Release);
            tokio::spawn(policies::run(self.clone(), js.clone(), policies));
        }
        // Without NATS for too long after start, serve what this node saved (invariant 4).
        let c = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(c.settings.ready_timeout).await;
            // NATS unreachable, or reachable with its JetStream unable to answer (a server up
            // while the others that make its quorum are down: the stream's head never came).
            // Either way the stream cannot be read, and authentication must not wait for it.
            // A node that has the head and is still reading up to it keeps waiting.
            let no_head = c.start_head.borrow().is_none();
            if !c.caught_up() && (!c.connected() || no_head) {
                c.serving_stale.store(true, Ordering::Release);
                tracing::warn!(
                    waited_secs = c.settings.ready_timeout.as_secs(),
                    sessions = c.engine.len(),
                    nats_connected = c.connected(),
                    "the cluster's stream has not answered since start (NATS unreachable, or \
                     JetStream without a quorum): serving from this node's saved state, which \
                     misses what other nodes changed meanwhile (revocations included) until the \
                     stream answers and the node has caught up"
                );
            }
        });
        // Resume after what the loaded snapshot reflects (`persist::snapshot`, invariant 5).
        let resumed = self.engine.stream_applied();
        self.applied_tx.send_replace(resumed);
        let c = self.clone();
        tokio::spawn(async move {
            let stream = c.stream(&js).await;
            let store = seed::open_store(&c, &js).await;
            c.learn_start_head(&stream, &store).await;
            tokio::spawn(seed::publish_every_interval(c.clone(), store));
            tokio::spawn(status::run(c.clone(), js.clone(), stream.clone()));
            tokio::spawn(link::publish(c.clone(), js));
            tokio::spawn(link::heads(c.clone(), stream.clone()));
            tokio::spawn(link::read_direct(c.clone(), stream.clone()));
            link::consume(c, stream).await;
        });
        Ok(())
    }

    /// The stream, made if it does not exist; retried until NATS answers.
    async fn stream(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> async_nats::jetstream::stream::Stream {
        use async_nats::jetstream::stream;
        let s = &self.settings;
        let config = stream::Config {
            name: s.stream.clone(),
            subjects: vec![format!("{}.changes.*", s.stream)],
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            max_age: s.retention,
            duplicate_window: DUPLICATE_WINDOW,
            // Any replica answers a direct get: a node catches up while JetStream elects a new
            // meta leader (`link`, invariant 2).
            allow_direct: true,
            ..Default::default()
        };
        let mut logged = false;
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(mut st) => {
                    if !st.cached_info().config.allow_direct {
                        // A stream made by a release before direct reads.
                        let mut want = st.cached_info().config.clone();
                        want.allow_direct = true;
                        match js.update_stream(&want).await {
                            Ok(_) => {
                                if let Ok(fresh) = js.get_stream(&want.name).await {
                                    st = fresh;
                                }
                                tracing::info!(stream = %want.name, "the cluster's stream now allows direct reads");
                            }
                            Err(error) => tracing::warn!(
                                %error,
                                "cannot allow direct reads on the cluster's stream; a node then \
                                 catches up only through its consumer"
                            ),
                        }
                    }
                    let have = &st.cached_info().config;
                    tracing::info!(
                        stream = %have.name,
                        replicas = have.num_replicas,
                        retention_secs = have.max_age.as_secs(),
                        node = %s.node,
                        "the cluster's stream is reachable"
                    );
                    return st;
                }
                Err(error) => {
                    if !logged {
                        tracing::warn!(%error, stream = %s.stream, "cannot open the cluster's stream yet; retrying");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Learns the stream's head as of start, after loading the published snapshot where this
    /// node's state needs it (`seed`, invariant 3).
    async fn learn_start_head(
        self: &Arc<Self>,
        stream: &async_nats::jetstream::stream::Stream,
        store: &async_nats::jetstream::object_store::ObjectStore,
    ) {
        loop {
            match stream.get_info().await {
                Ok(info) => {
                    let first = info.state.first_sequence;
                    seed::load_if_needed(self, store, first).await;
                    let head = info.state.last_sequence;
                    let from = self.applied() + 1;
                    tracing::info!(
                        from,
                        head,
                        first_retained = first,
                        "reading the cluster's stream"
                    );
                    if from < first {
                        tracing::error!(
                            applied = self.applied(),
                            first_retained = first,
                            "the stream no longer holds the changes after this node's state, and \
                             no newer published snapshot covers them: sessions made or revoked \
                             meanwhile may be missing or back here; raise --cluster-retention \
                             well above --cluster-snapshot-interval"
                        );
                    }
                    self.start_head.send_replace(Some(head));
                    self.note_caught_up();
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot ask the cluster's stream for its head");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn note_caught_up(&self) {
        if self.caught_up.load(Ordering::Relaxed) {
            return;
        }
        let policies_ready = !self.policies_from_bucket.load(Ordering::Acquire)
            || self.policies_synced.load(Ordering::Acquire);
        if let Some(head) = *self.start_head.borrow()
            && self.applied() >= head
            && policies_ready
        {
            // Invariant 6: the journal's revocations win over what the stream brought back.
            let revoked = std::mem::take(&mut *self.journal_revocations.lock());
            for &id in &revoked {
                self.engine.restore_remove(crate::token::SessionId(id));
            }
            self.outbox.requeue_revocations(&revoked);
            self.caught_up.store(true, Ordering::Release);
            tracing::info!(
                journal_revocations = revoked.len(),
                applied = self.applied(),
                sessions = self.engine.len(),
                "caught up with the cluster's stream"
            );
        }
    }

    /// The consumer handled stream message `seq`.
    fn set_applied(&self, seq: u64) {
        self.engine.set_stream_applied(seq);
        self.applied_tx.send_replace(seq);
        metrics::gauge!(crate::metrics::CLUSTER_APPLIED_SEQ).set(seq as f64);
        self.note_caught_up();
    }

    fn metrics_healthy(&self, ok: bool) {
        metrics::gauge!(crate::metrics::CLUSTER_HEALTHY).set(if ok { 1.0 } else { 0.0 });
    }

    /// Revocations read back from this node's journal at start (invariant 6); call before
    /// [`Cluster::start`].
    pub fn revocations_from_journal(&self, ids: Vec<u128>) {
        *self.journal_revocations.lock() = ids;
    }

    /// The last stream sequence applied here.
    pub fn applied(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    /// Whether this node has applied the stream up to its head as of start (invariant 4).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Whether this node may say it is ready: caught up, or the stream silent for
    /// `--cluster-ready-timeout` after start (invariant 4).
    pub fn ready(&self) -> bool {
        self.caught_up() || self.serving_stale.load(Ordering::Acquire)
    }

    pub fn connected(&self) -> bool {
        self.client
            .lock()
            .as_ref()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// After a lookup missed: waits until this node has applied the stream up to its head as
    /// of now, at most [`CATCH_UP_WAIT`]; true when it has (look again), false when NATS did
    /// not answer in time (invariant 2).
    pub async fn catch_up(&self) -> bool {
        if !self.connected() {
            return false;
        }
        metrics::counter!(crate::metrics::CLUSTER_CATCH_UPS).increment(1);
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        let round = self.head_wanted.fetch_add(1, Ordering::AcqRel) + 1;
        self.head_wake.notify_one();
        let mut heads = self.heads.subscribe();
        let head =
            match tokio::time::timeout_at(deadline, heads.wait_for(|(r, _)| *r >= round)).await {
                Ok(Ok(h)) => h.1,
                _ => return false,
            };
        let mut applied = self.applied_tx.subscribe();
        let before = self.applied();
        // A live consumer brings the head within a round trip; one that has not moved at all
        // by then may be gone with its server: read directly too (`link`, invariant 2). One
        // that moves but lags (a busy cluster) is left to catch up alone.
        let soon = (tokio::time::Instant::now() + CATCH_UP_WAIT / 5).min(deadline);
        if tokio::time::timeout_at(soon, applied.wait_for(|a| *a >= head))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return true;
        }
        if self.applied() == before {
            self.resync.notify_one();
        }
        tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= head))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Under `sync`, waits until this node's changes so far are in the stream (invariant 3).
    pub async fn replicated(&self) -> Result<(), NotReplicated> {
        if self.settings.ack == Ack::Async {
            return Ok(());
        }
        let r = self.outbox.wait_replicated(REPLICATE_WAIT).await;
        if r.is_err() {
            metrics::counter!(crate::metrics::CLUSTER_NOT_REPLICATED).increment(1);
        }
        metrics::gauge!(crate::metrics::CLUSTER_BACKLOG).set(self.outbox.backlog() as f64);
        r
    }
}
