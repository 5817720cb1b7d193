//! A stand-in application behind a gateway, as `deploy/nginx/sessiond.conf` expects one: a tiny
//! HTTP/1.1 server (keep-alive, `Content-Length` bodies) on a thread of the test process.
//!
//! 1. `GET /login`: the login page; its body is `login page` and the request's head.
//! 2. `POST /login` (form `user`, `org`, `next`): creates the session with sessiond's
//!    `POST /v1/sessions` (gateway key), answers 303 with the returned `cookie` as `Set-Cookie`,
//!    to `next` when it is a local path (one leading `/`), else to `/`.
//! 3. `POST /logout`: revokes the cookie's token with `POST /v1/sessions/revoke`, answers 303 to
//!    `/login` with the `Set-Cookie` of sessiond's answer (the clearing cookie); without a
//!    cookie, only the redirect.
//! 4. `/static/...`, `/healthz`: public content.
//! 5. Anything else is a protected page: 200, its body `page` and the request's head, header
//!    names in lower case, one `name: value\r\n` line each, so a test sees what reached it.

use super::{GATEWAY_KEY, request};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Starts the application; it asks sessiond at `sessiond` with the tests' gateway key.
pub fn start(sessiond: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            std::thread::spawn(move || serve(stream, sessiond));
        }
    });
    addr
}

fn serve(stream: TcpStream, sessiond: SocketAddr) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut head = String::new();
        let mut length = 0;
        let mut cookie = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if lower.starts_with("cookie:") {
                cookie = line
                    .split_once(':')
                    .unwrap()
                    .1
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix("session="))
                    .map(str::to_owned);
            }
            head.push_str(&lower);
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body);
        let path = target.split('?').next().unwrap_or_default();
        let answer = match (method.as_str(), path) {
            ("GET", "/login") => ok(&format!("login page\r\n{head}")),
            ("POST", "/login") => login(sessiond, &body),
            ("POST", "/logout") => logout(sessiond, cookie.as_deref()),
            ("GET", "/healthz") => ok("ok"),
            (_, p) if p.starts_with("/static/") => ok("body {}"),
            _ => ok(&format!("page\r\n{head}")),
        };
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn see_other(location: &str, set_cookie: Option<&str>) -> String {
    let cookie = set_cookie.map_or(String::new(), |c| format!("Set-Cookie: {c}\r\n"));
    format!("HTTP/1.1 303 See Other\r\nLocation: {location}\r\n{cookie}Content-Length: 0\r\n\r\n")
}

fn login(sessiond: SocketAddr, form: &str) -> String {
    let field = |name: &str| {
        form.split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(form_decode)
            .unwrap_or_default()
    };
    let r = request(
        sessiond,
        "POST",
        "/v1/sessions",
        &[("X-API-Key", GATEWAY_KEY)],
        Some(&serde_json::json!({"user_id": field("user"), "org_id": field("org")}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let next = field("next");
    let local = next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\");
    see_other(if local { &next } else { "/" }, r.json()["cookie"].as_str())
}

fn logout(sessiond: SocketAddr, token: Option<&str>) -> String {
    let Some(token) = token else {
        return see_other("/login", None);
    };
    let r = request(
        sessiond,
        "POST",
        "/v1/sessions/revoke",
        &[("X-API-Key", GATEWAY_KEY)],
        Some(&serde_json::json!({ "token": token }).to_string()),
    );
    see_other("/login", r.header("set-cookie"))
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
pub fn form_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("a %XX escape"));
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).unwrap()
}
