//! Runs the daemon: build the engine from the config, start the reaper, serve HTTP, and on
//! SIGTERM/SIGINT stop accepting, drain in-flight requests within the grace period, and exit.
//!
//! Invariant: every start and stop is one structured log line; no line holds a token.

use crate::api_keys::ApiKeys;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::engine::Engine;
use crate::http::{AppState, router};
use crate::metrics::Metrics;
use crate::policy_source::{PolicyManager, Source};
use crate::reaper;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

/// The policy source the configuration asks for.
pub fn policy_source(config: &Config) -> Source {
    match &config.policy_file {
        Some(path) => Source::File { path: path.clone() },
        None => Source::Api {
            state_dir: config.state_dir.clone(),
        },
    }
}

/// Builds the shared state for `config`.
pub fn state(config: &Config, keys: Option<ApiKeys>) -> AppState {
    let engine = Arc::new(Engine::new(config.engine.clone(), Arc::new(SystemClock)));
    let metrics = Metrics::global();
    metrics.max.set(config.engine.max_sessions as f64);
    let policies = Arc::new(PolicyManager::new(
        engine.clone(),
        metrics.clone(),
        policy_source(config),
        config.engine.application_policy,
    ));
    AppState {
        engine,
        policies,
        metrics,
        keys: keys.map(Arc::new),
        cookie: Arc::new(config.cookie.clone()),
        ready: Arc::new(AtomicBool::new(false)),
    }
}

/// Serves until a shutdown signal, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let keys = match &config.api_keys_file {
        None => None,
        Some(path) => Some(ApiKeys::load(path).map_err(|errs| anyhow::anyhow!(errs.join("; ")))?),
    };
    if !config.cookie.secure {
        tracing::warn!(
            "cookie_secure is false: session cookies will be sent over plain HTTP; use this only for local development"
        );
    }
    if keys.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "serving without API keys on a non-loopback address (--insecure-no-auth): anyone who can connect is admin");
    }
    if config.policy_file.is_none() {
        check_state_dir(&config.state_dir)?;
    }
    let st = state(&config, keys);
    let engine = st.engine.clone();
    st.policies
        .load_initial()
        .map_err(|e| anyhow::anyhow!("cannot load policies: {e}"))?;
    if let Some(path) = &config.policy_file {
        crate::policy_watch::spawn(path.clone(), st.policies.clone())?;
    }
    tokio::spawn(reload_on_sighup(st.policies.clone()));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;

    let stop = Arc::new(AtomicBool::new(false));
    let reaper = reaper::spawn(engine.clone(), st.metrics.clone(), stop.clone())?;

    tracing::info!(
        listen = %local,
        shards = engine.shard_count(),
        tick_ms = engine.tick_ms(),
        org_policy_mode = %config.engine.mode,
        max_sessions = config.engine.max_sessions,
        max_sessions_per_user = ?config.engine.max_sessions_per_user,
        api_keys = st.keys.as_ref().map_or(0, |k| k.len()),
        config_file = ?config.config_file,
        application_policy = ?config.engine.application_policy,
        policy_source = ?st.policies.source(),
        "sessiond started"
    );
    st.ready.store(true, Ordering::Release);

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let ready = st.ready.clone();
    let app = router(st);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = drain_rx.await;
            })
            .await
    });

    let signal = shutdown_signal().await;
    tracing::info!(
        signal,
        grace_secs = config.shutdown_grace.as_secs(),
        "shutting down: draining in-flight requests"
    );
    ready.store(false, Ordering::Release);
    let _ = drain_tx.send(());
    let drained = tokio::time::timeout(config.shutdown_grace, server).await;
    stop.store(true, Ordering::Release);
    let _ = reaper.join();
    match drained {
        Ok(Ok(Ok(()))) => {
            tracing::info!(sessions = engine.len(), "sessiond stopped");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(e).context("server error"),
        Ok(Err(e)) => Err(e).context("server task failed"),
        Err(_) => {
            tracing::warn!("grace period over with requests still in flight; stopping anyway");
            Ok(())
        }
    }
}

/// Fails early if durable writes to the state directory would fail later.
fn check_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .and_then(|_| {
            let probe = dir.join(".sessiond-write-test");
            std::fs::write(&probe, b"ok")?;
            std::fs::remove_file(probe)
        })
        .with_context(|| {
            format!(
                "state directory {} is not writable (set --state-dir)",
                dir.display()
            )
        })
}

async fn reload_on_sighup(policies: Arc<PolicyManager>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload with POST /v1/policy/reload");
        return;
    };
    while hup.recv().await.is_some() {
        let p = policies.clone();
        let _ = tokio::task::spawn_blocking(move || p.reload("sighup")).await;
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
