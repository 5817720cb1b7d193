#![forbid(unsafe_code)]
//! sessiond: an in-memory login-session daemon with exact idle and absolute expiry.

pub mod clock;
pub mod duration;
pub mod engine;
pub mod policy;
pub mod session;
pub mod shard;
pub mod timefmt;
pub mod token;
pub mod wheel;

#[cfg(test)]
mod engine_model;
#[cfg(test)]
mod engine_tests;
