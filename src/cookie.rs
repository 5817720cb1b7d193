//! The session cookie sessiond hands to gateways: built from the configured attributes, with
//! `Max-Age` only when the session's effective policy is persistent.
//!
//! Invariants:
//! 1. A persistent session's cookie carries `Max-Age` = whole seconds until its absolute
//!    deadline; a non-persistent one carries neither `Max-Age` nor `Expires` (a browser-session
//!    cookie).
//! 2. The clearing cookie has the same name, path and domain with `Max-Age=0`, so the browser
//!    drops exactly the cookie it was given.
//! 3. Attributes are validated at start (`SameSite=None` requires `Secure`), so every cookie
//!    built here is well-formed.

use std::fmt::Write;

/// `SameSite` attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl std::str::FromStr for SameSite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "lax" => Ok(SameSite::Lax),
            "strict" => Ok(SameSite::Strict),
            "none" => Ok(SameSite::None),
            other => Err(format!(
                "cookie_same_site {other:?} is not one of lax, strict, none"
            )),
        }
    }
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// The cookie's name and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSettings {
    pub name: String,
    pub domain: Option<String>,
    pub path: String,
    pub secure: bool,
    pub same_site: SameSite,
}

impl Default for CookieSettings {
    fn default() -> Self {
        CookieSettings {
            name: "session".into(),
            domain: None,
            path: "/".into(),
            secure: true,
            same_site: SameSite::Lax,
        }
    }
}

/// Whether `s` may appear as a cookie attribute value (no separators or controls).
pub fn valid_attribute(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
}

impl CookieSettings {
    /// Checks invariant 3; every problem is listed.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(d) = &self.domain
            && !valid_attribute(d)
        {
            errors.push(format!(
                "cookie_domain {d:?} is not a valid domain attribute"
            ));
        }
        if !self.path.starts_with('/') || !valid_attribute(&self.path) {
            errors.push(format!(
                "cookie_path {:?} must start with / and contain no spaces, ';' or ','",
                self.path
            ));
        }
        if self.same_site == SameSite::None && !self.secure {
            errors.push(
                "cookie_same_site none requires cookie_secure true (browsers reject it otherwise)"
                    .into(),
            );
        }
        errors
    }

    fn attributes(&self, out: &mut String) {
        let _ = write!(out, "; Path={}", self.path);
        if let Some(d) = &self.domain {
            let _ = write!(out, "; Domain={d}");
        }
        out.push_str("; HttpOnly");
        if self.secure {
            out.push_str("; Secure");
        }
        let _ = write!(out, "; SameSite={}", self.same_site.as_str());
    }

    /// The `Set-Cookie` value for a new session (invariant 1).
    pub fn issue(&self, token: &str, max_age_secs: Option<u64>) -> String {
        let mut out = format!("{}={token}", self.name);
        self.attributes(&mut out);
        if let Some(age) = max_age_secs {
            let _ = write!(out, "; Max-Age={age}");
        }
        out
    }

    /// The `Set-Cookie` value that removes the cookie (invariant 2).
    pub fn clear(&self) -> String {
        let mut out = format!("{}=", self.name);
        self.attributes(&mut out);
        out.push_str("; Max-Age=0");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_and_session_cookies() {
        let c = CookieSettings::default();
        assert_eq!(
            c.issue("TOK", None),
            "session=TOK; Path=/; HttpOnly; Secure; SameSite=Lax"
        );
        assert_eq!(
            c.issue("TOK", Some(86_400)),
            "session=TOK; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=86400"
        );
        assert_eq!(
            c.clear(),
            "session=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0"
        );
        let c = CookieSettings {
            name: "sid".into(),
            domain: Some("example.com".into()),
            path: "/app".into(),
            secure: false,
            same_site: SameSite::Strict,
        };
        assert_eq!(
            c.issue("T", None),
            "sid=T; Path=/app; Domain=example.com; HttpOnly; SameSite=Strict"
        );
        assert_eq!(
            c.clear(),
            "sid=; Path=/app; Domain=example.com; HttpOnly; SameSite=Strict; Max-Age=0"
        );
    }

    #[test]
    fn bad_attributes_are_listed() {
        let c = CookieSettings {
            domain: Some("a;b".into()),
            path: "app".into(),
            secure: false,
            same_site: SameSite::None,
            ..CookieSettings::default()
        };
        assert_eq!(c.validate().len(), 3, "{:?}", c.validate());
        assert!(CookieSettings::default().validate().is_empty());
        assert!("LAX".parse::<SameSite>().is_ok());
        assert!("sometimes".parse::<SameSite>().is_err());
    }
}
