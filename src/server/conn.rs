//! A connection with its deadlines: the socket (TCP or Unix, the same code for either), as
//! hyper reads and writes it, following where the request stands from the bytes that pass.
//!
//! Invariants (numbered as in `server`):
//! 1. It holds its worker's [`OpenGuard`], so the count drops when it does, however it ends.
//! 3. It is closed (a `TimedOut` read) when a request's head has not arrived in full
//!    `header_read_timeout` after its first byte (a new connection: after it was accepted),
//!    or when no request has started `keepalive_timeout` after the last answer; a request
//!    whose head has arrived is never cut.
//! 6. Per read or write: at most one relaxed load and one clock read; the timer is re-armed
//!    only when it fires or a deadline moves earlier.
//! 13. An answer's first write waits once at the worker's write gate (`gate`), so that the
//!     answers of one pass go out together; the writes after it (a long answer's) do not.

use super::Limits;
use super::accept::OpenGuard;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Where a connection stands, as far as its deadlines go (invariant 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request's head is awaited or arriving: `header_read_timeout`.
    Head,
    /// A request's head has arrived and its answer is not written yet: no deadline.
    Busy,
    /// An answer was written and no byte of the next request has come: `keepalive_timeout`.
    Idle,
}

/// A connection that keeps its worker's count right (invariant 1) and its deadlines
/// (invariant 3).
///
/// The phase is followed from the bytes that pass: a read that brings bytes while idle starts
/// a head, a write (the answer) ends the request, and a changed count of request heads (from
/// [`Service`]) means a head was parsed. Deadlines are only checked where they matter, when a
/// read finds nothing to read.
pub(super) struct Conn<S> {
    io: S,
    _guard: OpenGuard,
    heads: Arc<AtomicU32>,
    /// The count of heads when the phase was last followed.
    seen: u32,
    phase: Phase,
    /// When the phase's clock started; `None` until it is first needed.
    since: Option<Instant>,
    /// Fires at or before the current deadline (moved later only when it fires).
    timer: Pin<Box<Sleep>>,
    limits: Limits,
    /// The answer being written has waited at the write gate; reset when the next request
    /// starts after an answer (so bytes that arrive while one is written cannot hold it twice).
    gated: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(io: S, guard: OpenGuard, heads: Arc<AtomicU32>, l: Limits) -> Conn<S> {
        let now = Instant::now();
        Conn {
            io,
            _guard: guard,
            heads,
            seen: 0,
            phase: Phase::Head,
            since: Some(now),
            timer: Box::pin(tokio::time::sleep_until(now + l.header_read_timeout)),
            limits: l,
            gated: false,
        }
    }

    /// A read found nothing: `Pending`, or the error that ends the connection when its
    /// deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let heads = self.heads.load(Ordering::Relaxed);
        if heads != self.seen {
            self.seen = heads;
            self.phase = Phase::Busy;
        }
        let (limit, phase) = match self.phase {
            Phase::Busy => return Poll::Pending,
            Phase::Head => (self.limits.header_read_timeout, "header"),
            Phase::Idle => (self.limits.keepalive_timeout, "idle"),
        };
        let deadline = *self.since.get_or_insert_with(Instant::now) + limit;
        if self.arm(cx, deadline).is_pending() {
            return Poll::Pending;
        }
        metrics::counter!(crate::metrics::HTTP_CONNECTIONS_TIMED_OUT, "phase" => phase)
            .increment(1);
        tracing::debug!(
            phase,
            timeout_secs = limit.as_secs_f64(),
            "closing a connection: {}",
            if phase == "header" {
                "a request's head did not arrive in time"
            } else {
                "idle keep-alive timeout"
            }
        );
        Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Makes the timer wake this task at or before `deadline`; `Ready` once it has passed.
    fn arm(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // It fired for an earlier deadline (a request came since): re-arm.
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Whether this write waits at the worker's write gate: an answer's first does, once
    /// (invariant 13).
    fn hold(&mut self, cx: &mut Context<'_>) -> bool {
        if self.gated || !super::gate::hold(cx.waker()) {
            return false;
        }
        self.gated = true;
        true
    }

    /// Bytes of an answer went out: the request is over, and the keep-alive clock starts.
    /// The timer is armed here, not at the next read: hyper registered its interest in
    /// reading before it wrote, and may not read again until something wakes it.
    fn answered(&mut self, cx: &mut Context<'_>) {
        self.phase = Phase::Idle;
        self.seen = self.heads.load(Ordering::Relaxed);
        let now = Instant::now();
        self.since = Some(now);
        let _ = self.arm(cx, now + self.limits.keepalive_timeout);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending => self.poll_deadline(cx),
            Poll::Ready(Ok(())) => {
                if self.phase == Phase::Idle && buf.filled().len() > before {
                    self.phase = Phase::Head;
                    self.since = None;
                    self.gated = false;
                }
                Poll::Ready(Ok(()))
            }
            err => err,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.hold(cx) {
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.answered(cx);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.hold(cx) {
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.answered(cx);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
