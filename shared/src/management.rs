//! RabbitMQ's management HTTP API, asked for what AMQP cannot tell: how many messages of a
//! queue are delivered and not yet acked. Optional: without the management plugin (or with
//! `CONVEYOR_RABBITMQ_MANAGEMENT_URL` empty) the figure is simply unknown.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::BrokerConfig;

pub struct ManagementApi {
    http: reqwest::Client,
    base: String,
    user: String,
    password: SecretString,
    vhost: String,
}

#[derive(Deserialize)]
struct QueueInfo {
    #[serde(default)]
    messages_unacknowledged: u32,
}

impl ManagementApi {
    /// From the broker settings: the management URL, and the user, password and vhost of the
    /// AMQP URL. `None` when no management URL is configured.
    pub fn from_config(config: &BrokerConfig) -> Option<Self> {
        let base = config.management_url.clone()?;
        let amqp = url::Url::parse(config.url.expose_secret()).ok()?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let vhost = match amqp.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            v => decode(v),
        };
        crate::tls::install();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .ok()?;
        Some(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            user: decode(amqp.username()),
            password: SecretString::from(decode(amqp.password().unwrap_or_default())),
            vhost,
        })
    }

    /// Unacked messages of each RabbitMQ queue in `names`, in order; `None` when the management
    /// API cannot be asked. A queue it does not know reads as 0.
    pub async fn unacked(&self, names: &[String]) -> Option<Vec<u32>> {
        let vhost = encode(&self.vhost);
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let url = format!("{}/api/queues/{vhost}/{}", self.base, encode(name));
            let response = self
                .http
                .get(url)
                .basic_auth(&self.user, Some(self.password.expose_secret()))
                .send()
                .await
                .ok()?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                out.push(0);
                continue;
            }
            let info: QueueInfo = response.error_for_status().ok()?.json().await.ok()?;
            out.push(info.messages_unacknowledged);
        }
        Some(out)
    }
}

/// Percent-encodes a path segment (the default vhost `/` becomes `%2F`).
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
