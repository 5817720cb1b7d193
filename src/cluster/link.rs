//! The cluster's tasks on the NATS connection: the publisher (outbox to stream), the consumer
//! (stream to table) and the head fetcher behind read-your-writes.
//!
//! Invariants:
//! 1. **One batch at a time, in order**: the publisher sends a drained batch (split into
//!    messages of at most [`MAX_MESSAGE`] at frame boundaries) and waits for the stream's
//!    acknowledgement of each before the next; a failure retries the same message, with the
//!    same `Nats-Msg-Id`, so the stream's duplicate window drops a copy that did land (a late
//!    copy of a create could otherwise arrive after another node's revocation of it).
//! 2. **Everything, in stream order, once**: the consumer reads from the sequence after the
//!    last one applied, and starts again from there after a gap in its own sequence, an error
//!    or two missed heartbeats ([`HEARTBEAT`]; its server may be gone while the connection is
//!    not). Making a consumer needs JetStream's meta leader, which a lost NATS server may have
//!    been; until a new one is elected, a catch-up that finds this node behind and not moving
//!    (or a consumer that cannot be made) wakes the direct reader, which gets the next
//!    messages by sequence from any live replica. Both apply every message except this run's
//!    own (already applied here) under one lock, each only past `applied`, and publish the
//!    last sequence handled in `applied`.
//! 3. **Misses share one question**: a lookup that misses asks for the stream's head; while
//!    one question is in flight, later misses wait for the next answer, so at most one request
//!    per round trip reaches NATS, however many unknown tokens arrive.
//! 4. Nothing here holds a token: frames carry session ids (hashes).

use super::{Cluster, apply};
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Largest message the publisher sends (NATS's default `max_payload` is 1 MiB).
pub const MAX_MESSAGE: usize = 512 << 10;

/// The header naming the node run that published a message (invariant 2).
pub const RUN_HEADER: &str = "Sessiond-Run";

/// The consumer's idle heartbeat: a consumer lost with its server is noticed after two.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Longest the consumer waits for JetStream to make it before reading directly meanwhile.
const OPEN_WAIT: Duration = Duration::from_secs(1);

/// Most messages one direct catch-up reads; the consumer, in batches, is for the rest.
const DIRECT_MAX: u64 = 10_000;

/// Pause before retrying a publish that failed.
const RETRY: Duration = Duration::from_millis(200);

/// Cuts `buf` (whole frames) into ranges of at most `max` bytes at frame boundaries (a frame
/// larger than `max` gets a range of its own).
pub fn split_frames(buf: &[u8], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut at) = (0, 0);
    while at + 8 <= buf.len() {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
        let end = (at + 8 + len).min(buf.len());
        if end - start > max && at > start {
            out.push(start..at);
            start = at;
        }
        at = end;
    }
    if start < buf.len() {
        out.push(start..buf.len());
    }
    out
}

/// Sends the outbox to the stream, forever (invariant 1).
pub async fn publish(c: Arc<Cluster>, js: jetstream::Context) {
    let subject = format!("{}.changes.{}", c.settings.stream, c.settings.node);
    let mut batch = Vec::new();
    let mut n: u64 = 0;
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        batch.clear();
        let seen = c.outbox.drain(&mut batch);
        if batch.is_empty() {
            // A frame counted just after the previous drain read its count, but drained by it,
            // is in the stream already: nothing more will come for it, so its count is
            // acknowledged here, or a `sync` answer waiting for it would time out (503) on a
            // quiet node. Everything counted up to `seen` was drained before (outbox,
            // invariant 3) by batches the stream acknowledged (one at a time, invariant 1).
            c.outbox.acknowledged(seen, 0);
            c.outbox.wake.notified().await;
            continue;
        }
        for range in split_frames(&batch, MAX_MESSAGE) {
            n += 1;
            let body = Bytes::copy_from_slice(&batch[range]);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{}-{n}", c.run).as_str());
            headers.insert(RUN_HEADER, c.run.as_str());
            loop {
                let sent = match js
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                    .await
                {
                    Ok(ack) => ack.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match sent {
                    Ok(_) => {
                        metrics::counter!(crate::metrics::CLUSTER_PUBLISHED).increment(1);
                        if let Some(since) = failing_since.take() {
                            tracing::info!(
                                after_secs = since.elapsed().as_secs(),
                                "the cluster's stream takes changes again"
                            );
                            c.metrics_healthy(true);
                        }
                        break;
                    }
                    Err(error) => {
                        metrics::counter!(crate::metrics::CLUSTER_PUBLISH_ERRORS).increment(1);
                        if failing_since.is_none() {
                            failing_since = Some(std::time::Instant::now());
                            tracing::warn!(
                                %error,
                                "cannot publish to the cluster's stream; changes are kept and retried"
                            );
                            c.metrics_healthy(false);
                        }
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
        c.outbox.acknowledged(seen, batch.len());
    }
}

/// Applies the stream to the table through a consumer, forever (invariant 2).
pub async fn consume(c: Arc<Cluster>, stream: jetstream::stream::Stream) {
    loop {
        let from = c.applied() + 1;
        // Making a consumer needs JetStream's meta leader, which a lost NATS server may have
        // been: while a new one is elected (seconds), direct reads keep this node current.
        let consumer = tokio::time::timeout(
            OPEN_WAIT,
            stream.create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap_or_else(|_| {
            Err(jetstream::stream::ConsumerError::new(
                jetstream::stream::ConsumerErrorKind::TimedOut,
            ))
        });
        let messages = match consumer {
            Ok(consumer) => consumer
                .stream()
                .heartbeat(HEARTBEAT)
                .expires(HEARTBEAT * 5)
                .max_messages_per_batch(1_000)
                .messages()
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(error) => {
                tracing::debug!(%error, from, "cannot read the cluster's stream; retrying");
                c.resync.notify_one();
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut expected = 1;
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(error) => {
                    tracing::debug!(%error, "reading the cluster's stream failed; resuming");
                    break;
                }
            };
            let Ok((seq, consumer_seq, published)) = m.info().map(|i| {
                (
                    i.stream_sequence,
                    i.consumer_sequence,
                    i.published.unix_timestamp_nanos(),
                )
            }) else {
                break;
            };
            // A gap in the consumer's own sequence: start again from what was applied.
            if consumer_seq != expected {
                tracing::debug!(
                    consumer_seq,
                    expected,
                    "a gap in the cluster's stream; resuming"
                );
                break;
            }
            expected += 1;
            handle(&c, seq, published, m.headers.as_ref(), &m.payload, false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the stream forward by direct gets (any live replica answers them, no leader needed)
/// whenever a catch-up finds this node behind, or the consumer cannot be made (invariant 2).
pub async fn read_direct(c: Arc<Cluster>, stream: jetstream::stream::Stream) {
    loop {
        c.resync.notified().await;
        let mut read = 0u64;
        while read < DIRECT_MAX {
            let seq = c.applied() + 1;
            match stream.direct_get(seq).await {
                Ok(m) => {
                    let published = m.time.unix_timestamp_nanos();
                    handle(&c, seq, published, Some(&m.headers), &m.payload, true);
                    read += 1;
                }
                Err(error) => {
                    if !matches!(
                        error.kind(),
                        jetstream::stream::DirectGetErrorKind::NotFound
                    ) {
                        tracing::debug!(%error, seq, "cannot read the cluster's stream directly");
                    }
                    break;
                }
            }
        }
        if read > 0 {
            metrics::counter!(crate::metrics::CLUSTER_DIRECT_READS).increment(read);
            tracing::debug!(
                read,
                applied = c.applied(),
                "read the cluster's stream directly"
            );
        }
    }
}

/// Applies stream message `seq` unless this node has it already: the consumer skips what the
/// direct reader applied, and the direct reader applies only the message right after the last
/// one applied (`exact`), so neither skips one the other has not seen (invariant 2).
fn handle(
    c: &Cluster,
    seq: u64,
    published_nanos: i128,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
    exact: bool,
) {
    let _one_at_a_time = c.apply_lock.lock();
    let applied = c.applied();
    if seq <= applied || (exact && seq != applied + 1) {
        return;
    }
    let own = headers
        .and_then(|h| h.get(RUN_HEADER))
        .is_some_and(|r| r.as_str() == c.run);
    if !own {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        // Seconds from the stream taking the batch to this node applying it (clocks of NATS
        // and this machine: in sync within NTP's error).
        metrics::histogram!(crate::metrics::CLUSTER_APPLY_LAG)
            .record((now - published_nanos).max(0) as f64 / 1e9);
        let applied = apply::apply(&c.engine, payload);
        metrics::counter!(crate::metrics::CLUSTER_APPLIED).increment(applied.frames);
        if let Some(offset) = applied.damaged_at {
            metrics::counter!(crate::metrics::CLUSTER_DAMAGED).increment(1);
            tracing::error!(
                seq,
                offset,
                "a damaged message in the cluster's stream; applied up to the damage"
            );
        }
    }
    c.set_applied(seq);
}

/// Answers the questions for the stream's head, one at a time (invariant 3).
pub async fn heads(c: Arc<Cluster>, stream: jetstream::stream::Stream) {
    loop {
        let round = c.head_wanted.load(Ordering::Acquire);
        if round <= c.heads.borrow().0 {
            c.head_wake.notified().await;
            continue;
        }
        match stream.get_info().await {
            Ok(info) => {
                c.heads.send_replace((round, info.state.last_sequence));
            }
            Err(error) => {
                tracing::debug!(%error, "cannot ask the cluster's stream for its head");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::record;

    #[test]
    fn batches_split_at_frame_boundaries() {
        let mut buf = Vec::new();
        for id in 0..10 {
            record::put_activity(&mut buf, id, 1);
        }
        let frame = buf.len() / 10;
        let ranges = split_frames(&buf, frame * 3 + 1);
        assert_eq!(ranges.len(), 4);
        assert!(ranges.iter().all(|r| r.len() % frame == 0));
        assert_eq!(ranges.last().unwrap().end, buf.len());
        let joined: usize = ranges.iter().map(|r| r.len()).sum();
        assert_eq!(joined, buf.len());
        assert_eq!(split_frames(&buf, 1).len(), 10);
        assert_eq!(split_frames(&buf, usize::MAX), vec![0..buf.len()]);
        assert!(split_frames(&[], 10).is_empty());
    }
}
