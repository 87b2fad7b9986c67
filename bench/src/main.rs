//! `conveyor-bench`: measures a running Conveyor stack and prints a table. See `bench/src/lib.rs`.

#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = conveyor_bench::Args::parse();
    conveyor_bench::run(args).await
}
