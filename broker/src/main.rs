//! `rilld`: the Rill broker. `rilld` with no arguments serves 127.0.0.1:9092 with
//! data in `./rill-data`; `rilld --help` lists every flag, each of which overrides
//! the TOML key of the same name in `--config FILE`.

#![forbid(unsafe_code)]

use clap::Parser;
use rill_broker::config::{Cli, Config};
use rill_broker::server::Server;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rilld: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rilld: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rilld: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let data_dir = config.data_dir.clone();
    let durability = config.durability;
    let server = Server::bind(config).await?;
    let admin = server
        .admin_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    // The one line on stdout: scripts and the test harness wait for it and read the
    // bound ports from it (they may have asked for port 0).
    println!("rilld listening on {} admin {admin}", server.local_addr()?);
    tracing::info!(
        listen = %server.local_addr()?,
        admin = ?server.admin_addr(),
        data_dir = %data_dir.display(),
        %durability,
        "rilld ready"
    );
    // A fenced process (another process holds or took over its node id) stops like on
    // SIGTERM, then exits with the reason as its error.
    let mut fenced = server.fenced();
    let fence_reason = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let reason_slot = std::sync::Arc::clone(&fence_reason);
    server
        .run(async move {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM"),
                _ = sigint.recv() => tracing::info!("SIGINT"),
                reason = wait_fenced(fenced.as_mut()) => {
                    tracing::error!(%reason, "stopping: this process may not serve its node_id");
                    *reason_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                }
            }
        })
        .await?;
    let reason = fence_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match reason {
        Some(reason) => Err(format!("fenced: {reason}").into()),
        None => Ok(()),
    }
}

/// Resolves with the reason once the broker is fenced; never without a cluster.
async fn wait_fenced(fenced: Option<&mut tokio::sync::watch::Receiver<Option<String>>>) -> String {
    let Some(fenced) = fenced else {
        return std::future::pending().await;
    };
    match fenced.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        // The cluster is gone (shutting down): nothing more to wait for.
        Err(_) => std::future::pending().await,
    }
}
