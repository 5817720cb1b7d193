//! Daemon configuration: flags, `SESSIOND_*` environment variables and an optional TOML file
//! (`--config`), in that order of precedence, over built-in defaults.
//!
//! Invariants:
//! 1. Raw input ([`Settings`], declared once for the command line and the file in `settings`)
//!    is separate from the validated [`Config`]; the only way to a `Config` is
//!    [`Config::load`], which checks every field and reports *every* problem at once (a list),
//!    never just the first.
//! 2. Precedence is field by field: the command line (a flag, else its environment variable)
//!    over the file over the default; a file that cannot be read or parsed is a problem, and
//!    the rest is still checked without it.
//! 3. Unknown keys are errors wherever they are written, each with the nearest known name
//!    (`crate::suggest`): keys of the TOML file and of its `[application]` table, flags, and
//!    `SESSIOND_*` variables close to a setting's; they join the list of invariant 1, so one
//!    start names every typo. A value of the wrong type in the file is one more problem.
//! 4. A non-loopback listen address without API keys is refused unless `--insecure-no-auth`
//!    (a Unix socket counts as local: its file mode, `listen_mode`, says who may connect).
//! 5. Every duration follows one rule (`parse::parse_duration`): a unit (`ms`, `s`, `m`, `h`,
//!    `d`) is always accepted and a bare number means seconds.
//! 6. `listen_mode` is an octal file mode up to 0777 and is given only with a `unix:` listen
//!    address (with a TCP one it would silently do nothing).

mod parse;
mod settings;
mod unknown;

use crate::engine::{EngineConfig, UserLimitAction, default_shards};
use crate::policy::{DEFAULT_POLICY, Mode, Policy};
use crate::server::Listen;
use parse::{Problems, parse_bool};
pub use parse::{
    default_state_dir, parse_duration, parse_interval, parse_settle, parse_tick, valid_cookie_name,
};
pub use settings::Settings;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sessions one shard may be asked to hold: its id index addresses 2^24 - 2 records, and ids
/// spread over shards evenly enough (they are hashes) that a cap of 15M per shard on average
/// leaves every shard far below that.
pub const SHARD_SESSIONS: usize = 15_000_000;

/// The listen address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    /// The socket file's mode when `listen` is a Unix socket.
    pub listen_mode: u32,
    pub engine: EngineConfig,
    pub cookie: crate::cookie::CookieSettings,
    pub api_keys_file: Option<PathBuf>,
    pub insecure_no_auth: bool,
    /// HTTP worker threads (see `server`).
    pub http_workers: usize,
    /// Which core each HTTP worker runs on (`server::pin`).
    pub pin_workers: crate::server::pin::PinWorkers,
    /// Whether each HTTP worker writes a pass's answers together (`server::gate`).
    pub write_gate: bool,
    pub shutdown_grace: Duration,
    /// A request's head must arrive within this of its first byte (see `server`).
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_timeout: Duration,
    /// The connection cap; `None`: derived from the open-file limit at start (`fdlimit`).
    pub max_connections: Option<usize>,
    pub log_level: tracing::Level,
    pub state_dir: PathBuf,
    pub policy_file: Option<PathBuf>,
    /// How long the policy file must stay unchanged before it is read (`policy_source::settle`).
    pub policy_file_settle: Duration,
    /// Session persistence in `state_dir`; `None` with `--no-persist`.
    pub persist: Option<crate::persist::Settings>,
    /// Where the configuration came from, for the start-up log line.
    pub config_file: Option<PathBuf>,
    /// The cluster this node is part of; `None`: a single node.
    pub cluster: Option<crate::cluster::Settings>,
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The settings of the file at `path` (nothing when it is `None`, or cannot be read or
/// parsed: then a problem is noted; a key that is unknown or of the wrong type is left out and
/// noted, and the rest read).
fn read_file(path: Option<&Path>, problems: &mut Problems) -> Settings {
    let Some(path) = path else {
        return Settings::default();
    };
    match std::fs::read_to_string(path) {
        Err(e) => problems
            .0
            .push(format!("cannot read config file {}: {e}", path.display())),
        Ok(text) => {
            let (file, found) = Settings::from_toml(&text);
            let at = path.display();
            problems
                .0
                .extend(found.into_iter().map(|e| format!("config file {at}: {e}")));
            return file;
        }
    }
    Settings::default()
}

/// `problems`, each about a setting whose value came from its variable naming that variable
/// (`tick "5" was read as 5s; ... (from SESSIOND_TICK)`): a message names its setting first.
fn name_variables(problems: Vec<String>, from_env: &[(String, String)]) -> Vec<String> {
    problems
        .into_iter()
        .map(|m| {
            let var = from_env.iter().find(|(name, _)| {
                m.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', ':']))
            });
            match var {
                Some((_, var)) if !m.contains("(from ") => format!("{m} (from {var})"),
                _ => m,
            }
        })
        .collect()
}

/// The listen address (or `unix:` socket path) `given`, else the default.
pub fn parse_listen(given: Option<String>) -> Result<Listen, String> {
    Listen::parse(&given.unwrap_or_else(|| DEFAULT_LISTEN.into()))
}

impl Config {
    /// Merges flags/env over the file over defaults and validates the result.
    pub fn load(cli: Settings) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let mut cli = cli;
        p.0.extend(cli.problems.take().unwrap_or_default());
        let from_env = cli.from_env.take().unwrap_or_default();
        let config_file = cli.config.clone();
        let file = read_file(config_file.as_deref(), &mut p);
        let mut s = cli.or(file);
        let cluster = cluster_settings(&mut s, &mut p);

        let listen = parse_listen(s.listen).unwrap_or_else(|e| {
            p.0.push(e);
            Listen::parse(DEFAULT_LISTEN).expect("literal")
        });
        p.check(
            s.listen_mode.is_none() || matches!(listen, Listen::Unix(_)),
            || format!("listen_mode is for a Unix socket (listen = \"unix:PATH\"), and listen is {listen}"),
        );
        let listen_mode = p.parse(
            s.listen_mode,
            || crate::server::listen::DEFAULT_UNIX_MODE,
            crate::server::listen::parse_mode,
        );

        let shards = s.shards.unwrap_or_else(default_shards);
        p.check(
            shards != 0 && shards.is_power_of_two() && shards <= 1_024,
            || format!("shards is {shards}; it must be a power of two between 1 and 1024"),
        );
        let tick_ms = p.parse(s.tick, || 100, parse_tick);
        let mode = p.parse(s.org_policy_mode, || Mode::Stricter, str::parse);

        let max_sessions = s.max_sessions.unwrap_or(10_000_000);
        p.check(max_sessions != 0, || {
            "max_sessions must be at least 1".into()
        });
        p.check(max_sessions <= shards.saturating_mul(SHARD_SESSIONS), || {
            format!(
                "max_sessions {max_sessions} is more than {shards} shard(s) can hold ({SHARD_SESSIONS} each): \
                 raise --shards to at least {}",
                max_sessions.div_ceil(SHARD_SESSIONS).next_power_of_two()
            )
        });
        let max_sessions_per_user = s.max_sessions_per_user;
        p.check(max_sessions_per_user != Some(0), || {
            "max_sessions_per_user must be at least 1 (omit it for no limit)".into()
        });
        let user_limit_action = p.parse(
            s.per_user_limit_action,
            || UserLimitAction::Refuse,
            str::parse,
        );

        let cookie_name = s.cookie_name.unwrap_or_else(|| "session".into());
        p.check(valid_cookie_name(&cookie_name), || {
            format!(
                "cookie_name {cookie_name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        });
        let secure = p.parse(s.cookie_secure, || true, |t| parse_bool("cookie_secure", t));
        let same_site = p.parse(
            s.cookie_same_site,
            || crate::cookie::SameSite::Lax,
            str::parse,
        );
        let cookie = crate::cookie::CookieSettings {
            name: cookie_name,
            domain: s.cookie_domain,
            path: s.cookie_path.unwrap_or_else(|| "/".into()),
            secure,
            same_site,
        };
        p.0.extend(cookie.validate());

        let api_keys_file = s.api_keys_file;
        let insecure_no_auth = s.insecure_no_auth.unwrap_or(false);
        p.check(
            api_keys_file.is_some() || listen.is_local() || insecure_no_auth,
            || {
                format!(
                    "listen {listen} is not a loopback address and no --api-keys-file is set: anyone who can \
                     connect would be admin. Give --api-keys-file, or --insecure-no-auth if you really mean it"
                )
            },
        );

        let application_policy = match &s.application {
            None => DEFAULT_POLICY,
            Some(patch) => Policy::from_patch(Some(&DEFAULT_POLICY), patch).unwrap_or_else(|e| {
                p.0.push(format!("[application] {e}"));
                DEFAULT_POLICY
            }),
        };

        let http_workers = s
            .http_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        p.check((1..=256).contains(&http_workers), || {
            format!(
                "http_workers {http_workers} is out of range: 1 to 256 (one per core is right for most machines)"
            )
        });
        let pin_workers = p.parse(s.pin_workers, Default::default, str::parse);
        let write_gate = p.parse(s.write_gate, || true, |t| parse_bool("write_gate", t));
        let secs = Duration::from_secs;
        let shutdown_grace = p.parse(
            s.shutdown_grace,
            || secs(10),
            |t| parse_duration("shutdown_grace", t, secs(0), secs(3_600), "10s"),
        );
        let header_read_timeout = p.parse(
            s.header_read_timeout,
            || secs(10),
            |t| parse_duration("header_read_timeout", t, secs(1), secs(3_600), "10s"),
        );
        let keepalive_timeout = p.parse(
            s.keepalive_timeout,
            || secs(180),
            |t| parse_duration("keepalive_timeout", t, secs(1), secs(86_400), "3m"),
        );
        let max_connections = s.max_connections;
        p.check(max_connections != Some(0), || {
            "max_connections must be at least 1 (omit it to derive it from the open-file limit)"
                .into()
        });
        let log_level = p.parse(
            s.log_level,
            || tracing::Level::INFO,
            |l| {
                l.parse().map_err(|_| {
                    format!("log_level {l:?} is not one of error, warn, info, debug, trace")
                })
            },
        );

        let state_dir = s.state_dir.unwrap_or_else(default_state_dir);
        let policy_file = s.policy_file;
        if let Some(f) = &policy_file {
            p.check(f.exists(), || {
                format!("policy_file {} does not exist", f.display())
            });
        }
        let policy_file_settle = p.parse(
            s.policy_file_settle,
            || crate::policy_source::settle::DEFAULT_SETTLE,
            parse_settle,
        );

        let fsync = p.parse(s.fsync, Default::default, str::parse);
        let snapshot_interval = p.parse(
            s.snapshot_interval,
            || Duration::from_secs(600),
            parse_interval,
        );
        let journal_backlog_mib = s
            .journal_backlog_mib
            .unwrap_or(crate::persist::journal::DEFAULT_BACKLOG >> 20);
        p.check((1..=65_536).contains(&journal_backlog_mib), || {
            format!(
                "journal_backlog_mib {journal_backlog_mib} is out of range; it must be between 1 and 65536"
            )
        });
        let persist = (!s.no_persist.unwrap_or(false) && s.persist.unwrap_or(true)).then(|| {
            crate::persist::Settings {
                dir: state_dir.clone(),
                fsync,
                snapshot_interval,
                recover: s.recover.unwrap_or(false),
                journal_backlog: journal_backlog_mib << 20,
            }
        });

        if !p.0.is_empty() {
            return Err(ConfigError(name_variables(p.0, &from_env)));
        }
        Ok(Config {
            listen,
            listen_mode,
            engine: EngineConfig {
                shards,
                tick_ms,
                mode,
                application_policy,
                max_sessions,
                max_sessions_per_user,
                user_limit_action,
                cluster: cluster.is_some(),
            },
            cookie,
            api_keys_file,
            insecure_no_auth,
            http_workers,
            pin_workers,
            write_gate,
            shutdown_grace,
            header_read_timeout,
            keepalive_timeout,
            max_connections,
            log_level,
            state_dir,
            policy_file,
            policy_file_settle,
            persist,
            config_file,
            cluster,
        })
    }
}

/// The cluster's settings, when `cluster` names NATS servers.
fn cluster_settings(s: &mut Settings, p: &mut Problems) -> Option<crate::cluster::Settings> {
    if s.cluster.is_none() {
        // A companion without `cluster` would be silently ignored: say so instead.
        let given = [
            ("node_name", s.node_name.is_some()),
            ("cluster_stream", s.cluster_stream.is_some()),
            ("cluster_ack", s.cluster_ack.is_some()),
            ("cluster_creds", s.cluster_creds.is_some()),
            ("cluster_tls_ca", s.cluster_tls_ca.is_some()),
            ("cluster_tls_cert", s.cluster_tls_cert.is_some()),
            ("cluster_tls_key", s.cluster_tls_key.is_some()),
            ("cluster_replicas", s.cluster_replicas.is_some()),
            ("cluster_retention", s.cluster_retention.is_some()),
            ("cluster_ready_timeout", s.cluster_ready_timeout.is_some()),
            (
                "cluster_snapshot_interval",
                s.cluster_snapshot_interval.is_some(),
            ),
        ];
        for (name, _) in given.iter().filter(|g| g.1) {
            p.0.push(format!(
                "{name} is set but cluster is not: it is a cluster node's setting, and without \
                 cluster (the NATS servers' URLs) this is a single node"
            ));
        }
        return None;
    }
    let urls: Vec<String> = s
        .cluster
        .take()?
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    p.check(!urls.is_empty(), || {
        "cluster is empty; give NATS URLs like nats://127.0.0.1:4222 (comma-separated)".into()
    });
    for u in &urls {
        let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|sch| u.starts_with(sch));
        p.check(scheme_ok || !u.contains("://"), || {
            format!("cluster URL {u:?} is not a nats://, tls://, ws:// or wss:// URL")
        });
    }
    let node = s
        .node_name
        .take()
        .unwrap_or_else(crate::cluster::default_node_name);
    p.check(crate::cluster::valid_name(&node), || {
        format!("node_name {node:?} must be 1 to 64 letters, digits, '-' or '_'")
    });
    let stream = s.cluster_stream.take().unwrap_or_else(|| "SESSIOND".into());
    p.check(crate::cluster::valid_name(&stream), || {
        format!("cluster_stream {stream:?} must be 1 to 64 letters, digits, '-' or '_'")
    });
    let ack = p.parse(s.cluster_ack.take(), Default::default, str::parse);
    let replicas = s.cluster_replicas.unwrap_or(3);
    p.check((1..=5).contains(&replicas), || {
        format!("cluster_replicas {replicas} is out of range; it must be between 1 and 5")
    });
    let retention = p.parse(
        s.cluster_retention.take(),
        || std::time::Duration::from_secs(86_400),
        parse::parse_retention,
    );
    let ready_timeout = p.parse(
        s.cluster_ready_timeout.take(),
        || std::time::Duration::from_secs(30),
        |t: &str| {
            let secs = std::time::Duration::from_secs;
            parse_duration("cluster_ready_timeout", t, secs(1), secs(3_600), "30s")
        },
    );
    let snapshot_interval = p.parse(
        s.cluster_snapshot_interval.take(),
        || std::time::Duration::from_secs(600),
        |t: &str| {
            let secs = std::time::Duration::from_secs;
            parse_duration("cluster_snapshot_interval", t, secs(1), secs(86_400), "10m")
        },
    );
    p.check(snapshot_interval < retention, || {
        format!(
            "cluster_snapshot_interval ({}s) must be shorter than cluster_retention ({}s): a \
             joining node loads the last snapshot and reads the stream after it",
            snapshot_interval.as_secs(),
            retention.as_secs()
        )
    });
    for (name, file) in [
        ("cluster_creds", &s.cluster_creds),
        ("cluster_tls_ca", &s.cluster_tls_ca),
        ("cluster_tls_cert", &s.cluster_tls_cert),
        ("cluster_tls_key", &s.cluster_tls_key),
    ] {
        if let Some(file) = file {
            p.check(file.is_file(), || {
                format!("{name} {} is not a readable file", file.display())
            });
        }
    }
    let client = match (s.cluster_tls_cert.take(), s.cluster_tls_key.take()) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (cert, _) => {
            let (given, missing) = if cert.is_some() {
                ("cluster_tls_cert", "cluster_tls_key")
            } else {
                ("cluster_tls_key", "cluster_tls_cert")
            };
            p.0.push(format!(
                "{given} is set without {missing}: a client certificate needs its key"
            ));
            None
        }
    };
    let ca = s.cluster_tls_ca.take();
    let tls = (ca.is_some() || client.is_some()).then_some(crate::cluster::Tls { ca, client });
    Some(crate::cluster::Settings {
        urls,
        node,
        stream,
        ack,
        creds: s.cluster_creds.take(),
        tls,
        replicas,
        retention,
        ready_timeout,
        snapshot_interval,
    })
}

#[cfg(test)]
mod tests;
