//! TLS to both servers: Postgres with `sslmode=require` / `verify-ca`, RabbitMQ over `amqps://`
//! with a private CA (`CONVEYOR_AMQP_CA_FILE`), and clear failures when the TLS setup is wrong.
//!
//! Needs the TLS listeners of `scripts/ensure-services.sh`: RabbitMQ on localhost:5671 with a
//! certificate signed by the CA in `/etc/rabbitmq/conveyor-tls/ca.pem` (`CONVEYOR_TEST_AMQP_CA`
//! overrides the path, `CONVEYOR_TEST_AMQPS` the URL), and Postgres with `ssl = on`.

mod support;

use std::time::Duration;

use conveyor_shared::{
    broker,
    config::{BrokerConfig, CaCertificates, DatabaseConfig},
    db,
};
use serde_json::json;
use sqlx::PgPool;
use support::{Options, TestApp, noop, pg_server};

const AMQPS_URL: &str = "amqps://guest:guest@localhost:5671/%2f";
const AMQP_CA: &str = "/etc/rabbitmq/conveyor-tls/ca.pem";

fn amqps_url() -> String {
    std::env::var("CONVEYOR_TEST_AMQPS").unwrap_or_else(|_| AMQPS_URL.into())
}

/// The CA that signed the local broker's certificate; fails the test when TLS is not set up.
fn amqp_ca() -> CaCertificates {
    let path = std::env::var("CONVEYOR_TEST_AMQP_CA").unwrap_or_else(|_| AMQP_CA.into());
    CaCertificates::load("CONVEYOR_TEST_AMQP_CA", &path).unwrap_or_else(|e| {
        panic!("{e}\nRabbitMQ's TLS listener is not set up: run scripts/ensure-services.sh")
    })
}

/// Whether the pool's own session is encrypted, as Postgres sees it.
async fn session_is_tls(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl")
}

/// The certificate Postgres presents (Debian's self-signed snakeoil), to trust it as a root.
async fn postgres_certificate() -> String {
    let admin = PgPool::connect(&format!("{}/postgres", pg_server()))
        .await
        .expect("Postgres is running (scripts/ensure-services.sh)");
    let (ssl, cert): (String, String) =
        sqlx::query_as("SELECT current_setting('ssl'), current_setting('ssl_cert_file')")
            .fetch_one(&admin)
            .await
            .unwrap();
    admin.close().await;
    assert_eq!(
        ssl, "on",
        "Postgres does not offer TLS: run scripts/ensure-services.sh"
    );
    cert
}

async fn connect_error(config: &BrokerConfig) -> String {
    match tokio::time::timeout(Duration::from_secs(20), broker::connect(config, "tls-test")).await {
        Ok(Ok(_)) => panic!("connecting with {config:?} should fail"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("connecting with {config:?} neither failed nor succeeded within 20s"),
    }
}

#[tokio::test]
async fn jobs_flow_over_tls_to_postgres_and_rabbitmq() {
    let app = TestApp::spawn_with(Options {
        amqp: Some((amqps_url(), Some(amqp_ca()))),
        database_params: "?sslmode=require".into(),
        ..Default::default()
    })
    .await;

    // Enqueued, published by the relay over amqps, consumed and run by the worker over amqps.
    let id = app.enqueue(noop(json!({}))).await;
    app.wait_for_state(&id, "succeeded", Duration::from_secs(10))
        .await;

    assert!(session_is_tls(&app.pool).await, "the api's pool is not TLS");
    // Every session of the test database (api pool, relay listener, worker pool) is encrypted.
    let (sessions, all_tls): (i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = $1",
    )
    .bind(&app.db_name)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(sessions >= 2, "expected the api's and worker's sessions");
    assert_eq!(
        all_tls,
        Some(true),
        "a session to the test database is not TLS"
    );
    app.stop().await;
}

#[tokio::test]
async fn sslmode_disable_is_plain_so_the_tls_check_means_something() {
    let name = format!("conveyor_test_{}", uuid::Uuid::new_v4().simple());
    let config = DatabaseConfig::with_url(format!("{}/{name}?sslmode=disable", pg_server()));
    let pool = db::connect(&config).await.unwrap();
    assert!(!session_is_tls(&pool).await);
    drop_database(pool, &name).await;
}

#[tokio::test]
async fn verify_ca_trusts_the_given_root_and_rejects_another() {
    let cert = postgres_certificate().await;
    let name = format!("conveyor_test_{}", uuid::Uuid::new_v4().simple());

    // The database does not exist yet: the admin connection that creates it verifies too.
    let wrong = DatabaseConfig::with_url(format!(
        "{}/{name}?sslmode=verify-ca&sslrootcert={AMQP_CA}",
        pg_server()
    ));
    let e = db::connect(&wrong)
        .await
        .expect_err("an untrusted server certificate")
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    let right = DatabaseConfig::with_url(format!(
        "{}/{name}?sslmode=verify-ca&sslrootcert={cert}",
        pg_server()
    ));
    let pool = db::connect(&right)
        .await
        .expect("verify-ca with the server's certificate");
    assert!(session_is_tls(&pool).await);
    drop_database(pool, &name).await;
}

#[tokio::test]
async fn plain_amqp_to_the_tls_port_fails() {
    let url = amqps_url().replacen("amqps://", "amqp://", 1);
    let e = connect_error(&BrokerConfig::with_url(url, "tls-test")).await;
    assert!(
        !e.contains(":guest@"),
        "the password leaked into the error: {e}"
    );
}

#[tokio::test]
async fn amqps_rejects_a_broker_signed_by_an_untrusted_ca() {
    // Without the CA: only the platform's roots, which did not sign the local broker.
    let e = connect_error(&BrokerConfig::with_url(amqps_url(), "tls-test")).await;
    assert!(e.contains("UnknownIssuer"), "{e}");

    // With a CA that is a valid certificate but not the issuer.
    let other = CaCertificates::load("CA", postgres_certificate().await).unwrap();
    let config = BrokerConfig {
        ca: Some(other),
        ..BrokerConfig::with_url(amqps_url(), "tls-test")
    };
    let e = connect_error(&config).await;
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert!(
        !e.contains(":guest@"),
        "the password leaked into the error: {e}"
    );

    // And with the right one it connects: the failures above are about trust, nothing else.
    let config = BrokerConfig {
        ca: Some(amqp_ca()),
        ..BrokerConfig::with_url(amqps_url(), "tls-test")
    };
    let connection = broker::connect(&config, "tls-test").await.unwrap();
    connection.close(200, "bye".into()).await.unwrap();
}

async fn drop_database(pool: PgPool, name: &str) {
    pool.close().await;
    let admin = PgPool::connect(&format!("{}/postgres", pg_server()))
        .await
        .unwrap();
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&admin)
        .await
        .unwrap();
}
