//! Payment transactions against the real api, worker, Postgres, RabbitMQ and the sandbox
//! provider: charges, declines, refunds and transfers, with the ledger checked after each test
//! (every currency sums to zero, stored balances equal their entries, none is negative).

mod support;

use std::{sync::Arc, time::Duration};

use conveyor_sandbox::FaultConfig;
use conveyor_shared::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Options, Sandbox as Provider, TestApp, problem, sandbox as provider};

async fn app_with(provider: &Provider) -> TestApp {
    app_with_worker(provider, |_| {}).await
}

/// An app whose worker calls `provider`, with its configuration adjusted by `configure`.
async fn app_with_worker(
    provider: &Provider,
    configure: impl Fn(&mut conveyor_worker::Config) + Send + Sync + 'static,
) -> TestApp {
    let url = format!("http://{}", provider.addr);
    TestApp::spawn_with(Options {
        configure_worker: Some(Arc::new(move |c| {
            c.payment_url = url.clone();
            configure(c);
        })),
        ..Default::default()
    })
    .await
}

async fn account(app: &TestApp, name: &str, currency: &str) -> String {
    let r = app
        .post_as(
            &app.token,
            "/v1/accounts",
            json!({"name": name, "currency": currency}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn balance(app: &TestApp, id: &str) -> i64 {
    app.get_json(&format!("/v1/accounts/{id}")).await["balance_minor"]
        .as_i64()
        .unwrap()
}

async fn charge(app: &TestApp, account: &str, amount: i64) -> String {
    app.enqueue(json!({"kind": "payment.charge",
                       "payload": {"account_id": account, "amount_minor": amount, "currency": "EUR"}}))
        .await
}

async fn provider_charges(provider: &Provider) -> Vec<Value> {
    let r: Value = reqwest::get(format!("http://{}/payments/v1/charges", provider.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["charges"].as_array().unwrap().clone()
}

/// Double-entry invariants, checked in SQL over the whole test database.
async fn assert_ledger_consistent(app: &TestApp) {
    let unbalanced: Vec<(String, i64)> = sqlx::query_as(
        "SELECT currency, sum(amount_minor)::int8 FROM ledger_entries GROUP BY currency HAVING sum(amount_minor) <> 0",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        unbalanced.is_empty(),
        "currencies that do not sum to zero: {unbalanced:?}"
    );
    let drifted: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT a.id, a.balance_minor, coalesce(sum(e.amount_minor), 0)::int8
         FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id
         WHERE a.kind = 'customer' GROUP BY a.id HAVING a.balance_minor <> coalesce(sum(e.amount_minor), 0)",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        drifted.is_empty(),
        "balances that differ from their entries: {drifted:?}"
    );
    let negative: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM accounts WHERE kind = 'customer' AND balance_minor < 0",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(negative, 0);
}

#[tokio::test]
async fn accounts_are_created_read_and_isolated_by_tenant() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with(&p).await;
    let r = app
        .post_as(
            &app.token,
            "/v1/accounts",
            json!({"name": "wallet", "currency": "EUR"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["balance_minor"], 0);
    let id = created["id"].as_str().unwrap();
    let read = app.get_json(&format!("/v1/accounts/{id}")).await;
    assert_eq!(read["name"], "wallet");
    assert_eq!(read["entries"], json!([]));

    for (body, field) in [
        (json!({"name": "x", "currency": "EURO"}), "currency"),
        (json!({"name": "x", "currency": "eur"}), "currency"),
        (json!({"name": "", "currency": "EUR"}), "name"),
    ] {
        let r = app.post_as(&app.token, "/v1/accounts", body).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(p["errors"][0]["field"], field);
    }
    let other = app.key("other", &[Scope::JobsRead, Scope::JobsWrite]).await;
    let r = app.get_as(&other, &format!("/v1/accounts/{id}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Nor can another tenant move money out of it.
    let r = app
        .post_as(
            &other,
            "/v1/jobs",
            json!({"kind": "payment.charge",
            "payload": {"account_id": id, "amount_minor": 1, "currency": "EUR"}}),
        )
        .await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    p.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn a_charge_calls_the_provider_once_and_books_both_legs() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with(&p).await;
    let wallet = account(&app, "wallet", "EUR").await;
    let job = charge(&app, &wallet, 1250).await;
    let done = app
        .wait_for_state(&job, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(done["queue"], "transactions");
    assert_eq!(balance(&app, &wallet).await, 1250);
    let acc = app.get_json(&format!("/v1/accounts/{wallet}")).await;
    assert_eq!(acc["entries"][0]["leg"], "charge.customer");
    assert_eq!(acc["entries"][0]["job_id"], job.as_str());
    let charges = provider_charges(&p).await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["reference"], job.as_str());
    assert_eq!(done["result"]["provider_charge_id"], charges[0]["id"]);
    assert_ledger_consistent(&app).await;
    p.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn running_a_charge_again_neither_charges_nor_books_twice() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with(&p).await;
    let wallet = account(&app, "wallet", "EUR").await;
    let job = charge(&app, &wallet, 700).await;
    app.wait_for_state(&job, "succeeded", Duration::from_secs(10))
        .await;
    // As if the outcome had been lost after the effects happened: the job runs once more.
    sqlx::query(
        "WITH requeued AS (
             UPDATE jobs SET state = 'queued' WHERE id = $1::uuid
             RETURNING id, queue, kind, priority, run_at, traceparent
         )
         INSERT INTO outbox (job_id, queue, kind, priority, run_at, traceparent)
         SELECT * FROM requeued",
    )
    .bind(&job)
    .execute(&app.pool)
    .await
    .unwrap();
    let again = app
        .wait_for_state(&job, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(again["attempts"], 2, "{again:#}");
    assert_eq!(again["result"]["already_booked"], true);
    assert_eq!(balance(&app, &wallet).await, 700);
    assert_eq!(
        provider_charges(&p).await.len(),
        1,
        "the provider must see one charge per job"
    );
    assert_ledger_consistent(&app).await;
    p.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn a_declined_charge_is_dead_at_once_and_books_nothing() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with(&p).await;
    let wallet = account(&app, "wallet", "EUR").await;
    let job = app
        .enqueue(
            json!({"kind": "payment.charge", "payload": {"account_id": wallet, "amount_minor": 500,
                        "currency": "EUR", "source": "tok_decline"}}),
        )
        .await;
    let dead = app
        .wait_for_state(&job, "dead", Duration::from_secs(10))
        .await;
    assert_eq!(dead["attempts"], 1, "a decline is permanent");
    assert!(
        dead["last_error"].as_str().unwrap().contains("declined"),
        "{dead:#}"
    );
    assert_eq!(balance(&app, &wallet).await, 0);
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_entries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(entries, 0);
    p.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn payment_payloads_are_checked_at_enqueue() {
    let sandbox = provider(FaultConfig::default()).await;
    let app = app_with(&sandbox).await;
    let eur = account(&app, "eur", "EUR").await;
    let usd = account(&app, "usd", "USD").await;
    let missing = uuid::Uuid::new_v4().to_string();
    let cases = [
        (
            json!({"kind": "payment.charge", "payload": {"account_id": missing, "amount_minor": 1, "currency": "EUR"}}),
            "payload.account_id",
        ),
        (
            json!({"kind": "payment.charge", "payload": {"account_id": usd, "amount_minor": 1, "currency": "EUR"}}),
            "payload.account_id",
        ),
        (
            json!({"kind": "payment.charge", "payload": {"account_id": eur, "amount_minor": 0, "currency": "EUR"}}),
            "payload.amount_minor",
        ),
        (
            json!({"kind": "payment.charge", "payload": {"account_id": eur, "amount_minor": -5, "currency": "EUR"}}),
            "payload.amount_minor",
        ),
        (
            json!({"kind": "payment.charge", "payload": {"account_id": eur, "amount_minor": 1, "currency": "XXY"}}),
            "payload.currency",
        ),
        (
            json!({"kind": "ledger.transfer", "payload": {"from_account": eur, "to_account": usd, "amount_minor": 1, "currency": "EUR"}}),
            "payload.to_account",
        ),
        (
            json!({"kind": "ledger.transfer", "payload": {"from_account": eur, "to_account": eur, "amount_minor": 1, "currency": "EUR"}}),
            "payload.to_account",
        ),
        (
            json!({"kind": "payment.refund", "payload": {"charge_job_id": missing}}),
            "payload.charge_job_id",
        ),
    ];
    for (body, field) in cases {
        let r = app.post_job(body.clone()).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let fields: Vec<&str> = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&field),
            "{body}: expected {field}, got {fields:?}"
        );
    }
    // In a batch the field names the job.
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({"jobs": [
            {"kind": "noop"},
            {"kind": "payment.charge", "payload": {"account_id": missing, "amount_minor": 1, "currency": "EUR"}}]}))
        .await;
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(p["errors"][0]["field"], "jobs[1].payload.account_id");
    assert_eq!(app.count_jobs().await, 0);
    sandbox.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn charges_under_provider_faults_book_exactly_once() {
    // A third of the provider's answers fail with 500/503; every charge must still go through
    // exactly once at the provider and once in the ledger.
    let p = provider(FaultConfig {
        failure_rate: 0.35,
        ..Default::default()
    })
    .await;
    let app = app_with(&p).await;
    let wallets = [
        account(&app, "a", "EUR").await,
        account(&app, "b", "EUR").await,
        account(&app, "c", "EUR").await,
    ];
    let mut jobs = Vec::new();
    let mut expected = [0i64; 3];
    for i in 0..45 {
        let amount = 100 + i as i64;
        expected[i % 3] += amount;
        jobs.push(charge(&app, &wallets[i % 3], amount).await);
    }
    for job in &jobs {
        app.wait_for_state(job, "succeeded", Duration::from_secs(30))
            .await;
    }
    for (wallet, want) in wallets.iter().zip(expected) {
        assert_eq!(balance(&app, wallet).await, want);
    }
    let charges = provider_charges(&p).await;
    assert_eq!(charges.len(), jobs.len(), "one provider charge per job");
    let retried: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE outcome = 'failed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        retried > 0,
        "the injected faults should have caused retries"
    );
    assert_ledger_consistent(&app).await;
    p.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn refunds_never_exceed_the_charge_and_reverse_the_booking() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with(&p).await;
    let wallet = account(&app, "wallet", "EUR").await;
    let charged = charge(&app, &wallet, 1000).await;
    app.wait_for_state(&charged, "succeeded", Duration::from_secs(10))
        .await;

    let part = app
        .enqueue(json!({"kind": "payment.refund", "payload": {"charge_job_id": charged, "amount_minor": 300}}))
        .await;
    app.wait_for_state(&part, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(balance(&app, &wallet).await, 700);
    let rest = app
        .enqueue(json!({"kind": "payment.refund", "payload": {"charge_job_id": charged}}))
        .await;
    let done = app
        .wait_for_state(&rest, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(done["result"]["amount_minor"], 700);
    assert_eq!(balance(&app, &wallet).await, 0);
    let too_much = app
        .enqueue(json!({"kind": "payment.refund", "payload": {"charge_job_id": charged, "amount_minor": 1}}))
        .await;
    let dead = app
        .wait_for_state(&too_much, "dead", Duration::from_secs(10))
        .await;
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("already refunded"),
        "{dead:#}"
    );
    let charges = provider_charges(&p).await;
    assert_eq!(charges[0]["refunded_minor"], 1000);
    assert_ledger_consistent(&app).await;
    p.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn a_refund_of_money_already_spent_is_refused_before_the_provider_is_called() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with(&p).await;
    let wallet = account(&app, "wallet", "EUR").await;
    let shop = account(&app, "shop", "EUR").await;
    let charged = charge(&app, &wallet, 1000).await;
    app.wait_for_state(&charged, "succeeded", Duration::from_secs(10))
        .await;
    let spent = app
        .enqueue(json!({"kind": "ledger.transfer", "payload": {"from_account": wallet, "to_account": shop,
                        "amount_minor": 800, "currency": "EUR"}}))
        .await;
    app.wait_for_state(&spent, "succeeded", Duration::from_secs(10))
        .await;
    let refund = app
        .enqueue(json!({"kind": "payment.refund", "payload": {"charge_job_id": charged}}))
        .await;
    let dead = app
        .wait_for_state(&refund, "dead", Duration::from_secs(10))
        .await;
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("insufficient funds"),
        "{dead:#}"
    );
    assert_eq!(
        provider_charges(&p).await[0]["refunded_minor"],
        0,
        "nothing refunded at the provider"
    );
    assert_eq!(balance(&app, &wallet).await, 200);
    assert_ledger_consistent(&app).await;
    p.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn concurrent_transfers_never_overdraw_and_conserve_money() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with(&p).await;
    let source = account(&app, "source", "EUR").await;
    let sinks = [
        account(&app, "b", "EUR").await,
        account(&app, "c", "EUR").await,
    ];
    let funded = charge(&app, &source, 1000).await;
    app.wait_for_state(&funded, "succeeded", Duration::from_secs(10))
        .await;

    // 50 transfers of 50 from one account of 1000: exactly 20 can succeed. Some go back the
    // other way at the same time, to provoke lock-order deadlocks if there were any.
    let jobs: Vec<Value> = (0..50)
        .map(|i| {
            json!({"kind": "ledger.transfer", "payload": {"from_account": source,
            "to_account": sinks[i % 2], "amount_minor": 50, "currency": "EUR"}})
        })
        .collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({"jobs": jobs}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let back: Vec<Value> = (0..10)
        .map(|i| {
            json!({"kind": "ledger.transfer", "payload": {"from_account": sinks[i % 2],
            "to_account": source, "amount_minor": 1, "currency": "EUR"}})
        })
        .collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({"jobs": back}))
        .await;
    let back: Value = r.json().await.unwrap();

    let mut outcomes = (0, 0);
    for job in created["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(back["jobs"].as_array().unwrap())
    {
        let id = job["id"].as_str().unwrap();
        let state = support::eventually(Duration::from_secs(30), || async {
            let j = app.get_json(&format!("/v1/jobs/{id}")).await;
            matches!(j["state"].as_str(), Some("succeeded" | "dead")).then(|| j)
        })
        .await
        .unwrap_or_else(|| panic!("transfer {id} never finished"));
        if state["state"] == "succeeded" {
            outcomes.0 += 1;
        } else {
            assert!(
                state["last_error"]
                    .as_str()
                    .unwrap()
                    .contains("insufficient funds"),
                "{state:#}"
            );
            assert_eq!(state["attempts"], 1, "insufficient funds is permanent");
            outcomes.1 += 1;
        }
    }
    let total: i64 = balance(&app, &source).await
        + balance(&app, &sinks[0]).await
        + balance(&app, &sinks[1]).await;
    assert_eq!(total, 1000, "money is conserved");
    assert!(
        outcomes.0 >= 20,
        "at least the 20 covered transfers succeed: {outcomes:?}"
    );
    assert_ledger_consistent(&app).await;
    p.stop.cancel();
    app.stop().await;
}

/// A worker running many payment jobs at once (the default concurrency is 128) shares its
/// `CONVEYOR_DB_MAX_CONNECTIONS` handler connections instead of opening one per running job,
/// which would exhaust Postgres's connection limit; the jobs queue for a connection and all
/// succeed, each charged and booked once.
#[tokio::test]
async fn payment_jobs_share_the_handler_connections() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with_worker(&p, |c| {
        c.concurrency = 128;
        c.prefetch = 256;
        c.database.max_connections = 3;
    })
    .await;
    let wallet = account(&app, "wallet", "EUR").await;
    // Watch the handler pool's sessions while the jobs are sent and run (the watch ends when
    // they are done).
    let mut peak = 0;
    let watch = async {
        loop {
            peak = peak.max(
                app.count_sessions("application_name = 'conveyor-worker-handlers'")
                    .await,
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let run = async {
        // Every charge books onto the same account, so their transactions also queue on its row.
        let jobs: Vec<Value> = (0..200)
            .map(|_| {
                json!({"kind": "payment.charge",
                       "payload": {"account_id": wallet, "amount_minor": 5, "currency": "EUR"}})
            })
            .collect();
        let r = app
            .post_as(&app.token, "/v1/jobs/batch", json!({"jobs": jobs}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        support::eventually(Duration::from_secs(60), || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE kind = 'payment.charge' AND state = 'succeeded'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (n == 200).then_some(())
        })
        .await
    };
    let all_done = tokio::select! {
        done = run => done,
        _ = watch => unreachable!("the watch never ends"),
    };
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state::text, count(*) FROM jobs GROUP BY 1 ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(all_done.is_some(), "not every charge succeeded: {states:?}");
    assert!(
        peak >= 1,
        "the watcher never saw a handler connection: is the pool named?"
    );
    assert!(
        peak <= 3,
        "{peak} handler connections at once, over CONVEYOR_DB_MAX_CONNECTIONS (3)"
    );
    assert_eq!(provider_charges(&p).await.len(), 200);
    assert_eq!(balance(&app, &wallet).await, 1000);
    assert_ledger_consistent(&app).await;
    p.stop.cancel();
    app.stop().await;
}

#[tokio::test]
async fn a_refund_of_a_charge_still_running_waits_for_it() {
    let p = provider(FaultConfig::default()).await;
    let app = app_with(&p).await;
    let wallet = account(&app, "wallet", "EUR").await;
    // A charge held by a worker that never finishes it: not yet charged, and running.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let held = app
        .enqueue(json!({"kind": "payment.charge", "run_at": later,
                        "payload": {"account_id": wallet, "amount_minor": 500, "currency": "EUR"}}))
        .await;
    let held_id: conveyor_shared::JobId = held.parse().unwrap();
    sqlx::query("UPDATE jobs SET state = 'queued' WHERE id = $1")
        .bind(held_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let claimed =
        conveyor_shared::job::lifecycle::claim_batch(&app.pool, &[held_id], "ghost", 3600.0)
            .await
            .unwrap();
    assert_eq!(claimed.len(), 1);

    let refund = app
        .enqueue(json!({"kind": "payment.refund", "payload": {"charge_job_id": held}}))
        .await;
    let waiting = app
        .wait_for_state(&refund, "retrying", Duration::from_secs(10))
        .await;
    let error = waiting["last_error"].as_str().unwrap();
    assert!(
        error.contains("is still running"),
        "the refund should wait for the charge: {waiting:#}"
    );
    app.stop().await;
}
