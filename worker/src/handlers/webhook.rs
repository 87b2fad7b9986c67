//! `webhook.deliver`: a POST of `{type, timestamp, data}` signed by the Standard Webhooks scheme
//! to a tenant's URL, through the egress policy and the target host's circuit breaker.
//!
//! `webhook-id` is the job id, so it is the same on every attempt and receivers can de-duplicate.
//! 2xx succeeds; 408, 429, 5xx, timeouts and connection errors are retried (429/503 with their
//! `Retry-After`); any other status, redirects included, is permanent. A target the egress policy
//! refuses is permanent and is never connected to.

use std::{sync::Arc, time::Duration};

use chrono::{SecondsFormat, Utc};
use conveyor_shared::kind::WebhookDeliverPayload;
use futures_util::{FutureExt, future::BoxFuture};
use reqwest::{
    StatusCode,
    header::{CONTENT_TYPE, USER_AGENT},
};
use secrecy::SecretString;
use serde_json::json;

use super::{Handler, HandlerError, HandlerResult, JobContext};
use crate::{
    breaker::Breakers,
    egress::{EgressError, EgressPolicy},
    response::{self, Verdict},
    signing::Signer,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole request, body included; well under the kind's default 60 s attempt timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const AGENT: &str = concat!("Conveyor-Webhooks/", env!("CARGO_PKG_VERSION"));

/// The `webhook.deliver` handler.
pub struct Webhook {
    /// `Err` says why this worker cannot sign (no or bad `CONVEYOR_WEBHOOK_SECRET`).
    signer: Result<Arc<Signer>, String>,
    egress: EgressPolicy,
    breakers: Arc<Breakers>,
}

impl Webhook {
    pub fn new(
        secret: Option<&SecretString>,
        egress: EgressPolicy,
        breakers: Arc<Breakers>,
    ) -> Self {
        let signer = match secret {
            None => Err(
                "webhook.deliver needs a signing secret, and this worker has none: \
                         set CONVEYOR_WEBHOOK_SECRET (whsec_ + base64)"
                    .to_owned(),
            ),
            Some(secret) => Signer::new(secret)
                .map(Arc::new)
                .map_err(|e| format!("CONVEYOR_WEBHOOK_SECRET is unusable: {e}")),
        };
        Self {
            signer,
            egress,
            breakers,
        }
    }
}

impl Handler for Webhook {
    fn run(&self, job: JobContext) -> BoxFuture<'static, HandlerResult> {
        let signer = self.signer.clone();
        let egress = self.egress.clone();
        let breakers = self.breakers.clone();
        async move {
            let signer = signer.map_err(HandlerError::Permanent)?;
            deliver(job, &signer, &egress, &breakers).await
        }
        .boxed()
    }
}

async fn deliver(
    job: JobContext,
    signer: &Signer,
    egress: &EgressPolicy,
    breakers: &Breakers,
) -> HandlerResult {
    let payload: WebhookDeliverPayload = serde_json::from_value(job.payload)
        .map_err(|e| HandlerError::Permanent(format!("invalid webhook payload: {e}")))?;
    let target = egress.check(&payload.url).await.map_err(|e| match e {
        EgressError::Refused(_) => HandlerError::Permanent(e.to_string()),
        EgressError::Resolve { .. } => HandlerError::retryable(e.to_string()),
    })?;
    let host = target.authority.as_str();
    if let Err(wait) = breakers.admit(host) {
        return Err(HandlerError::Retryable {
            message: format!(
                "circuit breaker open for {host} after repeated failures; not calling it for {}s",
                wait.as_secs().max(1)
            ),
            retry_after: Some(wait),
        });
    }
    let id = job.id.to_string();
    let now = Utc::now();
    let body = serde_json::to_vec(&json!({
        "type": payload.event,
        "timestamp": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        "data": payload.data,
    }))
    .map_err(|e| HandlerError::Permanent(format!("cannot encode the webhook body: {e}")))?;
    let timestamp = now.timestamp();
    let signature = signer.sign(&id, timestamp, &body);
    let client = target
        .client(CONNECT_TIMEOUT, REQUEST_TIMEOUT)
        .map_err(|e| {
            HandlerError::Permanent(format!(
                "cannot build the HTTP client: {}",
                response::describe(e)
            ))
        })?;
    let mut request = client
        .post(target.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, AGENT)
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature);
    if let Some(traceparent) = &job.traceparent {
        request = request.header(conveyor_shared::trace::HEADER, traceparent.as_str());
    }
    let sent = request.body(body).send().await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            breakers.failure(host);
            return Err(HandlerError::retryable(format!(
                "webhook to {host} failed: {}",
                response::describe(e)
            )));
        }
    };
    let status = answer.status();
    let wait = response::retry_after(answer.headers());
    let body = response::read_capped(answer, response::MAX_BODY_BYTES)
        .await
        .unwrap_or_default();
    tracing::debug!(host, status = status.as_u16(), "webhook answered");
    let describe = || match response::snippet(&body) {
        quoted if quoted.is_empty() => format!("{host} answered {status}"),
        quoted => format!("{host} answered {status}: {quoted}"),
    };
    match response::verdict(status) {
        Verdict::Success => {
            breakers.success(host);
            Ok(json!({"status": status.as_u16(), "webhook_id": id}))
        }
        Verdict::Retry => {
            breakers.failure(host);
            let honours_retry_after = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            Err(HandlerError::Retryable {
                message: describe(),
                retry_after: wait.filter(|_| honours_retry_after),
            })
        }
        Verdict::Permanent => {
            // The host is up and said no: that is not a reason to open its circuit.
            breakers.success(host);
            let mut message = describe();
            if status.is_redirection() {
                message.push_str(" (redirects are not followed)");
            }
            Err(HandlerError::Permanent(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn https_targets_can_be_reached() {
        crate::tls::install();
        // Nothing listens there: the request must fail at connecting, not for want of TLS.
        let error = reqwest::Client::new()
            .post("https://127.0.0.1:1/")
            .send()
            .await
            .unwrap_err();
        let text = response::describe(error);
        assert!(!text.contains("scheme is not http"), "{text}");
    }
}
