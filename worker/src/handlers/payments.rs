//! `payment.charge`, `payment.refund` and `ledger.transfer`: the jobs where a duplicate or a lost
//! write costs money.
//!
//! Exactly-once effects under at-least-once delivery:
//! - the provider is called with the job id as `Idempotency-Key`, so a re-run gets the original
//!   charge or refund back instead of a new one;
//! - ledger legs are unique per (job, leg), so a re-run finds its booking made and does not book
//!   again; balances change in the same transaction as the entries.
//!
//! A refund reserves its amount in the ledger *before* calling the provider (so two refunds can
//! never together exceed the charge or the balance), and books a reversal if the provider
//! refuses it for good.

use conveyor_shared::{
    JobId,
    job::control,
    kind::{ChargePayload, RefundPayload, TransferPayload},
    ledger::{self, Account, Booked, LedgerError, Leg},
};
use futures_util::{FutureExt, future::BoxFuture};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Handler, HandlerError, HandlerResult, JobContext};
use crate::provider::PaymentProvider;

fn payload<T: serde::de::DeserializeOwned>(job: &JobContext) -> Result<T, HandlerError> {
    serde_json::from_value(job.payload.clone())
        .map_err(|e| HandlerError::Permanent(format!("invalid {} payload: {e}", job.kind)))
}

/// Ledger failures: business rules are permanent, the database is retryable.
fn ledger_error(e: LedgerError) -> HandlerError {
    match e {
        LedgerError::Database(e) => HandlerError::retryable(format!("database: {e}")),
        other => HandlerError::Permanent(other.to_string()),
    }
}

fn db(e: sqlx::Error) -> HandlerError {
    HandlerError::retryable(format!("database: {e}"))
}

pub struct Charge {
    pub pool: PgPool,
    pub provider: PaymentProvider,
}

impl Handler for Charge {
    fn run(&self, job: JobContext) -> BoxFuture<'static, HandlerResult> {
        let (pool, provider) = (self.pool.clone(), self.provider.clone());
        async move {
            let p: ChargePayload = payload(&job)?;
            let job_id = job.id.0;
            // Check the account before charging anyone.
            Account::check(&pool, &job.tenant, p.account_id, &p.currency).await.map_err(ledger_error)?;

            let charge = provider
                .charge(&job_id.to_string(), p.amount_minor, &p.currency, p.source.as_deref(), job.traceparent.as_ref())
                .await?;

            let mut tx = pool.begin().await.map_err(db)?;
            sqlx::query(
                "INSERT INTO payment_charges (job_id, tenant, account_id, provider_charge_id, amount_minor, currency)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id) DO NOTHING",
            )
            .bind(job_id)
            .bind(&job.tenant)
            .bind(p.account_id)
            .bind(&charge.id)
            .bind(p.amount_minor)
            .bind(&p.currency)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let clearing = ledger::clearing_account(&mut tx, &job.tenant, &p.currency).await.map_err(db)?;
            let booked = ledger::book(&mut tx, &job.tenant, job_id, &p.currency, &[
                Leg { name: "charge.customer", account: p.account_id, amount_minor: p.amount_minor },
                Leg { name: "charge.clearing", account: clearing, amount_minor: -p.amount_minor },
            ])
            .await
            .map_err(ledger_error)?;
            tx.commit().await.map_err(db)?;
            Ok(json!({"provider_charge_id": charge.id, "amount_minor": p.amount_minor,
                      "currency": p.currency, "already_booked": booked == Booked::Already}))
        }
        .boxed()
    }
}

pub struct Transfer {
    pub pool: PgPool,
}

impl Handler for Transfer {
    fn run(&self, job: JobContext) -> BoxFuture<'static, HandlerResult> {
        let pool = self.pool.clone();
        async move {
            let p: TransferPayload = payload(&job)?;
            let mut tx = pool.begin().await.map_err(db)?;
            // Both accounts must be this tenant's, in this currency; `book` locks them in id order.
            for id in [p.from_account, p.to_account] {
                Account::check(&mut *tx, &job.tenant, id, &p.currency)
                    .await
                    .map_err(ledger_error)?;
            }
            let booked = ledger::book(
                &mut tx,
                &job.tenant,
                job.id.0,
                &p.currency,
                &[
                    Leg {
                        name: "transfer.from",
                        account: p.from_account,
                        amount_minor: -p.amount_minor,
                    },
                    Leg {
                        name: "transfer.to",
                        account: p.to_account,
                        amount_minor: p.amount_minor,
                    },
                ],
            )
            .await
            .map_err(ledger_error)?;
            tx.commit().await.map_err(db)?;
            Ok(
                json!({"amount_minor": p.amount_minor, "currency": p.currency,
                      "already_booked": booked == Booked::Already}),
            )
        }
        .boxed()
    }
}

pub struct Refund {
    pub pool: PgPool,
    pub provider: PaymentProvider,
}

#[derive(sqlx::FromRow)]
struct ChargeRow {
    account_id: Uuid,
    provider_charge_id: String,
    amount_minor: i64,
    refunded_minor: i64,
    currency: String,
}

impl Handler for Refund {
    fn run(&self, job: JobContext) -> BoxFuture<'static, HandlerResult> {
        let (pool, provider) = (self.pool.clone(), self.provider.clone());
        async move {
            let p: RefundPayload = payload(&job)?;
            let job_id = job.id.0;
            let (charge, amount) = reserve(&pool, &job, &p).await?;
            match provider
                .refund(
                    &job_id.to_string(),
                    &charge.provider_charge_id,
                    amount,
                    job.traceparent.as_ref(),
                )
                .await
            {
                Ok(refund) => {
                    sqlx::query(
                        "UPDATE payment_refunds SET status = 'succeeded', provider_refund_id = $2
                         WHERE job_id = $1 AND status = 'reserved'",
                    )
                    .bind(job_id)
                    .bind(&refund.id)
                    .execute(&pool)
                    .await
                    .map_err(db)?;
                    Ok(
                        json!({"provider_refund_id": refund.id, "amount_minor": amount,
                              "currency": charge.currency}),
                    )
                }
                Err(HandlerError::Permanent(reason)) => {
                    reverse(&pool, &job, &charge, amount).await?;
                    Err(HandlerError::Permanent(format!(
                        "refund refused, reservation reversed: {reason}"
                    )))
                }
                Err(retryable) => Err(retryable),
            }
        }
        .boxed()
    }
}

/// Reserves the refund in the ledger (once per job) and returns the charge and the amount.
async fn reserve(
    pool: &PgPool,
    job: &JobContext,
    p: &RefundPayload,
) -> Result<(ChargeRow, i64), HandlerError> {
    let mut tx = pool.begin().await.map_err(db)?;
    let charge: Option<ChargeRow> = sqlx::query_as(
        "SELECT account_id, provider_charge_id, amount_minor, refunded_minor, currency
         FROM payment_charges WHERE job_id = $1 AND tenant = $2 FOR UPDATE",
    )
    .bind(p.charge_job_id)
    .bind(&job.tenant)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let Some(charge) = charge else {
        // As readers see it: a charge in progress is `running`, not its stored `queued`.
        let state = control::state_of(&mut tx, &job.tenant, JobId(p.charge_job_id))
            .await
            .map_err(db)?;
        return Err(match state {
            Some(state) if !state.is_finished() => {
                HandlerError::retryable(format!("charge job {} is still {state}", p.charge_job_id))
            }
            _ => HandlerError::Permanent(format!(
                "charge job {} charged nothing to refund",
                p.charge_job_id
            )),
        });
    };
    let existing: Option<(i64, String)> =
        sqlx::query_as("SELECT amount_minor, status FROM payment_refunds WHERE job_id = $1")
            .bind(job.id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    let amount = match existing {
        Some((amount, status)) if status == "failed" => {
            return Err(HandlerError::Permanent(format!(
                "refund of {amount} was refused by the provider"
            )));
        }
        // Reserved by an earlier run: go on to (re)ask the provider, idempotently.
        Some((amount, _)) => amount,
        None => {
            let amount = p
                .amount_minor
                .unwrap_or(charge.amount_minor - charge.refunded_minor);
            if amount <= 0 || amount > charge.amount_minor - charge.refunded_minor {
                return Err(HandlerError::Permanent(format!(
                    "cannot refund {amount}: {} of {} already refunded",
                    charge.refunded_minor, charge.amount_minor
                )));
            }
            sqlx::query(
                "INSERT INTO payment_refunds (job_id, tenant, charge_job_id, amount_minor) VALUES ($1, $2, $3, $4)",
            )
            .bind(job.id.0)
            .bind(&job.tenant)
            .bind(p.charge_job_id)
            .bind(amount)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            move_refund(
                &mut tx,
                job,
                p.charge_job_id,
                &charge,
                amount,
                RefundMove::Reserve,
            )
            .await?;
            amount
        }
    };
    tx.commit().await.map_err(db)?;
    Ok((charge, amount))
}

/// The provider refused the refund for good: give the reservation back, once.
async fn reverse(
    pool: &PgPool,
    job: &JobContext,
    charge: &ChargeRow,
    amount: i64,
) -> Result<(), HandlerError> {
    let mut tx = pool.begin().await.map_err(db)?;
    let refund: Option<Uuid> = sqlx::query_scalar(
        "UPDATE payment_refunds SET status = 'failed' WHERE job_id = $1 AND status = 'reserved'
         RETURNING charge_job_id",
    )
    .bind(job.id.0)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    if let Some(charge_job_id) = refund {
        move_refund(
            &mut tx,
            job,
            charge_job_id,
            charge,
            amount,
            RefundMove::Reverse,
        )
        .await?;
    }
    tx.commit().await.map_err(db)
}

/// Which way a refund moves money in the ledger.
#[derive(Clone, Copy)]
enum RefundMove {
    /// Before the provider is asked: debit the customer, count it as refunded.
    Reserve,
    /// The provider refused for good: give it back.
    Reverse,
}

/// Adjusts the charge's refunded total and books the two legs of a refund or its reversal,
/// inside `tx`. Each direction has its own leg names, so each books at most once per job.
async fn move_refund(
    tx: &mut sqlx::PgConnection,
    job: &JobContext,
    charge_job_id: Uuid,
    charge: &ChargeRow,
    amount: i64,
    direction: RefundMove,
) -> Result<(), HandlerError> {
    let (customer_leg, clearing_leg, to_customer) = match direction {
        RefundMove::Reserve => ("refund.customer", "refund.clearing", -amount),
        RefundMove::Reverse => (
            "refund.reversal.customer",
            "refund.reversal.clearing",
            amount,
        ),
    };
    sqlx::query(
        "UPDATE payment_charges SET refunded_minor = refunded_minor - $2 WHERE job_id = $1",
    )
    .bind(charge_job_id)
    .bind(to_customer)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    let clearing = ledger::clearing_account(tx, &job.tenant, &charge.currency)
        .await
        .map_err(db)?;
    ledger::book(
        tx,
        &job.tenant,
        job.id.0,
        &charge.currency,
        &[
            Leg {
                name: customer_leg,
                account: charge.account_id,
                amount_minor: to_customer,
            },
            Leg {
                name: clearing_leg,
                account: clearing,
                amount_minor: -to_customer,
            },
        ],
    )
    .await
    .map_err(ledger_error)?;
    Ok(())
}
