//! Payloads of the integration kinds: `analytics.track` and `webhook.deliver`.
//!
//! A webhook URL is checked here for shape (http/https, a host, bounded length) and, when its host
//! is a literal IP address, against the egress classifier: `http://169.254.169.254/` is refused at
//! enqueue. Host names are only resolved at delivery, where the worker applies the full egress
//! policy (including the operator's allow list), so passing here is necessary, not sufficient.

use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::{egress, enqueue::FieldError};

/// Longest event name, in characters.
pub const MAX_EVENT_CHARS: usize = 200;
/// Longest user id, in characters.
pub const MAX_USER_ID_CHARS: usize = 200;
/// Longest webhook URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// `analytics.track`: one event forwarded to the analytics service; the job id is its event id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsTrackPayload {
    pub event: String,
    #[serde(default)]
    pub user_id: Option<String>,
    /// A JSON object; `{}` when absent.
    #[serde(default = "empty_object")]
    pub properties: serde_json::Value,
}

/// `webhook.deliver`: a signed POST of `{type: event, timestamp, data}` to `url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDeliverPayload {
    pub url: String,
    pub event: String,
    /// Any JSON; `null` when absent.
    #[serde(default)]
    pub data: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn event_name(field: &str, event: &str, errors: &mut Vec<FieldError>) {
    let at = format!("{field}.event");
    if event.trim().is_empty() {
        errors.push(FieldError::new(at, "must not be empty"));
    } else if event.chars().count() > MAX_EVENT_CHARS {
        errors.push(FieldError::new(
            at,
            format!("must be at most {MAX_EVENT_CHARS} characters"),
        ));
    }
}

impl AnalyticsTrackPayload {
    pub fn validate(&self, field: &str) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        event_name(field, &self.event, &mut errors);
        if let Some(user) = &self.user_id {
            if user.trim().is_empty() {
                errors.push(FieldError::new(
                    format!("{field}.user_id"),
                    "must not be empty when present",
                ));
            } else if user.chars().count() > MAX_USER_ID_CHARS {
                errors.push(FieldError::new(
                    format!("{field}.user_id"),
                    format!("must be at most {MAX_USER_ID_CHARS} characters"),
                ));
            }
        }
        if !self.properties.is_object() {
            errors.push(FieldError::new(
                format!("{field}.properties"),
                "must be a JSON object",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl WebhookDeliverPayload {
    pub fn validate(&self, field: &str) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(message) = check_url(&self.url) {
            errors.push(FieldError::new(format!("{field}.url"), message));
        }
        event_name(field, &self.event, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Parses a webhook URL and checks what can be checked without DNS.
pub fn check_url(raw: &str) -> Result<Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} bytes"));
    }
    let url =
        Url::parse(raw).map_err(|e| format!("must be an absolute http or https URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must use http or https, not {:?}", url.scheme()));
    }
    let ip = match url.host() {
        None => return Err("must have a host".into()),
        Some(Host::Domain(_)) => return Ok(url),
        Some(Host::Ipv4(v4)) => v4.into(),
        Some(Host::Ipv6(v6)) => v6.into(),
    };
    match egress::non_public(ip) {
        None => Ok(url),
        Some(range) => Err(format!(
            "the egress policy refuses {ip} ({range} address); webhook targets must be public \
             (an operator-allowed internal target must be named by a host name)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::kind::JobKind;

    fn fields(kind: &str, payload: serde_json::Value) -> Vec<String> {
        JobKind::parse(kind, &payload, "payload")
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn analytics_accepts_a_plain_event() {
        let kind = JobKind::parse(
            "analytics.track",
            &json!({"event": "signed_up", "user_id": "u1", "properties": {"plan": "pro"}}),
            "payload",
        )
        .unwrap();
        assert_eq!(kind.name(), "analytics.track");
        assert_eq!(kind.default_queue(), "integrations");
        let kind = JobKind::parse("analytics.track", &json!({"event": "x"}), "payload").unwrap();
        let JobKind::AnalyticsTrack(p) = kind else {
            panic!("wrong kind")
        };
        assert_eq!(p.properties, json!({}));
    }

    #[test]
    fn analytics_names_bad_fields() {
        assert_eq!(
            fields("analytics.track", json!({"event": " "})),
            ["payload.event"]
        );
        assert_eq!(
            fields("analytics.track", json!({"event": "e".repeat(201)})),
            ["payload.event"]
        );
        assert_eq!(
            fields("analytics.track", json!({"event": "ok", "properties": [1]})),
            ["payload.properties"]
        );
        assert_eq!(
            fields("analytics.track", json!({"event": "ok", "user_id": ""})),
            ["payload.user_id"]
        );
        assert_eq!(fields("analytics.track", json!({})), ["payload"]);
        assert!(JobKind::parse("analytics.track", &json!({"event": "é".repeat(200)}), "p").is_ok());
    }

    #[test]
    fn webhook_accepts_public_targets() {
        for url in [
            "https://example.com/hooks",
            "http://localhost:8080/x", // names are resolved and checked at delivery
            "https://93.184.216.34/hook",
            "https://[2606:4700:4700::1111]/hook",
        ] {
            let kind = JobKind::parse(
                "webhook.deliver",
                &json!({"url": url, "event": "invoice.paid", "data": {"id": 1}}),
                "payload",
            );
            assert!(kind.is_ok(), "{url}: {kind:?}");
        }
    }

    #[test]
    fn webhook_refuses_bad_urls_naming_the_field() {
        for url in [
            "not a url",
            "/relative",
            "ftp://example.com/x",
            "file:///etc/passwd",
            "http://127.0.0.1:9000/",
            "http://0x7f.1/", // WHATWG parsing turns this into 127.0.0.1
            "http://[::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/",
            "http://192.168.1.1/",
        ] {
            assert_eq!(
                fields(
                    "webhook.deliver",
                    json!({"url": url, "event": "e", "data": null})
                ),
                ["payload.url"],
                "{url}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(
            fields("webhook.deliver", json!({"url": long, "event": "e"})),
            ["payload.url"]
        );
        assert_eq!(
            fields(
                "webhook.deliver",
                json!({"url": "http://10.0.0.1/", "event": ""})
            ),
            ["payload.url", "payload.event"]
        );
    }

    #[test]
    fn refusal_says_it_is_the_egress_policy() {
        let err = JobKind::parse(
            "webhook.deliver",
            &json!({"url": "http://127.0.0.1/", "event": "e"}),
            "payload",
        )
        .unwrap_err();
        assert!(
            err[0].message.contains("egress policy"),
            "{}",
            err[0].message
        );
        assert!(err[0].message.contains("loopback"), "{}", err[0].message);
    }
}
