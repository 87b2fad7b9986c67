//! What to measure and where: flags, each with an environment variable and a local default.

use clap::{Parser, ValueEnum};

/// One part of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// RabbitMQ alone: persistent publish with confirms and consume with acks, through lapin.
    RawBroker,
    /// Postgres alone: multi-row inserts into a copy of the jobs table.
    RawPostgres,
    /// End to end through `POST /v1/jobs/batch`.
    Batch,
    /// End to end through `POST /v1/jobs` from many concurrent clients.
    Single,
    /// Enqueue latency at a fixed request rate.
    Latency,
    /// Start latency (enqueue → running) on an idle system.
    Start,
    /// Continuous load while the memory of api and worker is sampled.
    Soak,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "conveyor-bench",
    about = "Measures a running Conveyor stack and prints a table"
)]
pub struct Args {
    #[arg(
        long,
        env = "CONVEYOR_BENCH_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api_url: String,
    /// A token with `jobs:write` and `jobs:read` (never printed).
    #[arg(
        long,
        env = "CONVEYOR_BENCH_TOKEN",
        default_value = "dev-token",
        hide_env_values = true
    )]
    pub token: String,
    /// The stack's database: completion times are read from it, and the raw insert runs there.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/conveyor",
        hide_env_values = true
    )]
    pub database_url: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// The RabbitMQ queue type the stack uses, so the raw figure is for the same kind of queue.
    #[arg(long, env = "CONVEYOR_QUEUE_TYPE", default_value = "quorum")]
    pub queue_type: String,
    /// Sections to run, comma-separated; all but `soak` by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Section>,
    /// Noop jobs in the batch run.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Batch runs, each followed by a raw RabbitMQ run when that section runs too. With more
    /// than one, the report ends with each round's share of the raw rate around it and their
    /// median: the raw rate drifts from minute to minute, so one round can land either side of
    /// a target that the median does not.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Jobs per batch request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Batch requests in flight at once.
    #[arg(long, default_value_t = 2)]
    pub batch_clients: usize,
    /// Jobs in the single-request run.
    #[arg(long, default_value_t = 10_000)]
    pub single_jobs: usize,
    /// Concurrent clients in the single-request run.
    #[arg(long, default_value_t = 32)]
    pub single_clients: usize,
    /// Requests per second in the latency run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds the latency run lasts.
    #[arg(long, default_value_t = 10)]
    pub rate_secs: u32,
    /// Jobs in the start-latency run, sent one at a time.
    #[arg(long, default_value_t = 200)]
    pub start_samples: usize,
    /// Messages in the raw RabbitMQ run (and rows in the raw Postgres run).
    #[arg(long, default_value_t = 20_000)]
    pub raw_messages: usize,
    /// The raw consumer acks every this many deliveries at once (`multiple`); 1 acks each.
    #[arg(long, default_value_t = 100)]
    pub raw_ack_every: usize,
    /// Seconds of continuous load in the soak run.
    #[arg(long, default_value_t = 600)]
    pub soak_secs: u64,
    /// Jobs per second during the soak.
    #[arg(long, default_value_t = 1000)]
    pub soak_rate: u32,
    /// Process names (as in /proc/<pid>/comm) whose memory is reported.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "conveyor-api,conveyor-worker"
    )]
    pub process: Vec<String>,
}

impl Args {
    pub fn wants(&self, section: Section) -> bool {
        if self.only.is_empty() {
            section != Section::Soak
        } else {
            self.only.contains(&section)
        }
    }

    pub fn processes(&self) -> Vec<String> {
        self.process.clone()
    }
}
