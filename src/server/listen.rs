//! Where the daemon listens: a TCP address, or a Unix domain socket (`unix:PATH`) for a
//! gateway on the same host (nginx `proxy_pass http://unix:/run/sessiond.sock:`), and the
//! socket file's life from bind to stop.
//!
//! Invariants (numbered as in `server`, this file's own from 7):
//! 7. `unix:PATH` is a non-empty path of at most [`MAX_UNIX_PATH`] bytes (the kernel's
//!    `sun_path`); anything else that is not a socket address is a configuration error.
//! 8. A file already at PATH is removed at start only when it is a socket nothing accepts
//!    connections on (a connect is refused): a live one fails the start ([`BindError::InUse`]),
//!    and a file that is not a socket is never removed ([`BindError::NotASocket`]).
//! 9. No client can connect before the socket has its mode: it is bound under a temporary name
//!    in the same directory, given its mode, then renamed onto PATH.
//! 10. At a clean stop ([`SocketFile`] dropped) PATH is removed only while it is still this
//!    daemon's socket (same device, inode and change time: file systems reuse inode numbers
//!    at once), so a successor's socket is never removed. A socket whose mode or owner was
//!    changed by hand since is left, and removed as stale at the next start.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// The socket file's mode when none is given: owner and group read and write.
pub const DEFAULT_UNIX_MODE: u32 = 0o660;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// `unix:PATH` or a socket address such as `127.0.0.1:8080` (invariant 7).
    pub fn parse(s: &str) -> Result<Listen, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "listen \"unix:\" has no path; give one like unix:/run/sessiond/sessiond.sock"
                        .into(),
                );
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(format!(
                    "listen {s:?}: a Unix socket path is at most {MAX_UNIX_PATH} bytes, this one is {}; \
                     use a shorter directory such as /run/sessiond",
                    path.len()
                ));
            }
            return Ok(Listen::Unix(path.into()));
        }
        s.parse().map(Listen::Tcp).map_err(|_| {
            format!(
                "listen {s:?} is not an address like 127.0.0.1:8080 or [::1]:8080, nor unix:/path/to/socket"
            )
        })
    }

    /// Whether only this host can connect: a loopback address or a Unix socket (whose file mode
    /// says who may).
    pub fn is_local(&self) -> bool {
        match self {
            Listen::Tcp(a) => a.ip().is_loopback(),
            Listen::Unix(_) => true,
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A socket file mode in octal, as `chmod` takes it: `0660`, `660` or `0o660`, at most `0777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| !digits.is_empty() && *m <= 0o777)
        .ok_or_else(|| {
            format!("listen_mode {s:?} is not an octal file mode up to 0777, like \"0660\"")
        })
}

/// Why the daemon cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {listen}")]
    Io {
        listen: Listen,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: another process accepts connections on this socket; stop it, or give sessiond another path",
        .0.display()
    )]
    InUse(PathBuf),
    #[error(
        "{}: exists and is not a socket; sessiond removes only a stale socket there, so move the file away or \
         give another path",
        .0.display()
    )]
    NotASocket(PathBuf),
}

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    /// What to put in the start-up log line: the bound address (the port chosen for `:0`), or
    /// the socket's path.
    pub fn describe(&self, listen: &Listen) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| listen.to_string(), |a| a.to_string()),
            Listener::Unix(_) => listen.to_string(),
        }
    }
}

/// The socket file of a Unix listener: removed when dropped, if still ours (invariant 10).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device, inode and change time (seconds, nanoseconds) of the file as it was placed.
    id: (u64, u64, i64, i64),
}

fn identity(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| identity(&m) == self.id);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the socket file");
        }
    }
}

/// Binds and listens (before any worker starts, so that an address in use fails start-up at
/// once). std sets `SO_REUSEADDR` on TCP, so a restart is not refused by old connections in
/// TIME_WAIT. A Unix socket gets `mode` (invariants 8, 9).
pub fn bind(listen: &Listen, mode: u32) -> Result<(Listener, Option<SocketFile>), BindError> {
    let io = |source| BindError::Io {
        listen: listen.clone(),
        source,
    };
    match listen {
        Listen::Tcp(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(io)?;
            l.set_nonblocking(true).map_err(io)?;
            Ok((Listener::Tcp(l), None))
        }
        Listen::Unix(path) => {
            remove_stale(path)?;
            let tmp = temporary_name(path);
            let _ = std::fs::remove_file(&tmp);
            let l = std::os::unix::net::UnixListener::bind(&tmp).map_err(io)?;
            let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .and_then(|()| std::fs::rename(&tmp, path))
                .and_then(|()| std::fs::symlink_metadata(path))
                .and_then(|m| l.set_nonblocking(true).map(|()| m));
            match placed {
                Ok(m) => Ok((
                    Listener::Unix(l),
                    Some(SocketFile {
                        path: path.clone(),
                        id: identity(&m),
                    }),
                )),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(io(e))
                }
            }
        }
    }
}

/// `PATH` made free for a new socket (invariant 8).
fn remove_stale(path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                listen: Listen::Unix(path.into()),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(path.into()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::InUse(path.into())),
        Err(_) => {
            tracing::info!(path = %path.display(), "removing a stale socket file (nothing listens on it)");
            std::fs::remove_file(path).map_err(|source| BindError::Io {
                listen: Listen::Unix(path.into()),
                source,
            })
        }
    }
}

/// A name beside `path` for the socket until it has its mode (invariant 9), short enough for
/// `sun_path` whenever `path` is.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(Default::default, |n| {
        let mut n = n.to_os_string();
        n.push(".tmp");
        n
    });
    let tmp = path.with_file_name(name);
    if tmp.as_os_str().len() <= MAX_UNIX_PATH {
        tmp
    } else {
        // Drop the end of the file name instead (the path is at most the limit).
        path.with_file_name(format!(".s{}", std::process::id() % 100_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sessiond-listen-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand_suffix() -> u64 {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).unwrap();
        u64::from_le_bytes(b)
    }

    #[test]
    fn parses_tcp_and_unix_and_says_what_is_wrong() {
        assert_eq!(
            Listen::parse("127.0.0.1:80").unwrap(),
            Listen::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            Listen::parse("unix:/run/s.sock").unwrap(),
            Listen::Unix("/run/s.sock".into())
        );
        assert!(Listen::parse("unix:").unwrap_err().contains("no path"));
        let long = format!("unix:/{}", "a".repeat(200));
        assert!(Listen::parse(&long).unwrap_err().contains("at most 107"));
        assert!(Listen::parse("localhost").unwrap_err().contains("unix:/"));
        assert!(Listen::parse("unix:/x").unwrap().is_local());
        assert!(!Listen::parse("0.0.0.0:1").unwrap().is_local());
        assert_eq!(Listen::parse("unix:/x").unwrap().to_string(), "unix:/x");
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        for bad in ["", "0o", "0888", "1777", "rw-rw----", "-1"] {
            assert!(parse_mode(bad).unwrap_err().contains("octal"), "{bad}");
        }
    }

    #[test]
    fn the_socket_gets_its_mode_and_is_removed_at_drop() {
        let d = dir();
        let path = d.join("s.sock");
        let listen = Listen::Unix(path.clone());
        let (l, file) = bind(&listen, 0o640).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        // Nothing is left under the temporary name.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        // A second daemon on the same path is refused, and the file stays.
        assert!(matches!(bind(&listen, 0o600), Err(BindError::InUse(_))));
        assert!(path.exists());
        drop(l);
        drop(file);
        assert!(!path.exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_plain_file_is_kept() {
        let d = dir();
        let path = d.join("s.sock");
        // A socket nobody listens on any more (its listener closed, the file left behind).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (_l, _file) = bind(&Listen::Unix(path.clone()), DEFAULT_UNIX_MODE).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());

        let plain = d.join("plain");
        std::fs::write(&plain, "keep me").unwrap();
        let e = bind(&Listen::Unix(plain.clone()), DEFAULT_UNIX_MODE).unwrap_err();
        assert!(matches!(e, BindError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "keep me");
        drop((_l, _file));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_successors_socket_is_not_removed() {
        let d = dir();
        let path = d.join("s.sock");
        let (l, file) = bind(&Listen::Unix(path.clone()), DEFAULT_UNIX_MODE).unwrap();
        // Another daemon replaced the file (say, after this one was thought dead).
        drop(l);
        std::fs::remove_file(&path).unwrap();
        // Change times are as coarse as the kernel's tick (a few ms); no successor comes
        // sooner than that after this daemon's file was placed.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(path.exists());
        std::fs::remove_dir_all(d).unwrap();
    }
}
