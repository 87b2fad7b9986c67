//! How a relay learns that jobs were enqueued, with its poll set to a minute so that only the
//! wake can explain a job running within seconds: the api wakes its own relay in process, an
//! api without a relay passes the wake on to other processes' relays by NOTIFY, and the
//! scheduler wakes its own relay when it emits ticks.
//!
//! None of this is a NOTIFY in the enqueuing transaction: that serialised every enqueue's
//! commit behind one database-wide lock (see `conveyor_shared::relay::RelayWaker`).

mod support;

use std::time::Duration;

use conveyor_shared::{
    config::DatabaseConfig,
    health::Health,
    relay::{Relay, RelayConfig, RelayWaker},
};
use serde_json::json;
use support::{Options, TestApp, eventually, noop};
use tokio_util::sync::CancellationToken;

const NEVER: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_api_wakes_its_relay_at_once_rather_than_at_the_next_poll() {
    let app = TestApp::spawn_with(Options {
        relay_poll: NEVER,
        ..Default::default()
    })
    .await;
    // The relay's first round, at start, is behind us once the api is ready; a second job
    // proves the relay keeps being woken, not only once.
    for _ in 0..2 {
        let id = app.enqueue(noop(json!({}))).await;
        app.wait_for_state(&id, "succeeded", Duration::from_secs(10))
            .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn an_api_without_a_relay_wakes_the_relay_of_another_process() {
    let app = TestApp::spawn_with(Options {
        run_relay: false,
        relay_poll: NEVER,
        ..Default::default()
    })
    .await;
    let health = Health::new(app.pool.clone());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(
        Relay {
            pool: app.pool.clone(),
            broker: app.broker.clone(),
            queues: vec!["default".to_owned()],
            config: RelayConfig {
                poll_interval: NEVER,
                ..Default::default()
            },
            health: health.clone(),
            // Never woken in process: only a NOTIFY can reach it.
            waker: RelayWaker::default(),
        }
        .run(stop.clone()),
    );
    // The relay reports itself connected just before it starts to LISTEN; the pause covers
    // that. A job enqueued earlier would go out in the relay's first round, proving nothing,
    // which is why there are two: the second can only go out by a wake.
    eventually(Duration::from_secs(10), || async {
        health.broker_connected().then_some(())
    })
    .await
    .expect("the relay did not connect to RabbitMQ");
    tokio::time::sleep(Duration::from_millis(300)).await;

    for _ in 0..2 {
        let id = app.enqueue(noop(json!({}))).await;
        app.wait_for_state(&id, "succeeded", Duration::from_secs(10))
            .await;
    }
    stop.cancel();
    relay.await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn the_scheduler_wakes_its_relay_when_it_emits_a_tick() {
    let app = TestApp::spawn_with(Options {
        relay_poll: NEVER,
        ..Default::default()
    })
    .await;
    let mut config = conveyor_scheduler::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        relay: RelayConfig {
            poll_interval: NEVER,
            ..Default::default()
        },
        ..conveyor_scheduler::Config::defaults(
            DatabaseConfig::with_url(format!("{}/{}", support::pg_server(), app.db_name)),
            app.broker.clone(),
        )
    };
    config.database.max_connections = 4;
    let stop = CancellationToken::new();
    let scheduler = tokio::spawn(conveyor_scheduler::run(config, stop.clone()));

    let r = app
        .post_as(
            &app.token,
            "/v1/schedules",
            json!({"name": "wake", "cron": "* * * * * *", "job": {"kind": "noop"}}),
        )
        .await;
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let schedule: serde_json::Value = r.json().await.unwrap();
    let path = format!("/v1/jobs?schedule_id={}", schedule["id"].as_str().unwrap());
    // Ticks come every second; with no wake the first would wait a minute for a poll.
    let succeeded = eventually(Duration::from_secs(10), || async {
        let page = app.get_json(&path).await;
        let jobs = page["jobs"].as_array().unwrap().clone();
        let done = jobs.iter().filter(|j| j["state"] == "succeeded").count();
        (done >= 2).then_some(done)
    })
    .await;
    assert!(
        succeeded.is_some(),
        "ticks emitted by the scheduler did not run within 10s: {:#}",
        app.get_json(&path).await
    );
    stop.cancel();
    scheduler.await.unwrap().unwrap();
    app.stop().await;
}
