//! Policy endpoints: the application policy and each org's (admin only).
//!
//! Invariants:
//! 1. A write answers the policy as before and, beside it, a `sessions` block with the fields
//!    of its dry run's (`affected`, evictions by reason, `deadline_earlier`, `deadline_later`;
//!    the evictions are `evicted` in the write, `would_evict` in the dry run), counted by the
//!    write itself (`Reapplied::as_counts`): a dry run and the write that follows it on the same
//!    state answer equal counts.
//! 2. A dry run changes nothing and is allowed whatever the policy source.
//! 3. In a cluster with policies from the API, a write is applied on the node that took it only
//!    if no later write to the same key was applied there first (`cluster::policies`,
//!    invariant 5). If one was (two writes at the same moment on two nodes), the answer shows
//!    the policy in force there and its `sessions` block counts zeros: this write changed
//!    nothing on this node, since the later one rules. (So does a `DELETE` whose revision NATS
//!    did not answer when read back; the watch applies it.)

use super::AppState;
use super::error::ApiError;
use super::extract::{
    Members, PathParam, authorize, dry_run_param, parse_json, path_id, read_json_body,
};
use super::sessions::json_response;
use crate::api_keys::Role;
use crate::engine::PolicyChange;
use crate::policy::{OrgPolicy, Policy, PolicyPatch, PolicyWrite};
use crate::policy_source::{PolicyManager, SourceError};
use crate::shard::DryRunCounts;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde::Serialize;

#[derive(Serialize)]
struct OrgPolicyJson<'a> {
    org_id: &'a str,
    source: &'static str,
    custom: Option<Policy>,
    effective: Policy,
    /// After a write: what it did to the live sessions, as its dry run counts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<SessionsJson>,
}

/// The org's policy now, and, after a write, what the write did (`sessions`).
fn org_view(st: &AppState, org: &str, sessions: Option<SessionsJson>) -> Response {
    let v = st.engine.org_policy(org);
    json_response(
        StatusCode::OK,
        &OrgPolicyJson {
            org_id: org,
            source: v.org_policy.source(),
            custom: v.org_policy.custom().copied(),
            effective: v.effective,
            sessions,
        },
    )
}

/// The answer to `PUT /v1/policy`: the policy's fields, and what the write did.
#[derive(Serialize)]
struct AppWriteJson {
    #[serde(flatten)]
    policy: Policy,
    sessions: SessionsJson,
}

pub async fn get_app(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&st, &headers, Role::Admin)?;
    Ok(json_response(
        StatusCode::OK,
        &st.engine.application_policy(),
    ))
}

#[derive(Serialize)]
struct DryRunJson<'a> {
    dry_run: bool,
    org_id: Option<&'a str>,
    source: &'static str,
    custom: Option<Policy>,
    effective: Policy,
    sessions: SessionsJson,
}

/// What a policy write did, or its dry run would do, to the live sessions: the same fields,
/// but the evictions are `would_evict` in a dry run and `evicted` in the write (invariant 1).
#[derive(Serialize)]
struct SessionsJson {
    affected: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    would_evict: Option<EvictJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evicted: Option<EvictJson>,
    deadline_earlier: u64,
    deadline_later: u64,
}

#[derive(Serialize)]
struct EvictJson {
    idle: u64,
    absolute: u64,
}

impl SessionsJson {
    /// `c` as a dry run's block (`dry`: `would_evict`) or a write's (`evicted`).
    fn new(c: DryRunCounts, dry: bool) -> SessionsJson {
        let evict = EvictJson {
            idle: c.would_evict.idle,
            absolute: c.would_evict.absolute,
        };
        let (would_evict, evicted) = if dry {
            (Some(evict), None)
        } else {
            (None, Some(evict))
        };
        SessionsJson {
            affected: c.affected,
            would_evict,
            evicted,
            deadline_earlier: c.deadline_earlier,
            deadline_later: c.deadline_later,
        }
    }
}

/// Answers a `?dry_run=true` write: what it would do to the live sessions now, changing
/// nothing (no policy, no session, nothing on disk; only the dry-run counter moves). Allowed
/// whatever the policy source, since it writes nothing.
async fn dry_run(st: &AppState, write: PolicyWrite) -> Result<Response, ApiError> {
    let target = match &write {
        PolicyWrite::Application(_) => "application",
        PolicyWrite::Org { .. } => "org",
    };
    let engine = st.engine.clone();
    let w = write.clone();
    // A walk over up to every session: off the async workers, like a real write.
    let dry = blocking(move || engine.dry_run(&w)).await?;
    st.metrics.policy_dry_run(target);
    Ok(json_response(
        StatusCode::OK,
        &DryRunJson {
            dry_run: true,
            org_id: match &write {
                PolicyWrite::Application(_) => None,
                PolicyWrite::Org { org, .. } => Some(org),
            },
            source: dry.org_policy.source(),
            custom: dry.org_policy.custom().copied(),
            effective: dry.effective,
            sessions: SessionsJson::new(dry.sessions, true),
        },
    ))
}

pub async fn put_app(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, Role::Admin)?;
    let dry = dry_run_param(&uri)?;
    let bytes = read_json_body(&headers, body, st.body_read_timeout).await?;
    let patch: PolicyPatch = parse_json(&bytes)?;
    let policy = Policy::from_patch(None, &patch)?;
    if dry {
        return dry_run(&st, PolicyWrite::Application(policy)).await;
    }
    let write = PolicyWrite::Application(policy);
    let change = write_through(&st, &write, move |p| p.write_application(policy)).await?;
    Ok(json_response(
        StatusCode::OK,
        &AppWriteJson {
            policy: match change {
                Some(_) => policy,
                None => st.engine.application_policy(),
            },
            sessions: write_counts(&change),
        },
    ))
}

pub async fn get_org(
    State(st): State<AppState>,
    headers: HeaderMap,
    PathParam(org): PathParam,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, Role::Admin)?;
    path_id("org_id", &org)?;
    Ok(org_view(&st, &org, None))
}

/// Splits `{"source": ..., ...policy fields}` into the source and the policy fields.
fn split_source(bytes: &[u8]) -> Result<(Option<String>, PolicyPatch, bool), ApiError> {
    let members: Members<serde_json::Value> = parse_json(bytes)?;
    if let Some(k) = members.repeated() {
        return Err(ApiError::bad_request(
            "invalid_json",
            format!("invalid policy: field {k:?} is given twice; give it once"),
        ));
    }
    let mut map: serde_json::Map<String, serde_json::Value> = members.0.into_iter().collect();
    let source = match map.remove("source") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_json",
                format!("source must be \"CUSTOM\" or \"APPLICATION\", not {other}"),
            ));
        }
    };
    // Every unknown field at once, each with the nearest one; the list includes `source`, which
    // serde's own message (it reads only the policy fields) would leave out.
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !PolicyPatch::FIELDS.contains(&k.as_str()))
        .map(|k| crate::suggest::unknown("field", k, PolicyPatch::ORG_FIELDS, ""))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            format!("invalid policy: {}", unknown.join("; ")),
        ));
    }
    let has_fields = !map.is_empty();
    let patch: PolicyPatch = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid policy: {e}")))?;
    Ok((source, patch, has_fields))
}

/// Makes `write` with `local` (this node's write of it): in a cluster with policies from the
/// API, puts it in the cluster's policy bucket first, and every node applies it from there
/// (`cluster::policies`, invariant 1); this node runs `local` only if no later write to the key
/// is in force here already (invariant 3). `None`: it did not run.
async fn write_through(
    st: &AppState,
    write: &PolicyWrite,
    local: impl FnOnce(&PolicyManager) -> Result<PolicyChange, SourceError> + Send + 'static,
) -> Result<Option<PolicyChange>, ApiError> {
    let p = st.policies.clone();
    match &st.cluster {
        Some(c) if st.policies.is_api() => {
            let published = c.policy_bucket.publish(write).await.map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_replicated",
                    e.to_string(),
                )
            })?;
            let c = c.clone();
            blocking(move || {
                c.policy_bucket
                    .apply_own(&published, || local(&p))
                    .transpose()
            })
            .await
        }
        _ => blocking(move || local(&p)).await.map(Some),
    }
}

/// The `sessions` block of a write: what it did, or zeros if it was not applied here
/// (invariant 3).
fn write_counts(change: &Option<PolicyChange>) -> SessionsJson {
    let counts = change
        .as_ref()
        .map_or_else(DryRunCounts::default, |c| c.reapplied.as_counts());
    SessionsJson::new(counts, false)
}

/// Runs a policy write, reload or dry run (file I/O with fsync, walks over the sessions) off the
/// async workers.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(Into::into)
}

async fn apply(
    st: &AppState,
    org: &str,
    policy: OrgPolicy,
    dry: bool,
) -> Result<Response, ApiError> {
    if dry {
        let org = org.to_owned();
        return dry_run(st, PolicyWrite::Org { org, policy }).await;
    }
    crate::session::check_id("org_id", org).map_err(crate::engine::EngineError::from)?;
    let write = PolicyWrite::Org {
        org: org.to_owned(),
        policy,
    };
    let o = org.to_owned();
    let change = write_through(st, &write, move |p| p.write_org(&o, policy)).await?;
    Ok(org_view(st, org, Some(write_counts(&change))))
}

#[derive(Serialize)]
struct ReloadJson {
    reloaded: bool,
    changed_orgs: usize,
    refiled: u64,
    evicted: u64,
}

/// `POST /v1/policy/reload`: re-read the policy source now.
pub async fn reload(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&st, &headers, Role::Admin)?;
    let p = st.policies.clone();
    let change = blocking(move || p.reload("reload")).await?;
    Ok(json_response(
        StatusCode::OK,
        &ReloadJson {
            reloaded: true,
            changed_orgs: change.orgs.len(),
            refiled: change.reapplied.refiled,
            evicted: change.reapplied.evicted.total(),
        },
    ))
}

pub async fn put_org(
    State(st): State<AppState>,
    headers: HeaderMap,
    PathParam(org): PathParam,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, Role::Admin)?;
    path_id("org_id", &org)?;
    let dry = dry_run_param(&uri)?;
    let bytes = read_json_body(&headers, body, st.body_read_timeout).await?;
    let (source, patch, has_fields) = split_source(&bytes)?;
    let policy = match source.as_deref() {
        Some("CUSTOM") => OrgPolicy::Custom(Policy::from_patch(None, &patch)?),
        Some("APPLICATION") if has_fields => {
            return Err(ApiError::bad_request(
                "invalid_policy",
                "source APPLICATION takes no policy fields; the org inherits the application policy",
            ));
        }
        Some("APPLICATION") => OrgPolicy::Application,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_policy",
                format!("source {other:?} is not \"CUSTOM\" or \"APPLICATION\""),
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                "invalid_policy",
                "source is required: \"CUSTOM\" (with policy fields) or \"APPLICATION\"",
            ));
        }
    };
    apply(&st, &org, policy, dry).await
}

pub async fn patch_org(
    State(st): State<AppState>,
    headers: HeaderMap,
    PathParam(org): PathParam,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, Role::Admin)?;
    path_id("org_id", &org)?;
    let dry = dry_run_param(&uri)?;
    let bytes = read_json_body(&headers, body, st.body_read_timeout).await?;
    let (source, patch, _) = split_source(&bytes)?;
    if let Some(s) = source.filter(|s| s != "CUSTOM") {
        return Err(ApiError::bad_request(
            "invalid_policy",
            format!(
                "PATCH sets fields of a CUSTOM policy; source {s:?} is not allowed here (use DELETE to return to APPLICATION)"
            ),
        ));
    }
    let current = st.engine.org_policy(&org);
    let base = current
        .org_policy
        .custom()
        .copied()
        .unwrap_or(current.effective);
    let policy = Policy::from_patch(Some(&base), &patch)?;
    apply(&st, &org, OrgPolicy::Custom(policy), dry).await
}

pub async fn delete_org(
    State(st): State<AppState>,
    headers: HeaderMap,
    PathParam(org): PathParam,
    uri: Uri,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, Role::Admin)?;
    path_id("org_id", &org)?;
    let dry = dry_run_param(&uri)?;
    apply(&st, &org, OrgPolicy::Application, dry).await
}
