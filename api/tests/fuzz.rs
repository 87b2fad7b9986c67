//! Schemathesis against a running test api: `scripts/fuzz-api.sh` generates requests from
//! `/openapi.json` (valid and invalid) and fails on any 5xx or any answer the document does not
//! declare. Bounded (a fixed number of examples per operation, a fixed seed) to stay well under
//! two minutes; the first run installs the pinned Schemathesis into ~/.cache.

mod support;

use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;
use support::{TestApp, problem};

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undeclared_answer() {
    let app = TestApp::without_worker().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fuzz-api.sh");
    let base = format!("http://{}", app.addr);
    let token = app.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .arg(base)
            .arg(token)
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{report}");
    assert!(report.contains("passed"), "{report}");
    app.stop().await;
}

/// What Schemathesis found, pinned: a repeated query parameter was axum's plain-text 400, and
/// the document declared problems as `application/json` and left out statuses every route has.
#[tokio::test]
async fn schemathesis_findings_stay_fixed() {
    let app = TestApp::without_worker().await;
    for path in [
        "/v1/jobs?limit=1&limit=2",
        "/v1/schedules?cursor=a&cursor=b",
        "/v1/audit?limit=1&limit=1",
    ] {
        let r = app.get_as(&app.token, path).await;
        let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(body["errors"][0]["field"], "query", "{path}: {body:#}");
    }
    let doc: Value = app.get_json("/openapi.json").await;
    let get_job = &doc["paths"]["/v1/jobs/{id}"]["get"]["responses"];
    for status in ["401", "403", "404", "429", "500", "503"] {
        let content = &get_job[status]["content"];
        assert!(
            content["application/problem+json"].is_object()
                && content["application/json"].is_null(),
            "{status}: {content:#}"
        );
    }
    assert!(get_job["429"]["headers"]["Retry-After"].is_object());
    let create = &doc["paths"]["/v1/jobs"]["post"]["responses"];
    for status in ["400", "413", "415", "422"] {
        assert!(create[status].is_object(), "POST /v1/jobs lacks {status}");
    }
    app.stop().await;
}
