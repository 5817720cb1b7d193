//! Where policies come from and how changes reach the engine: the admin API (default, persisted
//! in the state directory) or a policy file (TOML, watched), plus reloads on SIGHUP and
//! `POST /v1/policy/reload`.
//!
//! Files: this one (the [`PolicyManager`], the API source's `policies.json`), `file` (the policy
//! file's format, its reading and validation), `fast` (the policy file's line-oriented fast
//! path), [`watch`] (the watch on the policy file) and [`settle`] (reading a file once it has
//! stopped changing). The policies themselves, their resolution and the store the engine keeps are in
//! `policy`, which is part of the engine layer; this module sits above the engine (it applies
//! changes to it, counts them in `metrics` and writes through `persist`), so it is not under
//! `policy/`.
//!
//! Invariants:
//! 1. Exactly one source is authoritative, chosen at start. In file mode the API cannot write
//!    policies (the handlers answer 409).
//! 2. An API write is durable before it is applied or acknowledged: the whole policy set is
//!    written to a temporary file, fsynced, renamed over `policies.json`, and the directory
//!    fsynced. If that fails, nothing changes.
//! 3. A source that fails to parse or validate changes nothing: the last good policies stay in
//!    force and the error (file, line, field) is returned to the caller, logged and counted.
//! 4. Changes are serialized by one mutex, so two reloads or writes never interleave. In a
//!    cluster with policies from the API, whether an API write ([`PolicyManager::write_org`],
//!    [`PolicyManager::write_application`]) or a replicated one
//!    ([`PolicyManager::apply_replicated`], [`PolicyManager::replace_replicated`]) runs at all
//!    is decided by the bucket's revisions, under a mutex taken before this one
//!    (`cluster::policies`, invariant 5): the value in force is the newest the node applied.
//! 5. The policy file is parsed only once it has settled (see [`settle`]), whatever the
//!    trigger, and a file with nothing but whitespace is refused (invariant 3), never read as
//!    "no org policies": it is what a truncation in progress looks like. A file that means "no
//!    org policies" says so with a comment or an `[application]` table.
//! 6. Parsing is linear in the file's size, and a file of the usual shape never reaches the
//!    general TOML parser (`file`, `fast`): the daemon listens 0.2-0.3 s after exec with a
//!    50k-org file (docs/performance.md).
//! 7. Reloads on SIGHUP and from the file watch run on threads of their own
//!    ([`PolicyManager::reload_detached`], [`watch`]), never on the control runtime's
//!    blocking pool, which the runtime waits for at exit: a reload stuck in a slow read or parse
//!    never holds up shutdown or the state directory's lock. (A reload through the endpoint is a
//!    request like any other: shutdown waits for it at most the grace period.)

mod fast;
mod file;
pub mod settle;
pub mod watch;

#[cfg(test)]
use file::Lines;
pub use file::parse_policy_file;

use crate::engine::{Engine, PolicyChange};
use crate::metrics::Metrics;
use crate::policy::{OrgPolicy, Policy, PolicyPatch, PolicyWrite};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Name of the persisted policy set inside the state directory.
pub const POLICIES_FILE: &str = "policies.json";

/// The authoritative source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The admin API; writes persisted in `state_dir/policies.json`.
    Api { state_dir: PathBuf },
    /// A TOML file controlled by an operator or a ConfigMap, read once unchanged for `settle`.
    File { path: PathBuf, settle: Duration },
}

/// Why a policy source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("cannot persist policies: {}: {source}", dir.display())]
    Persist {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policies come from the policy file {0}; edit it instead (the API cannot change them)")]
    FileMode(PathBuf),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// The persisted form (API mode): durations in seconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    application: PolicyPatch,
    #[serde(default)]
    orgs: BTreeMap<String, PolicyPatch>,
}

#[derive(Serialize)]
struct PersistedOut<'a> {
    application: &'a Policy,
    orgs: &'a BTreeMap<String, Policy>,
}

/// Writes `bytes` to `path` atomically and durably (invariant 2).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = crate::persist::state_dir::create_file(&tmp, false)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    crate::persist::sync_dir(dir)
}

/// Owns the policy source and applies its changes to the engine.
pub struct PolicyManager {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    source: Source,
    /// The application policy from the configuration (used when the source sets none).
    base_app: Policy,
    lock: Mutex<()>,
}

impl PolicyManager {
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        source: Source,
        base_app: Policy,
    ) -> Self {
        PolicyManager {
            engine,
            metrics,
            source,
            base_app,
            lock: Mutex::new(()),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The engine the policies are applied to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether policies come from the admin API (and so, in a cluster, from its bucket).
    pub fn is_api(&self) -> bool {
        matches!(self.source, Source::Api { .. })
    }

    /// Reads the source at start (an absent API state file is fine: nothing set yet).
    pub fn load_initial(&self) -> Result<PolicyChange, SourceError> {
        let change = self.read_and_apply("startup")?;
        tracing::info!(
            source = ?self.source,
            orgs_custom = self.engine.custom_policy_count(),
            "policies loaded"
        );
        Ok(change)
    }

    /// Re-reads the source (SIGHUP, reload endpoint). On failure the last good policies stay
    /// (invariant 3).
    pub fn reload(&self, trigger: &'static str) -> Result<PolicyChange, SourceError> {
        tracing::debug!(trigger, source = ?self.source, "re-reading the policy source");
        let r = self.read_and_apply(trigger);
        self.reloaded(trigger, r)
    }

    /// Applies the policy file's bytes as the watcher read them once settled (or why it could
    /// not read them), like [`PolicyManager::reload`] otherwise.
    pub fn reload_watched(
        &self,
        bytes: std::io::Result<Vec<u8>>,
    ) -> Result<PolicyChange, SourceError> {
        const TRIGGER: &str = "file_watch";
        let Source::File { path, .. } = &self.source else {
            return Err(SourceError::Invalid(vec![
                "the policy source is the API, not a file".into(),
            ]));
        };
        let r = {
            let _guard = self.lock.lock();
            Self::parse_file(path, bytes, &self.base_app).map(|(app, orgs)| {
                let change = self.engine.replace_policies(app, orgs);
                self.record(TRIGGER, &change);
                change
            })
        };
        self.reloaded(TRIGGER, r)
    }

    /// Runs [`PolicyManager::reload`] on a thread of its own and waits for it (invariant 7).
    pub async fn reload_detached(
        self: Arc<Self>,
        trigger: &'static str,
    ) -> Result<PolicyChange, SourceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sessiond-policy-reload".into())
            .spawn(move || {
                let _ = tx.send(self.reload(trigger));
            })
            .map_err(|e| {
                SourceError::Invalid(vec![format!("cannot start a thread for the reload: {e}")])
            })?;
        rx.await.unwrap_or_else(|_| {
            Err(SourceError::Invalid(vec![
                "the reload thread ended without an answer".into(),
            ]))
        })
    }

    /// Whether a reload or write is running now (shutdown says it abandons it).
    pub fn busy(&self) -> bool {
        self.lock.is_locked()
    }

    fn reloaded(
        &self,
        trigger: &'static str,
        r: Result<PolicyChange, SourceError>,
    ) -> Result<PolicyChange, SourceError> {
        if let Err(e) = &r {
            self.metrics.policy_reload_error();
            tracing::error!(trigger, source = ?self.source, error = %e, "policy reload failed; the last good policies stay in force");
        }
        r
    }

    fn parse_file(
        path: &Path,
        bytes: std::io::Result<Vec<u8>>,
        base_app: &Policy,
    ) -> Result<(Policy, BTreeMap<String, Policy>), SourceError> {
        let text = bytes
            .and_then(|b| {
                String::from_utf8(b)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })
            .map_err(|e| {
                SourceError::Invalid(vec![format!(
                    "cannot read policy file {}: {e}",
                    path.display()
                )])
            })?;
        parse_policy_file(&text, base_app).map_err(|errs| {
            SourceError::Invalid(
                errs.into_iter()
                    .map(|e| format!("policy file {}: {e}", path.display()))
                    .collect(),
            )
        })
    }

    fn read(&self) -> Result<(Policy, BTreeMap<String, Policy>), SourceError> {
        match &self.source {
            Source::File { path, settle } => {
                // An explicit read waits for a file being written, but not forever.
                let deadline = Instant::now() + (*settle * 10).max(Duration::from_secs(5));
                let bytes = settle::read_settled(path, *settle, true, Some(deadline));
                Self::parse_file(path, bytes, &self.base_app)
            }
            Source::Api { state_dir } => {
                let path = state_dir.join(POLICIES_FILE);
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(self.engine.policies());
                    }
                    Err(e) => {
                        return Err(SourceError::Invalid(vec![format!(
                            "cannot read {}: {e}",
                            path.display()
                        )]));
                    }
                };
                let bad =
                    |e: String| SourceError::Invalid(vec![format!("{}: {e}", path.display())]);
                let p: Persisted = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                let app = Policy::from_patch(None, &p.application)
                    .map_err(|e| bad(format!("application: {e}")))?;
                let mut orgs = BTreeMap::new();
                for (name, patch) in &p.orgs {
                    let pol = Policy::from_patch(None, patch)
                        .map_err(|e| bad(format!("orgs.{name}: {e}")))?;
                    orgs.insert(name.clone(), pol);
                }
                Ok((app, orgs))
            }
        }
    }

    fn read_and_apply(&self, trigger: &'static str) -> Result<PolicyChange, SourceError> {
        let _guard = self.lock.lock();
        let (app, orgs) = self.read()?;
        let change = self.engine.replace_policies(app, orgs);
        self.record(trigger, &change);
        Ok(change)
    }

    /// The state directory, or the refusal every API write gets in file mode (invariant 1).
    fn state_dir(&self) -> Result<&Path, SourceError> {
        match &self.source {
            Source::File { path, .. } => Err(SourceError::FileMode(path.clone())),
            Source::Api { state_dir } => Ok(state_dir),
        }
    }

    fn persist(&self, app: &Policy, orgs: &BTreeMap<String, Policy>) -> Result<(), SourceError> {
        let state_dir = self.state_dir()?;
        serde_json::to_vec_pretty(&PersistedOut {
            application: app,
            orgs,
        })
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            std::fs::create_dir_all(state_dir)?;
            write_atomic(&state_dir.join(POLICIES_FILE), &bytes)
        })
        .map_err(|source| SourceError::Persist {
            dir: state_dir.to_owned(),
            source,
        })
    }

    /// `PUT /v1/policy`: persist, then apply (invariant 2).
    pub fn write_application(&self, policy: Policy) -> Result<PolicyChange, SourceError> {
        self.state_dir()?;
        let _guard = self.lock.lock();
        let (_, orgs) = self.engine.policies();
        self.persist(&policy, &orgs)?;
        let change = self.engine.set_application_policy(policy);
        self.record("api", &change);
        Ok(change)
    }

    /// `PUT/PATCH/DELETE /v1/orgs/{org}/policy`: persist, then apply (invariant 2).
    pub fn write_org(&self, org: &str, policy: OrgPolicy) -> Result<PolicyChange, SourceError> {
        self.state_dir()?;
        crate::session::check_id("org_id", org).map_err(crate::engine::EngineError::from)?;
        let _guard = self.lock.lock();
        let (app, mut orgs) = self.engine.policies();
        match policy {
            OrgPolicy::Application => orgs.remove(org),
            OrgPolicy::Custom(p) => orgs.insert(org.to_owned(), p),
        };
        self.persist(&app, &orgs)?;
        let change = self.engine.set_org_policy(org, policy)?;
        self.record("api", &change);
        Ok(change)
    }

    /// A policy write another node made (the cluster's policy bucket): persisted here and
    /// applied like an API write, unless it is already in force (this node's own writes come
    /// back this way too). Not in file mode: there the file rules every node.
    pub fn apply_replicated(&self, write: PolicyWrite) -> Result<PolicyChange, SourceError> {
        self.state_dir()?;
        let _guard = self.lock.lock();
        let (mut app, mut orgs) = self.engine.policies();
        let same = match &write {
            PolicyWrite::Application(p) => app == *p,
            PolicyWrite::Org { org, policy } => self.engine.org_policy(org).org_policy == *policy,
        };
        if same {
            return Ok(PolicyChange::default());
        }
        match &write {
            PolicyWrite::Application(p) => app = *p,
            PolicyWrite::Org { org, policy } => match policy {
                OrgPolicy::Application => {
                    orgs.remove(org);
                }
                OrgPolicy::Custom(p) => {
                    orgs.insert(org.clone(), *p);
                }
            },
        }
        self.persist(&app, &orgs)?;
        let change = match write {
            PolicyWrite::Application(p) => self.engine.set_application_policy(p),
            PolicyWrite::Org { org, policy } => self.engine.set_org_policy(&org, policy)?,
        };
        self.record("cluster", &change);
        Ok(change)
    }

    /// The whole policy set of the cluster's bucket, as a node finds it when it (re)joins:
    /// persisted here and applied, replacing what this node had.
    pub fn replace_replicated(
        &self,
        app: Policy,
        orgs: BTreeMap<String, Policy>,
    ) -> Result<PolicyChange, SourceError> {
        self.state_dir()?;
        let _guard = self.lock.lock();
        self.persist(&app, &orgs)?;
        let change = self.engine.replace_policies(app, orgs);
        self.record("cluster", &change);
        Ok(change)
    }

    /// Metrics and one log line per org changed.
    fn record(&self, trigger: &'static str, change: &PolicyChange) {
        self.metrics.policy_reapplied(change.duration);
        if !change.changed {
            tracing::info!(trigger, "policy source read; no effective policy changed");
            return;
        }
        self.metrics.policy_changed(trigger);
        let ev = change.reapplied.evicted;
        self.metrics
            .expired(crate::session::ExpiryReason::Idle, ev.idle);
        self.metrics
            .expired(crate::session::ExpiryReason::Absolute, ev.absolute);
        if trigger == "startup" {
            // Every org is new at start-up; the `policies loaded` line says how many there
            // are. One line per org would be 50k lines for a big file.
            tracing::info!(
                trigger,
                orgs = change.orgs.len(),
                evicted_idle = ev.idle,
                evicted_absolute = ev.absolute,
                "effective policies set"
            );
            return;
        }
        for o in &change.orgs {
            let secs = |e: &crate::policy::Effective| {
                format!(
                    "absolute={}s idle={} persistent={}",
                    e.absolute_ms / 1_000,
                    if e.idle_ms == 0 {
                        "off".to_owned()
                    } else {
                        format!("{}s", e.idle_ms / 1_000)
                    },
                    e.persistent
                )
            };
            tracing::info!(
                trigger,
                org_id = o.org.as_deref().unwrap_or("(none: application policy)"),
                old = %secs(&o.old),
                new = %secs(&o.new),
                refiled = o.reapplied.refiled,
                evicted_idle = o.reapplied.evicted.idle,
                evicted_absolute = o.reapplied.evicted.absolute,
                "effective policy changed"
            );
        }
    }
}

#[cfg(test)]
mod tests;
