//! The settings, declared once: one struct that clap reads from flags and `SESSIOND_*`
//! environment variables and serde reads from the TOML file (`--config`).
//!
//! Invariants:
//! 1. Every setting is one field of [`Settings`], an `Option`: `None` means "not given here",
//!    so the same struct holds what the command line gave, what the file gave, and their merge
//!    ([`Settings::or`], generated once for every field by `settings!`).
//! 2. A flag that takes no value (`--recover`) is `Some(true)` when given (or when its
//!    variable says `true`) and `None` otherwise: clap's `false` is not a value given
//!    ([`Settings::try_from_args`]), so only a set flag hides the file's key (`--recover` or
//!    `recover = true`, as before the settings were declared once).
//! 3. A field that exists on one side only is skipped on the other: `config`, `probe` and
//!    `no_persist` are command-line only (`#[serde(skip)]`, so the file rejects them as unknown
//!    keys), `persist` and `application` file only (`#[arg(skip)]`).
//! 4. The file rejects unknown keys (`deny_unknown_fields`), so a typo is not silently ignored;
//!    fields keep the order in which `--help` and the file's "expected one of" list show them.
//! 5. Nothing here is checked beyond its type: values are validated in `Config::load`.

use crate::policy::PolicyPatch;
use clap::{ArgAction, FromArgMatches, Parser};
use serde::Deserialize;
use std::path::PathBuf;

/// Declares [`Settings`] and its field-by-field merge from one list of fields (invariant 1).
macro_rules! settings {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $( $(#[$fattr:meta])* pub $field:ident: Option<$ty:ty>, )*
        }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $( $(#[$fattr])* pub $field: Option<$ty>, )*
        }

        impl $name {
            /// Each field from `self` where it is given, else from `lower`.
            pub fn or(self, lower: $name) -> $name {
                $name { $( $field: self.$field.or(lower.$field), )* }
            }

            /// Forgets the field named `id` (invariant 2).
            fn forget(&mut self, id: &str) {
                match id {
                    $( stringify!($field) => self.$field = None, )*
                    _ => {}
                }
            }
        }
    };
}

settings! {
    /// Every setting. Flags are `--kebab-case` with a `SESSIOND_UPPER_CASE` environment
    /// variable; file keys are `snake_case`.
    #[derive(Debug, Default, Parser, Deserialize)]
    #[command(
        name = "sessiond",
        version,
        about = "In-memory login-session daemon for auth gateways"
    )]
    #[serde(deny_unknown_fields)]
    pub struct Settings {
        /// TOML configuration file (optional).
        #[arg(long, env = "SESSIOND_CONFIG")]
        #[serde(skip)]
        pub config: Option<PathBuf>,
        /// Do not serve: ask the sessiond at --listen for /readyz and exit 0 if it is ready, 1 if
        /// not (a container HEALTHCHECK without curl).
        #[arg(long, action = ArgAction::SetTrue)]
        #[serde(skip)]
        pub probe: Option<bool>,
        /// Address to listen on, or `unix:PATH` for a Unix domain socket (a gateway on the same
        /// host) [default: 127.0.0.1:8080].
        #[arg(long, env = "SESSIOND_LISTEN")]
        pub listen: Option<String>,
        /// File mode of the `unix:` socket, octal, e.g. `0660` (who may connect: give the socket's
        /// group to the gateway, see docs/gateways.md) [default: 0660].
        #[arg(long, env = "SESSIOND_LISTEN_MODE")]
        pub listen_mode: Option<String>,
        /// Number of shards, a power of two [default: 8 per core].
        #[arg(long, env = "SESSIOND_SHARDS")]
        pub shards: Option<usize>,
        /// Timer wheel tick, e.g. `100ms` or `1s` (1 ms to 1 s) [default: 100ms].
        #[arg(long, env = "SESSIOND_TICK")]
        pub tick: Option<String>,
        /// How org policies combine with the application policy: stricter|override [default: stricter].
        #[arg(long, env = "SESSIOND_ORG_POLICY_MODE")]
        pub org_policy_mode: Option<String>,
        /// Most live sessions in total [default: 10000000].
        #[arg(long, env = "SESSIOND_MAX_SESSIONS")]
        pub max_sessions: Option<usize>,
        /// Most live sessions per user [default: unlimited].
        #[arg(long, env = "SESSIOND_MAX_SESSIONS_PER_USER")]
        pub max_sessions_per_user: Option<usize>,
        /// At the per-user limit: refuse|evict_oldest [default: refuse].
        #[arg(long, env = "SESSIOND_PER_USER_LIMIT_ACTION")]
        pub per_user_limit_action: Option<String>,
        /// Name of the session cookie read by `GET /v1/auth` [default: session].
        #[arg(long, env = "SESSIOND_COOKIE_NAME")]
        pub cookie_name: Option<String>,
        /// `Domain=` of the session cookie [default: none, host-only].
        #[arg(long, env = "SESSIOND_COOKIE_DOMAIN")]
        pub cookie_domain: Option<String>,
        /// `Path=` of the session cookie [default: /].
        #[arg(long, env = "SESSIOND_COOKIE_PATH")]
        pub cookie_path: Option<String>,
        /// Whether the cookie is `Secure` (HTTPS only): true|false [default: true; false only for
        /// local development].
        // Text on the command line (checked in `Config::load`), a boolean in the file.
        #[arg(long, env = "SESSIOND_COOKIE_SECURE")]
        #[serde(default, deserialize_with = "super::parse::bool_as_text")]
        pub cookie_secure: Option<String>,
        /// `SameSite=` of the session cookie: lax|strict|none [default: lax; none requires secure].
        #[arg(long, env = "SESSIOND_COOKIE_SAME_SITE")]
        pub cookie_same_site: Option<String>,
        /// TOML file of API keys with roles (gateway, admin).
        #[arg(long, env = "SESSIOND_API_KEYS_FILE")]
        pub api_keys_file: Option<PathBuf>,
        /// Allow a non-loopback listen address without API keys (anyone who can connect is admin).
        #[arg(long, env = "SESSIOND_INSECURE_NO_AUTH", action = ArgAction::SetTrue)]
        pub insecure_no_auth: Option<bool>,
        /// HTTP worker threads, each an event loop of its own [default: one per core].
        #[arg(long, env = "SESSIOND_HTTP_WORKERS")]
        pub http_workers: Option<usize>,
        /// Seconds to let in-flight requests finish after SIGTERM/SIGINT [default: 10].
        #[arg(long, env = "SESSIOND_SHUTDOWN_GRACE")]
        pub shutdown_grace: Option<u64>,
        /// Seconds a client has to send a request's whole head, from its first byte (or from
        /// connecting); slower connections are closed [default: 10].
        #[arg(long, env = "SESSIOND_HEADER_READ_TIMEOUT")]
        pub header_read_timeout: Option<u64>,
        /// Seconds an idle keep-alive connection (no request in flight) stays open; keep it above
        /// the gateway's own idle timeout for its upstream pool [default: 180].
        #[arg(long, env = "SESSIOND_KEEPALIVE_TIMEOUT")]
        pub keepalive_timeout: Option<u64>,
        /// Most open HTTP connections; past it new ones get a 503 and are closed [default: the
        /// open-file limit less a reserve for files].
        #[arg(long, env = "SESSIOND_MAX_CONNECTIONS")]
        pub max_connections: Option<usize>,
        /// Log level: error|warn|info|debug|trace [default: info].
        #[arg(long, env = "SESSIOND_LOG_LEVEL")]
        pub log_level: Option<String>,
        /// Directory for durable state (API-set policies) [default: $STATE_DIRECTORY, else
        /// $XDG_STATE_HOME/sessiond, else ~/.local/state/sessiond].
        #[arg(long, env = "SESSIOND_STATE_DIR")]
        pub state_dir: Option<PathBuf>,
        /// Take every policy from this TOML file (watched for changes) instead of the admin API.
        #[arg(long, env = "SESSIOND_POLICY_FILE")]
        pub policy_file: Option<PathBuf>,
        /// How long the policy file must stay unchanged before it is read, e.g. `1s`, `500ms`
        /// (100ms to 60s) [default: 1s].
        #[arg(long, env = "SESSIOND_POLICY_FILE_SETTLE")]
        pub policy_file_settle: Option<String>,
        /// Keep sessions in memory only: no journal or snapshot in the state directory (a restart
        /// signs everyone out).
        #[arg(long, env = "SESSIOND_NO_PERSIST", action = ArgAction::SetTrue)]
        #[serde(skip)]
        pub no_persist: Option<bool>,
        /// The file's spelling of persistence: `persist = false` is `--no-persist`.
        #[arg(skip)]
        pub persist: Option<bool>,
        /// When the session journal is fsynced: always (before answering a change), everysec, or
        /// no (left to the OS) [default: everysec].
        #[arg(long, env = "SESSIOND_FSYNC")]
        pub fsync: Option<String>,
        /// Time between snapshots of all sessions, e.g. `10m`, `1h`, `30s` (10s to 24h)
        /// [default: 10m]. One is also taken at shutdown.
        #[arg(long, env = "SESSIOND_SNAPSHOT_INTERVAL")]
        pub snapshot_interval: Option<String>,
        /// Start even if a snapshot or the journal is damaged, keeping everything before the
        /// damage (and saying how much was dropped).
        #[arg(long, env = "SESSIOND_RECOVER", action = ArgAction::SetTrue)]
        pub recover: Option<bool>,
        /// MiB of journal kept in memory while the disk refuses writes (1 to 65536); past it the
        /// kept changes are dropped and a full snapshot replaces them when the disk takes one
        /// [default: 64].
        #[arg(long, env = "SESSIOND_JOURNAL_BACKLOG_MIB")]
        pub journal_backlog_mib: Option<usize>,
        /// NATS server URLs, comma-separated (`nats://host:4222`, `tls://...`): run as one node of
        /// a cluster that replicates through a JetStream stream (see docs/cluster.md). Without
        /// it, a single node.
        #[arg(long, env = "SESSIOND_CLUSTER")]
        pub cluster: Option<String>,
        /// This node's name in the cluster, unique per node (letters, digits, `-`, `_`)
        /// [default: the host name].
        #[arg(long, env = "SESSIOND_NODE_NAME")]
        pub node_name: Option<String>,
        /// The JetStream stream the cluster replicates through; several clusters can share one
        /// NATS with different streams [default: SESSIOND].
        #[arg(long, env = "SESSIOND_CLUSTER_STREAM")]
        pub cluster_stream: Option<String>,
        /// When creates and revocations are answered: sync (once the stream has them) or async
        /// (at once) [default: sync].
        #[arg(long, env = "SESSIOND_CLUSTER_ACK")]
        pub cluster_ack: Option<String>,
        /// A NATS credentials file (`.creds`) for the cluster's connection.
        #[arg(long, env = "SESSIOND_CLUSTER_CREDS")]
        pub cluster_creds: Option<PathBuf>,
        /// The stream's replicas, when this node is the one that creates it (1 to 5)
        /// [default: 3].
        #[arg(long, env = "SESSIOND_CLUSTER_REPLICAS")]
        pub cluster_replicas: Option<usize>,
        /// How long the stream keeps changes, when this node creates it, e.g. `24h`, `7d`
        /// (1m to 365d); at least the longest absolute session lifetime [default: 24h].
        #[arg(long, env = "SESSIOND_CLUSTER_RETENTION")]
        pub cluster_retention: Option<String>,
        /// How long a starting node waits for an unreachable NATS before it serves from its
        /// saved state anyway, e.g. `30s` (1s to 1h) [default: 30s].
        #[arg(long, env = "SESSIOND_CLUSTER_READY_TIMEOUT")]
        pub cluster_ready_timeout: Option<String>,
        /// How often a node publishes a snapshot of its sessions to the NATS object store, for
        /// nodes that join empty or with state older than the stream, e.g. `10m` (1s to 24h,
        /// shorter than the retention) [default: 10m].
        #[arg(long, env = "SESSIOND_CLUSTER_SNAPSHOT_INTERVAL")]
        pub cluster_snapshot_interval: Option<String>,
        /// The application policy (defaults to the built-in one, field by field); file only.
        #[arg(skip)]
        pub application: Option<PolicyPatch>,
    }
}

impl Settings {
    /// The command line and environment of this process; exits with clap's message (and code
    /// 2) on a flag it cannot parse, as `Parser::parse` does.
    pub fn from_cli() -> Settings {
        Self::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// `args` (the program name first) and the environment.
    pub fn try_from_args<I, T>(args: I) -> Result<Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = <Settings as clap::CommandFactory>::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let mut settings = <Settings as FromArgMatches>::from_arg_matches(&matches)
            .map_err(|e| e.format(&mut command))?;
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(arg.get_action(), ArgAction::SetTrue) && !matches.get_flag(id) {
                settings.forget(id);
            }
        }
        Ok(settings)
    }

    /// The TOML text of a configuration file.
    pub fn from_toml(text: &str) -> Result<Settings, toml::de::Error> {
        toml::from_str(text)
    }

    /// Whether the `--probe` flag was given.
    pub fn probe(&self) -> bool {
        self.probe == Some(true)
    }
}
