//! sessiond: an in-memory login-session daemon with exact idle and absolute expiry.
//! No unsafe code: `[lints.rust] unsafe_code = "forbid"` in Cargo.toml covers every target.

pub mod changes;
pub mod clock;
pub mod engine;
pub mod id_index;
pub mod policy;
pub mod session;
pub mod shard;
pub mod timefmt;
pub mod token;
pub mod wheel;

pub mod api_keys;
pub mod cluster;
pub mod config;
pub mod cookie;
pub mod daemon;
pub mod fdlimit;
pub mod http;
pub mod metrics;
pub mod persist;
pub mod policy_source;
pub mod probe;
pub mod reaper;
pub mod server;
pub mod shutdown;
pub mod suggest;
