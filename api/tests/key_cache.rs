//! The api's cache of token lookups (`conveyor_api::key_cache`), with its time to live set to
//! a minute so that only the cache can explain what a test sees: a busy key is read from
//! Postgres once, revocations and rotations still take effect within moments, and a cached
//! key still expires on time.

mod support;

use std::time::Duration;

use conveyor_shared::keys::{ApiKey, Scope};
use reqwest::StatusCode;
use support::{Options, TestApp, problem};

async fn spawn() -> TestApp {
    let app = TestApp::spawn_with(Options {
        worker: false,
        auth_cache_ttl: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    // The cache empties itself once its LISTEN begins (it may have missed a notification
    // before); wait for that, so it cannot empty a cache a test has just filled.
    let listening = app
        .wait_for_session("state = 'idle' AND query LIKE 'LISTEN%conveyor_api_keys%'")
        .await;
    assert!(listening, "the api's key cache never began to LISTEN");
    app
}

async fn status(app: &TestApp, token: &str) -> StatusCode {
    app.get_as(token, "/v1/jobs").await.status()
}

#[tokio::test]
async fn a_cached_key_is_not_read_again_until_the_cache_is_told() {
    let app = spawn().await;
    let (key, token) = ApiKey::create(&app.pool, "acme", "ci", &[Scope::JobsRead])
        .await
        .unwrap();
    assert_eq!(status(&app, &token).await, StatusCode::OK);

    // Revoked by hand in SQL, which tells no one: the api keeps its cached answer. That is
    // the cache at work (and the lag documented for hand edits).
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(key.id)
        .execute(&app.pool)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(status(&app, &token).await, StatusCode::OK);
    }

    // Told (as `keys revoke` and `keys rotate` tell it): the next lookups read Postgres.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(conveyor_shared::keys::KEYS_CHANNEL)
        .execute(&app.pool)
        .await
        .unwrap();
    app.wait_refused(&token).await;
    app.stop().await;
}

#[tokio::test]
async fn a_revocation_reaches_a_cached_key_within_moments() {
    let app = spawn().await;
    let (key, token) = ApiKey::create(&app.pool, "acme", "ci", &[Scope::JobsRead])
        .await
        .unwrap();
    let other = app.key("acme", &[Scope::JobsRead]).await;
    assert_eq!(status(&app, &token).await, StatusCode::OK);
    assert_eq!(status(&app, &other).await, StatusCode::OK);

    ApiKey::revoke(&app.pool, key.id).await.unwrap().unwrap();
    let r = app.wait_refused(&token).await;
    problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The other key, read again after the cache was emptied, still works.
    assert_eq!(status(&app, &other).await, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_rotation_shortens_a_cached_keys_life_within_moments() {
    let app = spawn().await;
    let (key, token) = ApiKey::create(&app.pool, "acme", "ci", &[Scope::JobsRead])
        .await
        .unwrap();
    assert_eq!(status(&app, &token).await, StatusCode::OK);

    // Rotated with no overlap: the old key expires now and the new one works.
    let mut tx = app.pool.begin().await.unwrap();
    let rotation = ApiKey::rotate(&mut tx, key.id, chrono::Duration::zero(), None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let r = app.wait_refused(&token).await;
    problem(r, StatusCode::UNAUTHORIZED, "key_expired").await;
    assert_eq!(status(&app, &rotation.token).await, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_cached_key_expires_on_time() {
    let app = spawn().await;
    let (_, token) = ApiKey::create_expiring(
        &app.pool,
        "acme",
        "ci",
        &[Scope::JobsRead],
        Some(chrono::Duration::seconds(3)),
    )
    .await
    .unwrap();
    assert_eq!(status(&app, &token).await, StatusCode::OK);
    // Nothing changes in Postgres and nothing is told: only the cached expiry can refuse it
    // before the minute is out.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let r = app.get_as(&token, "/v1/jobs").await;
    problem(r, StatusCode::UNAUTHORIZED, "key_expired").await;
    app.stop().await;
}
