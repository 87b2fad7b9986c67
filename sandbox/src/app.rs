//! The sandbox application: one router for both stand-ins, bound to `CONVEYOR_SANDBOX_ADDR`.
//!
//! Faults are layered on the service routes only; `/healthz` and `/readyz` always answer, so a fault
//! experiment never makes compose think the sandbox is down.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::analytics::{self, Analytics};
use crate::config::{Config, FaultConfig};
use crate::faults::{self, Faults};
use crate::payments::{self, Payments};

/// The whole HTTP surface, with fresh, empty state.
pub fn router(faults: &FaultConfig) -> Router {
    let services = Router::new()
        .nest(
            "/payments/v1",
            payments::routes(Arc::new(Payments::default())),
        )
        .nest(
            "/analytics/v1",
            analytics::routes(Arc::new(Analytics::default())),
        )
        .layer(middleware::from_fn_with_state(
            Arc::new(Faults::new(faults)),
            faults::inject,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .merge(services)
}

/// A bound listener and its router, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Bind `config.addr` (port 0 picks a free port; see [`Application::local_addr`]).
    pub async fn bind(config: &Config) -> io::Result<Self> {
        let listener = TcpListener::bind(config.addr).await?;
        Ok(Self {
            listener,
            router: router(&config.faults),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` completes, then let in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "sandbox listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Bind `config.addr` and serve until Ctrl-C or SIGTERM.
pub async fn serve(config: &Config) -> io::Result<()> {
    Application::bind(config)
        .await?
        .run_until_stopped(shutdown_signal())
        .await
}

/// Completes on Ctrl-C or SIGTERM (what `docker stop` sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
