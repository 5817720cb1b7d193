//! Daemon configuration: flags, `SESSIOND_*` environment variables and an optional TOML file
//! (`--config`), in that order of precedence, over built-in defaults.
//!
//! Invariants:
//! 1. Raw input ([`Cli`], [`FileConfig`]) is separate from the validated [`Config`]; the only way
//!    to a `Config` is [`Config::load`], which checks every field and reports *every* problem at
//!    once (a list), never just the first.
//! 2. Unknown keys in the TOML file are errors (`deny_unknown_fields`), so a typo is not silently
//!    ignored.
//! 3. A non-loopback listen address without API keys is refused unless `--insecure-no-auth`.

use crate::engine::{EngineConfig, UserLimitAction, default_shards};
use crate::policy::{DEFAULT_POLICY, Mode, Policy, PolicyPatch};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Command-line flags; each may also come from the `SESSIOND_<NAME>` environment variable.
#[derive(Debug, Default, Parser)]
#[command(
    name = "sessiond",
    version,
    about = "In-memory login-session daemon for auth gateways"
)]
pub struct Cli {
    /// TOML configuration file (optional).
    #[arg(long, env = "SESSIOND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Do not serve: ask the sessiond at --listen for /readyz and exit 0 if it is ready, 1 if
    /// not (a container HEALTHCHECK without curl).
    #[arg(long)]
    pub probe: bool,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SESSIOND_LISTEN")]
    pub listen: Option<String>,
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
    #[arg(long, env = "SESSIOND_COOKIE_SECURE")]
    pub cookie_secure: Option<String>,
    /// `SameSite=` of the session cookie: lax|strict|none [default: lax; none requires secure].
    #[arg(long, env = "SESSIOND_COOKIE_SAME_SITE")]
    pub cookie_same_site: Option<String>,
    /// TOML file of API keys with roles (gateway, admin).
    #[arg(long, env = "SESSIOND_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Allow a non-loopback listen address without API keys (anyone who can connect is admin).
    #[arg(long, env = "SESSIOND_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
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
    #[arg(long, env = "SESSIOND_NO_PERSIST")]
    pub no_persist: bool,
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
    #[arg(long, env = "SESSIOND_RECOVER")]
    pub recover: bool,
    /// MiB of journal kept in memory while the disk refuses writes (1 to 65536); past it the
    /// kept changes are dropped and a full snapshot replaces them when the disk takes one
    /// [default: 64].
    #[arg(long, env = "SESSIOND_JOURNAL_BACKLOG_MIB")]
    pub journal_backlog_mib: Option<usize>,
}

/// The TOML file: the same settings with `snake_case` keys, plus `[application]` policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub shards: Option<usize>,
    pub tick: Option<String>,
    pub org_policy_mode: Option<String>,
    pub max_sessions: Option<usize>,
    pub max_sessions_per_user: Option<usize>,
    pub per_user_limit_action: Option<String>,
    pub cookie_name: Option<String>,
    pub cookie_domain: Option<String>,
    pub cookie_path: Option<String>,
    pub cookie_secure: Option<bool>,
    pub cookie_same_site: Option<String>,
    pub api_keys_file: Option<PathBuf>,
    pub insecure_no_auth: Option<bool>,
    pub http_workers: Option<usize>,
    pub shutdown_grace: Option<u64>,
    pub header_read_timeout: Option<u64>,
    pub keepalive_timeout: Option<u64>,
    pub max_connections: Option<usize>,
    pub log_level: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub policy_file: Option<PathBuf>,
    pub policy_file_settle: Option<String>,
    pub persist: Option<bool>,
    pub fsync: Option<String>,
    pub snapshot_interval: Option<String>,
    pub recover: Option<bool>,
    pub journal_backlog_mib: Option<usize>,
    /// The application policy (defaults to the built-in one, field by field).
    pub application: Option<PolicyPatch>,
}

/// Sessions one shard may be asked to hold: its id index addresses 2^24 - 2 records, and ids
/// spread over shards evenly enough (they are hashes) that a cap of 15M per shard on average
/// leaves every shard far below that.
pub const SHARD_SESSIONS: usize = 15_000_000;

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub engine: EngineConfig,
    pub cookie: crate::cookie::CookieSettings,
    pub api_keys_file: Option<PathBuf>,
    pub insecure_no_auth: bool,
    /// HTTP worker threads (see `server`).
    pub http_workers: usize,
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
    /// How long the policy file must stay unchanged before it is read (`policy_watch`).
    pub policy_file_settle: Duration,
    /// Session persistence in `state_dir`; `None` with `--no-persist`.
    pub persist: Option<crate::persist::Settings>,
    /// Where the configuration came from, for the start-up log line.
    pub config_file: Option<PathBuf>,
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else `$XDG_STATE_HOME/sessiond`,
/// else `$HOME/.local/state/sessiond`, else `./sessiond-state`.
pub fn default_state_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("STATE_DIRECTORY") {
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first);
    }
    if let Some(x) = var("XDG_STATE_HOME") {
        return PathBuf::from(x).join("sessiond");
    }
    if let Some(h) = var("HOME") {
        return PathBuf::from(h).join(".local/state/sessiond");
    }
    PathBuf::from("sessiond-state")
}

/// Parses `100ms`, `1s` or a bare number of milliseconds.
pub fn parse_tick(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000)
    } else {
        (s, 1)
    };
    let v: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("tick {s:?} is not a duration like \"100ms\" or \"1s\""))?;
    let ms = v.saturating_mul(mult);
    if !(1..=1_000).contains(&ms) {
        return Err(format!(
            "tick {s:?} is out of range; it must be between 1ms and 1s"
        ));
    }
    Ok(ms)
}

/// Parses a snapshot interval: `30s`, `10m`, `1h` or a bare number of seconds, 10 s to 24 h.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3_600),
        _ => (t, 1),
    };
    let v: u64 = num.trim().parse().map_err(|_| {
        format!("snapshot_interval {s:?} is not a duration like \"30s\", \"10m\" or \"1h\"")
    })?;
    let secs = v.saturating_mul(mult);
    if !(10..=86_400).contains(&secs) {
        return Err(format!(
            "snapshot_interval {s:?} is out of range; it must be between 10s and 24h"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// Parses the policy file's settle window: `500ms`, `1s` or a bare number of milliseconds,
/// 100 ms to 60 s.
pub fn parse_settle(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1_000)
    } else {
        (t, 1)
    };
    let ms = num
        .trim()
        .parse::<u64>()
        .map_err(|_| {
            format!("policy_file_settle {s:?} is not a duration like \"1s\" or \"500ms\"")
        })?
        .saturating_mul(mult);
    if !(100..=60_000).contains(&ms) {
        return Err(format!(
            "policy_file_settle {s:?} is out of range; it must be between 100ms and 60s"
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// Whether `name` is a valid cookie name (an RFC 6265 token).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Config {
    /// Merges flags/env over the file over defaults and validates the result.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let file = match &cli.config {
            None => FileConfig::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    errors.push(format!("cannot read config file {}: {e}", path.display()));
                    FileConfig::default()
                }
                Ok(text) => match toml::from_str::<FileConfig>(&text) {
                    Ok(f) => f,
                    Err(e) => {
                        errors.push(format!("config file {}: {e}", path.display()));
                        FileConfig::default()
                    }
                },
            },
        };

        let listen_s = cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = match listen_s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                errors.push(format!(
                    "listen {listen_s:?} is not an address like 127.0.0.1:8080 or [::1]:8080"
                ));
                "127.0.0.1:8080".parse().expect("literal")
            }
        };

        let shards = cli.shards.or(file.shards).unwrap_or_else(default_shards);
        if shards == 0 || !shards.is_power_of_two() || shards > 1_024 {
            errors.push(format!(
                "shards is {shards}; it must be a power of two between 1 and 1024"
            ));
        }

        let tick_ms = match cli.tick.or(file.tick) {
            None => 100,
            Some(t) => parse_tick(&t).unwrap_or_else(|e| {
                errors.push(e);
                100
            }),
        };

        let mode = match cli.org_policy_mode.or(file.org_policy_mode) {
            None => Mode::Stricter,
            Some(m) => m.parse().unwrap_or_else(|e| {
                errors.push(e);
                Mode::Stricter
            }),
        };

        let max_sessions = cli.max_sessions.or(file.max_sessions).unwrap_or(10_000_000);
        if max_sessions == 0 {
            errors.push("max_sessions must be at least 1".into());
        }
        if max_sessions > shards.saturating_mul(SHARD_SESSIONS) {
            errors.push(format!(
                "max_sessions {max_sessions} is more than {shards} shard(s) can hold ({SHARD_SESSIONS} each): \
                 raise --shards to at least {}",
                max_sessions.div_ceil(SHARD_SESSIONS).next_power_of_two()
            ));
        }
        let max_sessions_per_user = cli.max_sessions_per_user.or(file.max_sessions_per_user);
        if max_sessions_per_user == Some(0) {
            errors.push("max_sessions_per_user must be at least 1 (omit it for no limit)".into());
        }
        let user_limit_action = match cli.per_user_limit_action.or(file.per_user_limit_action) {
            None => UserLimitAction::Refuse,
            Some(a) => a.parse().unwrap_or_else(|e| {
                errors.push(e);
                UserLimitAction::Refuse
            }),
        };

        let cookie_name = cli
            .cookie_name
            .or(file.cookie_name)
            .unwrap_or_else(|| "session".into());
        if !valid_cookie_name(&cookie_name) {
            errors.push(format!(
                "cookie_name {cookie_name:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
            ));
        }

        let cookie_secure = match cli.cookie_secure.as_deref() {
            None => file.cookie_secure.unwrap_or(true),
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                errors.push(format!("cookie_secure {other:?} is not true or false"));
                true
            }
        };
        let cookie_same_site = match cli.cookie_same_site.or(file.cookie_same_site) {
            None => crate::cookie::SameSite::Lax,
            Some(s) => s.parse().unwrap_or_else(|e| {
                errors.push(e);
                crate::cookie::SameSite::Lax
            }),
        };
        let cookie = crate::cookie::CookieSettings {
            name: cookie_name,
            domain: cli.cookie_domain.or(file.cookie_domain),
            path: cli
                .cookie_path
                .or(file.cookie_path)
                .unwrap_or_else(|| "/".into()),
            secure: cookie_secure,
            same_site: cookie_same_site,
        };
        errors.extend(cookie.validate());

        let api_keys_file = cli.api_keys_file.or(file.api_keys_file);
        let insecure_no_auth = cli.insecure_no_auth || file.insecure_no_auth.unwrap_or(false);
        if api_keys_file.is_none() && !listen.ip().is_loopback() && !insecure_no_auth {
            errors.push(format!(
                "listen {listen} is not a loopback address and no --api-keys-file is set: anyone who can \
                 connect would be admin. Give --api-keys-file, or --insecure-no-auth if you really mean it"
            ));
        }

        let application_policy = match &file.application {
            None => DEFAULT_POLICY,
            Some(patch) => Policy::from_patch(Some(&DEFAULT_POLICY), patch).unwrap_or_else(|e| {
                errors.push(format!("[application] {e}"));
                DEFAULT_POLICY
            }),
        };

        let http_workers = cli
            .http_workers
            .or(file.http_workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if !(1..=256).contains(&http_workers) {
            errors.push(format!(
                "http_workers {http_workers} is out of range: 1 to 256 (one per core is right for most machines)"
            ));
        }
        let shutdown_grace =
            Duration::from_secs(cli.shutdown_grace.or(file.shutdown_grace).unwrap_or(10));
        let header_read_timeout = cli
            .header_read_timeout
            .or(file.header_read_timeout)
            .unwrap_or(10);
        if !(1..=3_600).contains(&header_read_timeout) {
            errors.push(format!(
                "header_read_timeout {header_read_timeout} is out of range: 1 to 3600 seconds"
            ));
        }
        let keepalive_timeout = cli
            .keepalive_timeout
            .or(file.keepalive_timeout)
            .unwrap_or(180);
        if !(1..=86_400).contains(&keepalive_timeout) {
            errors.push(format!(
                "keepalive_timeout {keepalive_timeout} is out of range: 1 to 86400 seconds"
            ));
        }
        let max_connections = cli.max_connections.or(file.max_connections);
        if max_connections == Some(0) {
            errors.push(
                "max_connections must be at least 1 (omit it to derive it from the open-file limit)"
                    .into(),
            );
        }
        let log_level = match cli.log_level.or(file.log_level) {
            None => tracing::Level::INFO,
            Some(l) => l.parse().unwrap_or_else(|_| {
                errors.push(format!(
                    "log_level {l:?} is not one of error, warn, info, debug, trace"
                ));
                tracing::Level::INFO
            }),
        };

        let state_dir = cli
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(default_state_dir);
        let policy_file = cli.policy_file.or(file.policy_file);
        if let Some(p) = &policy_file
            && !p.exists()
        {
            errors.push(format!("policy_file {} does not exist", p.display()));
        }
        let policy_file_settle = match cli.policy_file_settle.or(file.policy_file_settle) {
            None => crate::policy_source::settle::DEFAULT_SETTLE,
            Some(s) => parse_settle(&s).unwrap_or_else(|e| {
                errors.push(e);
                crate::policy_source::settle::DEFAULT_SETTLE
            }),
        };

        let fsync = match cli.fsync.or(file.fsync) {
            None => crate::persist::journal::FsyncPolicy::default(),
            Some(f) => f.parse().unwrap_or_else(|e| {
                errors.push(e);
                Default::default()
            }),
        };
        let snapshot_interval = match cli.snapshot_interval.or(file.snapshot_interval) {
            None => Duration::from_secs(600),
            Some(i) => parse_interval(&i).unwrap_or_else(|e| {
                errors.push(e);
                Duration::from_secs(600)
            }),
        };
        let journal_backlog_mib = cli
            .journal_backlog_mib
            .or(file.journal_backlog_mib)
            .unwrap_or(crate::persist::journal::DEFAULT_BACKLOG >> 20);
        if !(1..=65_536).contains(&journal_backlog_mib) {
            errors.push(format!(
                "journal_backlog_mib {journal_backlog_mib} is out of range; it must be between 1 and 65536"
            ));
        }
        let persist =
            (!cli.no_persist && file.persist.unwrap_or(true)).then(|| crate::persist::Settings {
                dir: state_dir.clone(),
                fsync,
                snapshot_interval,
                recover: cli.recover || file.recover.unwrap_or(false),
                journal_backlog: journal_backlog_mib << 20,
            });

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            listen,
            engine: EngineConfig {
                shards,
                tick_ms,
                mode,
                application_policy,
                max_sessions,
                max_sessions_per_user,
                user_limit_action,
            },
            cookie,
            api_keys_file,
            insecure_no_auth,
            http_workers,
            shutdown_grace,
            header_read_timeout: Duration::from_secs(header_read_timeout),
            keepalive_timeout: Duration::from_secs(keepalive_timeout),
            max_connections,
            log_level,
            state_dir,
            policy_file,
            policy_file_settle,
            persist,
            config_file: cli.config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["sessiond"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(cli(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.engine.tick_ms, 100);
        assert_eq!(c.engine.mode, Mode::Stricter);
        assert_eq!(c.engine.application_policy, DEFAULT_POLICY);
        assert_eq!(c.cookie, crate::cookie::CookieSettings::default());
        assert!(c.engine.shards.is_power_of_two());
        assert!(c.http_workers >= 1);
        let e = Config::load(cli(&["--shards", "2", "--max-sessions", "40000000"])).unwrap_err();
        assert!(
            e.to_string().contains("raise --shards to at least 4"),
            "{e}"
        );
        assert!(Config::load(cli(&["--shards", "4", "--max-sessions", "40000000"])).is_ok());
        let c = Config::load(cli(&["--http-workers", "3"])).unwrap();
        assert_eq!(c.http_workers, 3);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = Config::load(cli(&[
            "--listen",
            "nowhere",
            "--shards",
            "3",
            "--tick",
            "5s",
            "--org-policy-mode",
            "loose",
            "--cookie-name",
            "a b",
            "--max-sessions",
            "0",
            "--http-workers",
            "0",
        ]))
        .unwrap_err();
        assert_eq!(e.0.len(), 7, "{e}");
        let text = e.to_string();
        for needle in [
            "nowhere",
            "shards is 3",
            "tick \"5s\"",
            "loose",
            "\"a b\"",
            "max_sessions",
            "http_workers 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn non_loopback_needs_keys_or_explicit_insecure() {
        let e = Config::load(cli(&["--listen", "0.0.0.0:8080"])).unwrap_err();
        assert!(e.to_string().contains("--insecure-no-auth"));
        assert!(Config::load(cli(&["--listen", "0.0.0.0:8080", "--insecure-no-auth"])).is_ok());
        assert!(Config::load(cli(&["--listen", "0.0.0.0:8080", "--api-keys-file", "/k"])).is_ok());
    }

    #[test]
    fn file_is_read_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("sessiond-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ntick = \"50ms\"\n[application]\nabsolute_timeout = { value = 8, unit = \"HOURS\" }\npersistent = true\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::load(cli(&["--config", p, "--tick", "200ms"])).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.engine.tick_ms, 200);
        assert_eq!(c.engine.application_policy.absolute_timeout_secs, 28_800);
        assert!(c.engine.application_policy.persistent);
        assert_eq!(c.engine.application_policy.idle_timeout_secs, Some(1_800));

        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        let e = Config::load(cli(&["--config", p])).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        std::fs::write(&path, "[application]\nabsolute_timeout = 0\n").unwrap();
        let e = Config::load(cli(&["--config", p])).unwrap_err();
        assert!(e.to_string().contains("absolute_timeout is 0"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cookie_flags() {
        let c = Config::load(cli(&[
            "--cookie-domain",
            "example.com",
            "--cookie-path",
            "/app",
            "--cookie-secure",
            "false",
            "--cookie-same-site",
            "strict",
        ]))
        .unwrap();
        assert_eq!(c.cookie.domain.as_deref(), Some("example.com"));
        assert_eq!((c.cookie.path.as_str(), c.cookie.secure), ("/app", false));
        let e = Config::load(cli(&[
            "--cookie-secure",
            "false",
            "--cookie-same-site",
            "none",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("requires cookie_secure"), "{e}");
        let e = Config::load(cli(&["--cookie-secure", "maybe"])).unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
    }

    #[test]
    fn connection_limits() {
        let c = Config::load(cli(&[])).unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(180));
        assert_eq!(c.max_connections, None);
        let c = Config::load(cli(&[
            "--header-read-timeout",
            "2",
            "--keepalive-timeout",
            "75",
            "--max-connections",
            "500",
        ]))
        .unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(c.max_connections, Some(500));
        let e = Config::load(cli(&[
            "--header-read-timeout",
            "0",
            "--keepalive-timeout",
            "90000",
            "--max-connections",
            "0",
        ]))
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        let dir = std::env::temp_dir().join(format!("sessiond-cfg-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "header_read_timeout = 5\nkeepalive_timeout = 100\nmax_connections = 64\n",
        )
        .unwrap();
        let c = Config::load(cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(
            (
                c.header_read_timeout.as_secs(),
                c.keepalive_timeout.as_secs()
            ),
            (5, 100)
        );
        assert_eq!(c.max_connections, Some(64));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn tick_forms() {
        assert_eq!(parse_tick("100ms"), Ok(100));
        assert_eq!(parse_tick("1s"), Ok(1_000));
        assert_eq!(parse_tick("250"), Ok(250));
        assert!(parse_tick("0ms").is_err());
        assert!(parse_tick("2s").is_err());
        assert!(parse_tick("fast").is_err());
    }

    #[test]
    fn policy_file_settle_is_a_bounded_duration() {
        assert_eq!(parse_settle("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_settle("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_settle("2000"), Ok(Duration::from_secs(2)));
        assert!(
            parse_settle("50ms")
                .unwrap_err()
                .contains("between 100ms and 60s")
        );
        assert!(parse_settle("2m").is_err());
        let c = Config::load(cli(&["--policy-file-settle", "3s"])).unwrap();
        assert_eq!(c.policy_file_settle, Duration::from_secs(3));
    }
}
