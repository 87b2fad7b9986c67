//! `conveyor-sandbox`: serve the stand-ins, or `conveyor-sandbox healthcheck` a running one.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use conveyor_sandbox::cli::{Cli, Command};
use conveyor_sandbox::{app, healthcheck, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or_default() {
        Command::Healthcheck => healthcheck::run(cli.config.addr).await,
        Command::Serve => {
            telemetry::init(cli.config.log_format);
            match app::serve(&cli.config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "sandbox stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
