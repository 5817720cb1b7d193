//! Session tokens (bearer secrets) and the public ids derived from them.
//!
//! Invariants:
//! 1. A token is 256 bits from the operating system's CSPRNG, written as 43 characters of
//!    unpadded base64url. It is returned once, by `create`, and never stored: the engine keeps
//!    only [`SessionId`] = the first 128 bits of SHA-256(token bytes), so a heap dump, snapshot or
//!    listing holds no usable credential.
//! 2. [`Token`] has no `Display` and a redacting `Debug`, so it cannot end up in a log line by
//!    accident; the only way to read it is [`Token::expose`].
//! 3. Ids are uniformly distributed (they are hash outputs an attacker cannot choose), so the
//!    engine may shard and hash on their bits directly without a keyed hasher.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use std::fmt;

/// Length of a token in its text form.
pub const TOKEN_LEN: usize = 43;

/// The base64url alphabet (RFC 4648, section 5).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Each byte's value as a base64url digit; `0xFF` for bytes outside the alphabet.
const DIGITS: [u8; 256] = {
    let mut t = [0xFF; 256];
    let mut i = 0;
    while i < 64 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// The 32 bytes of a token: exactly [`TOKEN_LEN`] base64url characters, unpadded, with the
/// two bits past the 256th zero (so one secret has one spelling). This runs on every request
/// that carries a token; the general-purpose decoder of the `base64` crate spent ~500
/// instructions on it (callgrind), this one a third of that. The unit tests hold it to the
/// same answers as `base64`'s `URL_SAFE_NO_PAD`, which still mints the tokens.
fn decode_token(t: &[u8]) -> Option<[u8; 32]> {
    let t: &[u8; TOKEN_LEN] = t.try_into().ok()?;
    let mut bad = 0u8;
    let mut digit = |c: u8| {
        let v = DIGITS[c as usize];
        bad |= v;
        u32::from(v)
    };
    let mut out = [0u8; 32];
    for (quad, three) in t.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let n = digit(quad[0]) << 18 | digit(quad[1]) << 12 | digit(quad[2]) << 6 | digit(quad[3]);
        three.copy_from_slice(&n.to_be_bytes()[1..]);
    }
    // The last 3 characters carry 18 bits: the last 2 bytes and 2 bits that must be zero.
    let n = digit(t[40]) << 12 | digit(t[41]) << 6 | digit(t[42]);
    out[30] = (n >> 10) as u8;
    out[31] = (n >> 2) as u8;
    (bad & 0x80 == 0 && n & 3 == 0).then_some(out)
}

/// A freshly minted bearer token. Deliberately not `Display`.
pub struct Token(String);

impl Token {
    /// Mints a token from the OS CSPRNG.
    pub fn generate() -> Result<Token, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Token(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The secret itself, for the one response that hands it out.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The public id of this token.
    pub fn id(&self) -> SessionId {
        SessionId::from_token(&self.0).expect("a generated token is well-formed")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The public, non-secret identity of a session: 128 bits of SHA-256 of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u128);

impl SessionId {
    /// Derives the id from a token's text form; `None` if it is not a well-formed token, so
    /// garbage is refused without touching the table. Takes bytes, so that a token found in a
    /// header needs no UTF-8 check first (anything not base64url is refused here anyway).
    #[inline]
    pub fn from_token(token: impl AsRef<[u8]>) -> Option<SessionId> {
        let raw = decode_token(token.as_ref())?;
        let digest = Sha256::digest(raw);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Some(SessionId(u128::from_be_bytes(id)))
    }

    /// Parses the 32-hex-digit form used in URLs and responses (either case).
    pub fn parse_hex(s: &str) -> Option<SessionId> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(SessionId)
    }

    /// Low 64 bits: the hash used inside a shard's table.
    #[inline]
    pub fn table_hash(self) -> u64 {
        self.0 as u64
    }

    /// High 64 bits: used to pick the shard, independent of [`Self::table_hash`].
    #[inline]
    pub fn shard_bits(self) -> u64 {
        (self.0 >> 64) as u64
    }
}

impl SessionId {
    /// The 32 lowercase hex digits, formatted on the stack (the request path's form).
    pub fn hex(self) -> HexId {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut b = [0u8; 32];
        for (i, byte) in self.0.to_be_bytes().iter().enumerate() {
            b[2 * i] = DIGITS[usize::from(byte >> 4)];
            b[2 * i + 1] = DIGITS[usize::from(byte & 0xF)];
        }
        HexId(b)
    }
}

/// A session id in hex, on the stack (see [`SessionId::hex`]).
#[derive(Clone, Copy)]
pub struct HexId([u8; 32]);

impl HexId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits")
    }
}

impl serde::Serialize for HexId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_base64url_chars_and_unique() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn id_is_sha256_prefix_of_token_bytes() {
        // 32 zero bytes encode to 43 'A's.
        let token = "A".repeat(43);
        let id = SessionId::from_token(&token).unwrap();
        // SHA-256 of 32 zero bytes = 66687aadf862bd776c8fc18b8e9f8e20...
        assert_eq!(id.to_string(), "66687aadf862bd776c8fc18b8e9f8e20");
        assert_eq!(SessionId(0xAB).to_string(), format!("{:032x}", 0xABu128));
        assert_eq!(SessionId(u128::MAX).hex().as_str(), "f".repeat(32));
        assert_eq!(SessionId::parse_hex(&id.to_string()), Some(id));
        assert_eq!(
            SessionId::parse_hex("66687AADF862BD776C8FC18B8E9F8E20"),
            Some(id)
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert!(SessionId::from_token("").is_none());
        assert!(SessionId::from_token("A".repeat(42)).is_none());
        assert!(SessionId::from_token("A".repeat(44)).is_none());
        assert!(SessionId::from_token(format!("{}=", "A".repeat(42))).is_none());
        assert!(SessionId::from_token(format!("{}+", "A".repeat(42))).is_none());
        // Non-canonical trailing bits are refused, so one secret has one spelling.
        assert!(SessionId::from_token(format!("{}B", "A".repeat(42))).is_none());
        assert!(SessionId::parse_hex("xyz").is_none());
        assert!(SessionId::parse_hex(&"g".repeat(32)).is_none());
    }

    #[test]
    fn decode_agrees_with_the_base64_crate_on_tokens() {
        for _ in 0..200 {
            let t = Token::generate().unwrap();
            let mut want = [0u8; 33];
            assert_eq!(
                URL_SAFE_NO_PAD.decode_slice(t.expose(), &mut want).unwrap(),
                32
            );
            assert_eq!(decode_token(t.expose().as_bytes()).unwrap(), want[..32]);
        }
    }

    proptest::proptest! {
        /// Any 43 bytes, drawn mostly from the alphabet: refused or accepted, and decoded to
        /// the same bytes, exactly as `base64` would.
        #[test]
        fn decode_matches_base64_on_any_input(
            picks in proptest::collection::vec(0usize..640, TOKEN_LEN),
        ) {
            let odd = [b'=', b'+', b'/', b' ', 0xC3, b'.'];
            let t: Vec<u8> = picks
                .iter()
                .map(|&i| if (64..70).contains(&i) { odd[i - 64] } else { ALPHABET[i % 64] })
                .collect();
            let mut want = [0u8; 33];
            let want = match URL_SAFE_NO_PAD.decode_slice(&t, &mut want) {
                Ok(32) => Some(want[..32].to_vec()),
                _ => None,
            };
            proptest::prop_assert_eq!(decode_token(&t).map(|b| b.to_vec()), want);
        }

        /// Only the trailing bits of the last character are constrained: flipping them on a
        /// valid token makes it invalid, as `base64` says.
        #[test]
        fn trailing_bits_decide(bytes in proptest::array::uniform32(proptest::prelude::any::<u8>()), low in 1u8..4) {
            let t = URL_SAFE_NO_PAD.encode(bytes).into_bytes();
            proptest::prop_assert_eq!(decode_token(&t), Some(bytes));
            let mut bad = t.clone();
            bad[42] = ALPHABET[(DIGITS[t[42] as usize] | low) as usize];
            proptest::prop_assert_eq!(decode_token(&bad), None);
        }
    }

    #[test]
    fn debug_redacts() {
        let t = Token::generate().unwrap();
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}
