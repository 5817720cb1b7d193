//! Which core each HTTP worker runs on: `--pin-workers auto|on|off`.
//!
//! Why: with as many workers as cores, any third thread that wakes up (the journal thread
//! every 10 ms, the reaper's tick, a snapshot) lets the scheduler move one worker onto the
//! other's core, and the two then take turns in slices of a few milliseconds while the core
//! they left stays idle. Measured on a 16-core machine with the daemon on 2 cores (2 workers,
//! auth open loop at half its peak): each worker waited 0.2-0.7 s per 5 s in the run queue and
//! auth's p99 was 7-17 ms; with a third core the wait was under 1 ms and p99 0.5-0.6 ms
//! (`docs/performance.md`, issue #27). A worker pinned to a core of its own cannot be
//! stacked; the other threads stay free to run on any core the daemon may use.
//!
//! Invariants:
//! 1. `off` pins nothing. `on` pins worker `i` to the `i`-th core the process may run on (its
//!    affinity mask, in ascending order), round-robin when there are more workers than cores.
//! 2. `auto` (the default) pins only where the operator confined the daemon to some of the
//!    machine's cores (`taskset`, systemd `CPUAffinity=`, a Kubernetes static CPU-manager
//!    policy, a cpuset cgroup) and it has one worker per core of those (the default number
//!    of workers there): the daemon then owns them. A daemon that may run anywhere shares the
//!    machine, and so does one with fewer workers than its cores (say a CPU quota of 2 in a
//!    shared pool of 14 cores): the scheduler moving a worker to an idle core serves it better
//!    than a pin to a core that others use too.
//! 3. A worker that cannot be pinned runs unpinned: under `auto` it is logged at warn, under
//!    `on` start-up fails with the reason.
//! 4. Only the HTTP workers are pinned; no other thread's affinity changes.

use std::io;

/// The `--pin-workers` setting (invariants 1 and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinWorkers {
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for PinWorkers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PinWorkers::Auto),
            "on" => Ok(PinWorkers::On),
            "off" => Ok(PinWorkers::Off),
            other => Err(format!("pin_workers {other:?} is not one of auto, on, off")),
        }
    }
}

impl std::fmt::Display for PinWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PinWorkers::Auto => "auto",
            PinWorkers::On => "on",
            PinWorkers::Off => "off",
        })
    }
}

/// The core of each worker, or `None` where none is pinned (invariants 1 and 2). `allowed`:
/// the cores the process may run on, ascending; `online`: how many the machine has (`None`:
/// unknown, and then `auto` does not pin).
pub fn plan(
    mode: PinWorkers,
    workers: usize,
    allowed: &[usize],
    online: Option<usize>,
) -> Option<Vec<usize>> {
    let pin = match mode {
        PinWorkers::Off => false,
        PinWorkers::On => !allowed.is_empty(),
        PinWorkers::Auto => online.is_some_and(|n| allowed.len() < n) && workers == allowed.len(),
    };
    pin.then(|| (0..workers).map(|i| allowed[i % allowed.len()]).collect())
}

/// The cores this process may run on, ascending.
pub fn allowed_cores() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect())
}

/// How many cores the machine has online, from `/sys/devices/system/cpu/online` (`0-3,8-11`).
pub fn online_cores() -> Option<usize> {
    parse_cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?)
}

fn parse_cpu_list(text: &str) -> Option<usize> {
    text.trim().split(',').try_fold(0, |n, part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
        (a <= b).then(|| n + b - a + 1)
    })
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    Ok(rustix::thread::sched_setaffinity(None, &set)?)
}

/// The plan for this process, from its affinity mask and the machine's cores.
pub fn plan_here(mode: PinWorkers, workers: usize) -> io::Result<Option<Vec<usize>>> {
    if mode == PinWorkers::Off {
        return Ok(None);
    }
    Ok(plan(mode, workers, &allowed_cores()?, online_cores()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use PinWorkers::*;

    #[test]
    fn auto_pins_only_a_daemon_confined_to_some_cores_with_one_worker_per_core() {
        // Confined to cores 4 and 5 of 16: one worker on each.
        assert_eq!(plan(Auto, 2, &[4, 5], Some(16)), Some(vec![4, 5]));
        assert_eq!(plan(Auto, 1, &[7], Some(16)), Some(vec![7]));
        // Fewer workers than cores (a quota in a shared pool): cores shared with others.
        assert_eq!(plan(Auto, 1, &[4, 5], Some(16)), None);
        assert_eq!(plan(Auto, 2, &(2..16).collect::<Vec<_>>(), Some(16)), None);
        // More workers than cores: stacking is unavoidable, leave it to the scheduler.
        assert_eq!(plan(Auto, 3, &[4, 5], Some(16)), None);
        // Free to run anywhere, or the machine's size unknown: no pin.
        let all: Vec<usize> = (0..16).collect();
        assert_eq!(plan(Auto, 16, &all, Some(16)), None);
        assert_eq!(plan(Auto, 2, &[4, 5], None), None);
    }

    #[test]
    fn on_pins_round_robin_and_off_never_pins() {
        let all: Vec<usize> = (0..4).collect();
        assert_eq!(plan(On, 4, &all, Some(4)), Some(vec![0, 1, 2, 3]));
        assert_eq!(plan(On, 3, &[2, 7], None), Some(vec![2, 7, 2]));
        assert_eq!(plan(On, 2, &[], Some(4)), None);
        assert_eq!(plan(Off, 2, &[4, 5], Some(16)), None);
    }

    #[test]
    fn the_online_list_counts_ranges_and_single_cores() {
        assert_eq!(parse_cpu_list("0-15\n"), Some(16));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8-11,14"), Some(9));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn settings_parse_and_print_alike() {
        for m in [Auto, On, Off] {
            assert_eq!(m.to_string().parse::<PinWorkers>(), Ok(m));
        }
        let e = "sometimes".parse::<PinWorkers>().unwrap_err();
        assert!(e.contains("auto, on, off"), "{e}");
    }

    #[test]
    fn this_thread_can_be_pinned_to_a_core_it_may_use() {
        let allowed = allowed_cores().unwrap();
        assert!(!allowed.is_empty());
        let core = *allowed.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(core).unwrap();
            assert_eq!(allowed_cores().unwrap(), vec![core]);
        })
        .join()
        .unwrap();
    }
}
