//! The payment provider stand-in: `POST /payments/v1/charges`, `POST /payments/v1/refunds` and, for
//! tests, `GET /payments/v1/charges`.
//!
//! Both POSTs require an `Idempotency-Key`. A key is bound to the first request that succeeded with it:
//! the same request again gets the same object back (200 instead of 201) and books nothing; a different
//! request with that key is a 409. That is what lets a worker retry a charge without charging twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use crate::error::ErrorResponse;

/// The card source that is always declined.
pub const DECLINING_SOURCE: &str = "tok_decline";

const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Routes under `/payments/v1`.
pub fn routes(payments: Arc<Payments>) -> Router {
    Router::new()
        .route("/charges", post(create_charge).get(list_charges))
        .route("/refunds", post(create_refund))
        .with_state(payments)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChargeRequest {
    pub amount_minor: i64,
    pub currency: String,
    pub reference: String,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RefundRequest {
    pub charge_id: String,
    /// Defaults to everything not yet refunded.
    #[serde(default)]
    pub amount_minor: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Succeeded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reference: String,
    pub status: PaymentStatus,
    pub refunded_minor: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refund {
    pub id: String,
    pub charge_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub created_at: DateTime<Utc>,
}

/// What went wrong with a payment request, in the provider's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentError {
    Invalid(String),
    Declined,
    IdempotencyKeyReused,
    ChargeNotFound(String),
    RefundExceedsCharge { refundable_minor: i64 },
}

impl From<PaymentError> for ErrorResponse {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::Invalid(message) => ErrorResponse::invalid(message),
            PaymentError::Declined => ErrorResponse::new(
                StatusCode::PAYMENT_REQUIRED,
                "card_declined",
                "the card was declined",
            ),
            PaymentError::IdempotencyKeyReused => ErrorResponse::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request",
            ),
            PaymentError::ChargeNotFound(id) => ErrorResponse::new(
                StatusCode::NOT_FOUND,
                "charge_not_found",
                format!("no charge `{id}`"),
            ),
            PaymentError::RefundExceedsCharge { refundable_minor } => ErrorResponse::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refund_exceeds_charge",
                format!("at most {refundable_minor} can still be refunded"),
            ),
        }
    }
}

impl IntoResponse for PaymentError {
    fn into_response(self) -> Response {
        ErrorResponse::from(self).into_response()
    }
}

/// A newly booked object (201) or the one an earlier request with the same key booked (200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    Created(T),
    Replayed(T),
}

impl<T: Serialize> IntoResponse for Outcome<T> {
    fn into_response(self) -> Response {
        match self {
            Outcome::Created(value) => (StatusCode::CREATED, Json(value)).into_response(),
            Outcome::Replayed(value) => (StatusCode::OK, Json(value)).into_response(),
        }
    }
}

/// The provider's books, in memory.
#[derive(Debug, Default)]
pub struct Payments {
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// In creation order, for the listing.
    charges: Vec<Charge>,
    by_id: HashMap<String, usize>,
    charge_keys: HashMap<String, (ChargeRequest, usize)>,
    refund_keys: HashMap<String, (RefundRequest, Refund)>,
}

impl Payments {
    /// Charge once per idempotency key. A replay answers with the charge as it stands now (refunds
    /// included).
    pub fn charge(
        &self,
        key: &str,
        request: ChargeRequest,
    ) -> Result<Outcome<Charge>, PaymentError> {
        request.validate()?;
        let mut ledger = self.ledger();
        if let Some((original, index)) = ledger.charge_keys.get(key) {
            return if *original == request {
                Ok(Outcome::Replayed(ledger.charges[*index].clone()))
            } else {
                Err(PaymentError::IdempotencyKeyReused)
            };
        }
        if request.source.as_deref() == Some(DECLINING_SOURCE) {
            return Err(PaymentError::Declined);
        }
        let charge = Charge {
            id: new_id("ch_"),
            amount_minor: request.amount_minor,
            currency: request.currency.clone(),
            reference: request.reference.clone(),
            status: PaymentStatus::Succeeded,
            refunded_minor: 0,
            created_at: Utc::now(),
        };
        let index = ledger.charges.len();
        ledger.by_id.insert(charge.id.clone(), index);
        ledger.charge_keys.insert(key.to_owned(), (request, index));
        ledger.charges.push(charge.clone());
        Ok(Outcome::Created(charge))
    }

    /// Refund part or all of a charge, once per idempotency key; refunds never exceed the charge in total.
    pub fn refund(
        &self,
        key: &str,
        request: RefundRequest,
    ) -> Result<Outcome<Refund>, PaymentError> {
        request.validate()?;
        let mut ledger = self.ledger();
        if let Some((original, refund)) = ledger.refund_keys.get(key) {
            return if *original == request {
                Ok(Outcome::Replayed(refund.clone()))
            } else {
                Err(PaymentError::IdempotencyKeyReused)
            };
        }
        let index = *ledger
            .by_id
            .get(&request.charge_id)
            .ok_or_else(|| PaymentError::ChargeNotFound(request.charge_id.clone()))?;
        let charge = &mut ledger.charges[index];
        let refundable_minor = charge.amount_minor - charge.refunded_minor;
        let amount_minor = request.amount_minor.unwrap_or(refundable_minor);
        if amount_minor == 0 || amount_minor > refundable_minor {
            return Err(PaymentError::RefundExceedsCharge { refundable_minor });
        }
        charge.refunded_minor += amount_minor;
        let refund = Refund {
            id: new_id("re_"),
            charge_id: charge.id.clone(),
            amount_minor,
            currency: charge.currency.clone(),
            status: PaymentStatus::Succeeded,
            created_at: Utc::now(),
        };
        ledger
            .refund_keys
            .insert(key.to_owned(), (request, refund.clone()));
        Ok(Outcome::Created(refund))
    }

    /// Every charge, oldest first.
    pub fn charges(&self) -> Vec<Charge> {
        self.ledger().charges.clone()
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // Nothing panics while holding the lock, and the data stays consistent if something did.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ChargeRequest {
    fn validate(&self) -> Result<(), PaymentError> {
        if self.amount_minor <= 0 {
            return Err(PaymentError::Invalid(
                "amount_minor must be positive".into(),
            ));
        }
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(PaymentError::Invalid(
                "currency must be a three-letter ISO 4217 code, e.g. EUR".into(),
            ));
        }
        if self.reference.trim().is_empty() {
            return Err(PaymentError::Invalid("reference must not be empty".into()));
        }
        Ok(())
    }
}

impl RefundRequest {
    fn validate(&self) -> Result<(), PaymentError> {
        match self.amount_minor {
            Some(amount) if amount <= 0 => Err(PaymentError::Invalid(
                "amount_minor must be positive".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// The `Idempotency-Key` header, required on every payment POST (400 when missing or unusable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ErrorResponse;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let bad = |message: &str| {
            ErrorResponse::new(StatusCode::BAD_REQUEST, "idempotency_key_required", message)
        };
        let value = parts
            .headers
            .get("idempotency-key")
            .ok_or_else(|| bad("the Idempotency-Key header is required"))?;
        let key = value.to_str().map(str::trim).unwrap_or_default();
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(bad(
                "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
            ));
        }
        Ok(Self(key.to_owned()))
    }
}

async fn create_charge(
    State(payments): State<Arc<Payments>>,
    IdempotencyKey(key): IdempotencyKey,
    body: Result<Json<ChargeRequest>, JsonRejection>,
) -> Result<Outcome<Charge>, ErrorResponse> {
    let Json(request) = body?;
    let outcome = payments.charge(&key, request)?;
    if let Outcome::Created(charge) = &outcome {
        tracing::info!(charge_id = %charge.id, amount_minor = charge.amount_minor, currency = %charge.currency, "charge created");
    }
    Ok(outcome)
}

async fn create_refund(
    State(payments): State<Arc<Payments>>,
    IdempotencyKey(key): IdempotencyKey,
    body: Result<Json<RefundRequest>, JsonRejection>,
) -> Result<Outcome<Refund>, ErrorResponse> {
    let Json(request) = body?;
    let outcome = payments.refund(&key, request)?;
    if let Outcome::Created(refund) = &outcome {
        tracing::info!(refund_id = %refund.id, charge_id = %refund.charge_id, amount_minor = refund.amount_minor, "refund created");
    }
    Ok(outcome)
}

#[derive(Serialize)]
struct ChargeList {
    charges: Vec<Charge>,
}

async fn list_charges(State(payments): State<Arc<Payments>>) -> Json<ChargeList> {
    Json(ChargeList {
        charges: payments.charges(),
    })
}

fn new_id(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}
