//! The ops dashboard at `/`: its security headers, and an end-to-end run in headless Chromium
//! (`browser-tests/dashboard.mjs`, playwright-core) that sees the queues, retries a dead job
//! from the table and sees it succeed, sees script-bearing markup in a payload and in an error
//! shown as inert text, and sees the token sent only in the Authorization header.
//! `scripts/ensure-browser.sh` installs Chromium and playwright-core; `scripts/test.sh` runs it
//! first, so CI has both.

mod support;

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use reqwest::{StatusCode, header};
use serde_json::json;
use support::{Options, TestApp, noop};
use tokio_util::sync::CancellationToken;

/// Markup that runs script if parsed as HTML: a script element, an event handler, and an
/// attribute-breaking prefix for a string placed inside an attribute.
const XSS: &str = r#"<script>window.__xss=1</script> <img src=x onerror="window.__xss=1"> "><svg onload=window.__xss=1>"#;

/// A webhook receiver on loopback that refuses every delivery with `XSS` as its body, which the
/// worker quotes in the job's error: the way text from outside reaches `last_error`.
async fn hostile_receiver(stop: CancellationToken) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { (axum::http::StatusCode::BAD_REQUEST, XSS) });
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    addr
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy_and_no_inline_code() {
    let app = TestApp::without_worker().await;
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
    // The worker may call loopback webhooks and can sign them.
    let app = TestApp::spawn_with(Options {
        configure_worker: Some(Arc::new(|c| {
            c.egress_allow = vec!["127.0.0.0/8".parse().unwrap()];
            c.webhook_secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        })),
        ..Default::default()
    })
    .await;
    let stop_receiver = CancellationToken::new();
    let receiver = hostile_receiver(stop_receiver.clone()).await;
    // Fails its only attempt, then succeeds when retried (attempt 2 > fail_times 1).
    let dead = app
        .enqueue(json!({"kind": "noop", "max_attempts": 1, "payload": {"fail_times": 1}}))
        .await;
    app.wait_for_state(&dead, "dead", Duration::from_secs(10))
        .await;
    // A job with markup in its payload, and in its error: the receiver answers 400 with markup,
    // which the worker quotes, and the job dies (its only attempt, and a 400 is permanent).
    // The receiver is named by host name: the api refuses internal IP literals outright.
    let markup = app
        .enqueue(
            json!({"kind": "webhook.deliver", "max_attempts": 1, "payload": {
            "url": format!("http://localhost:{}/hook", receiver.port()), "event": XSS,
            "data": {"note": XSS}}}),
        )
        .await;
    let dead_markup = app
        .wait_for_state(&markup, "dead", Duration::from_secs(10))
        .await;
    assert!(
        dead_markup["last_error"].as_str().unwrap().contains(XSS),
        "the error should quote the receiver: {dead_markup:#}"
    );
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
        .env("CHROMIUM_PATH", &chromium)
        .env("XSS_TEXT", XSS);
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
    stop_receiver.cancel();
    app.stop().await;
}
