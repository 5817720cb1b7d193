//! Policies in a cluster (API mode): a JetStream key-value bucket, `<stream>_POLICIES`, holds
//! the application policy and every CUSTOM org policy; every node watches it and applies each
//! change live, as an API write on that node would.
//!
//! Keys: `app` (the application policy) and `org.<base64url of the org id>` (an org's CUSTOM
//! policy; deleting the key puts the org back on APPLICATION). Values: the policy as JSON, the
//! same fields as `policies.json`.
//!
//! Invariants:
//! 1. **The bucket rules.** An API write goes to the bucket first ([`PolicyBucket::publish`]);
//!    only once the bucket has it is it applied on the node that took the request, and every
//!    other node applies it from its watch. A write the bucket refuses changes nothing.
//! 2. **Joining replaces.** A node that starts (or watches again after losing NATS) reads every
//!    key's last value and replaces its policies with exactly that set; later changes are
//!    applied one by one. Its `policies.json` follows, so a restart without NATS starts from
//!    the last policies it saw. Until the first full read, the node does not say it is ready
//!    (`cluster`, invariant 4).
//! 3. **Seeded once.** A node that finds the bucket empty copies its own policies into it, each
//!    key only if absent, so the first node of a new cluster brings its policies along and a
//!    race between two first nodes keeps one value per key.
//! 4. Same value, no change: applying a write already in force does nothing (a node's own write
//!    comes back through the watch).
//! 5. **The bucket's order rules.** On every node, each key's policy in force is the value of the
//!    highest bucket revision of that key the node has applied, whatever the order in which the
//!    watch and the node's own writes reach it. The node keeps, per key, the revision it last
//!    applied ([`PolicyBucket`]'s `applied`, under one mutex held across the apply); the watch
//!    and the node's own write ([`PolicyBucket::apply_own`], at the revision the bucket gave
//!    it) apply a value only if its revision is above that one, and the full read of invariant
//!    2 sets the revision of every key it read. A node's own write that a later one overtook
//!    before it was applied here is not applied here at all: the later one is (or will be, from
//!    the watch), and the bucket holds it.

use super::Cluster;
use crate::policy::{OrgPolicy, Policy, PolicyPatch, PolicyWrite};
use crate::policy_source::PolicyManager;
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const APP_KEY: &str = "app";
const ORG_PREFIX: &str = "org.";

/// The bucket's key for `org`.
pub fn org_key(org: &str) -> String {
    format!(
        "{ORG_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(org)
    )
}

/// What a key and its value mean; `None` for a key or value this version does not read.
pub fn decode(key: &str, value: Option<&[u8]>) -> Option<PolicyWrite> {
    let policy = match value {
        Some(v) => {
            let patch: PolicyPatch = serde_json::from_slice(v).ok()?;
            Some(Policy::from_patch(None, &patch).ok()?)
        }
        None => None,
    };
    if key == APP_KEY {
        return policy.map(PolicyWrite::Application);
    }
    let org = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key.strip_prefix(ORG_PREFIX)?)
        .ok()?;
    let org = String::from_utf8(org).ok()?;
    Some(PolicyWrite::Org {
        org,
        policy: policy.map_or(OrgPolicy::Application, OrgPolicy::Custom),
    })
}

fn encode(p: &Policy) -> Bytes {
    Bytes::from(serde_json::to_vec(p).expect("a policy serializes"))
}

/// Why the bucket did not take a write.
#[derive(Debug, thiserror::Error)]
#[error(
    "the cluster's policy bucket did not take the change ({0}); nothing was changed: retry when NATS answers"
)]
pub struct NotPublished(String);

/// The last bucket revision this node applied, per key (invariant 5).
type Applied = Arc<Mutex<HashMap<String, u64>>>;

/// The policy bucket, once open.
pub struct PolicyBucket {
    kv: tokio::sync::OnceCell<kv::Store>,
    /// Per key, the revision whose value is in force here (invariant 5). Held across each apply,
    /// always before [`PolicyManager`]'s own lock.
    applied: Applied,
}

impl Default for PolicyBucket {
    fn default() -> Self {
        PolicyBucket {
            kv: tokio::sync::OnceCell::new(),
            applied: Default::default(),
        }
    }
}

/// Where a write went in the bucket (from [`PolicyBucket::publish`]).
#[derive(Debug)]
pub struct Published {
    key: String,
    /// The revision the bucket gave the write; `None` when a later write to the key overtook it
    /// before this node could learn it (a delete: the bucket does not answer its revision).
    revision: Option<u64>,
}

impl PolicyBucket {
    /// Puts `write` in the bucket (invariant 1) and says at which revision.
    pub async fn publish(&self, write: &PolicyWrite) -> Result<Published, NotPublished> {
        let kv = self
            .kv
            .get()
            .ok_or_else(|| NotPublished("the bucket is not open yet".into()))?;
        let failed = |e: &dyn std::fmt::Display| NotPublished(e.to_string());
        match write {
            PolicyWrite::Application(p) => {
                let revision = kv.put(APP_KEY, encode(p)).await.map_err(|e| failed(&e))?;
                Ok(Published {
                    key: APP_KEY.into(),
                    revision: Some(revision),
                })
            }
            PolicyWrite::Org {
                org,
                policy: OrgPolicy::Custom(p),
            } => {
                let key = org_key(org);
                let revision = kv.put(&key, encode(p)).await.map_err(|e| failed(&e))?;
                Ok(Published {
                    key,
                    revision: Some(revision),
                })
            }
            PolicyWrite::Org {
                org,
                policy: OrgPolicy::Application,
            } => {
                let key = org_key(org);
                kv.delete(&key).await.map_err(|e| failed(&e))?;
                // The key's last entry: a delete marker is this delete's (or a later delete's,
                // which writes the same); a value is a later write's, which overtook this one.
                let revision = match kv.entry(key.clone()).await {
                    Ok(Some(e)) if e.operation != kv::Operation::Put => Some(e.revision),
                    Ok(_) => None,
                    Err(error) => {
                        tracing::debug!(%error, "cannot read back a policy delete's revision; the watch applies it");
                        None
                    }
                };
                Ok(Published { key, revision })
            }
        }
    }

    /// Runs `apply` (this node's own write, published as `published`) if the bucket's revision
    /// of it is above the one in force here for its key, and records it once applied
    /// (invariant 5); `None` when it was not run, since a later write is (or will be) in force.
    /// Blocking: holds the mutex across `apply`.
    pub fn apply_own<T, E>(
        &self,
        published: &Published,
        apply: impl FnOnce() -> Result<T, E>,
    ) -> Option<Result<T, E>> {
        let revision = published.revision?;
        apply_if_newer(&self.applied, &published.key, revision, apply)
    }
}

/// Runs `apply` if `revision` is above `key`'s in `applied`, and records it if `apply` succeeds
/// (invariant 5); `None` when not run.
fn apply_if_newer<T, E>(
    applied: &Applied,
    key: &str,
    revision: u64,
    apply: impl FnOnce() -> Result<T, E>,
) -> Option<Result<T, E>> {
    let mut applied = applied.lock();
    if applied.get(key).is_some_and(|&r| r >= revision) {
        return None;
    }
    let r = apply();
    if r.is_ok() {
        applied.insert(key.to_owned(), revision);
    }
    Some(r)
}

/// Opens the bucket, seeds it if empty, and applies it to `policies`, forever (see the module
/// doc).
pub async fn run(c: Arc<Cluster>, js: jetstream::Context, policies: Arc<PolicyManager>) {
    let name = format!("{}_POLICIES", c.settings.stream);
    let kv = super::open_bucket(
        &js,
        kv::Config {
            bucket: name,
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: c.settings.replicas,
            ..Default::default()
        },
    )
    .await;
    let _ = c.policy_bucket.kv.set(kv.clone());
    loop {
        match kv.status().await {
            Ok(status) if status.values() == 0 => seed(&kv, &policies).await,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "cannot read the policy bucket's status; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        watch(&c, &kv, &policies).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Copies this node's policies into an empty bucket (invariant 3).
async fn seed(kv: &kv::Store, policies: &PolicyManager) {
    let (app, orgs) = policies.engine().policies();
    let mut seeded = 0;
    if kv.create(APP_KEY, encode(&app)).await.is_ok() {
        seeded += 1;
    }
    for (org, p) in &orgs {
        if kv.create(org_key(org), encode(p)).await.is_ok() {
            seeded += 1;
        }
    }
    if seeded > 0 {
        tracing::info!(
            keys = seeded,
            "the cluster's policy bucket was empty: seeded it with this node's policies"
        );
    } else {
        tracing::debug!("another node seeded the cluster's policy bucket first");
    }
}

/// Watches the bucket: the full set first (invariant 2), then each change, until the watch
/// ends.
async fn watch(c: &Cluster, kv: &kv::Store, policies: &Arc<PolicyManager>) {
    let mut entries = match kv.watch_with_history(">").await {
        Ok(w) => w,
        Err(error) => {
            tracing::debug!(%error, "cannot watch the policy bucket; retrying");
            return;
        }
    };
    let (mut app, mut orgs) = (None, BTreeMap::new());
    let mut revisions = HashMap::new();
    let mut joined = false;
    while let Some(entry) = entries.next().await {
        let entry = match entry {
            Ok(e) => e,
            Err(error) => {
                tracing::debug!(%error, "the policy bucket's watch failed; watching again");
                return;
            }
        };
        let value = match entry.operation {
            kv::Operation::Put => Some(&entry.value[..]),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let Some(write) = decode(&entry.key, value) else {
            tracing::warn!(key = %entry.key, "a policy bucket entry this version cannot read; ignored");
            continue;
        };
        if joined {
            let (p, applied) = (policies.clone(), c.policy_bucket.applied.clone());
            let r = tokio::task::spawn_blocking(move || {
                apply_if_newer(&applied, &entry.key, entry.revision, || {
                    p.apply_replicated(write)
                })
            })
            .await;
            if let Ok(Some(Err(error))) = r {
                tracing::error!(%error, "cannot apply a policy from the cluster's bucket");
            }
            continue;
        }
        revisions.insert(entry.key.clone(), entry.revision);
        match write {
            PolicyWrite::Application(p) => app = Some(p),
            PolicyWrite::Org {
                org,
                policy: OrgPolicy::Custom(p),
            } => {
                orgs.insert(org, p);
            }
            PolicyWrite::Org {
                org,
                policy: OrgPolicy::Application,
            } => {
                orgs.remove(&org);
            }
        }
        if entry.delta == 0 || entry.seen_current {
            joined = true;
            let app = app
                .take()
                .unwrap_or_else(|| policies.engine().application_policy());
            let all = std::mem::take(&mut orgs);
            let revisions = std::mem::take(&mut revisions);
            let count = all.len();
            let (p, applied) = (policies.clone(), c.policy_bucket.applied.clone());
            let replace = move || {
                // The revisions of what was read, under the same mutex as every apply
                // (invariant 5): what the watch brings next is newer.
                let mut applied = applied.lock();
                let r = p.replace_replicated(app, all);
                if r.is_ok() {
                    *applied = revisions;
                }
                r
            };
            match tokio::task::spawn_blocking(replace).await {
                Ok(Ok(_)) => tracing::info!(
                    orgs_custom = count,
                    "policies read from the cluster's bucket"
                ),
                Ok(Err(error)) => tracing::error!(%error, "cannot apply the cluster's policies"),
                Err(_) => {}
            }
            c.policies_synced.store(true, Ordering::Release);
            c.note_caught_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip() {
        let p = Policy::from_patch(
            None,
            &serde_json::from_str::<PolicyPatch>(r#"{"absolute_timeout": 60}"#).unwrap(),
        )
        .unwrap();
        let odd = "org with spaces/and.dots=é";
        let key = org_key(odd);
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{key}"
        );
        assert_eq!(
            decode(&key, Some(&encode(&p))),
            Some(PolicyWrite::Org {
                org: odd.into(),
                policy: OrgPolicy::Custom(p)
            })
        );
        assert_eq!(
            decode(&key, None),
            Some(PolicyWrite::Org {
                org: odd.into(),
                policy: OrgPolicy::Application
            })
        );
        assert_eq!(
            decode(APP_KEY, Some(&encode(&p))),
            Some(PolicyWrite::Application(p))
        );
        assert_eq!(decode("org.!!", None), None);
        assert_eq!(decode("other", None), None);
        assert_eq!(decode(APP_KEY, Some(b"{\"nonsense\": 1}")), None);
    }
}
