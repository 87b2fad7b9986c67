//! The audit trail: administrative actions are recorded with who, what, when and from where,
//! and `GET /v1/audit` shows an admin only their own tenant's.

mod support;

use std::process::Output;

use conveyor_shared::keys::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{TestApp, noop, output_field, problem};

async fn conveyor_api(app: &TestApp, args: &[&str]) -> Output {
    let out = support::cli(app, args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A job due tomorrow: waiting, so it can be cancelled.
fn later() -> Value {
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    json!({"kind": "noop", "run_at": tomorrow.to_rfc3339()})
}

async fn entries(app: &TestApp, token: &str) -> Vec<Value> {
    let r = app.get_as(token, "/v1/audit?limit=500").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn admin_actions_are_recorded_with_who_what_when_and_where() {
    let app = TestApp::without_worker().await;
    let started = chrono::Utc::now();
    let bootstrap_key: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    // Job cancel and retry.
    let id = app.enqueue(later()).await;
    let r = app
        .post_as(&app.token, &format!("/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post_as(&app.token, &format!("/v1/jobs/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // A refused action changes nothing and is not recorded.
    let r = app
        .post_as(&app.token, &format!("/v1/jobs/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // Schedule create, update, delete.
    let r = app
        .post_as(
            &app.token,
            "/v1/schedules",
            json!({"name": "nightly", "cron": "0 3 * * *", "timezone": "UTC",
                   "job": noop(json!({}))}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let schedule: Value = r.json().await.unwrap();
    let sid = schedule["id"].as_str().unwrap().to_owned();
    let r = app
        .client
        .patch(app.url(&format!("/v1/schedules/{sid}")))
        .bearer_auth(&app.token)
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .delete(app.url(&format!("/v1/schedules/{sid}")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Key create and revoke, and a bulk retry, from the command line.
    let out = conveyor_api(
        &app,
        &[
            "keys",
            "create",
            "--tenant",
            "default",
            "--scope",
            "jobs:read",
        ],
    )
    .await;
    let new_key = output_field(&String::from_utf8_lossy(&out.stdout), "id:");
    conveyor_api(&app, &["keys", "revoke", &new_key]).await;
    conveyor_api(&app, &["jobs", "retry-dead", "--tenant", "default"]).await;

    let mut log = entries(&app, &app.token).await;
    log.reverse(); // oldest first
    let actions: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "job.cancel",
            "job.retry",
            "schedule.create",
            "schedule.update",
            "schedule.delete",
            "key.create",
            "key.revoke",
            "jobs.retry_dead",
        ]
    );
    for entry in &log[..5] {
        assert_eq!(entry["key_id"], bootstrap_key.to_string(), "{entry:#}");
        assert_eq!(entry["remote_addr"], "127.0.0.1", "{entry:#}");
        assert_eq!(entry["tenant"], "default", "{entry:#}");
        let at: chrono::DateTime<chrono::Utc> = entry["at"].as_str().unwrap().parse().unwrap();
        assert!(at >= started - chrono::Duration::seconds(1), "{entry:#}");
    }
    assert_eq!(log[0]["target"], id);
    assert_eq!(log[1]["target"], id);
    assert_eq!(log[2]["target"], sid);
    assert_eq!(log[2]["detail"]["name"], "nightly");
    assert_eq!(log[3]["detail"]["fields"], json!(["paused"]));
    for entry in &log[5..] {
        assert!(entry["key_id"].is_null(), "{entry:#}");
        assert_eq!(entry["remote_addr"], "cli", "{entry:#}");
    }
    assert_eq!(log[5]["target"], new_key);
    assert_eq!(log[6]["target"], new_key);
    assert_eq!(log[7]["detail"]["retried"], 0);

    // Pages: newest first, the cursor continues where the page ended.
    let first: Value = app.get_json("/v1/audit?limit=3").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get_json(&format!("/v1/audit?limit=10&cursor={cursor}"))
        .await;
    assert_eq!(first["entries"].as_array().unwrap().len(), 3);
    assert_eq!(second["entries"].as_array().unwrap().len(), 5);
    assert!(second["next_cursor"].is_null());
    assert_eq!(second["entries"][0]["action"], "schedule.delete");
    app.stop().await;
}

#[tokio::test]
async fn only_admins_read_the_trail_and_only_their_tenants() {
    let app = TestApp::without_worker().await;
    let id = app.enqueue(later()).await;
    let r = app
        .post_as(&app.token, &format!("/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // An operator command across all tenants is seen by no key.
    conveyor_api(&app, &["jobs", "purge", "--older-than-days", "30"]).await;

    let writer = app
        .key("default", &[Scope::JobsRead, Scope::JobsWrite])
        .await;
    problem(
        app.get_as(&writer, "/v1/audit").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let other_admin = app.key("other", &[Scope::Admin]).await;
    assert!(entries(&app, &other_admin).await.is_empty());
    let own = entries(&app, &app.token).await;
    assert_eq!(own.len(), 1, "{own:#?}");
    assert_eq!(own[0]["action"], "job.cancel");

    let r = app.get_as(&app.token, "/v1/audit?limit=0").await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let r = app.get_as(&app.token, "/v1/audit?cursor=nope").await;
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    app.stop().await;
}

/// The state of a job, read from the table.
async fn state(app: &TestApp, id: &str) -> String {
    sqlx::query_scalar("SELECT state::text FROM jobs WHERE id::text = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_action_whose_audit_entry_fails_is_rolled_back() {
    let app = TestApp::without_worker().await;
    // Set the stage while the trail still accepts entries: a waiting job, a cancelled one, a
    // dead one, one finished long ago, a schedule and a key.
    let waiting = app.enqueue(later()).await;
    let cancelled = app.enqueue(later()).await;
    let r = app
        .post_as(
            &app.token,
            &format!("/v1/jobs/{cancelled}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let dead = app.enqueue(later()).await;
    let old = app.enqueue(later()).await;
    sqlx::query("UPDATE jobs SET state = 'dead', finished_at = now() WHERE id::text = $1;")
        .bind(&dead)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '40 days'
         WHERE id::text = $1",
    )
    .bind(&old)
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app
        .post_as(
            &app.token,
            "/v1/schedules",
            json!({"name": "nightly", "cron": "0 3 * * *", "timezone": "UTC",
                   "job": noop(json!({}))}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let schedule: Value = r.json().await.unwrap();
    let sid = schedule["id"].as_str().unwrap().to_owned();
    let out = conveyor_api(
        &app,
        &[
            "keys",
            "create",
            "--tenant",
            "default",
            "--scope",
            "jobs:read",
        ],
    )
    .await;
    let key = output_field(&String::from_utf8_lossy(&out.stdout), "id:");

    // From now on every audit insert fails (this test's database only).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'audit trail refused'; END $$;
         CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log
         FOR EACH ROW EXECUTE FUNCTION refuse_audit();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let entries_before = count(&app, "SELECT count(*) FROM audit_log").await;
    let keys_before = count(&app, "SELECT count(*) FROM api_keys").await;

    // HTTP actions answer 500 and change nothing.
    let r = app
        .post_as(&app.token, &format!("/v1/jobs/{waiting}/cancel"), json!({}))
        .await;
    problem(r, StatusCode::INTERNAL_SERVER_ERROR, "internal_error").await;
    assert_eq!(state(&app, &waiting).await, "scheduled");
    let r = app
        .post_as(
            &app.token,
            &format!("/v1/jobs/{cancelled}/retry"),
            json!({}),
        )
        .await;
    problem(r, StatusCode::INTERNAL_SERVER_ERROR, "internal_error").await;
    assert_eq!(state(&app, &cancelled).await, "cancelled");
    let r = app
        .post_as(
            &app.token,
            "/v1/schedules",
            json!({"name": "hourly", "cron": "0 * * * *", "timezone": "UTC",
                   "job": noop(json!({}))}),
        )
        .await;
    problem(r, StatusCode::INTERNAL_SERVER_ERROR, "internal_error").await;
    let r = app
        .client
        .patch(app.url(&format!("/v1/schedules/{sid}")))
        .bearer_auth(&app.token)
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::INTERNAL_SERVER_ERROR, "internal_error").await;
    let r = app
        .client
        .delete(app.url(&format!("/v1/schedules/{sid}")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::INTERNAL_SERVER_ERROR, "internal_error").await;
    let schedules: Vec<(String, bool)> = sqlx::query_as("SELECT name, paused FROM schedules")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(schedules, [("nightly".to_owned(), false)]);

    // Operator commands fail and change nothing.
    for args in [
        &["keys", "create", "--tenant", "default", "--scope", "admin"][..],
        &["keys", "revoke", &key],
        &["keys", "rotate", &key, "--overlap", "1h"],
        &["jobs", "retry-dead"],
        &["jobs", "purge", "--older-than-days", "30"],
    ] {
        let out = support::cli(&app, args).await;
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("audit trail refused"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM api_keys").await,
        keys_before
    );
    let (revoked, expires): (bool, bool) = sqlx::query_as(
        "SELECT revoked_at IS NOT NULL, expires_at IS NOT NULL FROM api_keys WHERE id::text = $1",
    )
    .bind(&key)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        !revoked && !expires,
        "the key was changed without an audit entry"
    );
    assert_eq!(state(&app, &dead).await, "dead");
    assert_eq!(
        state(&app, &old).await,
        "succeeded",
        "purged without an entry"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM audit_log").await,
        entries_before
    );

    // With the trail working again, the same actions go through, each with its entry: what
    // failed above was the audit insert, nothing else.
    sqlx::raw_sql("DROP TRIGGER refuse_audit ON audit_log")
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app
        .post_as(&app.token, &format!("/v1/jobs/{waiting}/cancel"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    conveyor_api(&app, &["keys", "rotate", &key, "--overlap", "1h"]).await;
    conveyor_api(&app, &["jobs", "retry-dead"]).await;
    conveyor_api(&app, &["jobs", "purge", "--older-than-days", "30"]).await;
    assert_eq!(state(&app, &waiting).await, "cancelled");
    assert_eq!(state(&app, &dead).await, "queued");
    assert_eq!(
        count(&app, "SELECT count(*) FROM api_keys").await,
        keys_before + 1
    );
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id OFFSET $1")
            .bind(entries_before)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        actions,
        ["job.cancel", "key.rotate", "jobs.retry_dead", "jobs.purge"]
    );
    app.stop().await;
}
