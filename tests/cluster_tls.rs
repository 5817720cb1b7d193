//! TLS to NATS, with a real `nats-server` that presents a certificate of a private CA and
//! verifies its clients' (`verify: true`), and certificates made by the `openssl` tool: nodes
//! given the CA and a client certificate replicate; a node without the client certificate is
//! refused by the server, so its sync creates are not answered as replicated.

use crate::common::nats::{find_nats, node_at};
use crate::common::{create, free_port, scratch, valid};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA (`ca.pem`), and `server.pem`/`server.key` (127.0.0.1) and
/// `client.pem`/`client.key` signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=sessiond test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-nodes"];
        req.extend_from_slice(&ec);
        req.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj"]);
        let subject = format!("/CN={name}");
        req.push(&subject);
        openssl(dir, &req);
        std::fs::write(
            dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
                 extendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "2",
                "-out", &pem, "-extfile", &ext,
            ],
        );
    }
}

/// A `nats-server` with JetStream that speaks only TLS and verifies clients; killed on drop.
struct TlsNats {
    child: std::process::Child,
    port: u16,
}

impl TlsNats {
    fn start(bin: &Path, dir: &Path) -> TlsNats {
        let port = free_port();
        let conf = dir.join("nats.conf");
        let at = |f: &str| format!("{:?}", dir.join(f).display().to_string());
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {}\n  sync_interval: always\n}}\n\
                 tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n}}\n",
                at("store"),
                at("server.pem"),
                at("server.key"),
                at("ca.pem"),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("nats.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsNats { child, port }
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_openssl() -> bool {
    let found = Command::new("openssl").arg("version").output().is_ok();
    if !found {
        crate::common::missing_tool("openssl", "apt-get install -y openssl");
    }
    found
}

#[test]
fn cluster_over_tls_with_a_private_ca_and_client_certificates() {
    let Some(bin) = find_nats() else { return };
    if !has_openssl() {
        return;
    }
    let dir = scratch("nats-tls");
    make_certificates(&dir);
    let nats = TlsNats::start(&bin, &dir);
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let file = |f: &str| -> String {
        let p: PathBuf = dir.join(f);
        p.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let tls = [
        "--cluster-tls-ca",
        ca.as_str(),
        "--cluster-tls-cert",
        cert.as_str(),
        "--cluster-tls-key",
        key.as_str(),
    ];
    let a = node_at(&url, "a", 1, &tls);
    let b = node_at(&url, "b", 1, &tls);
    let (token, _) = create(&a, &[], r#"{"user_id": "alice"}"#);
    assert!(valid(&b, &token), "a create on a is not valid on b");
    let (token, _) = create(&b, &[], r#"{"user_id": "bob"}"#);
    assert!(valid(&a, &token), "a create on b is not valid on a");

    // The CA alone: the server wants a client certificate and refuses the connection, so a
    // sync create is not answered as replicated (and the node says why in its log).
    let lone = node_at(
        &url,
        "lone",
        1,
        &[
            "--cluster-tls-ca",
            ca.as_str(),
            "--cluster-ready-timeout",
            "1s",
        ],
    );
    let r = lone.call("POST", "/v1/sessions", Some(r#"{"user_id": "carol"}"#));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.code(), "not_replicated");
    drop(nats);
}
