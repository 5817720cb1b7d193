//! The record format shared by the journal and the snapshot, and the reader that tells a torn
//! tail from real damage.
//!
//! A file is a 16-byte magic header followed by frames:
//!
//! ```text
//! [len: u32 LE][crc32: u32 LE][body: len bytes]      body = [kind: u8][payload]
//! ```
//!
//! Payloads (integers little-endian, strings as `u16` length + UTF-8 bytes):
//! - `CREATE`: id u128, created_ms u64, last_ms u64, user str, org (`u16::MAX` = none, else
//!   str), metadata count u8 + that many (key str, value str).
//! - `ACTIVITY`: id u128, last_ms u64.
//! - `REMOVE`: id u128, reason u8 (revoked 0, idle 1, absolute 2, displaced 3).
//! - `END`: count u64 (the snapshot's last frame: the number of `CREATE` frames before it).
//! - `NOT_BEFORE`: scope u8 (user 0, org 1), id str, before_ms u64: a user- or org-wide
//!   revocation as a time (`engine::marks`); in a cluster's stream and in snapshots (a
//!   snapshot keeps the marks in force), never in a journal.
//! - `STREAM_SEQ`: seq u64: the cluster stream sequence a snapshot reflects (every message up
//!   to it was applied before the walk); snapshots only.
//!
//! Invariants:
//! 1. **No token is ever written**: a session is known by its id, a hash of its token.
//! 2. Replay is idempotent: `CREATE` of a known id only moves its activity forward, `ACTIVITY`
//!    and `REMOVE` of an unknown id do nothing. A snapshot taken while the journal keeps growing
//!    plus the journal from the snapshot's start therefore rebuilds the exact state.
//! 3. A frame that runs past the end of the file, or a bad frame followed only by zero bytes
//!    (a crash between extending the file and writing it), is a **torn tail**; any other bad
//!    frame is **damage** at its offset.

use crate::session::{Metadata, RemoveReason, Saved, SavedRef, Scope};
use compact_str::CompactString;
use std::io::{self, Read};

/// Journal file header.
pub const JOURNAL_MAGIC: &[u8; 16] = b"sessiond-jrnl-1\n";
/// Snapshot file header.
pub const SNAPSHOT_MAGIC: &[u8; 16] = b"sessiond-snap-1\n";

/// Largest body a writer produces (ids are at most 256 bytes, metadata 1 KiB); anything larger
/// is damage.
pub const MAX_BODY: usize = 8 * 1024;

const CREATE: u8 = 1;
const ACTIVITY: u8 = 2;
const REMOVE: u8 = 3;
const END: u8 = 4;
const NOT_BEFORE: u8 = 5;
const STREAM_SEQ: u8 = 6;

/// The byte a `REMOVE` frame stores for `reason` (the reason is for the reader of a journal;
/// replay ignores it).
fn reason_code(reason: RemoveReason) -> u8 {
    match reason {
        RemoveReason::Revoked => 0,
        RemoveReason::Idle => 1,
        RemoveReason::Absolute => 2,
        RemoveReason::Displaced => 3,
    }
}

fn reason_of_code(b: u8) -> Option<RemoveReason> {
    Some(match b {
        0 => RemoveReason::Revoked,
        1 => RemoveReason::Idle,
        2 => RemoveReason::Absolute,
        3 => RemoveReason::Displaced,
        _ => return None,
    })
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Create(Saved),
    Activity {
        id: u128,
        last_ms: u64,
    },
    Remove {
        id: u128,
        reason: RemoveReason,
    },
    End {
        count: u64,
    },
    NotBefore {
        scope: Scope,
        id: CompactString,
        before_ms: u64,
    },
    StreamSeq {
        seq: u64,
    },
}

fn frame(buf: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    buf.push(kind);
    body(buf);
    let len = (buf.len() - start - 8) as u32;
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("ids and metadata are bounded far below 64 KiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Appends a `CREATE` frame.
pub fn put_create(
    buf: &mut Vec<u8>,
    id: u128,
    created_ms: u64,
    last_ms: u64,
    user: &str,
    org: Option<&str>,
    metadata: Option<&Metadata>,
) {
    frame(buf, CREATE, |b| {
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&created_ms.to_le_bytes());
        b.extend_from_slice(&last_ms.to_le_bytes());
        put_str(b, user);
        match org {
            None => b.extend_from_slice(&u16::MAX.to_le_bytes()),
            Some(o) => put_str(b, o),
        }
        let pairs = metadata.map_or(&[][..], |m| m.pairs());
        b.push(pairs.len() as u8);
        for (k, v) in pairs {
            put_str(b, k);
            put_str(b, v);
        }
    });
}

/// Appends a `CREATE` frame of `s`.
pub fn put_saved(buf: &mut Vec<u8>, s: SavedRef<'_>) {
    put_create(
        buf,
        s.id,
        s.created_ms,
        s.last_ms,
        s.user,
        s.org,
        s.metadata,
    );
}

/// Appends an `ACTIVITY` frame.
pub fn put_activity(buf: &mut Vec<u8>, id: u128, last_ms: u64) {
    frame(buf, ACTIVITY, |b| {
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&last_ms.to_le_bytes());
    });
}

/// Appends a `REMOVE` frame.
pub fn put_remove(buf: &mut Vec<u8>, id: u128, reason: RemoveReason) {
    frame(buf, REMOVE, |b| {
        b.extend_from_slice(&id.to_le_bytes());
        b.push(reason_code(reason));
    });
}

/// Appends a `NOT_BEFORE` frame.
pub fn put_not_before(buf: &mut Vec<u8>, scope: Scope, id: &str, before_ms: u64) {
    frame(buf, NOT_BEFORE, |b| {
        b.push(match scope {
            Scope::User => 0,
            Scope::Org => 1,
        });
        put_str(b, id);
        b.extend_from_slice(&before_ms.to_le_bytes());
    });
}

/// Appends a `STREAM_SEQ` frame.
pub fn put_stream_seq(buf: &mut Vec<u8>, seq: u64) {
    frame(buf, STREAM_SEQ, |b| b.extend_from_slice(&seq.to_le_bytes()));
}

/// Appends an `END` frame.
pub fn put_end(buf: &mut Vec<u8>, count: u64) {
    frame(buf, END, |b| b.extend_from_slice(&count.to_le_bytes()));
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn u128(&mut self) -> Option<u128> {
        self.take(16)
            .map(|b| u128::from_le_bytes(b.try_into().expect("16 bytes")))
    }
    fn str_of(&mut self, len: u16) -> Option<CompactString> {
        let b = self.take(len as usize)?;
        std::str::from_utf8(b).ok().map(CompactString::from)
    }
    fn str(&mut self) -> Option<CompactString> {
        let len = self.u16()?;
        self.str_of(len)
    }
}

/// A `CREATE` frame's payload.
fn create(c: &mut Cursor<'_>) -> Option<Saved> {
    let id = c.u128()?;
    let created_ms = c.u64()?;
    let last_ms = c.u64()?;
    let user = c.str()?;
    let org = match c.u16()? {
        u16::MAX => None,
        len => Some(c.str_of(len)?),
    };
    let n = c.u8()?;
    let mut pairs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        pairs.push((c.str()?.into_string(), c.str()?.into_string()));
    }
    let metadata = if pairs.is_empty() {
        None
    } else {
        Some(Metadata::new(pairs).ok()?)
    };
    Some(Saved {
        id,
        created_ms,
        last_ms,
        user,
        org,
        metadata,
    })
}

/// Decodes one body if it is a `CREATE` frame that parses; `None` otherwise (any other kind,
/// or one that does not parse: [`decode`] tells them apart).
pub fn decode_create(body: &[u8]) -> Option<Saved> {
    let mut c = Cursor(body);
    if c.u8()? != CREATE {
        return None;
    }
    let saved = create(&mut c)?;
    c.0.is_empty().then_some(saved)
}

/// Decodes one body (its checksum already checked); `None` if it does not parse.
pub fn decode(body: &[u8]) -> Option<Entry> {
    let mut c = Cursor(body);
    let entry = match c.u8()? {
        CREATE => Entry::Create(create(&mut c)?),
        ACTIVITY => Entry::Activity {
            id: c.u128()?,
            last_ms: c.u64()?,
        },
        REMOVE => Entry::Remove {
            id: c.u128()?,
            reason: reason_of_code(c.u8()?)?,
        },
        END => Entry::End { count: c.u64()? },
        STREAM_SEQ => Entry::StreamSeq { seq: c.u64()? },
        NOT_BEFORE => Entry::NotBefore {
            scope: match c.u8()? {
                0 => Scope::User,
                1 => Scope::Org,
                _ => return None,
            },
            id: c.str()?,
            before_ms: c.u64()?,
        },
        _ => return None,
    };
    c.0.is_empty().then_some(entry)
}

/// Decodes the frames of a whole buffer held in memory (a cluster message is the frames of one
/// batch, without a file header): each entry, or `Err(offset)` at the first frame that is cut
/// short, fails its checksum or does not parse (nothing after it is read).
pub fn decode_all(mut buf: &[u8]) -> impl Iterator<Item = Result<Entry, usize>> + '_ {
    let mut offset = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || buf.is_empty() {
            return None;
        }
        let entry = (|| {
            let head = buf.get(..8)?;
            let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as usize;
            let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
            if len > MAX_BODY {
                return None;
            }
            let body = buf.get(8..8 + len)?;
            if crc32fast::hash(body) != crc {
                return None;
            }
            let e = decode(body)?;
            buf = &buf[8 + len..];
            Some((e, 8 + len))
        })();
        match entry {
            Some((e, n)) => {
                offset += n;
                Some(Ok(e))
            }
            None => {
                failed = true;
                Some(Err(offset))
            }
        }
    })
}

/// What stopped a [`Reader`] before the end of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// An incomplete last frame (invariant 3): everything before `offset` is good.
    Torn { offset: u64 },
    /// A bad frame with data after it.
    Corrupt { offset: u64, reason: String },
}

impl Damage {
    pub fn offset(&self) -> u64 {
        match self {
            Damage::Torn { offset } | Damage::Corrupt { offset, .. } => *offset,
        }
    }
}

/// Reads frames from a file of known length, streaming: a frame is checked and decoded where
/// it lies in the reader's own buffer, never copied out first (start-up reads millions).
pub struct Reader<R> {
    inner: R,
    /// Offset in the file of `buf[at]`.
    pos: u64,
    len: u64,
    buf: Vec<u8>,
    /// Unread bytes are `buf[at..end]`.
    at: usize,
    end: usize,
}

/// Bytes a [`Reader`] asks of its source at once.
const READ_AHEAD: usize = 1 << 20;

impl<R: Read> Reader<R> {
    /// Checks the magic header; `Ok(None)` if the file is shorter than it (a file created just
    /// before a crash), `Err` with a reason if it is something else.
    pub fn open(mut inner: R, len: u64, magic: &[u8; 16]) -> io::Result<Result<Self, Damage>> {
        if len < magic.len() as u64 {
            return Ok(Err(Damage::Torn { offset: 0 }));
        }
        let mut head = [0u8; 16];
        inner.read_exact(&mut head)?;
        if &head != magic {
            return Ok(Err(Damage::Corrupt {
                offset: 0,
                reason: "not a sessiond file of this kind and version (bad header)".into(),
            }));
        }
        Ok(Ok(Reader {
            inner,
            pos: magic.len() as u64,
            len,
            buf: vec![0; READ_AHEAD + MAX_BODY + 8],
            at: 0,
            end: 0,
        }))
    }

    /// Offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Makes the next `n` bytes of the file (the caller knows they exist) readable at
    /// `buf[at..]`, reading ahead as far as the buffer and the file allow.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.end - self.at >= n {
            return Ok(());
        }
        self.buf.copy_within(self.at..self.end, 0);
        self.end -= self.at;
        self.at = 0;
        let in_file = (self.len - self.pos) as usize;
        let want = in_file.min(self.buf.len());
        while self.end < n {
            let got = self.inner.read(&mut self.buf[self.end..want])?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += got;
        }
        Ok(())
    }

    /// The next entry with its offset, `Ok(None)` at a clean end, or the damage found.
    pub fn read_next(&mut self) -> io::Result<Result<Option<(u64, Entry)>, Damage>> {
        self.read_next_with(decode)
    }

    /// The next frame, handed to `decode` where it lies (its checksum checked): what `decode`
    /// returns with the frame's offset, `Ok(None)` at a clean end, or the damage found. A frame
    /// `decode` answers `None` for is damage ("does not decode"). Start-up reads millions of
    /// sessions this way, each put where it goes by `decode` instead of passed back by value.
    pub fn read_next_with<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Option<T>,
    ) -> io::Result<Result<Option<(u64, T)>, Damage>> {
        let at = self.pos;
        let left = self.len - at;
        if left == 0 {
            return Ok(Ok(None));
        }
        if left < 8 {
            return Ok(Err(Damage::Torn { offset: at }));
        }
        self.fill(8)?;
        let head: [u8; 8] = self.buf[self.at..self.at + 8].try_into().expect("8");
        let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as u64;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
        if len == 0 || len > MAX_BODY as u64 {
            let zeros = head == [0; 8];
            return self.bad(8, zeros, format!("frame length {len} is out of range"));
        }
        if 8 + len > left {
            return Ok(Err(Damage::Torn { offset: at }));
        }
        let size = 8 + len as usize;
        self.fill(size)?;
        let body = &self.buf[self.at + 8..self.at + size];
        if crc32fast::hash(body) != crc {
            let zeros = head == [0; 8] && body.iter().all(|&b| b == 0);
            return self.bad(size as u64, zeros, "checksum mismatch".into());
        }
        let Some(decoded) = decode(body) else {
            return self.bad(size as u64, false, "frame does not decode".into());
        };
        self.at += size;
        self.pos += size as u64;
        Ok(Ok(Some((at, decoded))))
    }

    /// A bad frame at the current offset of which `consumed` bytes were read: torn if nothing
    /// but zeros follows (invariant 3), else corrupt.
    fn bad<T>(
        &mut self,
        consumed: u64,
        frame_is_zeros: bool,
        reason: String,
    ) -> io::Result<Result<Option<(u64, T)>, Damage>> {
        let at = self.pos;
        let rest_from = at + consumed;
        let mut only_zeros = frame_is_zeros;
        let mut left = self.len - rest_from;
        // What the buffer holds past the frame, then the rest of the file.
        let buffered = &self.buf[self.at + consumed as usize..self.end];
        only_zeros = only_zeros && buffered.iter().all(|&b| b == 0);
        left -= buffered.len() as u64;
        let mut chunk = [0u8; 64 * 1024];
        while only_zeros && left > 0 {
            let n = (left as usize).min(chunk.len());
            self.inner.read_exact(&mut chunk[..n])?;
            only_zeros = chunk[..n].iter().all(|&b| b == 0);
            left -= n as u64;
        }
        // A bad frame that ends exactly at the end of the file is the crash case too: its
        // header was written and its body only partly reached the disk.
        if only_zeros || rest_from == self.len {
            Ok(Err(Damage::Torn { offset: at }))
        } else {
            Ok(Err(Damage::Corrupt { offset: at, reason }))
        }
    }
}

#[cfg(test)]
mod tests;
