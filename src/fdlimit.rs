//! The open-file limit: raised to its hard maximum at start, and the default connection cap
//! derived from it.
//!
//! Every HTTP connection is a file descriptor. A daemon left at a distribution's default soft
//! limit (1,024) can be locked up by a thousand idle connections; the hard limit (often 524,288
//! or more under systemd and in containers) is what the operator actually allows.
//!
//! Invariants:
//! 1. [`raise`] only ever raises the soft limit, to the hard one, never lowers either; when it
//!    cannot, the limits stay as they were and the caller is told why.
//! 2. [`default_max_connections`] leaves [`reserve`] descriptors free for everything that is
//!    not a connection (state files, journal, snapshot, lock, listener, each runtime's epoll
//!    and wake-up descriptors, the policy watcher), so that the cap is reached before the
//!    process runs out of descriptors and the acceptor refuses with a clear log line instead
//!    of `accept` failing with `EMFILE`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The open-file limits before and after [`raise`] (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub soft_before: Option<u64>,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (invariant 1).
pub fn raise() -> Result<Raised, (Raised, std::io::Error)> {
    let before = getrlimit(Resource::Nofile);
    let mut report = Raised {
        soft_before: before.current,
        soft: before.current,
        hard: before.maximum,
    };
    // An unlimited hard limit cannot be the soft one (the kernel refuses more than
    // fs.nr_open); leave it, and an already unlimited or already equal soft one, alone.
    let Some(hard) = before.maximum else {
        return Ok(report);
    };
    if before.current.is_none_or(|soft| soft >= hard) {
        return Ok(report);
    }
    let new = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => {
            report.soft = Some(hard);
            Ok(report)
        }
        Err(e) => Err((report, e.into())),
    }
}

/// The current soft open-file limit (`None`: unlimited).
pub fn soft() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Descriptors kept free for what is not a connection (invariant 2): 64 for files, plus 4
/// per HTTP worker (each has a runtime with an epoll and a wake-up descriptor), at most half
/// of the limit.
pub fn reserve(soft: u64, http_workers: usize) -> u64 {
    (64 + 4 * http_workers as u64).min(soft / 2)
}

/// The connection cap when none is configured: the soft limit less [`reserve`].
pub fn default_max_connections(soft: Option<u64>, http_workers: usize) -> usize {
    match soft {
        // No limit on descriptors: the cap only bounds memory (a few KiB per connection).
        None => 1 << 20,
        Some(s) => usize::try_from(s - reserve(s, http_workers))
            .unwrap_or(usize::MAX)
            .max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_files() {
        assert_eq!(default_max_connections(Some(1_024), 4), 1_024 - 80);
        assert_eq!(
            default_max_connections(Some(1_048_576), 16),
            1_048_576 - 128
        );
        // A tiny limit keeps half for connections.
        assert_eq!(default_max_connections(Some(128), 8), 64);
        assert_eq!(default_max_connections(Some(1), 1), 1);
        assert_eq!(default_max_connections(None, 4), 1 << 20);
    }

    /// Raising never lowers, and a second raise changes nothing.
    #[test]
    fn raise_reaches_the_hard_limit() {
        let r = raise().map_err(|(_, e)| e).unwrap();
        assert!(r.soft >= r.soft_before || r.soft.is_none());
        if let (Some(_), Some(hard)) = (r.soft_before, r.hard) {
            assert_eq!(r.soft, Some(hard));
            assert_eq!(soft(), Some(hard));
        }
        let again = raise().map_err(|(_, e)| e).unwrap();
        assert_eq!(again.soft_before, again.soft);
    }
}
