use clap::Parser;
use conveyor_api::{Application, Config, cli};
use conveyor_shared::{probe, shutdown, telemetry};

/// Conveyor api: accepts jobs over HTTP and relays them to RabbitMQ.
#[derive(Parser)]
#[command(version)]
enum Cli {
    /// Serve the HTTP API and run the outbox relay (the default).
    Serve,
    /// Create the database if missing and apply migrations.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(cli::KeysCommand),
    /// Per-queue statistics of a tenant: backlog, states, throughput, latency.
    Queues {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Inspect a job, or operate on jobs in bulk: retry dead ones, purge old finished ones.
    #[command(subcommand)]
    Jobs(cli::JobsCommand),
    /// Ask this api's /readyz (CONVEYOR_API_ADDR); exit 0 when ready.
    Healthcheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = if std::env::args().len() > 1 {
        Cli::parse()
    } else {
        Cli::Serve
    };
    let config = Config::from_env()?;
    match cli {
        Cli::Healthcheck => std::process::exit(if probe::healthcheck(config.addr).await {
            0
        } else {
            1
        }),
        Cli::Migrate => cli::migrate(&config).await,
        Cli::Keys(command) => cli::keys(&config, command).await,
        Cli::Jobs(command) => cli::jobs(&config, command).await,
        Cli::Queues { tenant } => cli::queues(&config, &tenant).await,
        Cli::Serve => {
            telemetry::init_logging();
            tracing::info!(?config, "starting api");
            let app = Application::build(config).await?;
            app.run_until_stopped(shutdown::on_signal()).await
        }
    }
}
