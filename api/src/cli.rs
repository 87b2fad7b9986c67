//! Operator commands: `conveyor-api migrate` and `conveyor-api keys create|list|revoke|rotate`.
//!
//! A command that changes rows writes its audit entry in the same transaction as the change.

use chrono::{DateTime, Duration, Utc};
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
        /// Make the key expire after this long: a number and a unit, s, m, h or d (`90d`,
        /// `12h`). Without it the key never expires.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List keys (never their tokens), with expiry and last use.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id; requests with its token are refused from now on.
    Revoke { id: uuid::Uuid },
    /// Issue a new key with the same tenant, name and scopes, print its token once, and make
    /// the old key expire after the overlap (never later than it already would).
    Rotate {
        id: uuid::Uuid,
        /// How long the old key keeps working, for clients to switch over (`0s`: at once).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
        overlap: Duration,
        /// Make the new key expire after this long; without it the new key never expires.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
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

/// `90d`, `12h`, `30m`, `45s`: one whole number and one unit. Kept this small on purpose: key
/// lifetimes are coarse, and a duration crate would be a dependency for one flag.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}; use a number and s, m, h or d, like 90d or 12h");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    // A cap far inside what `Duration`, an interval and a timestamptz can hold.
    n.checked_mul(seconds_per_unit)
        .filter(|secs| *secs <= 10_000 * 365 * 86_400)
        .map(Duration::seconds)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}

/// A timestamp for `keys list`, to the second.
fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

pub async fn jobs(config: &Config, command: JobsCommand) -> anyhow::Result<()> {
    let pool = db::connect_for_command(&config.database).await?;
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
            let mut tx = pool.begin().await?;
            let n = retention::retry_dead(&mut tx, &filter).await?;
            let detail = serde_json::json!({"filter": detail, "retried": n});
            audit::record(&mut *tx, &actor, Action::JobsRetryDead, None, detail).await?;
            tx.commit().await?;
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
            let actor = Actor::cli(None);
            let n =
                retention::purge_finished(&pool, cutoff, include_dead, 5_000, Some(&actor)).await?;
            println!("deleted {n} jobs finished before {cutoff}");
        }
    }
    pool.close().await;
    Ok(())
}

/// `conveyor-api queues`: the statistics of every configured queue for a tenant (Postgres only).
pub async fn queues(config: &Config, tenant: &str) -> anyhow::Result<()> {
    let pool = db::connect_for_command(&config.database).await?;
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
    pool.close().await;
    Ok(())
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::connect_for_command(&config.database)
        .await?
        .close()
        .await;
    println!("migrations applied");
    Ok(())
}

pub async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let pool = db::connect_for_command(&config.database).await?;
    match command {
        KeysCommand::Create {
            tenant,
            scopes,
            name,
            expires_in,
        } => {
            let mut tx = pool.begin().await?;
            let (key, token) =
                ApiKey::create_expiring(&mut *tx, &tenant, &name, &scopes, expires_in).await?;
            let detail = serde_json::json!({
                "name": key.name, "scopes": key.scopes, "expires_at": key.expires_at,
            });
            let actor = Actor::cli(Some(&key.tenant));
            let target = Some(key.id.to_string());
            audit::record(&mut *tx, &actor, Action::KeyCreate, target, detail).await?;
            tx.commit().await?;
            print_new_key(&key, &token);
        }
        KeysCommand::List { tenant } => {
            let now = Utc::now();
            println!(
                "{:<36}  {:<16}  {:<10}  {:<28}  {:<8}  {:<20}  {:<20}  NAME",
                "ID", "TENANT", "TOKEN", "SCOPES", "STATUS", "EXPIRES", "LAST USED"
            );
            for key in ApiKey::list(&pool, tenant.as_deref()).await? {
                let status = if key.revoked_at.is_some() {
                    "revoked"
                } else if key.expires_at.is_some_and(|at| at <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<36}  {:<16}  {:<10}  {:<28}  {:<8}  {:<20}  {:<20}  {}",
                    key.id,
                    key.tenant,
                    format!("{}…", key.token_prefix),
                    key.scopes.join(","),
                    status,
                    when(key.expires_at),
                    when(key.last_used_at),
                    key.name
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let mut tx = pool.begin().await?;
            let Some(tenant) = ApiKey::revoke(&mut *tx, id).await? else {
                anyhow::bail!("no active key with id {id}");
            };
            let actor = Actor::cli(Some(&tenant));
            let target = Some(id.to_string());
            let detail = serde_json::json!({});
            audit::record(&mut *tx, &actor, Action::KeyRevoke, target, detail).await?;
            tx.commit().await?;
            println!("revoked {id}");
        }
        KeysCommand::Rotate {
            id,
            overlap,
            expires_in,
        } => {
            let mut tx = pool.begin().await?;
            let rotation = ApiKey::rotate(&mut tx, id, overlap, expires_in).await?;
            let detail = serde_json::json!({
                "new_key": rotation.new.id,
                "overlap_seconds": overlap.num_seconds(),
                "old_expires_at": rotation.old.expires_at,
                "new_expires_at": rotation.new.expires_at,
            });
            let actor = Actor::cli(Some(&rotation.old.tenant));
            let target = Some(id.to_string());
            audit::record(&mut *tx, &actor, Action::KeyRotate, target, detail).await?;
            tx.commit().await?;
            println!("old:    {} expires {}", id, when(rotation.old.expires_at));
            print_new_key(&rotation.new, &rotation.token);
        }
    }
    pool.close().await;
    Ok(())
}

/// The new key and its token, which is printed this once and never again.
fn print_new_key(key: &ApiKey, token: &str) {
    println!("id:     {}", key.id);
    println!("tenant: {}", key.tenant);
    println!("scopes: {}", key.scopes.join(" "));
    if let Some(at) = key.expires_at {
        println!("expires: {}", when(Some(at)));
    }
    println!("token:  {token}");
    eprintln!("store the token now: it is not shown again");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_a_number_and_a_unit() {
        assert_eq!(parse_duration("90d"), Ok(Duration::days(90)));
        assert_eq!(parse_duration("12h"), Ok(Duration::hours(12)));
        assert_eq!(parse_duration("30m"), Ok(Duration::minutes(30)));
        assert_eq!(parse_duration("0s"), Ok(Duration::zero()));
        for bad in ["", "d", "12", "1.5h", "-1d", "1w", "1h30m", " 1h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("99999999999999d").is_err());
    }
}
