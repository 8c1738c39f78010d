//! The `wshub` binary: parse configuration, set up logging, bind, run until SIGINT/SIGTERM.

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wshub::config::{Config, LogFormat};

fn main() -> anyhow::Result<()> {
    runtime()?.block_on(run())
}

/// A multi-threaded runtime with one worker per core this process may use. (The single-threaded
/// scheduler was tried for a process pinned to one core: it cost 10x the CPU per delivery in
/// bursts, because writers then ran after every event instead of batching several.)
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build()
}

async fn run() -> anyhow::Result<()> {
    let config = match Config::load() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("wshub: {err}");
            std::process::exit(2);
        }
    };
    let _log_flush = init_tracing(config.log_format);
    let listener = TcpListener::bind(config.addr).await.with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    if config.allowed_origins.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!("listening on {addr} with CORS open to any origin; restrict it with --allowed-origins");
    }
    if config.api_key.is_none() && !addr.ip().is_loopback() {
        tracing::warn!("no --api-key: /notify and admin endpoints accept only loopback clients");
    }
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "wshub listening: test page http://{addr}/, WebSocket ws://{addr}/ws");
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    wshub::run(listener, config, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Logs to stderr from a background thread, so a busy hub never waits on its log output (one
/// line per connection open and close). The guard flushes what is left when `main` returns.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
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
