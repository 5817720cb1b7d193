//! One keep-alive connection per worker, to sessiond (HTTP/1.1) or to Redis (RESP2), both by
//! hand: a few requests of known shape do not justify a client crate, and the generator's own
//! CPU is taken from the server it shares the machine with. The operations of the mix are
//! expressed for each.
//!
//! Invariants:
//! 1. One request in flight per connection; an answer is read whole (sessiond's always carry
//!    `Content-Length` or no body) before the next request is written.
//! 2. A request is a success only when its answer says so: the expected status, and for
//!    validate and touch a body that begins `{"valid":true`; a Redis GET of a key the pool
//!    holds must find it. Anything else is a `Failure` of a named kind, counted by the run.
//! 3. An answer this code does not understand (no `Content-Length`, a head over its bound) is
//!    an I/O failure, never guessed at.
//! 4. The hot operations build nothing per request: the request is written from one reused
//!    buffer, from slices handed over.

use axum::body::Bytes;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// Where a target listens: a TCP address, or a Unix domain socket's path (sessiond's
/// `--listen unix:PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Addr {
    /// `unix:PATH`, or a socket address such as `127.0.0.1:8080`.
    pub fn parse(s: &str) -> Option<Addr> {
        match s.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => Some(Addr::Unix(p.into())),
            Some(_) => None,
            None => s.parse().ok().map(Addr::Tcp),
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected stream of either kind; one indirect call per read or write costs nothing
/// beside the syscall it makes.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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
    stream: Box<dyn Io>,
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
    pub async fn connect(addr: &Addr) -> Result<HttpConn, Failure> {
        let (stream, host): (Box<dyn Io>, String) = match addr {
            Addr::Tcp(a) => {
                let s = TcpStream::connect(a).await.map_err(io)?;
                s.set_nodelay(true).map_err(io)?;
                (Box::new(s), a.to_string())
            }
            // What nginx sends to a `unix:` upstream; sessiond without API keys answers only a
            // local host name (its DNS-rebinding guard).
            Addr::Unix(p) => (
                Box::new(UnixStream::connect(p).await.map_err(io)?),
                "localhost".into(),
            ),
        };
        Ok(HttpConn {
            stream,
            host,
            out: Vec::with_capacity(512),
            inp: Vec::with_capacity(4096),
            closing: false,
        })
    }

    /// Sends one request; returns the status and body. `head` is written verbatim after the
    /// `host` line (whole header lines, each ending in CRLF) and `body` is the concatenation of
    /// its parts: the hot operations build nothing per request, they hand over slices.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        head: &[&str],
        body: Option<&[&str]>,
    ) -> Result<(u16, Bytes), Failure> {
        if self.closing {
            return Err(Failure::Io("connection closed by the server".into()));
        }
        let o = &mut self.out;
        o.clear();
        for part in [method, " ", path, " HTTP/1.1\r\nhost: ", &self.host, "\r\n"]
            .into_iter()
            .chain(head.iter().copied())
        {
            o.extend_from_slice(part.as_bytes());
        }
        match body {
            Some(parts) => {
                let len = parts.iter().map(|p| p.len()).sum::<usize>();
                o.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
                write!(o, "{len}").map_err(io)?;
                o.extend_from_slice(b"\r\n\r\n");
                for p in parts {
                    o.extend_from_slice(p.as_bytes());
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
            if let Some(end) = head_end(&self.inp) {
                break end;
            }
            if self.inp.len() > MAX_HEAD {
                return Err(Failure::Io(format!("answer head over {MAX_HEAD} bytes")));
            }
            self.fill().await?;
        };
        // On bytes, looking closer only at lines that can be one of the three headers read:
        // the answers of `/v1/auth` carry four more header lines than `/healthz`, and a
        // `str::split("\r\n")` over them cost the generator ~1,800 instructions per answer
        // (callgrind), which the co-located server then did not get.
        let head = &self.inp[..head_end - 2];
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .filter(|c| c.iter().all(u8::is_ascii_digit))
            .map(|c| c.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
            .ok_or_else(|| {
                Failure::Io(format!(
                    "bad status line {:?}",
                    String::from_utf8_lossy(status_line)
                ))
            })?;
        let mut length = None;
        for line in lines.filter(|l| matches!(l.first(), Some(b'c' | b'C' | b't' | b'T'))) {
            let bad = || {
                Failure::Io(format!(
                    "bad header line {:?}",
                    String::from_utf8_lossy(line)
                ))
            };
            let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<usize>().ok())
                        .ok_or_else(bad)?,
                );
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                return Err(Failure::Io(format!(
                    "transfer-encoding {:?}: the load generator reads Content-Length bodies only",
                    String::from_utf8_lossy(value)
                )));
            } else if name.eq_ignore_ascii_case(b"connection")
                && value.eq_ignore_ascii_case(b"close")
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
        let token = token.unwrap_or("");
        let tok: &[&str] = &[r#"{"token": ""#, token, r#""}"#];
        match op {
            Op::Validate | Op::Touch => {
                let path = if op == Op::Validate {
                    "/v1/sessions/validate"
                } else {
                    "/v1/sessions/touch"
                };
                let (s, b) = self.send("POST", path, &[], Some(tok)).await?;
                expect(s, 200)?;
                if !b.starts_with(br#"{"valid":true"#) {
                    return Err(Failure::NotValid);
                }
                Ok(None)
            }
            Op::Create => {
                let body = format!(r#"{{"user_id": "{user}", "org_id": "{org}"}}"#);
                let (s, b) = self
                    .send("POST", "/v1/sessions", &[], Some(&[&body]))
                    .await?;
                expect(s, 201)?;
                let j: serde_json::Value = serde_json::from_slice(&b).map_err(io)?;
                Ok(j["token"].as_str().map(str::to_owned))
            }
            Op::Revoke => {
                let (s, _) = self
                    .send("POST", "/v1/sessions/revoke", &[], Some(tok))
                    .await?;
                expect(s, 204).map(|_| None)
            }
            Op::Auth => {
                let cookie = ["cookie: session=", token, "\r\n"];
                let (s, _) = self.send("GET", "/v1/auth", &cookie, None).await?;
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
    pub async fn connect(addr: &Addr) -> Result<RedisConn, Failure> {
        let Addr::Tcp(addr) = addr else {
            return Err(Failure::Io(format!(
                "{addr}: Redis is reached over TCP here"
            )));
        };
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
/// Where an answer's head ends (just past its blank line), if it is all there: visits the
/// line feeds only, where `windows(4)` compared four bytes at every position.
fn head_end(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = b[from..].iter().position(|&c| c == b'\n') {
        let lf = from + p;
        if lf >= 1 && b[lf - 1] == b'\r' && b[lf + 1..].starts_with(b"\r\n") {
            return Some(lf + 3);
        }
        from = lf + 1;
    }
    None
}
