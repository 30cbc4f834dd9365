//! The `portcullis` binary: parses the command line, sets up logging, runs the service.

use anyhow::Context;
use clap::Parser;
use portcullis::cli::{Cli, Command, LogFormat};
use portcullis::server::{Service, serve, shutdown_signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("invalid --log-level {:?}", cli.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    match cli.command {
        Command::Serve(args) => {
            let config = args.into_config();
            let svc = tokio::task::spawn_blocking(move || Service::open(config))
                .await
                .context("starting the service panicked")?
                .context("starting the service")?;
            serve(svc, shutdown_signal()).await.context("serving")?;
        }
    }
    Ok(())
}
