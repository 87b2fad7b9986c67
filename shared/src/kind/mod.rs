//! Job kinds and their payloads. Each payload type validates itself; the API calls
//! [`JobKind::parse`] before anything is stored, so a worker only ever sees payloads that fit.
//!
//! A kind is listed here only once a worker handler for it exists, so the API never accepts a
//! job no worker can run.

pub mod integrations;
pub mod payments;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::enqueue::FieldError;
pub use integrations::{AnalyticsTrackPayload, WebhookDeliverPayload};
pub use payments::{ChargePayload, RefundPayload, TransferPayload};

/// A validated job kind with its payload.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    Noop(NoopPayload),
    Charge(ChargePayload),
    Refund(RefundPayload),
    Transfer(TransferPayload),
    AnalyticsTrack(AnalyticsTrackPayload),
    WebhookDeliver(WebhookDeliverPayload),
}

impl JobKind {
    /// The kinds the API accepts, by name.
    pub const NAMES: &'static [&'static str] = &[
        "noop",
        "payment.charge",
        "payment.refund",
        "ledger.transfer",
        "analytics.track",
        "webhook.deliver",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Noop(_) => "noop",
            Self::Charge(_) => "payment.charge",
            Self::Refund(_) => "payment.refund",
            Self::Transfer(_) => "ledger.transfer",
            Self::AnalyticsTrack(_) => "analytics.track",
            Self::WebhookDeliver(_) => "webhook.deliver",
        }
    }

    /// The queue a kind goes to when the request names none.
    pub fn default_queue(&self) -> &'static str {
        match self {
            Self::Noop(_) => "default",
            Self::Charge(_) | Self::Refund(_) | Self::Transfer(_) => "transactions",
            Self::AnalyticsTrack(_) | Self::WebhookDeliver(_) => "integrations",
        }
    }

    /// Seconds an attempt may run when the request does not say.
    pub fn default_timeout_secs(&self) -> i32 {
        match self {
            Self::Noop(_) => 60,
            Self::Charge(_) | Self::Refund(_) | Self::Transfer(_) => 30,
            // An event may wait for a batch and the rate limit before it is sent.
            Self::AnalyticsTrack(_) => 120,
            Self::WebhookDeliver(_) => 60,
        }
    }

    /// Parses and validates `payload` for `kind`. `field` is the path of the payload in the
    /// request (e.g. `jobs[3].payload`), used to name the offending field in errors.
    pub fn parse(
        kind: &str,
        payload: &serde_json::Value,
        field: &str,
    ) -> Result<Self, Vec<FieldError>> {
        match kind {
            "noop" => checked(payload, field, NoopPayload::validate).map(Self::Noop),
            "payment.charge" => checked(payload, field, ChargePayload::validate).map(Self::Charge),
            "payment.refund" => checked(payload, field, RefundPayload::validate).map(Self::Refund),
            "ledger.transfer" => {
                checked(payload, field, TransferPayload::validate).map(Self::Transfer)
            }
            "analytics.track" => {
                checked(payload, field, AnalyticsTrackPayload::validate).map(Self::AnalyticsTrack)
            }
            "webhook.deliver" => {
                checked(payload, field, WebhookDeliverPayload::validate).map(Self::WebhookDeliver)
            }
            other => Err(vec![FieldError::new(
                field
                    .strip_suffix("payload")
                    .map_or("kind".into(), |p| format!("{p}kind")),
                format!(
                    "unknown job kind {other:?}; known kinds: {}",
                    Self::NAMES.join(", ")
                ),
            )]),
        }
    }
}

/// Deserialises a payload and runs its own validation.
fn checked<T: DeserializeOwned>(
    payload: &serde_json::Value,
    field: &str,
    validate: fn(&T, &str) -> Result<(), Vec<FieldError>>,
) -> Result<T, Vec<FieldError>> {
    let typed: T = typed(payload, field)?;
    validate(&typed, field)?;
    Ok(typed)
}

/// Deserialises a payload, naming the exact field that does not fit.
fn typed<T: DeserializeOwned>(
    payload: &serde_json::Value,
    field: &str,
) -> Result<T, Vec<FieldError>> {
    // serde's derived structs also accept a JSON array (fields by position); a payload is an
    // object and nothing else.
    if !payload.is_object() {
        return Err(vec![FieldError::new(field, "must be a JSON object")]);
    }
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let message = e.inner().to_string();
        // serde_path_to_error ends the path with an unknown key itself; the field at fault is
        // the object that does not accept it.
        let mut segments: Vec<_> = e.path().iter().collect();
        if message.starts_with("unknown field `") {
            segments.pop();
        }
        let mut at = field.to_owned();
        for segment in segments {
            if !matches!(segment, serde_path_to_error::Segment::Seq { .. }) {
                at.push('.');
            }
            at.push_str(&segment.to_string());
        }
        vec![FieldError::new(at, message)]
    })
}

/// `noop`: a diagnostic job for smoke tests, load tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopPayload {
    /// Sleep this long before finishing.
    #[serde(default)]
    pub sleep_ms: Option<u64>,
    /// Fail (retryably) the first N attempts.
    #[serde(default)]
    pub fail_times: Option<u32>,
    /// Panic inside the handler.
    #[serde(default)]
    pub panic: Option<bool>,
    /// Fail with a permanent error (the job goes straight to `dead`).
    #[serde(default)]
    pub fail_permanently: Option<bool>,
    /// With `fail_times`: ask for this delay before the next attempt, as a `Retry-After` would.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

impl NoopPayload {
    const MAX_SLEEP_MS: u64 = 3_600_000;

    fn validate(&self, field: &str) -> Result<(), Vec<FieldError>> {
        match self.sleep_ms {
            Some(ms) if ms > Self::MAX_SLEEP_MS => Err(vec![FieldError::new(
                format!("{field}.sleep_ms"),
                format!("must be at most {} (one hour)", Self::MAX_SLEEP_MS),
            )]),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn noop_accepts_its_fields() {
        let kind =
            JobKind::parse("noop", &json!({"sleep_ms": 5, "fail_times": 2}), "payload").unwrap();
        assert_eq!(
            kind,
            JobKind::Noop(NoopPayload {
                sleep_ms: Some(5),
                fail_times: Some(2),
                ..Default::default()
            })
        );
    }

    #[test]
    fn names_the_offending_field() {
        let err =
            JobKind::parse("noop", &json!({"sleep_ms": "soon"}), "jobs[2].payload").unwrap_err();
        assert_eq!(err[0].field, "jobs[2].payload.sleep_ms");
        let err = JobKind::parse("noop", &json!({"bogus": 1}), "payload").unwrap_err();
        assert_eq!(err[0].field, "payload");
        assert!(err[0].message.contains("bogus"), "{}", err[0].message);
        let err = JobKind::parse("nope", &json!({}), "jobs[0].payload").unwrap_err();
        assert_eq!(err[0].field, "jobs[0].kind");
    }
}
