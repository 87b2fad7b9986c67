use clap::Parser;
use conveyor_scheduler::Config;
use conveyor_shared::{probe, shutdown, telemetry};

/// Conveyor scheduler: emits recurring jobs and relays due jobs to RabbitMQ.
#[derive(Parser)]
#[command(version)]
enum Cli {
    /// Run the scheduler (the default).
    Run,
    /// Ask this scheduler's /readyz (CONVEYOR_SCHEDULER_ADDR); exit 0 when ready.
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
            tracing::info!(?config, "starting scheduler");
            conveyor_scheduler::run(config, shutdown::on_signal()).await
        }
    }
}
