//! Configuration shared by every service, read from environment variables.
//!
//! Each service has one `Config` struct of its own that embeds the pieces here; defaults are the
//! ones in ARCHITECTURE.md so that `cargo run` works against a local Postgres and RabbitMQ.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};

/// A configuration value that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

/// Reads `name`, falling back to `default` when unset or empty.
pub fn var_or(name: &'static str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, falling back to `default` when unset or empty.
pub fn parse_or<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e: T::Err| ConfigError {
            name,
            reason: format!("cannot parse {v:?}: {e}"),
        }),
        _ => Ok(default),
    }
}

/// Reads a millisecond duration.
pub fn millis_or(name: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
    parse_or(name, default_ms).map(Duration::from_millis)
}

/// Postgres connection settings.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Contains the password when there is one, hence secret.
    pub url: SecretString,
    pub max_connections: u32,
}

impl DatabaseConfig {
    pub const DEFAULT_URL: &'static str = "postgres://postgres@127.0.0.1:5432/conveyor";

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            url: SecretString::from(var_or("DATABASE_URL", Self::DEFAULT_URL)),
            max_connections: parse_or("CONVEYOR_DB_MAX_CONNECTIONS", 10)?,
        })
    }

    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            max_connections: 10,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// RabbitMQ connection and topology settings.
#[derive(Clone)]
pub struct BrokerConfig {
    pub url: SecretString,
    /// Queues are named `<prefix>.<queue>`; tests use a unique prefix to stay isolated.
    pub queue_prefix: String,
    /// `quorum` (default, replicated and durable) or `classic`.
    pub queue_type: String,
    /// Delay before reconnecting after the broker went away, doubled up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// RabbitMQ's management API (`CONVEYOR_RABBITMQ_MANAGEMENT_URL`), for unacked counts;
    /// `None` when set empty.
    pub management_url: Option<String>,
    /// Extra roots trusted for `amqps://` (`CONVEYOR_AMQP_CA_FILE`), e.g. a self-signed broker's
    /// CA; the platform's trust store is always used as well.
    pub ca: Option<CaCertificates>,
}

impl BrokerConfig {
    pub const DEFAULT_URL: &'static str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    pub const DEFAULT_MANAGEMENT_URL: &'static str = "http://127.0.0.1:15672";

    pub fn from_env() -> Result<Self, ConfigError> {
        let queue_type = var_or("CONVEYOR_QUEUE_TYPE", "quorum");
        if queue_type != "quorum" && queue_type != "classic" {
            return Err(ConfigError {
                name: "CONVEYOR_QUEUE_TYPE",
                reason: format!("expected quorum or classic, got {queue_type:?}"),
            });
        }
        let url = var_or("AMQP_URL", Self::DEFAULT_URL);
        let ca = match std::env::var("CONVEYOR_AMQP_CA_FILE") {
            Ok(path) if !path.trim().is_empty() => {
                // A CA for a plain connection would be silently ignored: say so instead.
                if !url.trim_start().starts_with("amqps://") {
                    return Err(ConfigError {
                        name: "CONVEYOR_AMQP_CA_FILE",
                        reason: "is set, but AMQP_URL does not start with amqps://".into(),
                    });
                }
                Some(CaCertificates::load("CONVEYOR_AMQP_CA_FILE", path.trim())?)
            }
            _ => None,
        };
        Ok(Self {
            url: SecretString::from(url),
            queue_prefix: var_or("CONVEYOR_QUEUE_PREFIX", "conveyor"),
            queue_type,
            reconnect_min: millis_or("CONVEYOR_RECONNECT_MIN_MS", 200)?,
            reconnect_max: millis_or("CONVEYOR_RECONNECT_MAX_MS", 5_000)?,
            management_url: match std::env::var("CONVEYOR_RABBITMQ_MANAGEMENT_URL") {
                Ok(v) if v.trim().is_empty() => None,
                Ok(v) => Some(v.trim().to_owned()),
                Err(_) => Some(Self::DEFAULT_MANAGEMENT_URL.to_owned()),
            },
            ca,
        })
    }

    pub fn with_url(url: impl Into<String>, queue_prefix: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            queue_prefix: queue_prefix.into(),
            queue_type: "quorum".into(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            management_url: Some(Self::DEFAULT_MANAGEMENT_URL.to_owned()),
            ca: None,
        }
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("queue_prefix", &self.queue_prefix)
            .field("queue_type", &self.queue_type)
            .field("ca", &self.ca.as_ref().map(|ca| ca.path.display()))
            .finish()
    }
}

/// PEM root certificates read from a file once, at startup: a missing or unreadable file, or one
/// without a single certificate, is a configuration error rather than a TLS failure on every
/// reconnect (rustls would silently skip what it cannot parse).
#[derive(Clone)]
pub struct CaCertificates {
    pub path: PathBuf,
    pem: String,
}

impl CaCertificates {
    /// Reads and checks the PEM file at `path`; `name` is the variable it came from, for errors.
    pub fn load(name: &'static str, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};

        let path = path.as_ref();
        let error = |reason: String| ConfigError { name, reason };
        let pem = std::fs::read_to_string(path)
            .map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            cert.map_err(|e| error(format!("{}: invalid PEM: {e}", path.display())))?;
            count += 1;
        }
        if count == 0 {
            return Err(error(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            pem,
        })
    }

    /// The certificates as PEM text.
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// The queues a deployment serves (`CONVEYOR_QUEUES`, comma-separated).
pub fn queues_from_env() -> Result<Vec<String>, ConfigError> {
    let raw = var_or("CONVEYOR_QUEUES", "default,transactions,integrations");
    let queues: Vec<String> = raw
        .split(',')
        .map(|q| q.trim().to_owned())
        .filter(|q| !q.is_empty())
        .collect();
    if let Some(bad) = queues.iter().find(|q| !crate::job::valid_queue_name(q)) {
        return Err(ConfigError {
            name: "CONVEYOR_QUEUES",
            reason: format!("invalid queue name {bad:?} (use a-z, 0-9, '-', '_')"),
        });
    }
    if queues.is_empty() {
        return Err(ConfigError {
            name: "CONVEYOR_QUEUES",
            reason: "no queues configured".into(),
        });
    }
    Ok(queues)
}

/// Replaces the password of a `scheme://user:password@host/...` URL for logging.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparseable url>".into();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@db:5432/conveyor"),
            "postgres://postgres@db:5432/conveyor"
        );
        assert_eq!(redact_url("nonsense"), "<unparseable url>");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("conveyor-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = CaCertificates::load("X", &empty).err().unwrap().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = CaCertificates::load("X", dir.join("missing.pem"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
