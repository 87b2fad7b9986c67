//! Abuse limits: per-key rate limits (a batch counts its jobs), request timeouts and the payload
//! size limit per job, on the single and batch routes alike; the per-address budget for failed
//! authentication; the cap on open connections and the deadline for a request's head.

mod support;

use std::{net::IpAddr, time::Duration};

use conveyor_shared::keys::Scope;
use reqwest::{StatusCode, header};
use serde_json::json;
use support::{Options, TestApp, eventually, noop, problem};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn spawn(options: Options) -> TestApp {
    TestApp::spawn_with(Options {
        worker: false,
        ..options
    })
    .await
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_then_recovers() {
    // 2 per second, 5 at once.
    let app = spawn(Options {
        rate_limit: (2, 5),
        ..Default::default()
    })
    .await;
    let token = app.key("default", &[Scope::JobsRead]).await;
    for i in 0..5 {
        let r = app.get_as(&token, "/v1/jobs").await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "request {i} is within the burst"
        );
    }
    let r = app.get_as(&token, "/v1/jobs").await;
    let retry_after: u64 = r.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    let body = problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(
        body["detail"].as_str().unwrap().contains("retry in"),
        "{body:#}"
    );

    // Another key of the same tenant has its own budget.
    let other = app.key("default", &[Scope::JobsRead]).await;
    assert_eq!(
        app.get_as(&other, "/v1/jobs").await.status(),
        StatusCode::OK
    );

    // After the advertised wait, the key is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        app.get_as(&token, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_of_n_jobs_costs_n_requests() {
    let app = spawn(Options {
        rate_limit: (1, 5),
        ..Default::default()
    })
    .await;
    let token = app.key("default", &[Scope::JobsWrite]).await;
    let batch = |n: usize| json!({"jobs": vec![noop(json!({})); n]});
    let r = app.post_as(&token, "/v1/jobs/batch", batch(5)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // The batch spent the whole burst: the next single enqueue must wait.
    let r = app.post_as(&token, "/v1/jobs", noop(json!({}))).await;
    problem(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(app.count_jobs().await, 5);

    // A batch larger than the burst can never pass; it is refused as such, not with a wait.
    let fresh = app.key("default", &[Scope::JobsWrite]).await;
    let r = app.post_as(&fresh, "/v1/jobs/batch", batch(6)).await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "jobs", "{body:#}");
    assert_eq!(app.count_jobs().await, 5);
    app.stop().await;
}

#[tokio::test]
async fn a_payload_over_the_limit_is_refused_by_name_in_a_batch_too() {
    let app = spawn(Options {
        max_payload_bytes: 1024,
        ..Default::default()
    })
    .await;
    let big = noop(json!({"pad": "x".repeat(2000)}));
    let r = app.post_job(big.clone()).await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "payload", "{body:#}");

    let r = app
        .post_as(
            &app.token,
            "/v1/jobs/batch",
            json!({"jobs": [noop(json!({})), big]}),
        )
        .await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "jobs[1].payload", "{body:#}");
    assert_eq!(app.count_jobs().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_outlasts_the_timeout_is_answered_503() {
    let app = spawn(Options {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    // A client that announces a body and never sends it (slowloris) holds no handler forever.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\":",
        app.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered within the timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Failed authentication, per client address.

/// A client whose requests come from `ip`: Linux routes all of 127.0.0.0/8 to the loopback
/// interface, so tests can speak from several client addresses to one api.
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, app: &TestApp, token: &str) -> reqwest::Response {
    client
        .get(app.url("/v1/jobs"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn unknown_token() -> String {
    format!("cvy_{}", "x".repeat(40))
}

#[tokio::test]
async fn an_address_that_keeps_failing_authentication_gets_429_then_recovers() {
    // 1 failure per second per address, 3 at once.
    let app = spawn(Options {
        auth_fail_limit: (1, 3),
        ..Default::default()
    })
    .await;
    let valid = app.key("default", &[Scope::JobsRead]).await;
    let guesser = client_from([127, 0, 0, 2]);
    let bad = unknown_token();
    for i in 0..3 {
        let r = get(&guesser, &app, &bad).await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "failure {i} is in budget"
        );
    }
    let r = get(&guesser, &app, &bad).await;
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    let body = problem(r, StatusCode::TOO_MANY_REQUESTS, "auth_rate_limited").await;
    assert!(
        body["detail"].as_str().unwrap().contains("retry in 1 s"),
        "{body:#}"
    );
    // Over budget, the address is refused before the key lookup, so a valid token from it is
    // refused too: telling the two apart would take the lookup the limit is there to spare.
    let r = get(&guesser, &app, &valid).await;
    problem(r, StatusCode::TOO_MANY_REQUESTS, "auth_rate_limited").await;

    // Other addresses have their own budget: a valid key is served, a bad token is a plain 401.
    assert_eq!(
        app.get_as(&valid, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_as(&bad, "/v1/jobs").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // The budget refills at its rate (refusals while waiting do not push it back): within a
    // few seconds the guesser is answered again, and then has one failure, not a burst.
    let recovered = eventually(Duration::from_secs(5), || async {
        let status = get(&guesser, &app, &bad).await.status();
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "the address never recovered");
    let r = get(&guesser, &app, &bad).await;
    problem(r, StatusCode::TOO_MANY_REQUESTS, "auth_rate_limited").await;
    app.stop().await;
}

#[tokio::test]
async fn a_busy_valid_key_never_spends_its_address_budget() {
    let app = spawn(Options {
        auth_fail_limit: (1, 3),
        ..Default::default()
    })
    .await;
    let valid = app.key("default", &[Scope::JobsRead]).await;
    let client = client_from([127, 0, 0, 3]);
    // Ten times the failure burst, all authenticated: none of it counts.
    for i in 0..30 {
        let r = get(&client, &app, &valid).await;
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
    }
    // So the whole failure budget is still there, and no more.
    let bad = unknown_token();
    for i in 0..3 {
        let r = get(&client, &app, &bad).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let r = get(&client, &app, &bad).await;
    problem(r, StatusCode::TOO_MANY_REQUESTS, "auth_rate_limited").await;
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Connections.

/// Asks `/healthz` on `stream` (keeping it open) and returns the answer's head.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A TestApp whose own client holds no connection: its readiness checks kept one open, which
/// would take one of the few slots these tests count.
async fn spawn_without_pooled_connection(options: Options) -> TestApp {
    let mut app = spawn(options).await;
    app.client = reqwest::Client::new();
    app
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let app = spawn_without_pooled_connection(Options {
        max_connections: 4,
        ..Default::default()
    })
    .await;
    // Four idle keep-alive connections, each served once (so each holds a slot).
    let mut idle = Vec::new();
    for i in 0..4 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), healthz(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("connection {i} is within the cap"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        idle.push(stream);
    }
    // A fifth connects (the kernel's backlog takes it) but is not served while all four are
    // open...
    let mut fifth = TcpStream::connect(app.addr).await.unwrap();
    let mut waiting = tokio::spawn(async move { (healthz(&mut fifth).await, fifth) });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut waiting)
            .await
            .is_err(),
        "a fifth connection was served while four were open"
    );
    // ...and is, as soon as one of them closes.
    drop(idle.pop());
    let (answer, _fifth) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the fifth connection is served once a slot is free")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn a_client_dribbling_its_headers_is_cut_off_and_frees_its_slot() {
    let app = spawn_without_pooled_connection(Options {
        max_connections: 1,
        header_read_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    // Slowloris: a request head that never ends, one header line every 100 ms.
    let slow = TcpStream::connect(app.addr).await.unwrap();
    let (mut slow_read, mut slow_write) = slow.into_split();
    let dribble = tokio::spawn(async move {
        slow_write
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            slow_write.write_all(b"X-Slow: yes\r\n").await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    // The only slot is taken: a well-behaved client waits...
    let mut next = TcpStream::connect(app.addr).await.unwrap();
    let mut waiting = tokio::spawn(async move { healthz(&mut next).await });
    // ...until the server gives up on the dribbler: its connection ends (with or without a 408)
    // although it kept sending.
    let cut_off = tokio::time::timeout(Duration::from_secs(5), async {
        let mut sink = [0; 1024];
        while let Ok(n) = slow_read.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(cut_off.is_ok(), "a dribbling client kept its connection");
    let answer = tokio::time::timeout(Duration::from_secs(5), &mut waiting)
        .await
        .expect("the waiting client is served once the dribbler is gone")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    dribble.abort();
    app.stop().await;
}
