use clap::Parser;
use conveyor_shared::{probe, shutdown, telemetry};
use conveyor_worker::Config;

/// Conveyor worker: runs jobs from RabbitMQ, records outcomes in Postgres.
#[derive(Parser)]
#[command(version)]
enum Cli {
    /// Consume and run jobs (the default).
    Run,
    /// Ask this worker's /readyz (CONVEYOR_WORKER_ADDR); exit 0 when ready.
    Healthcheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = if std::env::args().len() > 1 {
        Cli::parse()
    } else {
        Cli::Run
    };
    let config = Config::from_env()?;
    match cli {
        Cli::Healthcheck => std::process::exit(if probe::healthcheck(config.addr).await {
            0
        } else {
            1
        }),
        Cli::Run => {
            telemetry::init_logging();
            tracing::info!(?config, "starting worker");
            conveyor_worker::run(config, shutdown::on_signal()).await
        }
    }
}
