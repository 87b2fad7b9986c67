//! `conveyor-api keys create|list|revoke` and `migrate`, run as the real binary.

mod support;

use std::{process::Output, time::Duration};

use reqwest::StatusCode;
use serde_json::json;
use support::{TestApp, cli as conveyor_api, output_field};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_from_the_command_line() {
    let app = TestApp::without_worker().await;

    let out = conveyor_api(
        &app,
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scope",
            "jobs:read",
            "--name",
            "ci",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = output_field(&stdout(&out), "token:");
    let id = output_field(&stdout(&out), "id:");
    assert!(token.starts_with("cvy_"), "{token}");

    // The token works, for its tenant and scope only.
    let r = app.get_as(&token, "/v1/jobs").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["jobs"],
        json!([])
    );
    let r = app
        .post_as(&token, "/v1/jobs", json!({"kind": "noop"}))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let out = conveyor_api(&app, &["keys", "list", "--tenant", "acme"]).await;
    assert!(out.status.success());
    let listing = stdout(&out);
    assert!(
        listing.contains(&id) && listing.contains("active") && listing.contains("jobs:read"),
        "{listing}"
    );
    assert!(
        !listing.contains(&token),
        "keys list must never print a token"
    );

    let out = conveyor_api(&app, &["keys", "revoke", &id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.wait_refused(&token).await;
    let out = conveyor_api(&app, &["keys", "list"]).await;
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.contains(&id) && l.contains("revoked"))
    );

    // Revoking twice, or a bad scope, fails with a message.
    let out = conveyor_api(&app, &["keys", "revoke", &id]).await;
    assert!(!out.status.success());
    let out = conveyor_api(
        &app,
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scope",
            "jobs:everything",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope"));
    let out = conveyor_api(
        &app,
        &[
            "keys",
            "create",
            "--tenant",
            "no spaces",
            "--scope",
            "admin",
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid tenant"));
    app.stop().await;
}

#[tokio::test]
async fn migrate_creates_a_missing_database() {
    let app = TestApp::without_worker().await;
    let fresh = format!("{}_fresh", app.db_name);
    let url = format!("postgres://postgres@127.0.0.1:5432/{fresh}");
    let out = support::cli_at(url.clone(), &["migrate"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('jobs', 'api_keys', 'job_attempts', 'idempotency_keys')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 4);
    pool.close().await;
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{fresh}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn dead_jobs_are_retried_in_bulk_and_old_finished_jobs_purged() {
    let app = TestApp::spawn().await;
    let mut dead = Vec::new();
    for _ in 0..3 {
        dead.push(
            app.enqueue(json!({"kind": "noop", "payload": {"fail_times": 1}, "max_attempts": 1}))
                .await,
        );
    }
    for id in &dead {
        app.wait_for_state(id, "dead", Duration::from_secs(10))
            .await;
    }
    let out = conveyor_api(&app, &["queues"]).await;
    let table = stdout(&out);
    let default_row = table
        .lines()
        .find(|l| l.starts_with("default"))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        default_row.split_whitespace().nth(5),
        Some("3"),
        "3 dead in default:\n{table}"
    );
    let out = conveyor_api(&app, &["jobs", "show", &dead[0]]).await;
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["attempts_log"][0]["outcome"], "failed");
    let out = conveyor_api(&app, &["jobs", "retry-dead", "--queue", "transactions"]).await;
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("retried 0 dead jobs"),
        "{}",
        stdout(&out)
    );
    let out = conveyor_api(&app, &["jobs", "retry-dead", "--queue", "default"]).await;
    assert!(
        stdout(&out).contains("retried 3 dead jobs"),
        "{}",
        stdout(&out)
    );
    for id in &dead {
        let job = app
            .wait_for_state(id, "succeeded", Duration::from_secs(10))
            .await;
        assert_eq!(job["attempts"], 2);
    }

    // Age two of them past the retention cutoff; a dead one is kept unless asked.
    let dead_old = app
        .enqueue(json!({"kind": "noop", "payload": {"fail_permanently": true}}))
        .await;
    app.wait_for_state(&dead_old, "dead", Duration::from_secs(10))
        .await;
    sqlx::query(
        "UPDATE jobs SET finished_at = now() - interval '40 days' WHERE id::text = ANY($1)",
    )
    .bind(vec![dead[0].clone(), dead[1].clone(), dead_old.clone()])
    .execute(&app.pool)
    .await
    .unwrap();
    let out = conveyor_api(&app, &["jobs", "purge", "--older-than-days", "30"]).await;
    assert!(stdout(&out).contains("deleted 2 jobs"), "{}", stdout(&out));
    for (id, status) in [
        (&dead[0], 404),
        (&dead[1], 404),
        (&dead[2], 200),
        (&dead_old, 200),
    ] {
        let r = app.get_as(&app.token, &format!("/v1/jobs/{id}")).await;
        assert_eq!(r.status().as_u16(), status, "job {id}");
    }
    // Their attempts go with them; the kept jobs keep theirs.
    let attempts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job_id::text, count(*) FROM job_attempts WHERE job_id::text = ANY($1)
         GROUP BY 1 ORDER BY 1",
    )
    .bind(vec![dead[0].clone(), dead[1].clone(), dead[2].clone()])
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(attempts, vec![(dead[2].clone(), 2)], "attempts left behind");
    let out = conveyor_api(
        &app,
        &["jobs", "purge", "--older-than-days", "30", "--include-dead"],
    )
    .await;
    assert!(stdout(&out).contains("deleted 1 jobs"), "{}", stdout(&out));
    app.stop().await;
}

/// The whitespace-separated columns of `keys list`'s row for key `id`: id, tenant, token
/// prefix, scopes, status, expires, last used, name.
async fn listed(app: &TestApp, id: &str) -> Vec<String> {
    let out = conveyor_api(app, &["keys", "list"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    text.lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no {id} in {text}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `expires_at` of a key.
async fn expires_at(app: &TestApp, id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT expires_at FROM api_keys WHERE id::text = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn near(at: chrono::DateTime<chrono::Utc>, expected: chrono::DateTime<chrono::Utc>) -> bool {
    (at - expected).num_seconds().abs() < 60
}

#[tokio::test]
async fn keys_rotate_with_an_overlap_and_list_shows_expiry_and_last_use() {
    let app = TestApp::without_worker().await;
    let out = conveyor_api(
        &app,
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scope",
            "jobs:read",
            "--scope",
            "jobs:write",
            "--name",
            "ci",
            "--expires-in",
            "90d",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_id = output_field(&stdout(&out), "id:");
    let old_token = output_field(&stdout(&out), "token:");
    let ninety_days = chrono::Utc::now() + chrono::Duration::days(90);
    assert!(near(expires_at(&app, &old_id).await.unwrap(), ninety_days));

    // Listed with its expiry, never used; after a request, with its last use.
    let row = listed(&app, &old_id).await;
    assert_eq!(row[4], "active", "{row:?}");
    let listed_expiry: chrono::DateTime<chrono::Utc> = row[5].parse().expect("an expiry");
    assert!(near(listed_expiry, ninety_days), "{row:?}");
    assert_eq!(row[6], "-", "never used: {row:?}");
    assert_eq!(
        app.get_as(&old_token, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    let row = listed(&app, &old_id).await;
    let used: chrono::DateTime<chrono::Utc> = row[6].parse().expect("a last-used time");
    assert!(near(used, chrono::Utc::now()), "{row:?}");

    // Rotate: a new key with the same tenant, name and scopes, and both work for the overlap.
    let out = conveyor_api(&app, &["keys", "rotate", &old_id, "--overlap", "2h"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_id = output_field(&stdout(&out), "id:");
    let new_token = output_field(&stdout(&out), "token:");
    assert_ne!(new_id, old_id);
    assert!(new_token.starts_with("cvy_") && new_token != old_token);
    let two_hours = chrono::Utc::now() + chrono::Duration::hours(2);
    assert!(near(expires_at(&app, &old_id).await.unwrap(), two_hours));
    assert_eq!(
        expires_at(&app, &new_id).await,
        None,
        "no --expires-in: never"
    );
    let (tenant, name, scopes): (String, String, Vec<String>) =
        sqlx::query_as("SELECT tenant, name, scopes FROM api_keys WHERE id::text = $1")
            .bind(&new_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((tenant.as_str(), name.as_str()), ("acme", "ci"));
    assert_eq!(scopes, ["jobs:read", "jobs:write"]);
    for token in [&old_token, &new_token] {
        let r = app
            .post_as(token, "/v1/jobs", json!({"kind": "noop"}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    // A rotation never extends an expiry: a longer overlap keeps the earlier one.
    let out = conveyor_api(&app, &["keys", "rotate", &old_id, "--overlap", "48h"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third_id = output_field(&stdout(&out), "id:");
    assert!(near(expires_at(&app, &old_id).await.unwrap(), two_hours));

    // Overlap 0s: the old key stops at once, the new ones keep working.
    let out = conveyor_api(&app, &["keys", "rotate", &old_id, "--overlap", "0s"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = app.get_as(&old_token, "/v1/jobs").await;
    support::problem(r, StatusCode::UNAUTHORIZED, "key_expired").await;
    assert_eq!(
        app.get_as(&new_token, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    assert_eq!(listed(&app, &old_id).await[4], "expired");
    assert_eq!(listed(&app, &new_id).await[4], "active");

    // An expired key, a revoked one or an unknown id cannot be rotated.
    let out = conveyor_api(&app, &["keys", "rotate", &old_id]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no active key"));
    let out = conveyor_api(&app, &["keys", "revoke", &third_id]).await;
    assert!(out.status.success());
    let out = conveyor_api(&app, &["keys", "rotate", &third_id]).await;
    assert!(!out.status.success());
    let out = conveyor_api(&app, &["keys", "rotate", &uuid::Uuid::new_v4().to_string()]).await;
    assert!(!out.status.success());

    // Each rotation is in the audit trail: the old key as target, the new one in the detail.
    let rotations: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT target, detail FROM audit_log WHERE action = 'key.rotate' AND tenant = 'acme'
         ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rotations.len(), 3, "{rotations:#?}");
    assert!(rotations.iter().all(|(target, _)| *target == old_id));
    assert_eq!(rotations[0].1["new_key"], new_id);
    assert_eq!(rotations[0].1["overlap_seconds"], 7200);
    assert_eq!(rotations[1].1["new_key"], third_id);
    assert_eq!(rotations[2].1["overlap_seconds"], 0);

    // Durations are checked.
    for bad in ["1w", "12", "1.5h", "1h30m"] {
        let out = conveyor_api(
            &app,
            &[
                "keys",
                "create",
                "--tenant",
                "acme",
                "--scope",
                "admin",
                "--expires-in",
                bad,
            ],
        )
        .await;
        assert!(!out.status.success(), "--expires-in {bad} was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
    }
    app.stop().await;
}
