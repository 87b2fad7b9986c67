//! TLS for outgoing HTTPS (payment provider, analytics, webhooks, RabbitMQ's management API):
//! rustls with the ring crypto provider and the platform's trust store. The provider is
//! process-wide and must be installed before the first HTTP client is built.

/// Installs the ring provider; later calls (and a provider installed by someone else) are fine.
pub fn install() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
