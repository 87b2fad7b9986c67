//! TLS for outgoing HTTPS; see `conveyor_shared::tls`.

pub use conveyor_shared::tls::install;
