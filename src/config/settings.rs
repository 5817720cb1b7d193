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
//!    [`Settings::from_toml`] reads key by key, so it names every unknown key (in
//!    `[application]` too) and every value of the wrong type, not only the first.
//! 5. Nothing here is checked beyond its type: values are validated in `Config::load`.
//! 6. An unknown flag does not stop the parse: it is dropped (with the value after it) and
//!    named, with the nearest flag, in [`Settings::problems`]; so is a `SESSIOND_*` variable
//!    that is not a setting's but close to one. A duration's text is kept as given, an integer
//!    in the file as its digits (`parse::duration_text`).

use crate::policy::PolicyPatch;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
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

            /// Every field's name, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

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
        about = "In-memory login-session daemon for auth gateways",
        after_help = "Durations, everywhere (flags, SESSIOND_* variables, the --config file): a whole \
                      number with a unit, ms, s, m, h or d (`100ms`, `30s`, `10m`, `24h`, `7d`); \
                      a bare number means seconds."
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
        /// Timer wheel tick, e.g. `100ms` (1ms to 1s; a bare number is seconds, so `5` is refused:
        /// write `5ms`) [default: 100ms].
        #[arg(long, env = "SESSIOND_TICK")]
        #[serde(default, deserialize_with = "super::parse::duration_text")]
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
        /// Pin each HTTP worker to a core of its own: auto (when the daemon is confined to some
        /// of the machine's cores and has one worker per core of those), on, or off
        /// [default: auto].
        #[arg(long, env = "SESSIOND_PIN_WORKERS")]
        pub pin_workers: Option<String>,
        /// Whether each HTTP worker writes the answers of one pass over its ready connections
        /// together, at the pass's end: true|false [default: true]. A gateway on the same host
        /// over TCP is then woken once per pass, not per answer (less CPU on both sides); an
        /// answer may wait up to one pass.
        // Text on the command line (checked in `Config::load`), a boolean in the file.
        #[arg(long, env = "SESSIOND_WRITE_GATE")]
        #[serde(default, deserialize_with = "super::parse::bool_as_text")]
        pub write_gate: Option<String>,
        /// How long in-flight requests may finish after SIGTERM/SIGINT, e.g. `10s` (0s to 1h)
        /// [default: 10s].
        #[arg(long, env = "SESSIOND_SHUTDOWN_GRACE")]
        #[serde(default, deserialize_with = "super::parse::duration_text")]
        pub shutdown_grace: Option<String>,
        /// How long a client has to send a request's whole head, from its first byte (or from
        /// connecting), and then its body, e.g. `10s` (1s to 1h); slower connections are
        /// closed (a late body with a 408) [default: 10s].
        #[arg(long, env = "SESSIOND_HEADER_READ_TIMEOUT")]
        #[serde(default, deserialize_with = "super::parse::duration_text")]
        pub header_read_timeout: Option<String>,
        /// How long an idle keep-alive connection (no request in flight) stays open, e.g. `3m` (1s
        /// to 1d); keep it above the gateway's own idle timeout for its upstream pool
        /// [default: 180s].
        #[arg(long, env = "SESSIOND_KEEPALIVE_TIMEOUT")]
        #[serde(default, deserialize_with = "super::parse::duration_text")]
        pub keepalive_timeout: Option<String>,
        /// Most open HTTP connections; past it new ones get a 503 and are closed [default: the
        /// open-file limit less a reserve for files].
        #[arg(long, env = "SESSIOND_MAX_CONNECTIONS")]
        pub max_connections: Option<usize>,
        /// Log level: error|warn|info|debug|trace [default: info].
        #[arg(long, env = "SESSIOND_LOG_LEVEL")]
        pub log_level: Option<String>,
        /// Directory for durable state: the session journal and snapshots, and the policies set
        /// through the API [default: $STATE_DIRECTORY, else $XDG_STATE_HOME/sessiond, else
        /// ~/.local/state/sessiond].
        #[arg(long, env = "SESSIOND_STATE_DIR")]
        pub state_dir: Option<PathBuf>,
        /// Take every policy from this TOML file (watched for changes) instead of the admin API.
        #[arg(long, env = "SESSIOND_POLICY_FILE")]
        pub policy_file: Option<PathBuf>,
        /// How long the policy file must stay unchanged before it is read, e.g. `1s`, `500ms`
        /// (100ms to 60s) [default: 1s].
        #[arg(long, env = "SESSIOND_POLICY_FILE_SETTLE")]
        #[serde(default, deserialize_with = "super::parse::duration_text")]
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
        #[serde(default, deserialize_with = "super::parse::duration_text")]
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
        /// PEM certificates of the CA that signed the NATS servers' certificates (a private
        /// CA), trusted beside the system's roots; setting it requires TLS.
        #[arg(long, env = "SESSIOND_CLUSTER_TLS_CA")]
        pub cluster_tls_ca: Option<PathBuf>,
        /// A PEM client certificate for NATS servers that verify clients (`verify: true`), with
        /// `--cluster-tls-key`; setting it requires TLS.
        #[arg(long, env = "SESSIOND_CLUSTER_TLS_CERT")]
        pub cluster_tls_cert: Option<PathBuf>,
        /// The PEM private key of `--cluster-tls-cert`.
        #[arg(long, env = "SESSIOND_CLUSTER_TLS_KEY")]
        pub cluster_tls_key: Option<PathBuf>,
        /// The stream's replicas, when this node is the one that creates it (1 to 5)
        /// [default: 3].
        #[arg(long, env = "SESSIOND_CLUSTER_REPLICAS")]
        pub cluster_replicas: Option<usize>,
        /// How long the stream keeps changes, when this node creates it, e.g. `24h`, `7d`
        /// (5m to 365d); at least the longest absolute session lifetime [default: 24h].
        #[arg(long, env = "SESSIOND_CLUSTER_RETENTION")]
        #[serde(default, deserialize_with = "super::parse::duration_text")]
        pub cluster_retention: Option<String>,
        /// How long a starting node waits for the cluster's stream (NATS unreachable, or
        /// JetStream without a quorum) before it serves from its saved state anyway, e.g. `30s`
        /// (1s to 1h) [default: 30s].
        #[arg(long, env = "SESSIOND_CLUSTER_READY_TIMEOUT")]
        #[serde(default, deserialize_with = "super::parse::duration_text")]
        pub cluster_ready_timeout: Option<String>,
        /// How often a node publishes a snapshot of its sessions to the NATS object store, for
        /// nodes that join empty or with state older than the stream, e.g. `10m` (1s to 24h,
        /// shorter than the retention) [default: 10m].
        #[arg(long, env = "SESSIOND_CLUSTER_SNAPSHOT_INTERVAL")]
        #[serde(default, deserialize_with = "super::parse::duration_text")]
        pub cluster_snapshot_interval: Option<String>,
        /// The application policy (defaults to the built-in one, field by field); file only.
        #[arg(skip)]
        pub application: Option<PolicyPatch>,
        /// Problems found while reading the command line and environment (unknown flags, a
        /// misspelt `SESSIOND_*` variable), reported by `Config::load` with all the others.
        #[arg(skip)]
        #[serde(skip)]
        pub problems: Option<Vec<String>>,
        /// The settings whose value came from their `SESSIOND_*` variable, with its name: a
        /// problem with such a value names the variable (`Config::load`).
        #[arg(skip)]
        #[serde(skip)]
        pub from_env: Option<Vec<(String, String)>>,
    }
}

/// Names of the command line only: no file key has them (invariant 3).
const CLI_ONLY: &[&str] = &["config", "probe", "no_persist", "problems", "from_env"];

/// Flags clap adds itself.
const BUILT_IN_FLAGS: &[&str] = &["help", "version"];

impl Settings {
    /// The command line and environment of this process; exits with clap's message (and code
    /// 2) on a value it cannot parse, as `Parser::parse` does. Unknown flags and misspelt
    /// variables are kept in [`Settings::problems`] instead (invariant 6).
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
        let longs: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .chain(BUILT_IN_FLAGS.iter().map(|s| (*s).to_owned()))
            .collect();
        let envs: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        let (args, mut problems) =
            super::unknown::drop_unknown_flags(args.into_iter().map(Into::into), &longs);
        problems.extend(super::unknown::misspelt_variables(
            std::env::vars_os().map(|(k, _)| k),
            &envs,
        ));
        let mut args = args;
        // A value clap refuses (`--shards x`) is a problem like the others: noted, and the
        // parse tried again without it (invariant 6). Each round drops a flag or a variable.
        let matches = loop {
            let e = match command.try_get_matches_from_mut(args.clone()) {
                Ok(m) => break m,
                Err(e) => e,
            };
            let refused = matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            )
            .then(|| super::unknown::refused_flag(&e))
            .flatten();
            let Some(long) = refused.filter(|_| problems.len() < 100) else {
                return Err(e);
            };
            let message = e.to_string();
            let message = message.lines().next().unwrap_or_default();
            let message = message
                .strip_prefix("error: ")
                .unwrap_or(message)
                .to_owned();
            let before = args.len();
            args = super::unknown::drop_flag(args, &long);
            if args.len() == before {
                // The value came from the flag's variable: read on without it.
                let Some(arg) = command
                    .get_arguments()
                    .find(|a| a.get_long() == Some(&long))
                else {
                    return Err(e);
                };
                let (id, var) = (arg.get_id().clone(), arg.get_env().map(|v| v.to_owned()));
                command = command.mut_arg(id, |a| a.env(None::<&str>));
                let var = var
                    .map(|v| v.to_string_lossy().into_owned())
                    .unwrap_or_default();
                problems.push(format!("{message} (from {var})"));
            } else {
                problems.push(message);
            }
        };
        let mut settings = <Settings as FromArgMatches>::from_arg_matches(&matches)
            .map_err(|e| e.format(&mut command))?;
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(arg.get_action(), ArgAction::SetTrue) && !matches.get_flag(id) {
                settings.forget(id);
            }
        }
        settings.problems = Some(problems);
        settings.from_env = Some(
            command
                .get_arguments()
                .filter(|a| {
                    matches.value_source(a.get_id().as_str()) == Some(ValueSource::EnvVariable)
                })
                .filter_map(|a| {
                    let var = a.get_env()?.to_string_lossy().into_owned();
                    Some((a.get_id().to_string(), var))
                })
                .collect(),
        );
        Ok(settings)
    }

    /// The keys a configuration file may hold (invariant 3).
    pub fn file_keys() -> impl Iterator<Item = &'static str> {
        Self::FIELDS
            .iter()
            .copied()
            .filter(|f| !CLI_ONLY.contains(f))
    }

    /// The TOML text of a configuration file, and every problem in it (invariant 4): each
    /// unknown key (with the nearest known one), in `[application]` too, and each value of the
    /// wrong type. What is wrong is left out; the rest is read.
    pub fn from_toml(text: &str) -> (Settings, Vec<String>) {
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => return (Settings::default(), vec![e.to_string().trim().to_owned()]),
        };
        let keys: Vec<&str> = Self::file_keys().collect();
        // (line, message), sorted by line at the end: the table is sorted by key, not by line.
        let mut problems: Vec<(usize, String)> = Vec::new();
        let mut note = |table: Option<&str>, key: &str, message: String| {
            let line = crate::suggest::key_line(text, table, key);
            problems.push((line, format!("line {line}: {message}")));
        };
        let mut good = toml::Table::new();
        for (key, mut value) in table {
            if !keys.contains(&key.as_str()) {
                note(None, &key, crate::suggest::unknown("key", &key, &keys, ""));
                continue;
            }
            if key == "application"
                && let toml::Value::Table(app) = &mut value
            {
                app.retain(|k, _| {
                    let known = PolicyPatch::FIELDS.contains(&k);
                    if !known {
                        let m = crate::suggest::unknown("key", k, PolicyPatch::FIELDS, "");
                        note(Some("application"), k, format!("[application] {m}"));
                    }
                    known
                });
            }
            let one = toml::Table::from_iter([(key.clone(), value.clone())]);
            match Settings::deserialize(toml::Value::Table(one)) {
                Ok(_) => {
                    good.insert(key, value);
                }
                Err(e) => note(None, &key, format!("`{key}`: {}", e.message().trim())),
            }
        }
        problems.sort_by_key(|(line, _)| *line);
        let mut problems: Vec<String> = problems.into_iter().map(|(_, m)| m).collect();
        let settings = Settings::deserialize(toml::Value::Table(good)).unwrap_or_else(|e| {
            problems.push(e.message().trim().to_owned());
            Settings::default()
        });
        (settings, problems)
    }

    /// Whether the `--probe` flag was given.
    pub fn probe(&self) -> bool {
        self.probe == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `file_keys` is the list serde's own "expected one of" gives: no key the file takes is
    /// missing from it, and no command-line-only name is in it.
    #[test]
    fn file_keys_are_the_deserializers() {
        let e = toml::from_str::<Settings>("zzz = 1")
            .unwrap_err()
            .to_string();
        let expected: Vec<String> = Settings::file_keys().map(|k| format!("`{k}`")).collect();
        assert!(e.contains(&expected.join(", ")), "{e}");
        let e = toml::from_str::<PolicyPatch>("zzz = 1")
            .unwrap_err()
            .to_string();
        let expected: Vec<String> = PolicyPatch::FIELDS
            .iter()
            .map(|k| format!("`{k}`"))
            .collect();
        assert!(e.contains(&expected.join(", ")), "{e}");
    }

    #[test]
    fn every_file_problem_at_once() {
        let (s, problems) = Settings::from_toml(
            "tikc = \"5ms\"\nshards = \"x\"\nmax_sesions_per_user = 3\nlisten = \"a\"\n\
             [application]\nidle_timout = 60\npersistent = true\n",
        );
        assert_eq!(
            problems,
            [
                "line 1: unknown key `tikc`; did you mean `tick`?",
                "line 2: `shards`: invalid type: string \"x\", expected usize",
                "line 3: unknown key `max_sesions_per_user`; did you mean `max_sessions_per_user`?",
                "line 6: [application] unknown key `idle_timout`; did you mean `idle_timeout`?",
            ],
        );
        assert_eq!(s.listen.as_deref(), Some("a"));
        assert_eq!(s.application.unwrap().persistent, Some(true));
    }
}
