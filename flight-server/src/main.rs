//! `kalam-server` binary.

use clap::Parser;
use kalam_server::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    match kalam_server::server::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kalam-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
