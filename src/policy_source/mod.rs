//! Where policies come from and how changes reach the engine: the admin API (default, persisted
//! in the state directory) or a policy file (TOML, watched), plus reloads on SIGHUP and
//! `POST /v1/policy/reload`.
//!
//! Files: this one (the [`PolicyManager`], parsing and the API source's `policies.json`),
//! [`watch`] (the watch on the policy file) and [`settle`] (reading a file once it has stopped
//! changing). The policies themselves, their resolution and the store the engine keeps are in
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
//! 4. Changes are serialized by one mutex, so two reloads or writes never interleave.
//! 5. The policy file is parsed only once it has settled (see [`settle`]), whatever the
//!    trigger, and a file with nothing but whitespace is refused (invariant 3), never read as
//!    "no org policies": it is what a truncation in progress looks like. A file that means "no
//!    org policies" says so with a comment or an `[application]` table.
//! 6. Parsing is linear in the file's size: lines of spans are looked up in one index of line
//!    starts built per parse (50k orgs in tens of milliseconds, not minutes).
//! 7. Reloads on SIGHUP and from the file watch run on threads of their own
//!    ([`PolicyManager::reload_detached`], [`watch`]), never on the control runtime's
//!    blocking pool, which the runtime waits for at exit: a reload stuck in a slow read or parse
//!    never holds up shutdown or the state directory's lock. (A reload through the endpoint is a
//!    request like any other: shutdown waits for it at most the grace period.)

pub mod settle;
pub mod watch;

use crate::engine::{Engine, PolicyChange};
use crate::metrics::Metrics;
use crate::policy::duration::DurationSecs;
use crate::policy::{OrgPolicy, Policy, PolicyPatch};
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
    #[error("cannot persist policies: {0}")]
    Persist(String),
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

/// One org in the policy file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOrg {
    source: String,
    absolute_timeout: Option<DurationSecs>,
    idle_timeout_enabled: Option<bool>,
    idle_timeout: Option<DurationSecs>,
    persistent: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicies {
    application: Option<toml::Spanned<PolicyPatch>>,
    #[serde(default)]
    orgs: BTreeMap<String, toml::Spanned<FileOrg>>,
}

/// Line numbers of byte offsets: the start of every line, found in one pass (invariant 6).
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        Lines(starts)
    }

    /// The 1-based line holding byte `offset`.
    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

/// The line of `field = ...` inside the table that starts at `span` (up to the next table
/// header: toml's span may cover only the header), else the table's first line.
fn field_line(
    text: &str,
    lines: &Lines,
    span: std::ops::Range<usize>,
    err: &crate::policy::PolicyError,
) -> usize {
    use crate::policy::PolicyError;
    let field = match err {
        PolicyError::OutOfRange { field, .. } | PolicyError::Missing { field, .. } => *field,
    };
    let body = text.get(span.start.min(text.len())..).unwrap_or_default();
    let mut offset = span.start;
    for (i, line) in body.split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        if i > 0 && t.starts_with('[') {
            break;
        }
        if t.strip_prefix(field)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return lines.of(offset);
        }
        offset += line.len();
    }
    lines.of(span.start)
}

/// Parses and validates a policy file's text; `base` is the application policy when the file has
/// no `[application]` table. Every problem is listed with its line.
pub fn parse_policy_file(
    text: &str,
    base: &Policy,
) -> Result<(Policy, BTreeMap<String, Policy>), Vec<String>> {
    if text.trim().is_empty() {
        return Err(vec![
            "the file is empty, which is what a truncation in progress looks like, so nothing \
             was applied; a file meant to hold no org policies says so with a comment (e.g. \
             `# no org policies`) or an [application] table"
                .to_owned(),
        ]);
    }
    let file: FilePolicies =
        toml::from_str(text).map_err(|e| vec![e.to_string().trim().replace('\n', " ")])?;
    let lines = Lines::new(text);
    let mut errors = Vec::new();
    let app = match &file.application {
        None => *base,
        Some(sp) => Policy::from_patch(None, sp.get_ref()).unwrap_or_else(|e| {
            errors.push(format!(
                "line {}: [application] {e}",
                field_line(text, &lines, sp.span(), &e)
            ));
            *base
        }),
    };
    let mut orgs = BTreeMap::new();
    for (name, sp) in &file.orgs {
        let line = || lines.of(sp.span().start);
        if let Err(e) = crate::session::check_id("org_id", name) {
            let line = line();
            errors.push(format!("line {line}: [orgs.{name}] {e}"));
            continue;
        }
        let o = sp.get_ref();
        let has_fields = o.absolute_timeout.is_some()
            || o.idle_timeout_enabled.is_some()
            || o.idle_timeout.is_some()
            || o.persistent.is_some();
        match o.source.as_str() {
            "APPLICATION" if has_fields => errors.push(format!(
                "line {}: [orgs.{name}] source APPLICATION takes no policy fields",
                line()
            )),
            "APPLICATION" => {}
            "CUSTOM" => {
                let patch = PolicyPatch {
                    absolute_timeout: o.absolute_timeout,
                    idle_timeout_enabled: o.idle_timeout_enabled,
                    idle_timeout: o.idle_timeout,
                    persistent: o.persistent,
                };
                match Policy::from_patch(None, &patch) {
                    Ok(p) => {
                        orgs.insert(name.clone(), p);
                    }
                    Err(e) => errors.push(format!(
                        "line {}: [orgs.{name}] {e}",
                        field_line(text, &lines, sp.span(), &e)
                    )),
                }
            }
            other => errors.push(format!(
                "line {}: [orgs.{name}] source {other:?} is not \"CUSTOM\" or \"APPLICATION\"",
                line()
            )),
        }
    }
    if errors.is_empty() {
        Ok((app, orgs))
    } else {
        Err(errors)
    }
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

    /// Reads the source at start (an absent API state file is fine: nothing set yet).
    pub fn load_initial(&self) -> Result<PolicyChange, SourceError> {
        let change = self.read_and_apply("startup")?;
        tracing::info!(
            source = ?self.source,
            orgs_custom = self.engine.policies().1.len(),
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
        let bytes = serde_json::to_vec_pretty(&PersistedOut {
            application: app,
            orgs,
        })
        .map_err(|e| SourceError::Persist(e.to_string()))?;
        std::fs::create_dir_all(state_dir)
            .and_then(|_| write_atomic(&state_dir.join(POLICIES_FILE), &bytes))
            .map_err(|e| SourceError::Persist(format!("{}: {e}", state_dir.display())))
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
