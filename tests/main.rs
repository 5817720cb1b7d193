//! Black-box tests: each starts the real `sessiond` binary on an ephemeral port. One binary for
//! all of them (`autotests = false`) so CI links once.

mod common;

mod access;
mod api;
mod cluster;
mod cluster_faults;
mod cluster_join;
mod cluster_lag;
mod cluster_limits;
mod cluster_outage;
mod cluster_tls;
mod cookies;
mod deploy;
mod disk_faults;
mod dry_run;
mod errors;
mod expiry;
mod hardening;
mod imports;
mod lifecycle;
mod nginx;
mod persist;
mod policy_source;
mod slow_clients;
mod stalls;
mod traefik;
mod unix_socket;
