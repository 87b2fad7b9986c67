//! Conveyor's benchmark harness. It starts nothing: it measures an api and worker that are
//! already running (`scripts/bench.sh` starts a fresh release stack and runs it), and the raw
//! RabbitMQ and Postgres they run on, so every figure in one report comes from the same machine
//! in the same minute. The end-to-end figures are meant to be read against the raw ones.
//!
//! Timings come from the wall clock of this machine and from Postgres' `now()` for the moments a
//! job started and finished; both read the same system clock when the stack is local.

#![forbid(unsafe_code)]

pub mod args;
/// CPU time per part of the stack.
pub mod cpu;
/// Enqueue latency at a fixed request rate, and start latency on an idle system.
pub mod latency;
/// Resident memory of the stack's processes, from `/proc`.
pub mod memory;
/// Raw RabbitMQ: persistent publish with confirms, consume with acks.
pub mod raw_broker;
/// Raw Postgres: multi-row inserts into a copy of the jobs table.
pub mod raw_postgres;
/// The report table.
pub mod report;
/// Continuous load while memory is sampled.
pub mod soak;
/// Percentiles.
pub mod stats;
/// End-to-end throughput through the HTTP API.
pub mod throughput;

pub use args::{Args, Section};

pub use report::Report;

/// Measures and prints the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("{}", measure(&args).await?);
    Ok(())
}

/// Runs the selected sections in an order that keeps them from disturbing one another: memory
/// at rest first, raw references, then load, start latency on the quiet system last.
pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    let args = args.clone();
    // reqwest is built with rustls and no provider of its own (the workspace's one TLS stack).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut report = Report::default();
    let idle = memory::sample(&args.processes());
    report.memory_idle(&idle);
    if args.wants(Section::RawBroker) {
        report.raw_broker(&raw_broker::run(&args).await?);
    }
    if args.wants(Section::RawPostgres) {
        report.raw_postgres(&raw_postgres::run(&args).await?);
    }
    let needs_stack = [
        Section::Batch,
        Section::Single,
        Section::Latency,
        Section::Start,
        Section::Soak,
    ]
    .into_iter()
    .any(|s| args.wants(s));
    if !needs_stack {
        return Ok(report);
    }
    let target = throughput::Target::connect(&args).await?;
    if args.wants(Section::Batch) {
        for _ in 0..args.rounds {
            let batch = throughput::batch(&target, &args).await?;
            report.throughput(&batch);
            // The raw rate drifts on a shared machine (here it moved 1.5x from one run to the
            // next), so each batch run is read against a raw run on either side of it, not one
            // before only; the raw run after one round is the one before the next.
            if args.wants(Section::RawBroker) {
                report.raw_broker_after(&raw_broker::run(&args).await?, &batch);
            }
        }
        report.rounds();
    }
    if args.wants(Section::Single) {
        report.throughput(&throughput::single(&target, &args).await?);
    }
    if args.wants(Section::Latency) {
        report.enqueue_latency(&latency::enqueue(&target, &args).await?);
    }
    if args.wants(Section::Start) {
        report.start_latency(&latency::start(&target, &args).await?);
    }
    if args.wants(Section::Soak) {
        report.soak(&soak::run(&target, &args).await?);
    }
    report.memory_peak(&memory::sample(&args.processes()));
    Ok(report)
}
