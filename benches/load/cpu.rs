//! The target's CPU time per request (issue #27): the server's utime + stime, all threads, read
//! from `/proc/PID/stat` before and after a measured run, divided by the requests the run
//! completed. On a machine the generator shares with the server, throughput ratios move with
//! the generator's own cost and the VM's phase; the server's CPU per request does not.
//!
//! Invariants:
//! 1. A figure is given only when the pid is known (a target this tool started, a local Redis
//!    that told its pid, or `--pid`), both readings succeeded and the run completed a request;
//!    otherwise the report says `null`, never a guess.
//! 2. The reading covers the whole process (every thread: HTTP workers, acceptor, journal
//!    writer, reaper), because all of it is what a request costs the machine.
//! 3. The resolution is one clock tick (`CLK_TCK`, 10 ms on Linux) per reading: the report
//!    carries the CPU seconds too, so a reader can tell a short run's figure is coarse.
//! 4. The smoke run fails when a target with a known pid lacks the figure ([`missing`]), so
//!    the reading cannot rot unnoticed.
//! 5. Beside it, the generator's own wake-ups per request (`client_wakeups_per_request`: its
//!    threads' voluntary context switches over the run, from `/proc/self/task/*/status`). A
//!    client on the same host that sleeps between answers is woken by each, and the wake-up is
//!    paid in the server's `send`: a server that spreads its answers pays more per request
//!    (see the daemon's write gate, `server::gate`).

use serde_json::{Value, json};

/// utime + stime of `pid` in seconds (every thread, invariant 2).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": state is field 3, so utime (14) and stime (15) are the 12th and 13th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// This process's voluntary context switches so far, every thread (invariant 5).
fn own_wakeups() -> Option<u64> {
    let mut n = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
        n += line.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(n)
}

/// A reading taken at the start of a run.
pub struct Meter {
    pid: Option<u32>,
    start: Option<f64>,
    wakeups: Option<u64>,
    /// Run-queue waits and steal, reported beside (`sched.rs`).
    sched: crate::sched::Reading,
}

impl Meter {
    pub fn start(pid: Option<u32>) -> Meter {
        Meter {
            pid,
            start: pid.and_then(cpu_seconds),
            wakeups: own_wakeups(),
            sched: crate::sched::Reading::take(pid),
        }
    }

    /// CPU seconds since [`Meter::start`], and per request in microseconds (invariant 1).
    pub fn stop(&self, requests: u64) -> Value {
        let used = match (self.pid.and_then(cpu_seconds), self.start) {
            (Some(end), Some(start)) => Some(end - start),
            _ => None,
        };
        // A thread that ended during the run takes its count with it: then no figure.
        let wakeups = match (own_wakeups(), self.wakeups) {
            (Some(end), Some(start)) if end >= start && requests > 0 => {
                Some(((end - start) as f64 / requests as f64 * 1000.0).round() / 1000.0)
            }
            _ => None,
        };
        json!({
            "seconds": used,
            "us_per_request": used.filter(|_| requests > 0).map(|s| round2(s * 1e6 / requests as f64)),
            "client_wakeups_per_request": wakeups,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `run["cpu"]["us_per_request"]` of two runs, as a ratio `a / b`.
pub fn ratio(a: &Value, b: &Value) -> Option<f64> {
    let (a, b) = (
        a["cpu"]["us_per_request"].as_f64()?,
        b["cpu"]["us_per_request"].as_f64()?,
    );
    (b > 0.0).then(|| (a / b * 1000.0).round() / 1000.0)
}

/// One line of the text report for a run's `cpu`.
pub fn describe(run: &Value) -> Option<String> {
    let c = &run["cpu"];
    let us = c["us_per_request"].as_f64()?;
    let mut line = format!(
        "target CPU: {us:.2} us/request ({:.2} CPU s over the run, utime+stime from /proc)",
        c["seconds"].as_f64().unwrap_or(0.0)
    );
    if let Some(w) = c["client_wakeups_per_request"].as_f64() {
        line += &format!("; generator woken {w:.3} times per request");
    }
    Some(line)
}

/// Puts the meter's figures into a run's report as `run["cpu"]`, per the run's `requests`,
/// and the run-queue waits and steal as `run["sched"]`.
pub fn attach(run: &mut Value, meter: &Meter) {
    let n = run["requests"].as_u64().unwrap_or(0);
    run["cpu"] = meter.stop(n);
    run["sched"] = meter.sched.since();
}

/// The smoke run's check: a target whose pid is known must have a CPU figure in `run`.
pub fn missing(run: &Value, pid_known: bool) -> bool {
    pid_known && run["requests"].as_u64().unwrap_or(0) > 0 && run["cpu"]["seconds"].is_null()
}
