#![forbid(unsafe_code)]
//! sessiond: an in-memory login-session daemon with exact idle and absolute expiry.

pub mod clock;
pub mod duration;
pub mod policy;
pub mod timefmt;
pub mod token;
pub mod wheel;
