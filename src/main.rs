//! The `wshub` binary: parse configuration, set up logging, bind, run until SIGINT/SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wshub::cli::{self, Cli};
use wshub::config::{Config, LogFormat};

/// Exit status for a configuration the hub refuses (clap uses the same for usage errors).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let Cli { config, command } = cli::parse();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => return fail("", &format!("cannot start the async runtime: {e}"), 1),
    };
    match command {
        None => runtime.block_on(serve(config)),
        Some(operation) => {
            let name = format!(" {}", operation_name(&operation));
            match runtime.block_on(cli::run(operation, config, &mut std::io::stdout().lock())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&name, &e.to_string(), e.exit_code()),
            }
        }
    }
}

/// Prints one line, `wshub[ subcommand]: message`, and returns the exit status: startup errors
/// never print a backtrace, whatever `RUST_BACKTRACE` says.
fn fail(subcommand: &str, message: &str, code: u8) -> ExitCode {
    eprintln!("wshub{subcommand}: {message}");
    ExitCode::from(code)
}

fn operation_name(operation: &cli::Operation) -> &'static str {
    match operation {
        cli::Operation::Gentoken(_) => "gentoken",
        cli::Operation::Checkconfig => "checkconfig",
        cli::Operation::Genkey => "genkey",
        cli::Operation::Notify(_) => "notify",
    }
}

/// A multi-threaded runtime with one worker per core this process may use. (The single-threaded
/// scheduler was tried for a process pinned to one core: it cost 10x the CPU per delivery in
/// bursts, because writers then ran after every event instead of batching several.)
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build()
}

/// Runs the hub until a signal; a startup failure is one line on stderr and a non-zero status.
async fn serve(config: Config) -> ExitCode {
    let config = match config.finish() {
        Ok(config) => config,
        Err(err) => return fail("", &err.to_string(), EXIT_CONFIG),
    };
    // The key file is read again by `wshub::run`; reading it first means an unreadable key stops
    // the hub before it says it is listening.
    if let Some(Err(e)) = config.jwt_public_key.as_deref().map(wshub::auth::Verifier::from_pem_file) {
        return fail("", &e.to_string(), EXIT_CONFIG);
    }
    let log_flush = init_tracing(config.log_format);
    let listener = match TcpListener::bind(config.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            drop(log_flush);
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another process, perhaps another wshub, uses that port: stop it or choose another --addr)"
            } else {
                ""
            };
            return fail("", &format!("cannot listen on {}: {e}{hint}", config.addr), 1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => return fail("", &format!("cannot read the bound address: {e}"), 1),
    };
    for warning in cli::warnings(&Config { addr, ..config.clone() }) {
        tracing::warn!("{warning}");
    }
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "wshub listening: test page http://{addr}/, WebSocket ws://{addr}/ws");
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    let result = wshub::run(listener, config, shutdown).await;
    if let Err(e) = result {
        drop(log_flush);
        return fail("", &e.to_string(), 1);
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Logs to stderr from a background thread, so a busy hub never waits on its log output (one
/// line per connection open and close). The guard flushes what is left when `main` returns.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: not in files, pipes or journald.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Cancels `shutdown` on Ctrl-C (all platforms) or SIGTERM (Unix).
async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("signal received");
    shutdown.cancel();
}
