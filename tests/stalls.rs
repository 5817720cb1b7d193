//! The lag probe against the real binary (`server/lag.rs`, `sessiond_http_worker_delay_seconds`):
//! a daemon stopped (SIGSTOP) while a client keeps it busy reports, once continued, a worker
//! tick as late as the stop, and its dashboard query and alert have something to show.

use crate::common::{Daemon, eventually, try_request_bytes, unsafe_free_kill};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Worker 0's probe ticks more than 250 ms late.
fn late_ticks(d: &Daemon) -> f64 {
    d.metric("sessiond_http_worker_delay_seconds_count{worker=\"0\"}")
        - d.metric("sessiond_http_worker_delay_seconds_bucket{worker=\"0\",le=\"0.25\"}")
}

#[test]
fn a_stopped_daemon_reports_a_tick_as_late_as_the_stop() {
    let d = Daemon::start(&["--http-workers", "1"]);
    let before = late_ticks(&d);
    // Requests keep coming, so the probe ticks (it sleeps on an idle worker).
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (done, addr) = (done.clone(), d.addr);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let _ = try_request_bytes(addr, "GET", "/healthz", &[], None);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    unsafe_free_kill(d.child.id(), "STOP");
    std::thread::sleep(Duration::from_millis(400));
    unsafe_free_kill(d.child.id(), "CONT");
    eventually(10, "a probe tick more than 250 ms late", || {
        late_ticks(&d) > before
    });
    done.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert!(
        d.metric("sessiond_http_worker_delay_seconds_count{worker=\"0\"}") >= 10.0,
        "the probe ticked while requests came"
    );
}
