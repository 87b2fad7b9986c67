//! Payloads of the money-moving kinds: `payment.charge`, `payment.refund`, `ledger.transfer`.
//!
//! Shape and value checks (positive amounts, ISO 4217 currencies) happen here, on the type;
//! checks that need the database (the account exists for this tenant, currencies agree) are in
//! [`crate::ledger::check_references`], run by the API before anything is stored.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::enqueue::FieldError;

/// Largest amount accepted in one job, in minor units; keeps sums far from i64 overflow.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

/// `payment.charge`: charge through the provider, then credit the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargePayload {
    pub account_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The payment source, e.g. a card token; `tok_decline` makes the sandbox decline.
    #[serde(default)]
    pub source: Option<String>,
}

/// `payment.refund`: refund (part of) an earlier charge job, then debit the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundPayload {
    pub charge_job_id: Uuid,
    /// Everything not yet refunded when absent.
    #[serde(default)]
    pub amount_minor: Option<i64>,
}

/// `ledger.transfer`: move funds between two accounts of the same currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferPayload {
    pub from_account: Uuid,
    pub to_account: Uuid,
    pub amount_minor: i64,
    pub currency: String,
}

fn amount(field: &str, value: i64, errors: &mut Vec<FieldError>) {
    if !(1..=MAX_AMOUNT_MINOR).contains(&value) {
        errors.push(FieldError::new(
            format!("{field}.amount_minor"),
            format!("must be a positive whole number of minor units, at most {MAX_AMOUNT_MINOR}"),
        ));
    }
}

/// An active ISO 4217 code in upper case, e.g. `EUR`.
pub fn valid_currency(code: &str) -> bool {
    code.len() == 3
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && iso_currency::Currency::from_code(code).is_some()
}

fn currency(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    if !valid_currency(value) {
        errors.push(FieldError::new(
            format!("{field}.currency"),
            format!("{value:?} is not an ISO 4217 currency code such as EUR or USD"),
        ));
    }
}

fn result(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

impl ChargePayload {
    pub fn validate(&self, field: &str) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        amount(field, self.amount_minor, &mut errors);
        currency(field, &self.currency, &mut errors);
        if self.description.as_ref().is_some_and(|d| d.len() > 500) {
            errors.push(FieldError::new(
                format!("{field}.description"),
                "at most 500 bytes",
            ));
        }
        if self
            .source
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > 200)
        {
            errors.push(FieldError::new(format!("{field}.source"), "1 to 200 bytes"));
        }
        result(errors)
    }
}

impl RefundPayload {
    pub fn validate(&self, field: &str) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(a) = self.amount_minor {
            amount(field, a, &mut errors);
        }
        result(errors)
    }
}

impl TransferPayload {
    pub fn validate(&self, field: &str) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        amount(field, self.amount_minor, &mut errors);
        currency(field, &self.currency, &mut errors);
        if self.from_account == self.to_account {
            errors.push(FieldError::new(
                format!("{field}.to_account"),
                "must differ from from_account",
            ));
        }
        result(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_are_iso_4217_codes() {
        assert!(valid_currency("EUR") && valid_currency("JPY"));
        assert!(!valid_currency("eur") && !valid_currency("XYZ") && !valid_currency("EURO"));
    }

    #[test]
    fn amounts_must_be_positive() {
        let t = TransferPayload {
            from_account: Uuid::nil(),
            to_account: Uuid::nil(),
            amount_minor: 0,
            currency: "EUR".into(),
        };
        let fields: Vec<_> = t
            .validate("payload")
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["payload.amount_minor", "payload.to_account"]);
    }
}
