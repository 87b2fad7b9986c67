//! `conveyor-api keys create|list|revoke` and `migrate`, run as the real binary.

mod support;

use std::{process::Output, time::Duration};

use reqwest::StatusCode;
use serde_json::json;
use support::{Options, TestApp, cli as conveyor_api};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_from_the_command_line() {
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;

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
    let text = stdout(&out);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let token = field("token:");
    let id = field("id:");
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
    assert_eq!(
        app.get_as(&token, "/v1/jobs").await.status(),
        StatusCode::UNAUTHORIZED
    );
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
    let app = TestApp::spawn_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
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
    let out = conveyor_api(
        &app,
        &["jobs", "purge", "--older-than-days", "30", "--include-dead"],
    )
    .await;
    assert!(stdout(&out).contains("deleted 1 jobs"), "{}", stdout(&out));
    app.stop().await;
}
