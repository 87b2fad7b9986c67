-- The ledger: accounts, double-entry bookings, and the provider-side records of charges and
-- refunds. Exactly-once effects rest on the unique constraints here, not on checks in code.

CREATE TABLE accounts (
    id            uuid PRIMARY KEY,
    tenant        text        NOT NULL,
    name          text        NOT NULL,
    currency      text        NOT NULL,
    -- 'customer' accounts hold a stored balance that may never go negative; 'system' accounts
    -- (the provider clearing account) take the other side of bookings and derive their balance
    -- from entries, so they are not a hot row every charge must lock.
    kind          text        NOT NULL DEFAULT 'customer',
    balance_minor bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_kind CHECK (kind IN ('customer', 'system')),
    CONSTRAINT accounts_currency CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT accounts_no_overdraft CHECK (kind = 'system' OR balance_minor >= 0)
);
CREATE UNIQUE INDEX accounts_system_name ON accounts (tenant, name, currency) WHERE kind = 'system';
CREATE INDEX accounts_tenant ON accounts (tenant, id);

-- One row per leg of a booking. A job books each leg at most once: redeliveries, reaper
-- re-runs and retries hit ledger_entries_job_leg instead of booking twice.
CREATE TABLE ledger_entries (
    id           bigserial PRIMARY KEY,
    tenant       text        NOT NULL,
    job_id       uuid        NOT NULL,
    leg          text        NOT NULL,
    account_id   uuid        NOT NULL REFERENCES accounts (id),
    amount_minor bigint      NOT NULL,
    currency     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_entries_job_leg UNIQUE (job_id, leg),
    CONSTRAINT ledger_entries_nonzero CHECK (amount_minor <> 0)
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id DESC);

-- What the provider charged for each payment.charge job, and how much of it was refunded.
CREATE TABLE payment_charges (
    job_id             uuid PRIMARY KEY,
    tenant             text        NOT NULL,
    account_id         uuid        NOT NULL REFERENCES accounts (id),
    provider_charge_id text        NOT NULL,
    amount_minor       bigint      NOT NULL,
    currency           text        NOT NULL,
    refunded_minor     bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_charges_refund_limit CHECK (refunded_minor BETWEEN 0 AND amount_minor)
);

-- One row per payment.refund job: reserved in the ledger before the provider is called.
CREATE TABLE payment_refunds (
    job_id             uuid PRIMARY KEY,
    tenant             text        NOT NULL,
    charge_job_id      uuid        NOT NULL REFERENCES payment_charges (job_id),
    amount_minor       bigint      NOT NULL CHECK (amount_minor > 0),
    -- 'reserved' (booked, provider not yet confirmed), 'succeeded', 'failed' (reversed)
    status             text        NOT NULL DEFAULT 'reserved',
    provider_refund_id text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_refunds_status CHECK (status IN ('reserved', 'succeeded', 'failed'))
);
