//! Snapshots in the object store: every `--cluster-snapshot-interval` a caught-up node
//! publishes a snapshot of its table to the JetStream object store `<stream>_SNAPSHOTS`
//! (object [`OBJECT`], its stream sequence in the object's metadata), so that a node that
//! starts empty, or with state older than the stream's first retained message, loads it and
//! reads the stream after its sequence instead of missing what the stream no longer holds.
//!
//! Invariants:
//! 1. **A snapshot at sequence S plus the stream after S is the whole stream.** The snapshot is
//!    `persist::snapshot::encode`'s: S is read before the walk, so every message up to S is in
//!    the table it walks; a change the walk misses was made after S was read, so it reaches
//!    the stream after S. Replay is idempotent, so the rest is read again harmlessly.
//! 2. Only a caught-up node publishes (never one serving stale state), and only when the
//!    stream moved past the snapshot published last and that one is older than half the
//!    interval: about one node publishes per interval, without an election; two at once only
//!    cost bandwidth (the object store keeps the last one put).
//! 3. A node loads a published snapshot at start, before it reads the stream, only when its
//!    state is empty or older than the stream's first retained message, and the snapshot is
//!    newer. Sessions of its old state made before this run are dropped first (revocations of
//!    them may be gone from the stream); sessions made during this run are kept.
//! 4. A half-written snapshot is never published: the upload ends only after the encoder's
//!    end, else it fails. One that cannot be read to its `END` frame, or whose digest is wrong,
//!    is not trusted: the node's place in the stream goes back to where it was and it reads
//!    the stream alone, saying so (what it applied of the snapshot is merged state, harmless).
//! 5. The object holds session ids (hashes), user and org ids and times, never tokens.

use super::Cluster;
use async_nats::jetstream::{self, object_store};
use serde::Serialize;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;

/// The object's name in the store.
pub const OBJECT: &str = "snapshot";
const META_SEQ: &str = "stream_sequence";
const META_NODE: &str = "node";
const META_AT: &str = "published_at_ms";
/// Bytes per piece handed between the encoder's thread and the upload (and back on load).
const PIECE: usize = 1 << 20;

/// The published snapshot, as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    pub sequence: u64,
    pub node: String,
    pub bytes: u64,
    pub published_at_ms: u64,
}

impl Published {
    fn of(info: &object_store::ObjectInfo) -> Option<Published> {
        let num = |k: &str| info.metadata.get(k).and_then(|v| v.parse().ok());
        (!info.deleted).then(|| Published {
            sequence: num(META_SEQ).unwrap_or(0),
            node: info.metadata.get(META_NODE).cloned().unwrap_or_default(),
            bytes: info.size as u64,
            published_at_ms: num(META_AT).unwrap_or(0),
        })
    }
}

/// Why a snapshot could not be published or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read the published snapshot: {0}")]
    Get(#[source] object_store::GetError),
    #[error("cannot publish the snapshot: {0}")]
    Put(#[source] object_store::PutError),
    #[error("cannot load the published snapshot: {0}")]
    Load(#[source] crate::persist::load::LoadError),
    #[error("the snapshot's encoder stopped: {0}")]
    Encode(#[source] io::Error),
}

/// The object store, made if it does not exist; retried until NATS answers.
pub(super) async fn open_store(c: &Cluster, js: &jetstream::Context) -> object_store::ObjectStore {
    let bucket = format!("{}_SNAPSHOTS", c.settings.stream);
    loop {
        let r = match js.get_object_store(&bucket).await {
            Ok(s) => Ok(s),
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("sessiond: the latest snapshot, for joining nodes".into()),
                    num_replicas: c.settings.replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string()),
        };
        match r {
            Ok(s) => return s,
            Err(error) => {
                tracing::debug!(%error, %bucket, "cannot open the snapshot store yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The published snapshot's description, `None` when there is none.
async fn published(
    store: &object_store::ObjectStore,
) -> Result<Option<Published>, object_store::InfoError> {
    match store.info(OBJECT).await {
        Ok(info) => Ok(Published::of(&info)),
        Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// At start (invariant 3): loads the published snapshot when this node's state is empty or
/// older than `first` (the stream's first retained sequence) and the snapshot is newer.
pub(super) async fn load_if_needed(
    c: &Arc<Cluster>,
    store: &object_store::ObjectStore,
    first: u64,
) {
    let applied = c.applied();
    if applied > 0 && applied + 1 >= first {
        return;
    }
    // NATS may still be settling (a new leader): ask a few times before going on without.
    let mut tries = 0;
    let p = loop {
        match published(store).await {
            Ok(Some(p)) => break p,
            Ok(None) => return,
            Err(error) if tries < 20 => {
                tries += 1;
                tracing::debug!(%error, "cannot ask for the published snapshot yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot ask for the published snapshot; reading the stream alone");
                return;
            }
        }
    };
    *c.snapshot.lock() = Some(p.clone());
    if p.sequence <= applied {
        return;
    }
    if applied > 0 {
        let dropped = c.engine.drop_made_before(c.started_ms);
        tracing::warn!(
            dropped,
            applied,
            first_retained = first,
            "this node's saved state is older than the stream's retention: dropping it for the \
             published snapshot"
        );
    }
    let took = std::time::Instant::now();
    match load(c, store).await {
        Ok(sessions) => {
            metrics::counter!(crate::metrics::CLUSTER_SNAPSHOTS_LOADED).increment(1);
            c.set_applied(c.engine.stream_applied());
            tracing::info!(
                sessions,
                sequence = c.applied(),
                from_node = %p.node,
                took_ms = took.elapsed().as_millis() as u64,
                "loaded the cluster's published snapshot; reading the stream after it"
            );
        }
        Err(error) => {
            metrics::counter!(crate::metrics::CLUSTER_SNAPSHOT_ERRORS).increment(1);
            c.engine.set_stream_applied(applied);
            tracing::error!(
                %error,
                "cannot load the cluster's published snapshot; reading the stream alone, which \
                 misses what it no longer holds"
            );
        }
    }
}

/// Streams the object into the engine (invariant 4): the sessions loaded.
async fn load(c: &Cluster, store: &object_store::ObjectStore) -> Result<u64, SeedError> {
    let mut object = store.get(OBJECT).await.map_err(SeedError::Get)?;
    let len = object.info().size as u64;
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(4);
    let engine = c.engine.clone();
    let name = format!("{}_SNAPSHOTS/{OBJECT}", c.settings.stream);
    let loader = tokio::task::spawn_blocking(move || {
        let r = BlockingReader {
            rx,
            piece: Vec::new(),
            at: 0,
        };
        crate::persist::load::import(&engine, r, len, std::path::Path::new(&name))
    });
    loop {
        let mut piece = Vec::with_capacity(PIECE);
        let r = object.read_buf(&mut piece).await;
        let end = !matches!(r, Ok(n) if n > 0);
        // The digest is checked at the object's end: an error then reaches the loader.
        let sent = match r {
            Ok(0) => Ok(()),
            Ok(_) => tx.send(Ok(piece)).await,
            Err(e) => tx.send(Err(e)).await,
        };
        if end || sent.is_err() {
            break;
        }
    }
    drop(tx);
    match loader.await {
        Ok(r) => r.map_err(SeedError::Load),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Publishes a snapshot every interval while this node is caught up (invariant 2).
pub(super) async fn publish_every_interval(c: Arc<Cluster>, store: object_store::ObjectStore) {
    let every = c.settings.snapshot_interval;
    loop {
        tokio::time::sleep(every).await;
        if !c.caught_up() || !c.connected() {
            continue;
        }
        let Ok(last) = published(&store).await else {
            continue;
        };
        *c.snapshot.lock() = last.clone();
        if let Some(p) = &last {
            let age_ms = c.engine.now_ms().saturating_sub(p.published_at_ms);
            if p.sequence >= c.applied() || age_ms < every.as_millis() as u64 / 2 {
                continue;
            }
        }
        let took = std::time::Instant::now();
        match publish(&c, &store).await {
            Ok(p) => {
                metrics::counter!(crate::metrics::CLUSTER_SNAPSHOTS_PUBLISHED).increment(1);
                tracing::info!(
                    sequence = p.sequence,
                    bytes = p.bytes,
                    took_ms = took.elapsed().as_millis() as u64,
                    "published a snapshot for joining nodes"
                );
                *c.snapshot.lock() = Some(p);
            }
            Err(error) => {
                metrics::counter!(crate::metrics::CLUSTER_SNAPSHOT_ERRORS).increment(1);
                tracing::warn!(%error, "cannot publish a snapshot for joining nodes; trying again at the next interval");
            }
        }
    }
}

/// Encodes the table on a blocking thread into the upload (invariants 1 and 4).
async fn publish(c: &Cluster, store: &object_store::ObjectStore) -> Result<Published, SeedError> {
    // At most the sequence the encoder writes into the snapshot (it reads it again later).
    let sequence = c.engine.stream_applied();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let engine = c.engine.clone();
    let encoder = tokio::task::spawn_blocking(move || {
        let mut w = io::BufWriter::with_capacity(PIECE, ChannelWriter(tx.clone()));
        crate::persist::snapshot::encode(&engine, &mut w)?;
        drop(w);
        // The end mark: only now may the upload end (invariant 4).
        tx.blocking_send(Vec::new())
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    });
    let published_at_ms = c.engine.now_ms();
    let meta = object_store::ObjectMetadata {
        name: OBJECT.into(),
        description: Some(format!("sessiond snapshot at stream sequence {sequence}")),
        metadata: HashMap::from([
            (META_SEQ.to_owned(), sequence.to_string()),
            (META_NODE.to_owned(), c.settings.node.clone()),
            (META_AT.to_owned(), published_at_ms.to_string()),
        ]),
        ..Default::default()
    };
    let mut r = ChannelReader {
        rx,
        piece: Vec::new(),
        at: 0,
        ended: false,
    };
    let put = store.put(meta, &mut r).await;
    drop(r);
    let encoded = match encoder.await {
        Ok(e) => e,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let info = put.map_err(SeedError::Put)?;
    encoded.map_err(SeedError::Encode)?;
    Ok(Published {
        sequence,
        node: c.settings.node.clone(),
        bytes: info.size as u64,
        published_at_ms,
    })
}

/// The encoder's side of the upload: each write is one piece on the channel.
struct ChannelWriter(mpsc::Sender<Vec<u8>>);

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.0
            .blocking_send(buf.to_vec())
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The upload's side: the pieces in order, ending only at the end mark (an empty piece).
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
    ended: bool,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        while me.at == me.piece.len() && !me.ended {
            match ready!(me.rx.poll_recv(cx)) {
                Some(p) if p.is_empty() => me.ended = true,
                Some(p) => (me.piece, me.at) = (p, 0),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the snapshot's encoder stopped before its end",
                    )));
                }
            }
        }
        let n = (me.piece.len() - me.at).min(buf.remaining());
        buf.put_slice(&me.piece[me.at..me.at + n]);
        me.at += n;
        Poll::Ready(Ok(()))
    }
}

/// The loader's side of a download: the pieces in order, or the download's error.
struct BlockingReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    at: usize,
}

impl io::Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.blocking_recv() {
                Some(p) => (self.piece, self.at) = (p?, 0),
                None => return Ok(0),
            }
        }
        let n = (self.piece.len() - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn upload(pieces: &[&[u8]], end_mark: bool) -> io::Result<Vec<u8>> {
        let (tx, rx) = mpsc::channel(4);
        for p in pieces {
            tx.send(p.to_vec()).await.unwrap();
        }
        if end_mark {
            tx.send(Vec::new()).await.unwrap();
        }
        drop(tx);
        let mut r = ChannelReader {
            rx,
            piece: Vec::new(),
            at: 0,
            ended: false,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    /// Invariant 4: the upload ends only at the encoder's end mark, never when it stops short.
    #[tokio::test]
    async fn an_upload_ends_only_at_the_end_mark() {
        let whole = upload(&[b"abc", b"", b"defg"], true).await;
        // An empty piece is the end mark: what follows it is not read.
        assert_eq!(whole.unwrap(), b"abc");
        let whole = upload(&[b"abc", b"defg"], true).await.unwrap();
        assert_eq!(whole, b"abcdefg");
        let cut = upload(&[b"abc", b"defg"], false).await.unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// The encoder's writer never sends an empty piece (which would end the upload early).
    #[test]
    fn the_writer_sends_no_empty_piece() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut w = ChannelWriter(tx);
        assert_eq!(io::Write::write(&mut w, b"").unwrap(), 0);
        assert_eq!(io::Write::write(&mut w, b"xy").unwrap(), 2);
        drop(w);
        assert_eq!(rx.try_recv().unwrap(), b"xy");
        assert!(rx.try_recv().is_err());
    }
}
