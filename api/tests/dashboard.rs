//! The ops dashboard at `/`: its security headers, and an end-to-end run in headless Chromium
//! (`browser-tests/dashboard.mjs`, playwright-core) that sees the queues, retries a dead job
//! from the table and sees it succeed. `scripts/ensure-browser.sh` installs Chromium and
//! playwright-core; `scripts/test.sh` runs it first, so CI has both.

mod support;

use std::{path::Path, process::Command, time::Duration};

use reqwest::{StatusCode, header};
use serde_json::json;
use support::{Options, TestApp, noop};

async fn spawn_without_worker() -> TestApp {
    TestApp::spawn_with(Options {
        worker: false,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy_and_no_inline_code() {
    let app = spawn_without_worker().await;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        // No token needed: the page holds no data, the API calls it makes do.
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let h = r.headers().clone();
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {h:?}"
        );
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        let body = r.text().await.unwrap();
        if path == "/" {
            // Every script is external (the policy would block inline ones anyway).
            for tag in body.split("<script").skip(1) {
                assert!(tag.trim_start().starts_with("src="), "inline script: {tag}");
            }
            assert!(!body.contains("style="), "inline style attribute");
            assert!(!body.contains("<style"), "inline style element");
        }
        if path == "/dashboard.js" {
            assert!(
                !body.contains("innerHTML"),
                "API strings must go through textContent"
            );
            assert!(!body.contains("insertAdjacentHTML") && !body.contains("eval("));
        }
    }
    app.stop().await;
}

/// Where the browser test script and its node_modules live.
fn browser_tests_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("browser-tests")
}

#[tokio::test]
async fn in_chromium_an_operator_sees_the_queues_and_retries_a_dead_job() {
    let dir = browser_tests_dir();
    let chromium =
        std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists() && dir.join("node_modules/playwright-core").exists(),
        "the browser test needs Chromium at {chromium} and playwright-core in {}: \
         run scripts/ensure-browser.sh (scripts/test.sh does)",
        dir.display()
    );
    let app = TestApp::spawn().await;
    // Fails its only attempt, then succeeds when retried (attempt 2 > fail_times 1).
    let dead = app
        .enqueue(json!({"kind": "noop", "max_attempts": 1, "payload": {"fail_times": 1}}))
        .await;
    app.wait_for_state(&dead, "dead", Duration::from_secs(10))
        .await;
    // A job whose payload holds markup; it dies at once (the test worker has no webhook secret,
    // and the egress policy refuses loopback targets).
    let markup = app
        .enqueue(
            json!({"kind": "webhook.deliver", "max_attempts": 1, "payload": {
            "url": "http://localhost:9/<b>hook</b>", "event": "<img src=x>",
            "data": {"note": "<b>not markup</b>"}}}),
        )
        .await;
    app.wait_for_state(&markup, "dead", Duration::from_secs(10))
        .await;
    for _ in 0..5 {
        app.enqueue(noop(json!({"sleep_ms": 30}))).await;
    }

    let mut command = Command::new("node");
    command
        .arg(dir.join("dashboard.mjs"))
        .arg(app.url(""))
        .arg(&app.token)
        .arg(&dead)
        .arg(&markup)
        .env("CHROMIUM_PATH", &chromium);
    // CONVEYOR_DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes the README's screenshot.
    if let Ok(path) = std::env::var("CONVEYOR_DASHBOARD_SCREENSHOT") {
        command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path));
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("cannot run node; scripts/ensure-browser.sh installs it");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("dashboard ok"), "{stdout}\n{stderr}");
    let job = app.get_json(&format!("/v1/jobs/{dead}")).await;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    app.stop().await;
}
