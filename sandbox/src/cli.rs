//! The command line. Settings come from the environment (see [`crate::config`]); the subcommand
//! picks what to do with them.

use crate::config::Config;

#[derive(Debug, clap::Parser)]
#[command(name = "conveyor-sandbox", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Copy, Default, clap::Subcommand)]
pub enum Command {
    /// Serve the payment and analytics stand-ins (the default).
    #[default]
    Serve,
    /// Ask the running sandbox's `/readyz` (at `CONVEYOR_SANDBOX_ADDR`); exit 0 if ready, 1 if not.
    Healthcheck,
}
