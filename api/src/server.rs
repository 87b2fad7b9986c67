//! Serving the router over HTTP/1.1 with two guards against clients that hold connections:
//! a cap on open connections and a deadline for each request's head.
//!
//! A connection holds a permit from accept to close, and the loop takes a permit *before* it
//! accepts: when all are held, new clients wait in the kernel's accept backlog (past it, their
//! SYNs go unanswered and their TCP stack retries) instead of costing this process memory and
//! file descriptors. A client that connects and sends nothing, or dribbles its headers
//! (slowloris), is disconnected after the header timeout, which also bounds how long an idle
//! keep-alive connection keeps its permit; a slow body is the request timeout's business.
//!
//! Hand-written (on hyper, as `axum::serve` is) because nothing in reach does both:
//! `axum::serve` builds its hyper connections without a timer, so hyper's header-read timeout
//! never fires, and offers no way to set one; an `axum::serve::Listener` wrapper could count
//! connections but not time out their heads; tower's `ConcurrencyLimit` counts requests, not
//! connections. A separate cap on in-flight requests is not needed: HTTP/1 runs one request at
//! a time per connection, so the connection cap is also the in-flight cap.

use std::{net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::add_extension::AddExtension;

/// Limits on the connections one api process serves.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; 0 means no cap.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after connecting (or
    /// after its last response) is closed; zero means never.
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets open connections finish their
/// request (idle ones close at once) and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(match limits.max_connections {
        0 => Semaphore::MAX_PERMITS,
        n => n.min(Semaphore::MAX_PERMITS),
    }));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Some(limits.header_read_timeout).filter(|timeout| !timeout.is_zero()));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            () = shutdown.cancelled() => break,
        };
        // Only `close` makes acquiring fail, and this semaphore is never closed.
        let Ok(permit) = permit else { break };
        if permits.available_permits() == 0 {
            tracing::debug!("connection cap reached; new connections wait in the backlog");
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // The peer address is what the audit trail records as "from where" and what the
        // failed-authentication budget is keyed by (`ConnectInfo`, as axum's own serve sets it).
        let service = TowerToHyperService::new(AddExtension::new(
            router.clone(),
            ConnectInfo::<SocketAddr>(peer),
        ));
        let http = http.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit; // released when this connection ends
            let mut connection = pin!(http.serve_connection(TokioIo::new(stream), service));
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // Clients that hang up or time out their head are routine, not failures here.
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// As `axum::serve` does: a connection that failed during accept is the client's problem; any
/// other error (out of file descriptors, say) is logged and retried after a pause, so the loop
/// neither dies nor spins.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
