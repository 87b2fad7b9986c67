//! Logs and metrics. Logs go to stderr, JSON when `CONVEYOR_LOG_FORMAT=json`; metrics are kept
//! by a process-wide Prometheus recorder that each `/metrics` endpoint renders.

use std::{io::IsTerminal, sync::OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Caps the crate that would log the broker password at TRACE (its `Connecting.` event).
const AMQP_TCP_QUIET: &str = "amq_protocol_tcp=debug";

/// Installs the global tracing subscriber; a second call (tests) is a no-op.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // amq-protocol-tcp traces the parsed AMQP URL, password included, whatever RUST_LOG says.
        .add_directive(AMQP_TCP_QUIET.parse().expect("a valid directive"));
    let json = match std::env::var("CONVEYOR_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
}

/// The process's metrics recorder, installed on first use. Every service calls it before doing
/// anything else: a metric recorded before the recorder is installed is lost.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ])
            .expect("static bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then our handle renders nothing
        // but the process keeps working.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        // The exporter keeps every histogram sample until it folds them into the buckets, which
        // it does on a scrape or on upkeep. Unscraped, a worker grew by ~36 bytes per job (2 MiB a
        // minute at 1,000 jobs/s: the 10-minute soak of `conveyor-bench` found it). A plain thread,
        // so the upkeep needs no runtime and runs whoever calls this first.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms grow until scraped");
        }
        handle
    })
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
