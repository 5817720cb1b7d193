//! `deploy/` checked by the real tools: promtool (config, rules, rule unit tests, and a lint of
//! a live scrape), a real Prometheus server scraping the daemon, the Kubernetes schemas
//! (`kubernetes-validate`) plus a cross-reference check, the Grafana dashboard and the alert
//! rules against the metrics the daemon really exports, `systemd-analyze verify` on the unit,
//! and the container health probe.
//!
//! `.ci/run` installs the tools (Debian's `prometheus` package carries promtool; PyPI's
//! `kubernetes-validate`). A test whose tool is missing fails, or is skipped with
//! `SESSIOND_SKIP_MISSING_TOOLS=1` outside CI (`common::missing_tool`).

use crate::common::{Daemon, Scratch, eventually, free_port, request, scratch};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

/// The tool's path, or `None` (test skipped) when it is missing and skipping is asked for.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let install = match name {
            "promtool" | "prometheus" => "apt-get install -y prometheus",
            "systemd-analyze" => "apt-get install -y systemd",
            "kubernetes-validate" => "pip install kubernetes-validate",
            _ => "see .ci/run",
        };
        crate::common::missing_tool(name, install);
    }
    found
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_the_rules_and_the_rule_tests() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = deploy("prometheus");
    run_ok(
        Command::new(&promtool)
            .current_dir(&dir)
            .args(["check", "config", "prometheus.yml"]),
    );
    run_ok(Command::new(&promtool).current_dir(&dir).args([
        "check",
        "rules",
        "sessiond-rules.yml",
    ]));
    let out = run_ok(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "sessiond-rules.test.yml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A daemon after every kind of event, so that every metric family has a sample: creates, a
/// refusal at capacity, validate/touch/revoke, a policy change with re-application, evictions
/// by the reaper, a dry run, and a rejected policy file.
fn exercised_daemon() -> (Daemon, Scratch) {
    let dir = scratch("deploy-metrics");
    let file = dir.join("policies.toml");
    std::fs::write(&file, "[application]\nabsolute_timeout = 3600\n").unwrap();
    let d = Daemon::start(&[
        "--policy-file",
        file.to_str().unwrap(),
        "--max-sessions",
        "3",
    ]);
    let mut tokens = Vec::new();
    for i in 0..3 {
        let r = d.call(
            "POST",
            "/v1/sessions",
            Some(&format!(r#"{{"user_id": "u{i}", "org_id": "acme"}}"#)),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        tokens.push(r.json()["token"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        d.call("POST", "/v1/sessions", Some(r#"{"user_id": "x"}"#))
            .status,
        503
    );
    let body = format!(r#"{{"token": "{}"}}"#, tokens[0]);
    d.call("POST", "/v1/sessions/validate", Some(&body));
    d.call("POST", "/v1/sessions/touch", Some(&body));
    d.call("POST", "/v1/sessions/revoke", Some(&body));
    d.call(
        "PUT",
        "/v1/orgs/acme/policy?dry_run=true",
        Some(r#"{"source": "CUSTOM", "absolute_timeout": 1}"#),
    );
    // A 2 s absolute timeout: re-applied at once, then the reaper evicts both at their deadline.
    std::fs::write(
        &file,
        "[application]\nabsolute_timeout = 3600\n\n[orgs.acme]\nsource = \"CUSTOM\"\nabsolute_timeout = 2\n",
    )
    .unwrap();
    assert_eq!(d.call("POST", "/v1/policy/reload", None).status, 200);
    eventually(10, "evictions by the reaper", || {
        d.metric("sessiond_sessions_expired_total{reason=\"absolute\"}") >= 2.0
    });
    std::fs::write(&file, "[application]\nabsolute_timeout = 0\n").unwrap();
    assert_eq!(d.call("POST", "/v1/policy/reload", None).status, 422);
    (d, dir)
}

/// Metric family names in a scrape (`# TYPE` lines), with the series names of histograms.
pub(crate) fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let (Some(name), Some(kind)) = (it.next(), it.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `sessiond_...` identifier in `text`.
pub(crate) fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sessiond_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_and_alerts_query_only_metrics_the_daemon_exports_and_promtool_lints_clean() {
    let (d, _dir) = exercised_daemon();
    let scrape = d.call("GET", "/metrics", None).body;
    let have = exported(&scrape);
    assert!(
        have.contains("sessiond_expiry_lag_seconds_bucket"),
        "{scrape}"
    );

    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/sessiond.json")).unwrap())
            .expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("every panel has targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("a PromQL expr"));
            exprs.push('\n');
        }
    }
    exprs.push_str(&dash["templating"].to_string());
    let used = referenced(&exprs);
    for want in [
        "sessiond_sessions_active",
        "sessiond_validations_total",
        "sessiond_sessions_expired_total",
        "sessiond_http_request_duration_seconds_bucket",
        "sessiond_expiry_lag_seconds_bucket",
    ] {
        assert!(used.contains(want), "the dashboard lacks {want}");
    }
    let missing: Vec<_> = used.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the daemon does not export: {missing:?}"
    );

    let rules = std::fs::read_to_string(deploy("prometheus/sessiond-rules.yml")).unwrap();
    // A single node exports no cluster metrics: tests/cluster.rs checks those rules against a
    // cluster node's scrape.
    let missing: Vec<_> = referenced(&rules)
        .into_iter()
        .filter(|m| !have.contains(m) && !m.starts_with("sessiond_cluster_"))
        .collect();
    assert!(
        missing.is_empty(),
        "the alert rules use metrics the daemon does not export: {missing:?}"
    );

    if let Some(promtool) = tool("promtool") {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.trim().is_empty(),
            "promtool check metrics complains:\n{text}"
        );
    }
}

#[test]
fn a_real_prometheus_reads_the_active_session_count_the_api_created() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let d = Daemon::start(&[]);
    for i in 0..7 {
        let r = d.call(
            "POST",
            "/v1/sessions",
            Some(&format!(r#"{{"user_id": "u{i}"}}"#)),
        );
        assert_eq!(r.status, 201);
    }
    let dir = scratch("prometheus");
    let conf = std::fs::read_to_string(deploy("prometheus/prometheus.yml"))
        .unwrap()
        .replace("127.0.0.1:8080", &d.addr.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s");
    std::fs::write(dir.join("prometheus.yml"), conf).unwrap();
    std::fs::copy(
        deploy("prometheus/sessiond-rules.yml"),
        dir.join("sessiond-rules.yml"),
    )
    .unwrap();
    let port = free_port();
    let mut server = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut last = String::new();
    let found = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        if std::net::TcpStream::connect(addr).is_err() {
            return false;
        }
        let r = request(
            addr,
            "GET",
            "/api/v1/query?query=sessiond_sessions_active",
            &[],
            None,
        );
        last = r.body.clone();
        let j: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        j["data"]["result"][0]["value"][1] == "7"
    });
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        found,
        "Prometheus never read sessiond_sessions_active = 7; last answer: {last}"
    );
}

#[test]
fn kubernetes_manifests_pass_the_schemas_and_fit_together() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let out = run_ok(Command::new(validate).arg("--strict").args(&files));
    // Every object but the ServiceMonitor (a CRD the schemas lack) passed against the schemas.
    for kind in [
        "configmap/sessiond-policies",
        "service/sessiond",
        "statefulset/sessiond",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{out}"
        );
    }
    // Cross-references, and the ConfigMap's policy file parsed by sessiond's own parser.
    let scratch_dir = scratch("k8s");
    let policies = scratch_dir.join("policies.toml");
    run_ok(
        Command::new("python3")
            .arg(dir.join("check.py"))
            .arg("--policies-out")
            .arg(&policies),
    );
    let text = std::fs::read_to_string(&policies).unwrap();
    let (app, _) =
        sessiond::policy_source::parse_policy_file(&text, &sessiond::policy::DEFAULT_POLICY)
            .expect("the ConfigMap's policies.toml is valid");
    assert_eq!(app.absolute_timeout_secs, 24 * 3600);
}

#[test]
fn kubernetes_cluster_manifests_pass_the_schemas_and_fit_together() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let dir = deploy("kubernetes/cluster");
    let files = [dir.join("statefulset.yaml"), dir.join("pdb.yaml")];
    let out = run_ok(Command::new(validate).arg("--strict").args(&files));
    for kind in ["statefulset/sessiond", "poddisruptionbudget/sessiond"] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{out}"
        );
    }
    run_ok(
        Command::new("python3")
            .arg(deploy("kubernetes").join("check.py"))
            .arg("--cluster"),
    );
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = scratch("systemd");
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(deploy("systemd/sessiond.service"))
        .unwrap()
        .replace("/usr/local/bin/sessiond", env!("CARGO_BIN_EXE_sessiond"));
    for needed in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=sessiond",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let path = dir.join("sessiond.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    // Unknown or misspelt directives are only warnings: fail on any line about our unit.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sessiond.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn the_health_probe_follows_readiness() {
    let d = Daemon::start(&[]);
    let probe = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(["--probe", "--listen", addr])
            .output()
            .unwrap()
    };
    let out = probe(&d.addr.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = d.addr.to_string();
    let _ = d.terminate();
    let out = probe(&addr);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not ready"));
}

/// A config file edited into an invalid one while the daemon runs (here a bad `shards` and an
/// unknown key) does not fail the health check: the probe reads only `listen` from it.
#[test]
fn the_health_probe_reads_only_the_listen_address_of_the_config_file() {
    let d = Daemon::start(&[]);
    let dir = scratch("probe-config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sessiond.toml");
    std::fs::write(
        &file,
        format!("listen = \"{}\"\nshards = 3\nshardz = 4\n", d.addr),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(args)
            .env_remove("SESSIOND_LISTEN")
            .output()
            .unwrap()
    };
    let config = file.to_str().unwrap();
    // The daemon would refuse to start on it...
    let out = run(&["--config", config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shards"));
    // ...and the probe of the one running answers ready.
    let out = run(&["--config", config, "--probe"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
