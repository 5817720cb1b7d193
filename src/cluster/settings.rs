//! The cluster's settings (`--cluster` and its companions), as `config` validated them.
//!
//! Invariants:
//! 1. A node or stream name is 1 to 64 letters, digits, `-` or `_`: a NATS subject token and a
//!    valid stream and bucket name, so no setting can make a subject with wildcards or dots.
//! 2. The default node name is the host name with every other character made `-`, so it is
//!    always valid; two nodes on one host need `--node-name`.

use std::path::PathBuf;
use std::time::Duration;

/// When a create or revocation is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ack {
    /// Once the stream has it (invariant 3).
    #[default]
    Sync,
    /// At once; the change reaches the stream within a batch.
    Async,
}

impl std::str::FromStr for Ack {
    type Err = String;
    fn from_str(s: &str) -> Result<Ack, String> {
        match s {
            "sync" => Ok(Ack::Sync),
            "async" => Ok(Ack::Async),
            _ => Err(format!("cluster_ack {s:?} is not one of sync, async")),
        }
    }
}

impl std::fmt::Display for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ack::Sync => "sync",
            Ack::Async => "async",
        })
    }
}

/// The cluster's settings (`--cluster` and its companions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// NATS server URLs (`nats://`, `tls://`).
    pub urls: Vec<String>,
    /// This node's name, unique in the cluster: a subject token.
    pub node: String,
    /// The stream's name (several clusters can share one NATS).
    pub stream: String,
    pub ack: Ack,
    /// A NATS credentials file.
    pub creds: Option<PathBuf>,
    /// TLS to the NATS servers (`--cluster-tls-*`); `None` leaves it to the URLs' schemes and
    /// the servers, with the system's trusted roots.
    pub tls: Option<Tls>,
    /// The stream's replicas when this node creates it.
    pub replicas: usize,
    /// How long the stream keeps a message when this node creates it.
    pub retention: Duration,
    /// How long a node waits for an unreachable NATS at start before it serves its saved
    /// state anyway.
    pub ready_timeout: Duration,
    /// How often a caught-up node publishes a snapshot for joining nodes (`seed`).
    pub snapshot_interval: Duration,
}

/// TLS to the NATS servers: required once any of these is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificates to trust for the servers (a private CA), beside the system's roots.
    pub ca: Option<PathBuf>,
    /// A PEM client certificate and its key, for servers that verify clients (`verify: true`).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Whether `name` can be a node or stream name: a NATS subject token and stream name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The host name made into a node name (characters a name cannot hold become `-`).
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "sessiond".to_owned()
    } else {
        name
    }
}
