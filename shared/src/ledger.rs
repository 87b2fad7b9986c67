//! The ledger: accounts and double-entry bookings.
//!
//! Every booking is a set of legs that sums to zero. A job books each leg at most once
//! (`UNIQUE (job_id, leg)`), so running a job again can never book twice; customer balances are
//! kept in the same transaction as their entries and may never go negative (a CHECK constraint,
//! not a read-then-write in code). Accounts are locked in id order, so two bookings touching the
//! same accounts queue up instead of deadlocking, and bookings on different accounts do not wait
//! for each other: the system clearing account has no stored balance to lock.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    enqueue::{FieldError, NewJob},
    kind::JobKind,
};

/// The system account that takes the other side of provider charges and refunds.
pub const CLEARING_ACCOUNT: &str = "provider-clearing";

/// An account as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Account {
    pub id: Uuid,
    #[serde(skip)]
    pub tenant: String,
    pub name: String,
    pub currency: String,
    /// In minor units (cents for EUR).
    pub balance_minor: i64,
    pub created_at: DateTime<Utc>,
    /// Present on `GET /v1/accounts/{id}`: the most recent entries, newest first.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<Entry>>,
}

/// One leg of a booking.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct Entry {
    pub id: i64,
    pub job_id: Uuid,
    pub leg: String,
    /// Positive credits the account, negative debits it.
    pub amount_minor: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("account {0} does not exist for this tenant")]
    AccountNotFound(Uuid),
    #[error("account {account} holds {account_currency}, not {currency}")]
    CurrencyMismatch {
        account: Uuid,
        account_currency: String,
        currency: String,
    },
    #[error("a booking must sum to zero")]
    Unbalanced,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One leg of a booking to make.
#[derive(Debug, Clone, Copy)]
pub struct Leg {
    pub name: &'static str,
    pub account: Uuid,
    pub amount_minor: i64,
}

/// Whether a booking was made now or had been made by an earlier run of the same job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booked {
    Now,
    Already,
}

impl Account {
    pub async fn create(
        pool: &PgPool,
        tenant: &str,
        name: &str,
        currency: &str,
    ) -> sqlx::Result<Account> {
        sqlx::query_as(
            "INSERT INTO accounts (id, tenant, name, currency) VALUES ($1, $2, $3, $4)
             RETURNING id, tenant, name, currency, balance_minor, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(name)
        .bind(currency)
        .fetch_one(pool)
        .await
    }

    /// A customer account of `tenant`, with its `entries_limit` most recent entries.
    pub async fn get(
        pool: &PgPool,
        tenant: &str,
        id: Uuid,
        entries_limit: i64,
    ) -> sqlx::Result<Option<Account>> {
        let account: Option<Account> = sqlx::query_as(
            "SELECT id, tenant, name, currency, balance_minor, created_at FROM accounts
             WHERE tenant = $1 AND id = $2 AND kind = 'customer'",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(pool)
        .await?;
        let Some(mut account) = account else {
            return Ok(None);
        };
        account.entries = Some(
            sqlx::query_as(
                "SELECT id, job_id, leg, amount_minor, currency, created_at FROM ledger_entries
                 WHERE account_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(id)
            .bind(entries_limit)
            .fetch_all(pool)
            .await?,
        );
        Ok(Some(account))
    }

    /// Checks that `tenant` has a customer account `id` in `currency`, without locking it
    /// (bookings lock what they change, in id order).
    pub async fn check(
        db: impl sqlx::PgExecutor<'_>,
        tenant: &str,
        id: Uuid,
        currency: &str,
    ) -> Result<(), LedgerError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT currency FROM accounts WHERE tenant = $1 AND id = $2 AND kind = 'customer'",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(db)
        .await?;
        match found {
            None => Err(LedgerError::AccountNotFound(id)),
            Some(c) if c != currency => Err(LedgerError::CurrencyMismatch {
                account: id,
                account_currency: c,
                currency: currency.to_owned(),
            }),
            Some(_) => Ok(()),
        }
    }
}

/// The tenant's clearing account for `currency`, created on first use.
pub async fn clearing_account(
    tx: &mut PgConnection,
    tenant: &str,
    currency: &str,
) -> sqlx::Result<Uuid> {
    sqlx::query(
        "INSERT INTO accounts (id, tenant, name, currency, kind) VALUES ($1, $2, $3, $4, 'system')
         ON CONFLICT (tenant, name, currency) WHERE kind = 'system' DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(CLEARING_ACCOUNT)
    .bind(currency)
    .execute(&mut *tx)
    .await?;
    sqlx::query_scalar(
        "SELECT id FROM accounts WHERE tenant = $1 AND name = $2 AND currency = $3 AND kind = 'system'",
    )
    .bind(tenant)
    .bind(CLEARING_ACCOUNT)
    .bind(currency)
    .fetch_one(&mut *tx)
    .await
}

/// Books `legs` for `job_id` inside `tx`, once. Customer accounts involved are locked in id
/// order (`FOR NO KEY UPDATE`) and their balances updated; a balance that would go negative fails the booking with
/// [`LedgerError::InsufficientFunds`] (the caller's transaction must then be dropped).
pub async fn book(
    tx: &mut PgConnection,
    tenant: &str,
    job_id: Uuid,
    currency: &str,
    legs: &[Leg],
) -> Result<Booked, LedgerError> {
    if legs.iter().map(|l| l.amount_minor as i128).sum::<i128>() != 0 {
        return Err(LedgerError::Unbalanced);
    }
    let mut accounts: Vec<Uuid> = legs.iter().map(|l| l.account).collect();
    accounts.sort();
    accounts.dedup();
    // NO KEY UPDATE, not UPDATE: foreign keys that point at accounts (entries, charges) take
    // KEY SHARE locks, which FOR UPDATE would conflict with: two bookings on one account that
    // had each inserted a referencing row would then deadlock.
    sqlx::query(
        "SELECT id FROM accounts WHERE id = ANY($1) AND kind = 'customer' ORDER BY id FOR NO KEY UPDATE",
    )
        .bind(&accounts)
        .execute(&mut *tx)
        .await?;
    let names: Vec<&str> = legs.iter().map(|l| l.name).collect();
    let ids: Vec<Uuid> = legs.iter().map(|l| l.account).collect();
    let amounts: Vec<i64> = legs.iter().map(|l| l.amount_minor).collect();
    let inserted = sqlx::query(
        "INSERT INTO ledger_entries (tenant, job_id, leg, account_id, amount_minor, currency)
         SELECT $1, $2, leg, account_id, amount_minor, $3
         FROM unnest($4::text[], $5::uuid[], $6::int8[]) AS t(leg, account_id, amount_minor)
         ON CONFLICT ON CONSTRAINT ledger_entries_job_leg DO NOTHING",
    )
    .bind(tenant)
    .bind(job_id)
    .bind(currency)
    .bind(&names)
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Booked::Already);
    }
    if inserted as usize != legs.len() {
        // Legs of one booking are only ever written together, in one transaction.
        return Err(LedgerError::Unbalanced);
    }
    let update = sqlx::query(
        "UPDATE accounts a SET balance_minor = a.balance_minor + d.delta
         FROM (SELECT account_id, sum(amount_minor)::int8 AS delta
               FROM unnest($1::uuid[], $2::int8[]) AS t(account_id, amount_minor)
               GROUP BY account_id) d
         WHERE a.id = d.account_id AND a.kind = 'customer'",
    )
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut *tx)
    .await;
    match update {
        Ok(_) => Ok(Booked::Now),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("accounts_no_overdraft") => {
            Err(LedgerError::InsufficientFunds)
        }
        Err(e) => Err(e.into()),
    }
}

/// Checks what the payloads of `jobs` refer to, before they are stored: accounts exist for this
/// tenant in the payload's currency; a refund names a charge job of this tenant that may still
/// succeed. `prefix(i)` is the request path of job `i` (`""` or `"jobs[i]."`).
pub async fn check_references(
    pool: &PgPool,
    tenant: &str,
    jobs: &[NewJob],
    prefix: impl Fn(usize) -> String,
) -> sqlx::Result<Vec<FieldError>> {
    let mut account_ids = HashSet::new();
    let mut charge_ids = HashSet::new();
    for job in jobs {
        match &job.kind {
            JobKind::Charge(p) => {
                account_ids.insert(p.account_id);
            }
            JobKind::Transfer(p) => {
                account_ids.extend([p.from_account, p.to_account]);
            }
            JobKind::Refund(p) => {
                charge_ids.insert(p.charge_job_id);
            }
            _ => {}
        }
    }
    if account_ids.is_empty() && charge_ids.is_empty() {
        return Ok(Vec::new());
    }
    let account_ids: Vec<Uuid> = account_ids.into_iter().collect();
    let currencies: HashMap<Uuid, String> = sqlx::query_as::<_, (Uuid, String)>(
        "SELECT id, currency FROM accounts WHERE tenant = $1 AND kind = 'customer' AND id = ANY($2)",
    )
    .bind(tenant)
    .bind(&account_ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let charge_ids: Vec<Uuid> = charge_ids.into_iter().collect();
    let charges: HashSet<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE tenant = $1 AND kind = 'payment.charge'
         AND state NOT IN ('dead', 'cancelled') AND id = ANY($2)",
    )
    .bind(tenant)
    .bind(&charge_ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();

    let mut errors = Vec::new();
    let mut account = |field: String, id: Uuid, currency: &str| match currencies.get(&id) {
        None => errors.push(FieldError::new(
            field,
            format!("no account {id} for this tenant"),
        )),
        Some(c) if c != currency => errors.push(FieldError::new(
            field,
            format!("account {id} holds {c}, not {currency}"),
        )),
        Some(_) => {}
    };
    let mut refund_errors = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let at = prefix(i);
        match &job.kind {
            JobKind::Charge(p) => {
                account(format!("{at}payload.account_id"), p.account_id, &p.currency)
            }
            JobKind::Transfer(p) => {
                account(
                    format!("{at}payload.from_account"),
                    p.from_account,
                    &p.currency,
                );
                account(format!("{at}payload.to_account"), p.to_account, &p.currency);
            }
            JobKind::Refund(p) if !charges.contains(&p.charge_job_id) => {
                refund_errors.push(FieldError::new(
                    format!("{at}payload.charge_job_id"),
                    format!(
                        "no payment.charge job {} for this tenant that can still succeed",
                        p.charge_job_id
                    ),
                ))
            }
            _ => {}
        }
    }
    errors.extend(refund_errors);
    debug_assert!(errors.iter().all(|e| !e.field.is_empty()));
    Ok(errors)
}
