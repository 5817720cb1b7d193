//! Names that are not settings' on the command line and in the environment: an unknown flag
//! or a misspelt `SESSIOND_*` variable is named with the nearest valid one (`crate::suggest`),
//! and the parse goes on, so `Config::load` reports it with every other problem.
//!
//! Invariants:
//! 1. An unknown flag is dropped before clap sees it, with the value after it (a token not
//!    starting with `-`, or a number: the daemon takes no positional argument); so is a short
//!    flag other than `-h` and `-V` (every setting's flag is long). Everything after `--` is
//!    left to clap.
//! 2. A value clap refuses (`--shards x`) is noted too, and the flag dropped ([`drop_flag`]),
//!    or its variable no longer read when the value came from there, and the parse tried again.
//! 3. A `SESSIOND_*` variable is a problem only when it is not a setting's and is close to one
//!    (compared without the prefix): other tools (the tests, the benchmarks) use the prefix
//!    for variables of their own.

/// The short flags clap knows: help and version.
const SHORTS: &[&str] = &["h", "V"];

/// `args` without the flags that are not in `longs`, nor the value that follows one (a token
/// not starting with `-`: the daemon takes no positional argument), and a problem for each
/// (invariant 1). Everything after a `--` is left to clap.
pub(super) fn drop_unknown_flags(
    args: impl Iterator<Item = std::ffi::OsString>,
    longs: &[String],
) -> (Vec<std::ffi::OsString>, Vec<String>) {
    let valid: Vec<&str> = longs.iter().map(String::as_str).collect();
    let mut kept = Vec::new();
    let mut problems = Vec::new();
    let mut args = args.peekable();
    let mut rest = false;
    while let Some(arg) = args.next() {
        let name = arg
            .to_str()
            .filter(|_| !rest)
            .and_then(|a| a.strip_prefix("--"))
            .map(|a| a.split_once('=').map_or((a, false), |(n, _)| (n, true)));
        let short = arg
            .to_str()
            .filter(|a| !rest && a.len() > 1 && !a.starts_with("--"))
            .and_then(|a| a.strip_prefix('-'))
            .filter(|a| !SHORTS.iter().any(|s| a.starts_with(*s)));
        if let Some(short) = short {
            problems.push(format!(
                "unknown flag `-{short}`; sessiond's flags are long (`--tick`), apart from -h and -V"
            ));
            continue;
        }
        match name {
            Some(("", false)) => {
                rest = true;
                kept.push(arg);
            }
            Some((flag, has_value)) if !valid.contains(&flag) => {
                problems.push(crate::suggest::unknown("flag", flag, &valid, "--"));
                let value_follows = args.peek().is_some_and(|next| {
                    let next = next.to_string_lossy();
                    !next.starts_with('-') || next.parse::<f64>().is_ok()
                });
                if !has_value && value_follows {
                    args.next();
                }
            }
            _ => kept.push(arg),
        }
    }
    (kept, problems)
}

/// A problem for each `SESSIOND_*` variable that is not a setting's but close to one: a typo
/// (invariant 3). Variables far from every setting's are left alone: other tools (the test
/// and benchmark scripts) use the prefix too.
pub(super) fn misspelt_variables(
    names: impl Iterator<Item = std::ffi::OsString>,
    envs: &[String],
) -> Vec<String> {
    // Compared without the shared prefix, which would make every name look close.
    let valid: Vec<&str> = envs
        .iter()
        .filter_map(|e| e.strip_prefix("SESSIOND_"))
        .collect();
    names
        .filter_map(|n| n.into_string().ok())
        .filter_map(|n| {
            let rest = n.strip_prefix("SESSIOND_")?;
            if valid.contains(&rest) {
                return None;
            }
            let near = crate::suggest::nearest(rest, valid.iter().copied())?;
            Some(format!(
                "unknown environment variable {n}; did you mean SESSIOND_{near}?"
            ))
        })
        .collect()
}

/// The long name of the flag whose value clap refused (`shards` of `--shards <SHARDS>`).
pub(super) fn refused_flag(e: &clap::Error) -> Option<String> {
    match e.get(clap::error::ContextKind::InvalidArg)? {
        clap::error::ContextValue::String(s) => s
            .split_whitespace()
            .next()?
            .strip_prefix("--")
            .map(str::to_owned),
        _ => None,
    }
}

/// `args` without every `--long value` and `--long=value`.
pub(super) fn drop_flag(args: Vec<std::ffi::OsString>, long: &str) -> Vec<std::ffi::OsString> {
    let (flag, with_value) = (format!("--{long}"), format!("--{long}="));
    let mut kept = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == flag {
            args.next();
        } else if !text.starts_with(&with_value) {
            kept.push(arg);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn os(args: &[&str]) -> impl Iterator<Item = std::ffi::OsString> {
        args.iter()
            .map(std::ffi::OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn unknown_flags_are_dropped_with_their_value_and_named() {
        let longs = ["tick".to_owned(), "recover".to_owned()];
        let (kept, problems) = drop_unknown_flags(
            os(&[
                "sessiond",
                "--tikc",
                "5ms",
                "--recover",
                "--recovr",
                "--tick=1s",
                "--shrads=4",
            ]),
            &longs,
        );
        assert_eq!(kept, ["sessiond", "--recover", "--tick=1s"]);
        assert_eq!(
            problems,
            [
                "unknown flag `--tikc`; did you mean `--tick`?",
                "unknown flag `--recovr`; did you mean `--recover`?",
                "unknown flag `--shrads`; expected one of `--tick`, `--recover`",
            ]
        );
        let (kept, problems) =
            drop_unknown_flags(os(&["sessiond", "-x", "--tikc", "-5", "-h"]), &longs);
        assert_eq!(kept, ["sessiond", "-h"]);
        assert_eq!(
            problems,
            [
                "unknown flag `-x`; sessiond's flags are long (`--tick`), apart from -h and -V",
                "unknown flag `--tikc`; did you mean `--tick`?",
            ]
        );
        let (kept, problems) = drop_unknown_flags(os(&["sessiond", "--", "--tikc"]), &longs);
        assert_eq!((kept.len(), problems.len()), (3, 0));
    }

    #[test]
    fn only_near_misses_of_variables_are_problems() {
        let envs = ["SESSIOND_TICK".to_owned(), "SESSIOND_SHARDS".to_owned()];
        let names = os(&[
            "SESSIOND_TIKC",
            "SESSIOND_FAULT_SEED",
            "SESSIOND_TICK",
            "PATH",
        ]);
        assert_eq!(
            misspelt_variables(names, &envs),
            ["unknown environment variable SESSIOND_TIKC; did you mean SESSIOND_TICK?"]
        );
        // The variables the tests and benchmarks use are far from every setting's.
        let command = <Settings as clap::CommandFactory>::command();
        let envs: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        let ours = os(&[
            "SESSIOND_SKIP_MISSING_TOOLS",
            "SESSIOND_FAULT_SECS",
            "SESSIOND_FAULT_SEED",
            "SESSIOND_BENCH_SESSIONS",
            "SESSIOND_BINARY",
        ]);
        assert_eq!(misspelt_variables(ours, &envs), Vec::<String>::new());
        let typo = os(&["SESSIOND_SNAPSHOT_INTERVALL", "SESSIOND_MAX_SESIONS"]);
        assert_eq!(misspelt_variables(typo, &envs).len(), 2);
    }
}
