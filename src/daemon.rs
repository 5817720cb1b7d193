//! Runs the daemon: build the engine from the config, lock the state directory, serve HTTP,
//! load the saved sessions (session routes answer 503 and `/readyz` not-ready meanwhile), start
//! the reaper, and on SIGTERM/SIGINT shut down through the one signal (`shutdown`).
//!
//! Invariants:
//! 1. Every start, load and stop is one structured log line; no line holds a token.
//! 2. The exit status is honest: non-zero when the shutdown could not put everything on disk
//!    (see `persist::ShutdownError`), with the log line saying how much and since when.
//! 3. The shutdown drains in linkerd2-proxy's order, one stage of the signal at a time: stop
//!    accepting, answer the requests in flight within the grace period, stop the reaper, write
//!    a last snapshot (persistence's threads then finish the journal), exit.

use crate::api_keys::ApiKeys;
use crate::changes::{Changes, Tee};
use crate::clock::SystemClock;
use crate::cluster::{Cluster, Outbox};
use crate::config::Config;
use crate::engine::Engine;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::persist::Persistence;
use crate::persist::journal::Journal;
use crate::policy_source::{PolicyManager, Source};
use crate::reaper;
use crate::server;
use crate::shutdown::{Shutdown, Stage};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The policy source the configuration asks for.
pub fn policy_source(config: &Config) -> Source {
    match &config.policy_file {
        Some(path) => Source::File {
            path: path.clone(),
            settle: config.policy_file_settle,
        },
        None => Source::Api {
            state_dir: config.state_dir.clone(),
        },
    }
}

/// Builds the shared state for `config`, journaling into `journal` if given, and replicating
/// through the cluster's outbox if `config` names a cluster.
pub fn state(config: &Config, keys: Option<ApiKeys>, journal: Option<Arc<Journal>>) -> AppState {
    let outbox = config
        .cluster
        .as_ref()
        .map(|_| Arc::new(Outbox::new(Engine::shards_for(&config.engine))));
    let mut listeners: Vec<Arc<dyn Changes>> = Vec::new();
    if let Some(j) = &journal {
        listeners.push(j.clone());
    }
    if let Some(o) = &outbox {
        listeners.push(o.clone());
    }
    let changes: Option<Arc<dyn Changes>> = match listeners.len() {
        0 | 1 => listeners.pop(),
        _ => Some(Arc::new(Tee(listeners))),
    };
    let engine = Arc::new(Engine::with_changes(
        config.engine.clone(),
        Arc::new(SystemClock),
        changes,
    ));
    // The recorder first: metrics touched before it exists go nowhere (`metrics`, invariant 4).
    let metrics = Metrics::global();
    let cluster = config
        .cluster
        .clone()
        .zip(outbox)
        .map(|(settings, outbox)| Cluster::new(settings, outbox, engine.clone()));
    metrics.max.set(config.engine.max_sessions as f64);
    let policies = Arc::new(PolicyManager::new(
        engine.clone(),
        metrics.clone(),
        policy_source(config),
        config.engine.application_policy,
    ));
    AppState::new(crate::http::Shared {
        engine,
        policies,
        metrics,
        keys: keys.map(Arc::new),
        cookie: Arc::new(config.cookie.clone()),
        ready: Arc::new(AtomicBool::new(false)),
        loaded: Arc::new(AtomicBool::new(journal.is_none())),
        journal,
        cluster,
        body_read_timeout: config.header_read_timeout,
    })
}

/// A start refused for a problem in a file the operator writes (the API keys file, the policy
/// file): the binary exits 2 for it, as for any other configuration problem, where a failure
/// of the machine (the state directory, the port) exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFileError(&'static str);

/// Serves until a shutdown signal, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let keys = match &config.api_keys_file {
        None => None,
        Some(path) => {
            Some(ApiKeys::load(path).context(ConfigFileError("cannot load the API keys file"))?)
        }
    };
    if !config.cookie.secure {
        tracing::warn!(
            "cookie_secure is false: session cookies will be sent over plain HTTP; use this only for local development"
        );
    }
    if keys.is_none() && !config.listen.is_local() {
        tracing::warn!(listen = %config.listen, "serving without API keys on a non-loopback address (--insecure-no-auth): anyone who can connect is admin");
    }
    if config.policy_file.is_none() || config.persist.is_some() {
        check_state_dir(&config.state_dir)?;
    }
    let shutdown = Shutdown::new();
    let persist = match &config.persist {
        Some(settings) => Some(Arc::new(Persistence::open(
            settings.clone(),
            Engine::shards_for(&config.engine),
            shutdown.clone(),
        )?)),
        None => None,
    };
    let st = state(&config, keys, persist.as_ref().map(|p| p.journal()));
    let engine = st.engine.clone();
    // No snapshot cuts from the journal what the cluster's stream does not have yet
    // (`persist`, invariant 5). Only while NATS is out of reach: a busy node's outbox is
    // rarely empty, and holding on any backlog would put its snapshots off for good.
    if let (Some(p), Some(c)) = (&persist, &st.cluster) {
        let c = c.clone();
        p.hold_snapshots(move || c.outbox.backlog() > 0 && !c.connected());
    }
    let policies = st.policies.clone();
    let loaded = st.policies.load_initial();
    if config.policy_file.is_some() {
        loaded.context(ConfigFileError("cannot load the policy file"))?;
    } else {
        loaded.context("cannot load policies")?;
    }
    if let Some(path) = &config.policy_file {
        crate::policy_source::watch::spawn(
            path.clone(),
            config.policy_file_settle,
            st.policies.clone(),
        )?;
    }
    tokio::spawn(reload_on_sighup(st.policies.clone()));
    // The socket file (of a `unix:` listen address) is removed when `run` returns.
    let (listener, _socket_file) = server::bind(&config.listen, config.listen_mode)?;
    let local = listener.describe(&config.listen);

    let limits = connection_limits(&config);
    tracing::info!(
        listen = %local,
        http_workers = config.http_workers,
        pin_workers = %config.pin_workers,
        write_gate = config.write_gate,
        header_read_timeout_secs = limits.header_read_timeout.as_secs(),
        keepalive_timeout_secs = limits.keepalive_timeout.as_secs(),
        max_connections = limits.max_connections,
        shards = engine.shard_count(),
        tick_ms = engine.tick_ms(),
        org_policy_mode = %config.engine.mode,
        max_sessions = config.engine.max_sessions,
        max_sessions_per_user = ?config.engine.max_sessions_per_user,
        api_keys = st.keys.as_ref().map_or(0, |k| k.len()),
        config_file = ?config.config_file,
        application_policy = ?config.engine.application_policy,
        policy_source = ?st.policies.source(),
        state_dir = %config.state_dir.display(),
        persist = ?config.persist.as_ref().map(|p| (p.fsync.to_string(), p.snapshot_interval)),
        cluster = ?config.cluster.as_ref().map(|c| (c.node.as_str(), c.stream.as_str(), c.ack.to_string())),
        "sessiond started"
    );

    let ready = st.ready.clone();
    let loaded = st.loaded.clone();
    let metrics = st.metrics.clone();
    let apps = (0..config.http_workers)
        .map(|_| crate::http::App::new(st.for_worker()))
        .collect();
    let workers = server::start(
        listener,
        apps,
        limits,
        config.pin_workers,
        config.write_gate,
        shutdown.at(Stage::Draining),
    )
    .context("cannot start the HTTP workers")?;

    if let Some(p) = &persist {
        let (p, e) = (p.clone(), engine.clone());
        let load = tokio::task::spawn_blocking(move || p.start(&e));
        let loaded_report = tokio::select! {
            r = load => r.context("the load task failed")?,
            signal = shutdown_signal() => {
                tracing::info!(signal, "stopping before the sessions finished loading");
                shutdown.advance(Stage::Draining);
                return Ok(());
            }
        };
        let mut l = loaded_report.context("cannot load the saved sessions")?;
        if let Some(c) = &st.cluster {
            c.revocations_from_journal(std::mem::take(&mut l.report.revoked));
        }
        let r = &l.report;
        tracing::info!(
            sessions = engine.len(),
            loaded = r.sessions,
            dropped_expired = l.expired,
            snapshot_sessions = r.from_snapshot,
            snapshot_generation = ?r.snapshot,
            journal_records = r.replayed,
            journals = r.journals,
            torn_tails = r.torn.len(),
            recovered_damage = r.recovered.len(),
            took_ms = r.took.as_millis() as u64,
            "sessions loaded"
        );
        loaded.store(true, Ordering::Release);
    }
    // The cluster's stream after the local state: its messages apply on top (`cluster`).
    let cluster = st.cluster.clone();
    if let Some(c) = &cluster {
        c.start(policies.clone())
            .await
            .context("cannot join the cluster")?;
    }
    let reaper = reaper::spawn(engine.clone(), metrics, shutdown.at(Stage::Drained))?;
    ready.store(true, Ordering::Release);

    let signal = shutdown_signal().await;
    tracing::info!(
        signal,
        grace_secs = config.shutdown_grace.as_secs(),
        "shutting down: draining in-flight requests"
    );
    ready.store(false, Ordering::Release);
    if policies.busy() {
        tracing::warn!(
            "a policy reload is still running; it is abandoned (the policy source is read again at the next start)"
        );
    }
    // Stop accepting; answer what is in flight within the grace period.
    shutdown.advance(Stage::Draining);
    let drained = tokio::time::timeout(config.shutdown_grace, workers.wait()).await;
    // What this node changed reaches the stream before it goes (`async` answered already).
    if let Some(c) = &cluster
        && let Err(e) = c
            .outbox
            .wait_replicated(crate::cluster::REPLICATE_WAIT)
            .await
    {
        tracing::warn!(
            error = %e,
            unpublished_bytes = c.outbox.backlog(),
            "stopping with changes the cluster's stream does not have; they are in this node's journal only"
        );
    }
    if let Some(c) = &cluster {
        c.leave().await;
    }
    // Stop the reaper.
    shutdown.advance(Stage::Drained);
    let _ = reaper.join();
    // The last snapshot; `Persistence::shutdown` then reaches `Stage::Exiting`.
    if let Some(p) = persist {
        let e = engine.clone();
        let saved = tokio::task::spawn_blocking(move || p.shutdown(&e))
            .await
            .context("the shutdown task failed")?;
        if let Err(e) = saved {
            tracing::error!(error = %e, "sessiond stopped without saving everything");
            return Err(e).context("stopping");
        }
    }
    match drained {
        Ok(Ok(())) => {
            tracing::info!(sessions = engine.len(), "sessiond stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(e).context("server error"),
        Err(_) => {
            tracing::warn!("grace period over with requests still in flight; stopping anyway");
            Ok(())
        }
    }
}

/// The connection limits: the configured cap, else one derived from the open-file limit; a
/// configured cap the open-file limit cannot hold is said at start, not found out at `EMFILE`.
fn connection_limits(config: &Config) -> server::Limits {
    let soft = crate::fdlimit::soft();
    let derived = crate::fdlimit::default_max_connections(soft, config.http_workers);
    let max_connections = match config.max_connections {
        None => derived,
        Some(m) => {
            if m > derived {
                tracing::warn!(
                    max_connections = m,
                    open_file_limit = ?soft,
                    fits = derived,
                    "max_connections is more than the open-file limit leaves room for: accept will fail with \
                     'Too many open files' first; raise the limit (LimitNOFILE=) or lower max_connections"
                );
            }
            m
        }
    };
    metrics::gauge!(crate::metrics::HTTP_CONNECTIONS_MAX).set(max_connections as f64);
    // Exported from the start at 0, so that rate() and dashboards see them before any event.
    metrics::counter!(crate::metrics::HTTP_CONNECTIONS_REFUSED).increment(0);
    for phase in ["header", "idle"] {
        metrics::counter!(crate::metrics::HTTP_CONNECTIONS_TIMED_OUT, "phase" => phase)
            .increment(0);
    }
    server::Limits {
        header_read_timeout: config.header_read_timeout,
        keepalive_timeout: config.keepalive_timeout,
        max_connections,
    }
}

/// Fails early if writes to the state directory would fail for a reason that waiting does
/// not cure (permissions, a file in its place); a full or read-only disk is a bad day instead:
/// the daemon starts, serves, reports persistence failing and retries.
fn check_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let probe = dir.join(".sessiond-write-test");
    let r = crate::persist::state_dir::create_dir(dir).and_then(|_| {
        crate::persist::state_dir::create_file(&probe, false)?;
        std::fs::remove_file(&probe)
    });
    match r {
        Ok(()) => Ok(()),
        Err(e) if crate::persist::state_dir::transient(&e) && dir.is_dir() => {
            let _ = std::fs::remove_file(&probe);
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "the state directory takes no writes now; starting anyway: changes are kept in \
                 memory and written when it does (see sessiond_persistence_healthy)"
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "state directory {} is not writable (set --state-dir)",
                dir.display()
            )
        }),
    }
}

async fn reload_on_sighup(policies: Arc<PolicyManager>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload with POST /v1/policy/reload");
        return;
    };
    while hup.recv().await.is_some() {
        let _ = policies.clone().reload_detached("sighup").await;
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
