//! One keep-alive connection per worker, to sessiond (HTTP/1.1) or to Redis (RESP2), both by
//! hand: a few requests of known shape do not justify a client crate, and the generator's own
//! CPU is taken from the server it shares the machine with. The operations of the mix are
//! expressed for each.

use axum::body::Bytes;
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// An operation of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Validate,
    Touch,
    Create,
    Revoke,
    /// `GET /v1/auth` with the session cookie (forward-auth).
    Auth,
    /// `GET /healthz`: the daemon's trivial endpoint, the ceiling of its HTTP stack.
    Healthz,
}

pub const OPS: [Op; 6] = [
    Op::Validate,
    Op::Touch,
    Op::Create,
    Op::Revoke,
    Op::Auth,
    Op::Healthz,
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Validate => "validate",
            Op::Touch => "touch",
            Op::Create => "create",
            Op::Revoke => "revoke",
            Op::Auth => "auth",
            Op::Healthz => "healthz",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        OPS.into_iter().find(|o| o.name() == s)
    }
}

/// Why a request did not count as a success.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// Connection refused, reset, or a protocol error.
    Io(String),
    /// An HTTP status other than the expected one.
    Status(u16),
    /// A live session reported as not valid (or a Redis key missing).
    NotValid,
    /// An error reply from Redis.
    Redis(String),
}

impl Failure {
    pub fn kind(&self) -> String {
        match self {
            Failure::Io(_) => "io".into(),
            Failure::Status(s) => format!("http_{s}"),
            Failure::NotValid => "not_valid".into(),
            Failure::Redis(_) => "redis_error".into(),
        }
    }
}

fn io(e: impl std::fmt::Display) -> Failure {
    Failure::Io(e.to_string())
}

/// A 256-bit random token, base64url, as sessiond issues them (used as Redis keys).
pub fn random_token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("OS CSPRNG");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A connection to one target.
pub enum Conn {
    Http(HttpConn),
    Redis(RedisConn),
}

/// Idle timeout given to Redis keys (sessiond's default policy: 30 min idle).
pub const REDIS_IDLE_SECS: u64 = 1_800;

impl Conn {
    /// Runs one operation; returns the token of a created session.
    pub async fn run(
        &mut self,
        op: Op,
        token: Option<&str>,
        user: &str,
        org: &str,
    ) -> Result<Option<String>, Failure> {
        match self {
            Conn::Http(c) => c.run(op, token, user, org).await,
            Conn::Redis(c) => c.run(op, token, user, org).await,
        }
    }
}

/// One HTTP/1.1 keep-alive connection, spoken by hand: the request is written from one reused
/// buffer and the answer read into another, with only the status, `Content-Length` and
/// `Connection` looked at. The generator shares the machine with the server it measures, so
/// every microsecond it spends is taken from the server: hyper's client (session 6 and before)
/// built a request `HeaderMap`, parsed every answer header into another (allocating each custom
/// name, like the four `X-...` headers of `/v1/auth`) and cost ~9 us of CPU per request, about
/// as much as the daemon itself. The answers it reads come from sessiond, which always sends
/// `Content-Length` (or no body at all); anything else is reported as an I/O failure rather
/// than guessed at.
pub struct HttpConn {
    stream: TcpStream,
    host: String,
    /// The request being written.
    out: Vec<u8>,
    /// The answer being read.
    inp: Vec<u8>,
    /// The server said `Connection: close`: the next request needs a new connection.
    closing: bool,
}

/// Refuse answers whose head is larger than this: not something sessiond sends.
const MAX_HEAD: usize = 64 * 1024;

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> Result<HttpConn, Failure> {
        let stream = TcpStream::connect(addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(HttpConn {
            stream,
            host: addr.to_string(),
            out: Vec::with_capacity(512),
            inp: Vec::with_capacity(4096),
            closing: false,
        })
    }

    /// Sends one request; returns the status and body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<(u16, Bytes), Failure> {
        if self.closing {
            return Err(Failure::Io("connection closed by the server".into()));
        }
        let o = &mut self.out;
        o.clear();
        for part in [method, " ", path, " HTTP/1.1\r\nhost: ", &self.host, "\r\n"] {
            o.extend_from_slice(part.as_bytes());
        }
        for (k, v) in headers {
            for part in [*k, ": ", *v, "\r\n"] {
                o.extend_from_slice(part.as_bytes());
            }
        }
        match &body {
            Some(b) => {
                let len = b.len().to_string();
                for part in [
                    "content-type: application/json\r\ncontent-length: ",
                    &len,
                    "\r\n\r\n",
                    b,
                ] {
                    o.extend_from_slice(part.as_bytes());
                }
            }
            None if method == "GET" => o.extend_from_slice(b"\r\n"),
            None => o.extend_from_slice(b"content-length: 0\r\n\r\n"),
        }
        self.stream.write_all(&self.out).await.map_err(io)?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> Result<(u16, Bytes), Failure> {
        // One request in flight: nothing of this answer was read with the previous one.
        self.inp.clear();
        let head_end = loop {
            if let Some(i) = find(&self.inp, b"\r\n\r\n") {
                break i + 4;
            }
            if self.inp.len() > MAX_HEAD {
                return Err(Failure::Io(format!("answer head over {MAX_HEAD} bytes")));
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.inp[..head_end])
            .map_err(|_| Failure::Io("answer head is not UTF-8".into()))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Failure::Io(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| Failure::Io(format!("bad header line {line:?}")))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| Failure::Io(format!("bad content-length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(Failure::Io(format!(
                    "transfer-encoding {value:?}: the load generator reads Content-Length bodies only"
                )));
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                self.closing = true;
            }
        }
        let length = match (length, status) {
            (Some(n), _) => n,
            (None, 100..=199 | 204 | 304) => 0,
            (None, _) => {
                return Err(Failure::Io(format!(
                    "answer {status} without content-length"
                )));
            }
        };
        while self.inp.len() < head_end + length {
            self.fill().await?;
        }
        if self.inp.len() > head_end + length {
            return Err(Failure::Io(
                "bytes after the answer to the one request sent".into(),
            ));
        }
        let body = match length {
            0 => Bytes::new(),
            _ => Bytes::copy_from_slice(&self.inp[head_end..]),
        };
        Ok((status, body))
    }

    /// Reads what the socket has into `inp`.
    async fn fill(&mut self) -> Result<(), Failure> {
        self.inp.reserve(4096);
        match self.stream.read_buf(&mut self.inp).await.map_err(io)? {
            0 => Err(Failure::Io("connection closed".into())),
            _ => Ok(()),
        }
    }

    async fn run(
        &mut self,
        op: Op,
        token: Option<&str>,
        user: &str,
        org: &str,
    ) -> Result<Option<String>, Failure> {
        let tok = || format!(r#"{{"token": "{}"}}"#, token.unwrap_or(""));
        match op {
            Op::Validate | Op::Touch => {
                let path = if op == Op::Validate {
                    "/v1/sessions/validate"
                } else {
                    "/v1/sessions/touch"
                };
                let (s, b) = self.send("POST", path, &[], Some(tok())).await?;
                expect(s, 200)?;
                if !b.starts_with(br#"{"valid":true"#) {
                    return Err(Failure::NotValid);
                }
                Ok(None)
            }
            Op::Create => {
                let body = format!(r#"{{"user_id": "{user}", "org_id": "{org}"}}"#);
                let (s, b) = self.send("POST", "/v1/sessions", &[], Some(body)).await?;
                expect(s, 201)?;
                let j: serde_json::Value = serde_json::from_slice(&b).map_err(io)?;
                Ok(j["token"].as_str().map(str::to_owned))
            }
            Op::Revoke => {
                let (s, _) = self
                    .send("POST", "/v1/sessions/revoke", &[], Some(tok()))
                    .await?;
                expect(s, 204).map(|_| None)
            }
            Op::Auth => {
                let cookie = format!("session={}", token.unwrap_or(""));
                let (s, _) = self
                    .send("GET", "/v1/auth", &[("cookie", &cookie)], None)
                    .await?;
                expect(s, 200).map(|_| None)
            }
            Op::Healthz => {
                let (s, _) = self.send("GET", "/healthz", &[], None).await?;
                expect(s, 200).map(|_| None)
            }
        }
    }
}

fn expect(got: u16, want: u16) -> Result<(), Failure> {
    if got == want {
        Ok(())
    } else {
        Err(Failure::Status(got))
    }
}

/// A RESP2 reply.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

pub struct RedisConn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    buf: Vec<u8>,
}

impl RedisConn {
    pub async fn connect(addr: SocketAddr) -> Result<RedisConn, Failure> {
        let stream = TcpStream::connect(addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let (r, w) = stream.into_split();
        Ok(RedisConn {
            r: BufReader::new(r),
            w,
            buf: Vec::with_capacity(256),
        })
    }

    /// Sends one command and reads its reply.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, Failure> {
        self.buf.clear();
        self.buf
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.buf
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&self.buf).await.map_err(io)?;
        read_reply(&mut self.r).await
    }

    async fn run(
        &mut self,
        op: Op,
        token: Option<&str>,
        user: &str,
        org: &str,
    ) -> Result<Option<String>, Failure> {
        let key = |t: &str| format!("sess:{t}");
        let idle = REDIS_IDLE_SECS.to_string();
        match op {
            Op::Create => {
                let t = random_token();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let value = format!(
                    r#"{{"user_id":"{user}","org_id":"{org}","created_at":{now},"persistent":false}}"#
                );
                let r = self
                    .cmd(&[
                        b"SET",
                        key(&t).as_bytes(),
                        value.as_bytes(),
                        b"EX",
                        idle.as_bytes(),
                    ])
                    .await?;
                ok(r, |r| *r == Reply::Simple("OK".into()))?;
                Ok(Some(t))
            }
            Op::Validate | Op::Auth => {
                let r = self
                    .cmd(&[b"GET", key(token.unwrap_or("")).as_bytes()])
                    .await?;
                ok(r, |r| matches!(r, Reply::Bulk(Some(_))))?;
                Ok(None)
            }
            Op::Touch => {
                let r = self
                    .cmd(&[
                        b"GETEX",
                        key(token.unwrap_or("")).as_bytes(),
                        b"EX",
                        idle.as_bytes(),
                    ])
                    .await?;
                ok(r, |r| matches!(r, Reply::Bulk(Some(_))))?;
                Ok(None)
            }
            Op::Revoke => {
                let r = self
                    .cmd(&[b"DEL", key(token.unwrap_or("")).as_bytes()])
                    .await?;
                ok(r, |r| matches!(r, Reply::Int(_)))?;
                Ok(None)
            }
            Op::Healthz => {
                let r = self.cmd(&[b"PING"]).await?;
                ok(r, |r| *r == Reply::Simple("PONG".into()))?;
                Ok(None)
            }
        }
    }
}

fn ok(r: Reply, good: impl Fn(&Reply) -> bool) -> Result<(), Failure> {
    match r {
        Reply::Error(e) => Err(Failure::Redis(e)),
        r if good(&r) => Ok(()),
        _ => Err(Failure::NotValid),
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<String, Failure> {
    let mut line = String::new();
    if r.read_line(&mut line).await.map_err(io)? == 0 {
        return Err(Failure::Io("redis closed the connection".into()));
    }
    Ok(line.trim_end_matches("\r\n").to_owned())
}

/// Reads one RESP2 reply (arrays iteratively bounded by their declared length).
pub async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, Failure> {
    let line = read_line(r).await?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    let int = |s: &str| s.parse::<i64>().map_err(io);
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => Ok(Reply::Int(int(rest)?)),
        "$" => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut v = vec![0u8; n as usize + 2];
            r.read_exact(&mut v).await.map_err(io)?;
            v.truncate(n as usize);
            Ok(Reply::Bulk(Some(v)))
        }
        "*" => {
            let n = int(rest)?;
            let mut items = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n.max(0) {
                items.push(Box::pin(read_reply(r)).await?);
            }
            Ok(Reply::Array(items))
        }
        _ => Err(Failure::Io(format!("bad RESP line {line:?}"))),
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
