//! Postgres alone: how fast this server takes jobs in multi-row inserts shaped like the api's
//! (arrays through `unnest`, one statement per batch, one transaction each), into a copy of the
//! stack's `jobs` table with every index it has, in a scratch schema dropped afterwards.

use std::time::{Duration, Instant};

// The schema name is ours (a fresh UUID), never input, so formatting it into SQL is safe.
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use uuid::Uuid;

use crate::Args;

#[derive(Debug, Clone)]
pub struct RawPostgres {
    pub rows: usize,
    pub batch: usize,
    pub elapsed: Duration,
}

pub async fn run(args: &Args) -> anyhow::Result<RawPostgres> {
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Postgres (DATABASE_URL): {e}"))?;
    let schema = format!("conveyor_bench_{}", Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut db)
        .await?;
    let outcome = measure(&mut db, &schema, args.raw_messages, args.batch).await;
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut db)
        .await?;
    let elapsed = outcome?;
    Ok(RawPostgres {
        rows: args.raw_messages,
        batch: args.batch,
        elapsed,
    })
}

async fn measure(
    db: &mut PgConnection,
    schema: &str,
    rows: usize,
    batch: usize,
) -> anyhow::Result<Duration> {
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.jobs (LIKE public.jobs INCLUDING ALL)"
    )))
    .execute(&mut *db)
    .await
    .map_err(|e| {
        anyhow::anyhow!("cannot copy the jobs table (is DATABASE_URL the stack's database?): {e}")
    })?;
    let insert = format!(
        "INSERT INTO {schema}.jobs (id, tenant, kind, queue, state, payload, priority,
                                    max_attempts, timeout_secs, run_at)
         SELECT id, 'bench', 'noop', 'default', 'queued', '{{}}'::jsonb, 0, 25, 300, now()
         FROM unnest($1::uuid[]) AS t(id)"
    );
    let start = Instant::now();
    let mut left = rows;
    while left > 0 {
        let n = left.min(batch);
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let mut tx = db.begin().await?;
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        left -= n;
    }
    Ok(start.elapsed())
}
