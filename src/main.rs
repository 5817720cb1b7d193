//! The `sessiond` binary: parse configuration, set up logging, run the daemon.

use sessiond::config::{Config, Settings};

fn main() -> std::process::ExitCode {
    let cli = Settings::from_cli();
    // Before the rest of the configuration: the probe needs only the address (see `probe`).
    if cli.probe() {
        let listen = match sessiond::probe::listen_address(&cli) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("sessiond: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        return match sessiond::probe::probe(&listen, std::time::Duration::from_secs(3)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sessiond: not ready: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sessiond: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The NATS client says every reconnect try at INFO; the cluster logs its own lines
    // (`cluster`), so the client's own are kept to warnings.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(config.log_level)
        .with_target("async_nats", config.log_level.min(tracing::Level::WARN));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(false),
        )
        .with(filter)
        .init();
    // Every connection is a file descriptor: use what the operator allows (the hard limit),
    // not the distribution's default soft one.
    match sessiond::fdlimit::raise() {
        Ok(r) => tracing::info!(
            soft_before = ?r.soft_before,
            soft = ?r.soft,
            hard = ?r.hard,
            "open-file limit"
        ),
        Err((r, e)) => tracing::warn!(
            error = %e,
            soft = ?r.soft,
            hard = ?r.hard,
            "cannot raise the open-file limit to the hard one; connections are capped below the soft one"
        ),
    }
    // The control plane (signals, start-up load, shutdown): requests are served by the
    // `server` workers, each with a runtime of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sessiond: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sessiond::daemon::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("sessiond failed: {e:#}");
            eprintln!("sessiond: {e:#}");
            if e.downcast_ref::<sessiond::daemon::ConfigFileError>()
                .is_some()
            {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
