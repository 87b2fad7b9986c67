//! Postgres: the source of truth for every job.
//!
//! `connect` creates the database named in the URL when it does not exist yet, so a fresh local
//! Postgres (or a fresh test database) needs no manual step.
//!
//! TLS comes from the URL alone (`sslmode=require`, `verify-full` with `sslrootcert=...`; rustls
//! with ring): every connection made here, the admin one that creates the database included, is
//! built from the same parsed options, so none of them falls back to a weaker mode.

use std::{str::FromStr, time::Duration};

use secrecy::ExposeSecret;
use sqlx::{
    Connection, PgPool,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

use crate::config::DatabaseConfig;

/// Migrations embedded at compile time from the workspace's `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    InvalidUrl(sqlx::Error),
    #[error("cannot reach Postgres: {0}")]
    Unreachable(sqlx::Error),
    #[error("cannot create database {name:?}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens a pool, creating the database first if it is missing.
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    connect_pool(config, config.max_connections, &[]).await
}

/// Connections a pool keeps open when idle (fewer if its maximum is lower).
const WARM_CONNECTIONS: u32 = 4;

/// Opens a pool of `max_connections` whose sessions get the `settings` (e.g. `lock_timeout`).
pub async fn connect_pool(
    config: &DatabaseConfig,
    max_connections: u32,
    settings: &[(&str, &str)],
) -> Result<PgPool, DbError> {
    // Kept open even when idle, so that the first requests after a start or a quiet spell do
    // not each wait for a connection to be opened (10-20 ms here: the first 150 requests of an
    // open-loop run at 1,000 req/s waited that long, which was most of its p99).
    let warm = max_connections.min(WARM_CONNECTIONS);
    open(config, max_connections, warm, settings).await
}

/// Connects and runs the migrations for a one-off command (`conveyor-api migrate`, `keys`,
/// `dead`, `purge`): a pool that keeps nothing open, so a command that exits at once leaves no
/// half-opened warm connections behind (Postgres logged each as a reset connection).
pub async fn connect_for_command(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let pool = open(config, 2, 0, &[]).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

async fn open(
    config: &DatabaseConfig,
    max_connections: u32,
    min_connections: u32,
    settings: &[(&str, &str)],
) -> Result<PgPool, DbError> {
    let options =
        PgConnectOptions::from_str(config.url.expose_secret()).map_err(DbError::InvalidUrl)?;
    create_database_if_missing(&options).await?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(min_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.options(settings.iter().copied()))
        .await
        .map_err(DbError::Unreachable)
}

/// Connects and runs the migrations: what the api does at start and `conveyor-api migrate` does.
pub async fn connect_and_migrate(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let pool = connect(config).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), DbError> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin: PgConnection = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(DbError::Unreachable)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .map_err(DbError::Unreachable)?;
    if !exists {
        // Identifiers cannot be bound as parameters; the name is quoted and its quotes doubled.
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our CREATE: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(DbError::Create { name, source }),
        }
    }
    let _ = admin.close().await;
    Ok(())
}
