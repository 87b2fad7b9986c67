//! The probe server every binary runs (`/healthz`, `/readyz`, `/metrics`) and the
//! `healthcheck` subcommand that asks it, so a container image needs no curl.

use std::{net::SocketAddr, time::Duration};

use axum::{Json, Router, http::StatusCode, response::IntoResponse, routing::get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{health::Health, telemetry};

/// The routes; the api merges them into its own router, worker and scheduler serve them alone.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    let readiness = health.check().await;
                    let status = if readiness.ready() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(readiness))
                }
            }),
        )
        .route("/metrics", get(metrics))
}

async fn metrics() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        telemetry::metrics().render(),
    )
}

/// Serves the probe routes on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "probe server listening");
    axum::serve(listener, router(health))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Asks `http://addr/readyz` and says whether it answered 200. A wildcard bind address
/// (`0.0.0.0`) is asked on loopback.
///
/// Written on a bare TCP stream: one GET with a fixed request does not justify an HTTP client
/// in every binary.
pub async fn healthcheck(addr: SocketAddr) -> bool {
    let target = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(Duration::from_secs(3), ask).await {
        Ok(Ok(response)) => {
            let status_line = response.split(|b| *b == b'\n').next().unwrap_or_default();
            String::from_utf8_lossy(status_line)
                .split_whitespace()
                .nth(1)
                == Some("200")
        }
        _ => false,
    }
}
