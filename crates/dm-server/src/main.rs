//! The `dm-server` binary: reads its [`dm_server::Config`] (flags, `DM_*` environment,
//! optional TOML file), sets up logging and runs [`dm_server::serve`] until Ctrl-C or
//! SIGTERM.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use dm_server::config::{ConfigError, Invocation, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let invocation = match Invocation::from_process() {
        Ok(invocation) => invocation,
        // --help, --version and usage errors print themselves (exit 0 or 2).
        Err(ConfigError::Cli(err)) => err.exit(),
        Err(err) => {
            eprintln!("dm-server: {err}");
            return ExitCode::from(2);
        }
    };
    let config = invocation.config;
    if invocation.print_config {
        let mut out = std::io::stdout().lock();
        return match out
            .write_all(config.to_toml().as_bytes())
            .and_then(|()| out.flush())
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("dm-server: cannot write the settings: {err}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(config.log_format);
    match dm_server::serve(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "the relay stopped with an error");
            eprintln!("dm-server: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries only the "listening" line); `RUST_LOG` overrides the
/// default level `info`. Colours only on a terminal: log files and journals get plain text.
/// A panic is logged as one event too (in JSON when the log is JSON).
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "a thread panicked");
    }));
}

/// A future that completes on Ctrl-C or (on Unix) SIGTERM. The handlers are installed
/// before this returns, so a signal arriving before the server runs is not lost (and does
/// not kill the process).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(error = %err, "cannot listen for signals: stop with SIGKILL");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %err, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    }
}
