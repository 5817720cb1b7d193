//! Tests of `Config::load`: defaults, precedence, and every problem reported at once.

use super::*;
use crate::policy::{DEFAULT_POLICY, Mode};

/// A fresh directory for one test's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sessiond-cfg-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cli(args: &[&str]) -> Settings {
    let mut v = vec!["sessiond"];
    v.extend_from_slice(args);
    Settings::try_from_args(v).unwrap()
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

/// Values clap refuses and unknown flags are problems like the others: all of them at once.
#[test]
fn flags_clap_refuses_are_reported_with_the_rest() {
    let s = Settings::try_from_args([
        "sessiond",
        "--shards",
        "x",
        "--max-sessions=-1",
        "--tikc",
        "5ms",
        "--org-policy-mode",
        "loose",
    ])
    .unwrap();
    let e = Config::load(s).unwrap_err();
    let text = e.to_string();
    assert_eq!(e.0.len(), 4, "{text}");
    for needle in [
        "invalid value 'x' for '--shards <SHARDS>'",
        "invalid value '-1' for '--max-sessions <MAX_SESSIONS>'",
        "unknown flag `--tikc`; did you mean `--tick`?",
        "loose",
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
    let dir = scratch("file");
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9000\"\ntick = \"50ms\"\n[application]\nabsolute_timeout = { value = 8, unit = \"HOURS\" }\npersistent = true\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let c = Config::load(cli(&["--config", p, "--tick", "200ms"])).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
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
    let dir = scratch("conn");
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
fn write_gate_is_on_unless_turned_off() {
    assert!(Config::load(cli(&[])).unwrap().write_gate);
    assert!(
        !Config::load(cli(&["--write-gate", "false"]))
            .unwrap()
            .write_gate
    );
    assert!(
        Config::load(cli(&["--write-gate", "true"]))
            .unwrap()
            .write_gate
    );
    let e = Config::load(cli(&["--write-gate", "off"])).unwrap_err();
    assert!(
        e.to_string()
            .contains("write_gate \"off\" is not true or false"),
        "{e}"
    );
    let dir = scratch("gate");
    let path = dir.join("c.toml");
    std::fs::write(&path, "write_gate = false\n").unwrap();
    let c = Config::load(cli(&["--config", path.to_str().unwrap()])).unwrap();
    assert!(!c.write_gate);
    std::fs::remove_dir_all(&dir).ok();
}

/// The settle window's forms are tested in `parse`; here, that the flag reaches the config.
#[test]
fn policy_file_settle_is_a_bounded_duration() {
    let c = Config::load(cli(&["--policy-file-settle", "3s"])).unwrap();
    assert_eq!(c.policy_file_settle, Duration::from_secs(3));
}

/// Keys spelt differently on each side keep their meaning: an absent flag does not hide the
/// file's key, a given one wins over it, and a command-line-only name is an unknown file key.
#[test]
fn flags_and_keys_of_one_side_only() {
    let dir = scratch("sides");
    let path = dir.join("c.toml");
    let p = path.to_str().unwrap();
    let load = |text: &str, args: &[&str]| {
        std::fs::write(&path, text).unwrap();
        let mut all = vec!["--config", p];
        all.extend_from_slice(args);
        Config::load(cli(&all))
    };
    let keys = "listen = \"0.0.0.0:8080\"\ninsecure_no_auth = true\nrecover = true\n\
                persist = true\ncookie_secure = false\n";
    let c = load(keys, &[]).unwrap();
    assert!(c.insecure_no_auth && !c.cookie.secure);
    assert!(c.persist.unwrap().recover);
    let c = load(keys, &["--no-persist", "--cookie-secure", "true"]).unwrap();
    assert!(c.persist.is_none() && c.cookie.secure);
    assert!(load("persist = false\n", &[]).unwrap().persist.is_none());
    assert!(load("", &[]).unwrap().persist.is_some());

    for bad in [
        "no_persist = true\n",
        "config = \"x\"\n",
        "probe = true\n",
        "cookie_secure = \"false\"\n",
    ] {
        let e = load(bad, &[]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{bad}: {e}");
    }
    for flag in ["--persist", "--application"] {
        let s = Settings::try_from_args(["sessiond", flag, "x"]).unwrap();
        let problems = s.problems.unwrap();
        assert!(
            problems[0].starts_with(&format!("unknown flag `{flag}`")),
            "{problems:?}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cluster_settings_are_checked_together() {
    assert!(Config::load(cli(&[])).unwrap().cluster.is_none());
    let c = Config::load(cli(&[
        "--cluster",
        "nats://a:4222, tls://b:4222",
        "--node-name",
        "node-1",
        "--cluster-ack",
        "async",
        "--cluster-retention",
        "7d",
        "--cluster-ready-timeout",
        "5s",
        "--cluster-snapshot-interval",
        "30m",
    ]))
    .unwrap();
    let s = c.cluster.unwrap();
    assert_eq!(s.urls, vec!["nats://a:4222", "tls://b:4222"]);
    assert_eq!(s.node, "node-1");
    assert_eq!(s.stream, "SESSIOND");
    assert_eq!(s.ack, crate::cluster::Ack::Async);
    assert_eq!(s.replicas, 3);
    assert_eq!(s.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(s.ready_timeout, Duration::from_secs(5));
    assert_eq!(s.snapshot_interval, Duration::from_secs(1_800));
    assert!(c.engine.cluster);
    let e = Config::load(cli(&[
        "--cluster",
        "http://a:4222",
        "--node-name",
        "a.b",
        "--cluster-ack",
        "maybe",
        "--cluster-replicas",
        "7",
        "--cluster-retention",
        "10s",
        "--cluster-ready-timeout",
        "2h",
    ]))
    .unwrap_err()
    .to_string();
    for want in [
        "cluster URL \"http://a:4222\"",
        "node_name \"a.b\"",
        "cluster_ack \"maybe\"",
        "cluster_replicas 7",
        "cluster_retention \"10s\"",
        "cluster_ready_timeout \"2h\"",
    ] {
        assert!(e.contains(want), "{want} not in {e}");
    }
    // A joining node needs the stream to reach back past the last published snapshot.
    let e = Config::load(cli(&[
        "--cluster",
        "nats://a:4222",
        "--cluster-retention",
        "1h",
        "--cluster-snapshot-interval",
        "2h",
    ]))
    .unwrap_err()
    .to_string();
    assert!(e.contains("must be shorter than cluster_retention"), "{e}");
    // JetStream refuses a duplicate window (2 min) longer than the stream's max age: a
    // retention under it is refused here, not by a node that then never becomes ready.
    for (retention, ok) in [("1m", false), ("2m", false), ("4m", false), ("5m", true)] {
        let r = Config::load(cli(&[
            "--cluster",
            "nats://a:4222",
            "--cluster-retention",
            retention,
            "--cluster-snapshot-interval",
            "1m",
        ]));
        assert_eq!(
            r.is_ok(),
            ok,
            "{retention}: {:?}",
            r.err().map(|e| e.to_string())
        );
    }
}

/// The one duration rule holds in the file for every duration key: a bare integer is seconds
/// (a key that took only strings refused `cluster_snapshot_interval = 600`).
#[test]
fn every_duration_key_takes_a_bare_number_of_seconds_in_the_file() {
    let dir = scratch("bare");
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "shutdown_grace = 7\nheader_read_timeout = 5\nkeepalive_timeout = 100\n\
         policy_file_settle = 2\nsnapshot_interval = 120\ncluster = \"nats://a:4222\"\n\
         cluster_retention = 86400\ncluster_ready_timeout = 9\ncluster_snapshot_interval = 600\n",
    )
    .unwrap();
    let c = Config::load(cli(&["--config", path.to_str().unwrap()])).unwrap();
    assert_eq!(c.policy_file_settle, Duration::from_secs(2));
    assert_eq!(c.keepalive_timeout, Duration::from_secs(100));
    let s = c.cluster.unwrap();
    assert_eq!(s.retention, Duration::from_secs(86_400));
    assert_eq!(s.ready_timeout, Duration::from_secs(9));
    assert_eq!(s.snapshot_interval, Duration::from_secs(600));
    // `tick` takes one too, and refuses 5 s as out of its range, saying what it read.
    std::fs::write(&path, "tick = 5\n").unwrap();
    let e = Config::load(cli(&["--config", path.to_str().unwrap()])).unwrap_err();
    assert!(e.to_string().contains("was read as 5s"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// TLS to NATS: a private CA and a client certificate with its key; a certificate without its
/// key, or a file that is not there, is named; a cluster node's setting without `cluster` is
/// named too, not silently ignored.
#[test]
fn cluster_tls_files_and_companions_without_a_cluster() {
    let dir = scratch("tls");
    let f = |name: &str| {
        let p = dir.join(name);
        std::fs::write(&p, "pem").unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = (f("ca.pem"), f("client.pem"), f("client.key"));
    let c = Config::load(cli(&[
        "--cluster",
        "tls://a:4222",
        "--cluster-tls-ca",
        &ca,
        "--cluster-tls-cert",
        &cert,
        "--cluster-tls-key",
        &key,
    ]))
    .unwrap();
    let tls = c.cluster.unwrap().tls.unwrap();
    assert_eq!(tls.ca.unwrap().to_str(), Some(ca.as_str()));
    assert_eq!(tls.client.unwrap().1.to_str(), Some(key.as_str()));
    let c = Config::load(cli(&["--cluster", "nats://a:4222"])).unwrap();
    assert_eq!(c.cluster.unwrap().tls, None);

    let e = Config::load(cli(&[
        "--cluster",
        "tls://a:4222",
        "--cluster-tls-cert",
        &cert,
        "--cluster-tls-ca",
        "/nonexistent/ca.pem",
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cluster_tls_cert is set without cluster_tls_key"),
        "{e}"
    );
    assert!(
        e.contains("cluster_tls_ca /nonexistent/ca.pem is not a readable file"),
        "{e}"
    );

    let e = Config::load(cli(&["--cluster-ack", "async", "--cluster-tls-ca", &ca])).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(
        e.0[0].starts_with("cluster_ack is set but cluster is not"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
