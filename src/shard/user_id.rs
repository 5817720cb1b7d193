//! User ids packed into the record's 16 user bytes: the shapes identity providers hand out
//! (a UUID, `prefix + hex`, `prefix + decimal`) stored as a 128-bit value plus a per-shard
//! **shape** (kind, case, digit count, prefix) that says how the value reads back as text.
//!
//! Packers ([`pack`], [`unpack`]):
//! - **UUID**: the last 36 bytes are `8-4-4-4-12` hex with the dashes in place, the letters all
//!   lower- or all upper-case (none at all counts as lower); the 32 nibbles are the value.
//! - **hex**: otherwise, the longest run of hex digits at the end, 8 to 32 of them, with at least
//!   one letter, the letters all of one case (Kinde `kp_` + 32 hex, Auth0 `auth0|` + 24 hex).
//! - **decimal**: a run of 8 to 38 decimal digits at the end (Scalekit `usr_` + 18 digits,
//!   Google's 21 digits); the last 19 digits are the value's low 64 bits, those before them
//!   its high 64 bits, so reading back needs no 128-bit division.
//! - The **prefix** is what comes before, at most [`MAX_PREFIX`] bytes of any text.
//!
//! The digit count is part of the shape, so leading zeros read back; the case is part of it, so
//! does the case. Anything else (mixed case, too short or too long a run, a longer prefix, an
//! e-mail address) does not pack and keeps the text path (inline up to 16 bytes, else the
//! shard's side table); so does any id of at most 16 bytes, which fits inline as text anyway.
//!
//! Shapes are interned per shard in [`Shapes`], at most [`MAX_SHAPES`] at once, each counted by
//! the live records that use it and freed when none does. A shard never holds more than that
//! however many shapes its users come in; when the table is full an id of a new shape keeps the
//! text path (it costs memory, never correctness). No global table, no lock beyond the shard's.
//!
//! Invariants:
//! 1. `unpack(pack(s)) == s`, byte for byte, for every `s` that packs; so a packed id is one
//!    value of one shape, and two ids are equal iff their packed forms are (same shape code, same
//!    value) — lists compare packed forms and never unpack to compare.
//! 2. A shape code names the same shape for as long as a live record uses it (its count is
//!    the number of such records, and only a count of zero frees it).
//! 3. Unpacking writes into a buffer on the stack ([`UserText`]): reading an id allocates
//!    nothing.

use compact_str::CompactString;
use std::ops::Deref;

/// Most shapes a shard holds at once (the record's 6-bit user code, less the two text codes).
pub(super) const MAX_SHAPES: usize = 62;
/// Longest prefix before the packed part, in bytes.
pub(super) const MAX_PREFIX: usize = 16;
/// Fewest digits a hex or decimal run must have to pack (shorter ones gain little and would
/// make a shape of every id whose text merely ends in a few digits).
const MIN_RUN: usize = 8;
const MAX_HEX: usize = 32;
const MAX_DEC: usize = 38;
const UUID_LEN: usize = 36;
/// The longest text an id unpacks to: prefix plus 38 digits.
const MAX_TEXT: usize = MAX_PREFIX + MAX_DEC;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Uuid,
    Hex,
    Dec,
}

/// How the packed part reads back: its kind, its case (hex letters) and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Form {
    pub(super) kind: Kind,
    pub(super) upper: bool,
    pub(super) len: u8,
}

/// An id packed: its form, its prefix (borrowed from the id) and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Packed<'a> {
    pub(super) form: Form,
    pub(super) prefix: &'a str,
    pub(super) value: u128,
}

/// Packs `s` if it has one of the shapes above (see the module doc).
pub(super) fn pack(s: &str) -> Option<Packed<'_>> {
    let b = s.as_bytes();
    if b.len() >= UUID_LEN {
        let cut = b.len() - UUID_LEN;
        if cut <= MAX_PREFIX
            && s.is_char_boundary(cut)
            && let Some((value, upper)) = parse_uuid(&b[cut..])
        {
            return Some(Packed {
                form: Form {
                    kind: Kind::Uuid,
                    upper,
                    len: UUID_LEN as u8,
                },
                prefix: &s[..cut],
                value,
            });
        }
    }
    let run = b.iter().rev().take_while(|c| c.is_ascii_hexdigit()).count();
    let cut = b.len() - run;
    if run < MIN_RUN || cut > MAX_PREFIX {
        return None;
    }
    let digits = &b[cut..];
    let (kind, upper, value) = if digits.iter().all(u8::is_ascii_digit) {
        if run > MAX_DEC {
            return None;
        }
        let split = run.saturating_sub(19);
        let (hi, lo) = (dec(&digits[..split]), dec(&digits[split..]));
        (Kind::Dec, false, (u128::from(hi) << 64) | u128::from(lo))
    } else {
        let lower = digits.iter().any(|c| c.is_ascii_lowercase());
        let upper = digits.iter().any(|c| c.is_ascii_uppercase());
        if run > MAX_HEX || (lower && upper) {
            return None;
        }
        (Kind::Hex, upper, hex(digits))
    };
    Some(Packed {
        form: Form {
            kind,
            upper,
            len: run as u8,
        },
        prefix: &s[..cut],
        value,
    })
}

/// The value and case of a canonical UUID's 36 bytes.
fn parse_uuid(b: &[u8]) -> Option<(u128, bool)> {
    let (mut value, mut lower, mut upper) = (0u128, false, false);
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        value = (value << 4) | u128::from(nibble(c)?);
        lower |= c.is_ascii_lowercase();
        upper |= c.is_ascii_uppercase();
    }
    (!(lower && upper)).then_some((value, upper))
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Hex digits (at most 32, checked by the caller) as a number.
fn hex(b: &[u8]) -> u128 {
    b.iter()
        .fold(0, |v, &c| (v << 4) | u128::from(nibble(c).unwrap_or(0)))
}

/// Decimal digits (at most 19, so below 10^19 < 2^64) as a number.
fn dec(b: &[u8]) -> u64 {
    b.iter().fold(0, |v, &c| v * 10 + u64::from(c - b'0'))
}

/// A user id read from a record: borrowed text, or a packed id written out on the stack.
pub enum UserText<'a> {
    Str(&'a str),
    Buf { bytes: [u8; MAX_TEXT], len: u8 },
}

impl Deref for UserText<'_> {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        match self {
            UserText::Str(s) => s,
            UserText::Buf { bytes, len } => std::str::from_utf8(&bytes[..*len as usize])
                .expect("a prefix cut at a char boundary, then ASCII"),
        }
    }
}

/// Writes out the id that packed to `form`, `prefix` and `value` (invariant 1).
pub(super) fn unpack(form: Form, prefix: &str, value: u128) -> UserText<'static> {
    let mut bytes = [0u8; MAX_TEXT];
    let p = prefix.len();
    bytes[..p].copy_from_slice(prefix.as_bytes());
    let n = form.len as usize;
    let out = &mut bytes[p..p + n];
    let digits: &[u8; 16] = if form.upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    match form.kind {
        Kind::Hex => {
            for (i, c) in out.iter_mut().enumerate() {
                *c = digits[((value >> (4 * (n - 1 - i))) & 0xF) as usize];
            }
        }
        Kind::Uuid => {
            let mut shift = 128;
            for (i, c) in out.iter_mut().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    *c = b'-';
                } else {
                    shift -= 4;
                    *c = digits[((value >> shift) & 0xF) as usize];
                }
            }
        }
        Kind::Dec => {
            let (mut hi, mut lo) = ((value >> 64) as u64, value as u64);
            for (i, c) in out.iter_mut().rev().enumerate() {
                let v = if i < 19 { &mut lo } else { &mut hi };
                *c = b'0' + (*v % 10) as u8;
                *v /= 10;
            }
        }
    }
    UserText::Buf {
        bytes,
        len: (p + n) as u8,
    }
}

/// One interned shape: a form and a prefix, and how many live records use it.
#[derive(Debug)]
struct Shape {
    form: Form,
    prefix: CompactString,
    refs: u32,
}

/// A shard's shapes, by code `0..MAX_SHAPES` (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Shapes {
    slots: Vec<Option<Shape>>,
}

impl Shapes {
    /// The code of `p`'s shape, if the table has it.
    pub(super) fn find(&self, p: &Packed<'_>) -> Option<u8> {
        self.slots
            .iter()
            .position(|s| {
                s.as_ref()
                    .is_some_and(|s| s.form == p.form && s.prefix == p.prefix)
            })
            .map(|i| i as u8)
    }

    /// The code of `p`'s shape, added (with no user yet) if the table has room.
    pub(super) fn intern(&mut self, p: &Packed<'_>) -> Option<u8> {
        if let Some(code) = self.find(p) {
            return Some(code);
        }
        let shape = Some(Shape {
            form: p.form,
            prefix: CompactString::from(p.prefix),
            refs: 0,
        });
        if let Some(i) = self.slots.iter().position(Option::is_none) {
            self.slots[i] = shape;
            return Some(i as u8);
        }
        if self.slots.len() < MAX_SHAPES {
            self.slots.push(shape);
            return Some((self.slots.len() - 1) as u8);
        }
        None
    }

    /// One more live record uses `code`.
    pub(super) fn add_ref(&mut self, code: u8) {
        self.live_mut(code).refs += 1;
    }

    /// One record fewer uses `code`; the last one frees it (invariant 2).
    pub(super) fn release(&mut self, code: u8) {
        let s = self.live_mut(code);
        s.refs -= 1;
        if s.refs == 0 {
            self.slots[code as usize] = None;
        }
    }

    /// The id `value` of shape `code` reads back as.
    #[inline]
    pub(super) fn unpack(&self, code: u8, value: u128) -> UserText<'static> {
        let s = self.slots[code as usize]
            .as_ref()
            .expect("a live record's shape is live");
        unpack(s.form, &s.prefix, value)
    }

    /// How many live records use `code` (0 for a free code); for the self-check.
    pub(super) fn refs(&self, code: u8) -> u32 {
        self.slots
            .get(code as usize)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.refs)
    }

    /// Codes in use; for the self-check.
    pub(super) fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    fn live_mut(&mut self, code: u8) -> &mut Shape {
        self.slots[code as usize]
            .as_mut()
            .expect("a shape in use is live")
    }
}

#[cfg(test)]
pub(super) mod tests;
