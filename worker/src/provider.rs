//! The payment provider's HTTP API (the sandbox locally): charges and refunds, each sent with an
//! `Idempotency-Key` so that a retried call returns the original result instead of charging again.
//!
//! Calls carry the job's `traceparent` (W3C Trace Context) when it was enqueued with one.
//!
//! Errors are classified here, once: declines (402) and other 4xx are permanent; 429 is
//! retryable after `Retry-After`; 5xx, timeouts and connection failures are retryable.

use std::time::Duration;

use reqwest::{Response, StatusCode, header::RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use conveyor_shared::trace::{self, TraceParent};

use crate::handlers::HandlerError;

/// Longest provider answer read; anything bigger is not a charge.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct PaymentProvider {
    pub http: reqwest::Client,
    pub base_url: String,
    /// Sent as a bearer token; never logged.
    pub api_key: Option<SecretString>,
}

#[derive(Debug, Serialize)]
struct ChargeRequest<'a> {
    amount_minor: i64,
    currency: &'a str,
    reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct RefundRequest<'a> {
    charge_id: &'a str,
    amount_minor: i64,
}

/// The provider's record of a charge or refund: only its id matters to us.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderObject {
    pub id: String,
}

impl PaymentProvider {
    /// Charges once per `idempotency_key` (the job id).
    pub async fn charge(
        &self,
        idempotency_key: &str,
        amount_minor: i64,
        currency: &str,
        source: Option<&str>,
        traceparent: Option<&TraceParent>,
    ) -> Result<ProviderObject, HandlerError> {
        let body = ChargeRequest {
            amount_minor,
            currency,
            reference: idempotency_key,
            source,
        };
        self.post("/payments/v1/charges", idempotency_key, &body, traceparent)
            .await
    }

    /// Refunds `amount_minor` of `charge_id` once per `idempotency_key` (the refund job id).
    pub async fn refund(
        &self,
        idempotency_key: &str,
        charge_id: &str,
        amount_minor: i64,
        traceparent: Option<&TraceParent>,
    ) -> Result<ProviderObject, HandlerError> {
        let body = RefundRequest {
            charge_id,
            amount_minor,
        };
        self.post("/payments/v1/refunds", idempotency_key, &body, traceparent)
            .await
    }

    async fn post<B: Serialize>(
        &self,
        path: &str,
        key: &str,
        body: &B,
        traceparent: Option<&TraceParent>,
    ) -> Result<ProviderObject, HandlerError> {
        let url = format!("{}{path}", self.base_url.trim_end_matches('/'));
        let mut request = self
            .http
            .post(&url)
            .header("Idempotency-Key", key)
            .json(body);
        if let Some(api_key) = &self.api_key {
            request = request.bearer_auth(api_key.expose_secret());
        }
        if let Some(traceparent) = traceparent {
            request = request.header(trace::HEADER, traceparent.as_str());
        }
        let response = request.send().await.map_err(|e| {
            HandlerError::retryable(format!("payment provider unreachable: {}", without_url(e)))
        })?;
        let status = response.status();
        if status.is_success() {
            let bytes = read_capped(response).await?;
            return serde_json::from_slice(&bytes).map_err(|e| {
                HandlerError::retryable(format!(
                    "payment provider answered {status} with an unreadable body: {e}"
                ))
            });
        }
        let retry_after = retry_after(&response);
        let detail = String::from_utf8_lossy(&read_capped(response).await.unwrap_or_default())
            .chars()
            .take(300)
            .collect::<String>();
        Err(classify(status, retry_after, &detail))
    }
}

/// What a non-2xx provider answer means for the job.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, detail: &str) -> HandlerError {
    let message = format!("payment provider answered {status}: {detail}");
    match status {
        StatusCode::PAYMENT_REQUIRED => HandlerError::Permanent(format!("declined: {message}")),
        StatusCode::TOO_MANY_REQUESTS => HandlerError::Retryable {
            message,
            retry_after,
        },
        StatusCode::REQUEST_TIMEOUT => HandlerError::retryable(message),
        s if s.is_server_error() => HandlerError::Retryable {
            message,
            retry_after,
        },
        _ => HandlerError::Permanent(message),
    }
}

fn retry_after(response: &Response) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

async fn read_capped(mut response: Response) -> Result<Vec<u8>, HandlerError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        HandlerError::retryable(format!("reading the provider's answer: {}", without_url(e)))
    })? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(HandlerError::retryable(
                "the provider's answer is larger than 64 KiB",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest errors print the URL; ours carries no secret, but keep messages short and stable.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind} ({})", e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_errors_are_classified() {
        let permanent = |s: u16| {
            matches!(
                classify(StatusCode::from_u16(s).unwrap(), None, ""),
                HandlerError::Permanent(_)
            )
        };
        assert!(permanent(402) && permanent(400) && permanent(404) && permanent(422));
        assert!(!permanent(500) && !permanent(503) && !permanent(429) && !permanent(408));
        let HandlerError::Retryable { retry_after, .. } = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            "",
        ) else {
            panic!("429 must be retryable")
        };
        assert_eq!(retry_after, Some(Duration::from_secs(3)));
    }
}
