//! Operator commands: `conveyor-api migrate` and `conveyor-api keys create|list|revoke`.

use clap::Subcommand;
use conveyor_shared::{
    audit::{self, Action, Actor},
    db,
    job::{retention, stats::QueueStats},
    keys::{ApiKey, Scope},
};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its token once (only a hash is stored).
    Create {
        #[arg(long)]
        tenant: String,
        /// jobs:write, jobs:read or admin; repeat for several.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// A label to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never their tokens).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id; requests with its token are refused from now on.
    Revoke { id: uuid::Uuid },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Retry every dead job matching the filters, with a fresh attempt budget.
    RetryDead {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        kind: Option<String>,
    },
    /// Show one job of a tenant, with its attempts log, as JSON.
    Show {
        id: conveyor_shared::JobId,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Delete succeeded and cancelled jobs (and dead ones with --include-dead) that finished
    /// more than N days ago.
    Purge {
        #[arg(long, value_name = "N")]
        older_than_days: u32,
        #[arg(long)]
        include_dead: bool,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    Scope::parse(s)
        .ok_or_else(|| format!("unknown scope {s:?}; use jobs:write, jobs:read or admin"))
}

pub async fn jobs(config: &Config, command: JobsCommand) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&config.database).await?;
    match command {
        JobsCommand::RetryDead {
            tenant,
            queue,
            kind,
        } => {
            let detail = serde_json::json!({"queue": queue, "kind": kind});
            let actor = Actor::cli(tenant.as_deref());
            let filter = retention::DeadFilter {
                tenant,
                queue,
                kind,
            };
            let n = retention::retry_dead(&pool, &filter).await?;
            let detail = serde_json::json!({"filter": detail, "retried": n});
            audit::record(&pool, &actor, Action::JobsRetryDead, None, detail).await?;
            println!("retried {n} dead jobs");
        }
        JobsCommand::Show { id, tenant } => {
            let job = conveyor_shared::Job::get(&pool, &tenant, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no job {id} for tenant {tenant}"))?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobsCommand::Purge {
            older_than_days,
            include_dead,
        } => {
            let cutoff = chrono::Utc::now() - chrono::Duration::days(older_than_days.into());
            let n = retention::purge_finished(&pool, cutoff, include_dead, 5_000).await?;
            let detail = serde_json::json!({
                "older_than_days": older_than_days, "include_dead": include_dead, "deleted": n,
            });
            audit::record(&pool, &Actor::cli(None), Action::JobsPurge, None, detail).await?;
            println!("deleted {n} jobs finished before {cutoff}");
        }
    }
    Ok(())
}

/// `conveyor-api queues`: the statistics of every configured queue for a tenant (Postgres only).
pub async fn queues(config: &Config, tenant: &str) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&config.database).await?;
    let stats = QueueStats::load(&pool, tenant, &config.queues).await?;
    println!(
        "{:<14} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10} {:>10} {:>12}",
        "QUEUE",
        "BACKLOG",
        "RUNNING",
        "RETRYING",
        "SUCCEEDED",
        "DEAD",
        "DONE/1MIN",
        "WAIT P95",
        "OLDEST WAIT"
    );
    for queue in &config.queues {
        let s = stats.get(queue).cloned().unwrap_or_default();
        let secs = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}s"));
        println!(
            "{:<14} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10} {:>10} {:>12}",
            queue,
            s.backlog,
            s.counts.running,
            s.counts.retrying,
            s.counts.succeeded,
            s.counts.dead,
            s.throughput.finished_1m,
            secs(s.queue_wait_seconds.p95),
            secs(s.oldest_waiting_age_seconds),
        );
    }
    Ok(())
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::connect_and_migrate(&config.database).await?;
    println!("migrations applied");
    Ok(())
}

pub async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let pool = db::connect_and_migrate(&config.database).await?;
    match command {
        KeysCommand::Create {
            tenant,
            scopes,
            name,
        } => {
            let (key, token) = ApiKey::create(&pool, &tenant, &name, &scopes).await?;
            let detail = serde_json::json!({"name": key.name, "scopes": key.scopes});
            let actor = Actor::cli(Some(&key.tenant));
            audit::record(
                &pool,
                &actor,
                Action::KeyCreate,
                Some(key.id.to_string()),
                detail,
            )
            .await?;
            println!("id:     {}", key.id);
            println!("tenant: {}", key.tenant);
            println!("scopes: {}", key.scopes.join(" "));
            println!("token:  {token}");
            eprintln!("store the token now: it is not shown again");
        }
        KeysCommand::List { tenant } => {
            println!(
                "{:<36}  {:<16}  {:<10}  {:<28}  {:<8}  NAME",
                "ID", "TENANT", "TOKEN", "SCOPES", "STATUS"
            );
            for key in ApiKey::list(&pool, tenant.as_deref()).await? {
                let status = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<36}  {:<16}  {:<10}  {:<28}  {:<8}  {}",
                    key.id,
                    key.tenant,
                    format!("{}…", key.token_prefix),
                    key.scopes.join(","),
                    status,
                    key.name
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if let Some(tenant) = ApiKey::revoke(&pool, id).await? {
                let actor = Actor::cli(Some(&tenant));
                let target = Some(id.to_string());
                audit::record(
                    &pool,
                    &actor,
                    Action::KeyRevoke,
                    target,
                    serde_json::json!({}),
                )
                .await?;
                println!("revoked {id}");
            } else {
                anyhow::bail!("no active key with id {id}");
            }
        }
    }
    Ok(())
}
