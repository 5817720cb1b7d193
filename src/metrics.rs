//! Prometheus metrics: names, help texts, buckets, and pre-registered handles for the hot path.
//!
//! Invariants:
//! 1. Every metric is `sessiond_`-prefixed, in base units (seconds), `_total` on counters.
//! 2. Label values come from fixed sets (`reason`, `outcome`, `route` = the matched route
//!    template, `status`, `source`, `target`, `phase`): never an id, a user, or a token.
//! 3. Histograms have explicit buckets (otherwise the exporter renders a summary).
//! 4. The recorder is installed once per process ([`Metrics::global`]); handles created before it
//!    would be no-ops, so everything goes through that function.

use crate::session::{ExpiryReason, Invalid};
use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

pub const SESSIONS_ACTIVE: &str = "sessiond_sessions_active";
pub const SESSIONS_MAX: &str = "sessiond_sessions_max";
pub const SESSIONS_CREATED: &str = "sessiond_sessions_created_total";
pub const SESSIONS_EXPIRED: &str = "sessiond_sessions_expired_total";
pub const SESSIONS_REVOKED: &str = "sessiond_sessions_revoked_total";
pub const VALIDATIONS: &str = "sessiond_validations_total";
pub const TOUCHES: &str = "sessiond_touches_total";
pub const EXPIRY_LAG: &str = "sessiond_expiry_lag_seconds";
pub const POLICY_CHANGES: &str = "sessiond_policy_changes_total";
pub const HTTP_REQUESTS: &str = "sessiond_http_requests_total";
pub const HTTP_DURATION: &str = "sessiond_http_request_duration_seconds";
pub const HTTP_CONNECTIONS: &str = "sessiond_http_connections";
pub const HTTP_CONNECTIONS_MAX: &str = "sessiond_http_connections_max";
pub const HTTP_CONNECTIONS_REFUSED: &str = "sessiond_http_connections_refused_total";
pub const HTTP_CONNECTIONS_TIMED_OUT: &str = "sessiond_http_connections_timed_out_total";
pub const WORKER_DELAY: &str = "sessiond_http_worker_delay_seconds";
pub const CREATE_REFUSED: &str = "sessiond_sessions_refused_total";
pub const POLICY_RELOAD_ERRORS: &str = "sessiond_policy_reload_errors_total";
pub const POLICY_REAPPLY_DURATION: &str = "sessiond_policy_reapply_duration_seconds";
pub const POLICY_LAST_CHANGE: &str = "sessiond_policy_last_change_timestamp_seconds";
pub const POLICY_DRY_RUNS: &str = "sessiond_policy_dry_runs_total";
pub const JOURNAL_BYTES: &str = "sessiond_journal_bytes_total";
pub const JOURNAL_FSYNC: &str = "sessiond_journal_fsync_seconds";
pub const JOURNAL_ERRORS: &str = "sessiond_journal_errors_total";
pub const SNAPSHOT_DURATION: &str = "sessiond_snapshot_duration_seconds";
pub const SNAPSHOT_SESSIONS: &str = "sessiond_snapshot_sessions";
pub const SNAPSHOT_BYTES: &str = "sessiond_snapshot_bytes";
pub const SNAPSHOT_LAST_SUCCESS: &str = "sessiond_snapshot_last_success_timestamp_seconds";
pub const SNAPSHOT_ERRORS: &str = "sessiond_snapshot_errors_total";
pub const PERSIST_HEALTHY: &str = "sessiond_persistence_healthy";
pub const PERSIST_UNSAVED: &str = "sessiond_persistence_unsaved_changes";
pub const PERSIST_UNSAVED_AGE: &str = "sessiond_persistence_unsaved_age_seconds";
pub const CLUSTER_HEALTHY: &str = "sessiond_cluster_publish_healthy";
pub const CLUSTER_PUBLISHED: &str = "sessiond_cluster_messages_published_total";
pub const CLUSTER_PUBLISH_ERRORS: &str = "sessiond_cluster_publish_errors_total";
pub const CLUSTER_APPLIED: &str = "sessiond_cluster_frames_applied_total";
pub const CLUSTER_DAMAGED: &str = "sessiond_cluster_damaged_messages_total";
pub const CLUSTER_CATCH_UPS: &str = "sessiond_cluster_catch_ups_total";
pub const CLUSTER_DIRECT_READS: &str = "sessiond_cluster_direct_reads_total";
pub const CLUSTER_NOT_REPLICATED: &str = "sessiond_cluster_not_replicated_total";
pub const CLUSTER_BACKLOG: &str = "sessiond_cluster_outbox_bytes";
pub const CLUSTER_APPLIED_SEQ: &str = "sessiond_cluster_applied_sequence";
pub const CLUSTER_BEHIND: &str = "sessiond_cluster_behind_messages";
pub const CLUSTER_APPLY_LAG: &str = "sessiond_cluster_replication_lag_seconds";
pub const CLUSTER_NODES: &str = "sessiond_cluster_nodes";
pub const CLUSTER_SNAPSHOTS_PUBLISHED: &str = "sessiond_cluster_snapshots_published_total";
pub const CLUSTER_SNAPSHOTS_LOADED: &str = "sessiond_cluster_snapshots_loaded_total";
pub const CLUSTER_SNAPSHOT_ERRORS: &str = "sessiond_cluster_snapshot_errors_total";

/// Replication lag: a loopback cluster applies in about a millisecond; seconds mean trouble.
const CLUSTER_LAG_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0,
];
const HTTP_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The lag probe's resolution is tokio's 1 ms timer (`server::lag`): the first bucket is its
/// rounding; from 5 ms on, a worker was stalled.
const WORKER_DELAY_BUCKETS: &[f64] = &[0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

const FSYNC_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

const REAPPLY_BUCKETS: &[f64] = &[
    0.000_1, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// Outcome labels: `valid`, then the reasons in the order of [`invalid_index`].
const OUTCOMES: [&str; 5] = [
    "valid",
    "malformed",
    "not_found",
    "expired_idle",
    "expired_absolute",
];

fn invalid_index(why: Invalid) -> usize {
    match why {
        Invalid::Malformed => 1,
        Invalid::NotFound => 2,
        Invalid::ExpiredIdle => 3,
        Invalid::ExpiredAbsolute => 4,
    }
}

/// Per-route handles of one HTTP worker thread: the request counter by status and the duration
/// histogram, resolved in the registry once per (route, status) instead of once per request
/// (which costs three `String`s and a hash of every label). Routes and statuses are fixed sets
/// (invariant 2), so the cache stays small.
struct RouteHandles {
    duration: Option<Histogram>,
    by_status: Vec<(u16, Counter)>,
}

thread_local! {
    static ROUTES: std::cell::RefCell<hashbrown::HashMap<Box<str>, RouteHandles>> =
        std::cell::RefCell::new(hashbrown::HashMap::new());
}

/// Counts one HTTP request on `route` (the matched template, or `unmatched`) and, when given,
/// its duration.
pub fn http_request(route: &str, status: u16, seconds: Option<f64>) {
    ROUTES.with_borrow_mut(|routes| {
        let r = routes.entry_ref(route).or_insert_with(|| RouteHandles {
            duration: None,
            by_status: Vec::new(),
        });
        if let Some(secs) = seconds {
            r.duration
                .get_or_insert_with(|| histogram!(HTTP_DURATION, "route" => route.to_owned()))
                .record(secs);
        }
        match r.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => c.increment(1),
            None => {
                let c = counter!(HTTP_REQUESTS, "route" => route.to_owned(), "status" => status.to_string());
                c.increment(1);
                r.by_status.push((status, c));
            }
        }
    });
}

/// Handles to every metric the daemon records.
pub struct Metrics {
    handle: PrometheusHandle,
    pub active: Gauge,
    pub max: Gauge,
    pub created: Counter,
    pub revoked: Counter,
    expired_idle: Counter,
    expired_absolute: Counter,
    validations: [Counter; 5],
    touches: [Counter; 5],
    expiry_lag: Histogram,
}

impl Metrics {
    /// The process's metrics, installing the Prometheus recorder on first use (invariant 4).
    pub fn global() -> Arc<Metrics> {
        static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Full(EXPIRY_LAG.into()), LAG_BUCKETS)
                    .and_then(|b| {
                        b.set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)
                    })
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full(POLICY_REAPPLY_DURATION.into()),
                            REAPPLY_BUCKETS,
                        )
                    })
                    .and_then(|b| {
                        b.set_buckets_for_metric(Matcher::Full(JOURNAL_FSYNC.into()), FSYNC_BUCKETS)
                    })
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full(WORKER_DELAY.into()),
                            WORKER_DELAY_BUCKETS,
                        )
                    })
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full(CLUSTER_APPLY_LAG.into()),
                            CLUSTER_LAG_BUCKETS,
                        )
                    })
                    .expect("bucket lists are non-empty")
                    .build_recorder();
                let handle = recorder.handle();
                // Fails only if another recorder was installed first (never in this binary).
                let _ = metrics::set_global_recorder(recorder);
                describe();
                Arc::new(Metrics {
                    handle,
                    active: gauge!(SESSIONS_ACTIVE),
                    max: gauge!(SESSIONS_MAX),
                    created: counter!(SESSIONS_CREATED),
                    revoked: counter!(SESSIONS_REVOKED),
                    expired_idle: counter!(SESSIONS_EXPIRED, "reason" => "idle"),
                    expired_absolute: counter!(SESSIONS_EXPIRED, "reason" => "absolute"),
                    validations: OUTCOMES.map(|o| counter!(VALIDATIONS, "outcome" => o)),
                    touches: OUTCOMES.map(|o| counter!(TOUCHES, "outcome" => o)),
                    expiry_lag: histogram!(EXPIRY_LAG),
                })
            })
            .clone()
    }

    /// Counts one validation by outcome: `None` when it succeeded, else why not.
    #[inline]
    pub fn validation_outcome(&self, invalid: Option<Invalid>) {
        self.validations[invalid.map_or(0, invalid_index)].increment(1);
    }

    /// Counts one touch by outcome: `None` when it succeeded, else why not.
    pub fn touch_outcome(&self, invalid: Option<Invalid>) {
        self.touches[invalid.map_or(0, invalid_index)].increment(1);
    }

    /// Counts evictions by reason.
    pub fn expired(&self, reason: ExpiryReason, n: u64) {
        match reason {
            ExpiryReason::Idle => self.expired_idle.increment(n),
            ExpiryReason::Absolute => self.expired_absolute.increment(n),
        }
    }

    /// Records one eviction by the reaper and how late it was.
    pub fn evicted(&self, reason: ExpiryReason, lag_ms: u64) {
        self.expired(reason, 1);
        self.expiry_lag.record(lag_ms as f64 / 1_000.0);
    }

    /// Counts a policy change from `source` (`api`, `file_watch`, `sighup`, `reload`,
    /// `startup`) and stamps its time.
    pub fn policy_changed(&self, source: &'static str) {
        counter!(POLICY_CHANGES, "source" => source).increment(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge!(POLICY_LAST_CHANGE).set(now);
    }

    /// Records how long a policy re-application took.
    pub fn policy_reapplied(&self, took: std::time::Duration) {
        histogram!(POLICY_REAPPLY_DURATION).record(took.as_secs_f64());
    }

    /// Counts a policy dry run by what it targeted (`application` or `org`).
    pub fn policy_dry_run(&self, target: &'static str) {
        counter!(POLICY_DRY_RUNS, "target" => target).increment(1);
    }

    /// Counts a policy source that failed to load.
    pub fn policy_reload_error(&self) {
        counter!(POLICY_RELOAD_ERRORS).increment(1);
    }

    /// The Prometheus text exposition, with the gauges brought up to date.
    pub fn render(&self, active: usize) -> String {
        self.active.set(active as f64);
        self.handle.render()
    }

    /// The Prometheus text exposition as it stands (no gauge brought up to date).
    #[cfg(test)]
    pub fn render_now(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; call periodically.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// HTTP worker `worker`'s lag probe histogram (`server::lag`), through the installed recorder
/// (invariant 4). The label is the worker's index, a fixed set of `--http-workers` values.
pub fn worker_delay(worker: usize) -> Histogram {
    Metrics::global();
    histogram!(WORKER_DELAY, "worker" => worker.to_string())
}

fn describe() {
    describe_gauge!(
        SESSIONS_ACTIVE,
        "Sessions in the table, including expired ones not yet swept."
    );
    describe_gauge!(SESSIONS_MAX, "The configured max_sessions.");
    describe_counter!(SESSIONS_CREATED, "Sessions created.");
    describe_counter!(
        SESSIONS_EXPIRED,
        "Sessions evicted at a deadline, by reason (idle, absolute)."
    );
    describe_counter!(
        SESSIONS_REVOKED,
        "Sessions ended by logout, an admin, or the per-user limit."
    );
    describe_counter!(
        CREATE_REFUSED,
        "Session creations refused, by reason (capacity, user_limit)."
    );
    describe_counter!(VALIDATIONS, "Validations by outcome.");
    describe_counter!(TOUCHES, "Touches (including GET /v1/auth) by outcome.");
    describe_histogram!(
        EXPIRY_LAG,
        Unit::Seconds,
        "Eviction time minus deadline, per evicted session."
    );
    describe_counter!(POLICY_CHANGES, "Accepted policy changes, by source.");
    describe_counter!(
        POLICY_RELOAD_ERRORS,
        "Policy sources that failed to parse or validate (the last good policies stayed)."
    );
    describe_histogram!(
        POLICY_REAPPLY_DURATION,
        Unit::Seconds,
        "Time to apply a policy change to the live sessions."
    );
    describe_gauge!(
        POLICY_LAST_CHANGE,
        Unit::Seconds,
        "Unix time of the last effective policy change."
    );
    describe_counter!(
        POLICY_DRY_RUNS,
        "Policy dry runs (?dry_run=true), by target (application, org); they change nothing."
    );
    describe_histogram!(
        WORKER_DELAY,
        Unit::Seconds,
        "How late each HTTP worker ran its 10 ms lag probe tick (1 ms resolution): a worker \
         stalled (a long poll, a lock, no CPU) delays it, and every request waiting on it, as long."
    );
    describe_counter!(JOURNAL_BYTES, Unit::Bytes, "Bytes appended to the journal.");
    describe_histogram!(
        JOURNAL_FSYNC,
        Unit::Seconds,
        "Time of each journal fsync (fdatasync)."
    );
    describe_counter!(
        JOURNAL_ERRORS,
        "Failed journal writes or syncs (changes since are not durable until it recovers)."
    );
    describe_gauge!(
        SNAPSHOT_DURATION,
        Unit::Seconds,
        "Time the last snapshot took to write."
    );
    describe_gauge!(SNAPSHOT_SESSIONS, "Sessions in the last snapshot.");
    describe_gauge!(SNAPSHOT_BYTES, Unit::Bytes, "Size of the last snapshot.");
    describe_gauge!(
        SNAPSHOT_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful snapshot."
    );
    describe_counter!(SNAPSHOT_ERRORS, "Snapshots that failed.");
    describe_gauge!(
        PERSIST_HEALTHY,
        "1 while every change reaches the state directory; 0 while writes fail, changes wait \
         for a snapshot, or another sessiond holds the directory."
    );
    describe_gauge!(
        PERSIST_UNSAVED,
        "Changes applied in memory but not on disk (kept for writing, or waiting for a snapshot)."
    );
    describe_gauge!(
        PERSIST_UNSAVED_AGE,
        Unit::Seconds,
        "Age of the oldest change not on disk (0 when there is none)."
    );
    describe_gauge!(
        CLUSTER_HEALTHY,
        "1 while the cluster's stream takes this node's changes, 0 while publishing fails."
    );
    describe_counter!(
        CLUSTER_PUBLISHED,
        "Messages (batches of changes) the stream acknowledged."
    );
    describe_counter!(
        CLUSTER_PUBLISH_ERRORS,
        "Failed tries to publish a batch (each is retried)."
    );
    describe_counter!(
        CLUSTER_APPLIED,
        "Other nodes' changes applied to this node's table."
    );
    describe_counter!(
        CLUSTER_DAMAGED,
        "Stream messages that failed their checksum or did not parse."
    );
    describe_counter!(
        CLUSTER_CATCH_UPS,
        "Lookups of an unknown token that waited for the stream's head (read-your-writes)."
    );
    describe_counter!(
        CLUSTER_DIRECT_READS,
        "Stream messages read by direct get because the consumer lagged or could not be made."
    );
    describe_counter!(
        CLUSTER_NOT_REPLICATED,
        "Creates and revocations answered 503 not_replicated (--cluster-ack sync)."
    );
    describe_gauge!(
        CLUSTER_BACKLOG,
        Unit::Bytes,
        "Bytes of changes waiting for the stream."
    );
    describe_gauge!(
        CLUSTER_APPLIED_SEQ,
        "The last stream sequence this node has applied."
    );
    describe_gauge!(
        CLUSTER_BEHIND,
        "Messages in the cluster's stream this node has not applied yet (checked every 2 s)."
    );
    describe_histogram!(
        CLUSTER_APPLY_LAG,
        Unit::Seconds,
        "From another node's batch reaching the stream to this node applying it."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Nodes that reported to the cluster's node bucket within the last 30 s, this one included."
    );
    describe_counter!(
        CLUSTER_SNAPSHOTS_PUBLISHED,
        "Snapshots this node published to the object store for joining nodes."
    );
    describe_counter!(
        CLUSTER_SNAPSHOTS_LOADED,
        "Published snapshots this node loaded at start (its state was empty or older than the stream)."
    );
    describe_counter!(
        CLUSTER_SNAPSHOT_ERRORS,
        "Snapshots that could not be published or loaded."
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route template and status.");
    describe_gauge!(HTTP_CONNECTIONS, "Open HTTP connections.");
    describe_gauge!(
        HTTP_CONNECTIONS_MAX,
        "The connection cap (max_connections): past it new connections are refused."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Connections refused (503 and closed) because max_connections were open."
    );
    describe_counter!(
        HTTP_CONNECTIONS_TIMED_OUT,
        "Connections closed by a timeout, by phase (header: a request head too slow; idle: keep-alive)."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration by route template."
    );
}
