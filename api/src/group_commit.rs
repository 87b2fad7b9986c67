//! Group commit for single-job enqueues: the `POST /v1/jobs` requests (without an
//! Idempotency-Key) that arrive while earlier ones are being written share one multi-row INSERT,
//! and so one commit, instead of one statement and one WAL flush each.
//!
//! Nothing waits on purpose: a request that finds a writer free is written at once, alone. Only
//! while all [`WRITERS`] are busy do requests gather, and the next free writer takes everything
//! gathered (up to [`MAX_GROUP`]). So an idle api adds no latency, and a busy one spends
//! Postgres's time on rows rather than on statements.
//!
//! A group that fails is not failed as a whole: each of its requests is written again on its
//! own, so every request gets its own outcome and its own error. (Hand-written: a channel and a
//! semaphore; no crate does request coalescing over sqlx.)

use std::{collections::BTreeMap, sync::Arc};

use conveyor_shared::{
    Job,
    enqueue::{self, EnqueueError, Enqueued, NewJob},
    relay::RelayWaker,
};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Groups being written at once. More than one, so that a request arriving during a write does
/// not wait for it; few, to leave the pool's other connections to the rest of the api.
pub const WRITERS: usize = 4;
/// The most jobs in one group (one INSERT).
pub const MAX_GROUP: usize = 500;

#[derive(Clone)]
pub struct GroupCommit {
    requests: mpsc::Sender<Request>,
    pool: PgPool,
    relay: RelayWaker,
}

struct Request {
    tenant: String,
    job: NewJob,
    reply: oneshot::Sender<Outcome>,
}

/// The stored row, or, when the group failed, the job handed back to be written alone.
type Outcome = Result<Job, NewJob>;

impl GroupCommit {
    /// Starts the task that forms groups; it ends when every handle is dropped.
    pub fn start(pool: PgPool, relay: RelayWaker) -> Self {
        let (requests, incoming) = mpsc::channel(MAX_GROUP * WRITERS);
        tokio::spawn(gather(incoming, pool.clone(), relay.clone()));
        Self {
            requests,
            pool,
            relay,
        }
    }

    /// Stores `job` for `tenant`, with whatever other requests are waiting; returns the stored
    /// row once it is committed.
    pub async fn enqueue(&self, tenant: &str, job: NewJob) -> Result<Job, EnqueueError> {
        let (reply, outcome) = oneshot::channel();
        let request = Request {
            tenant: tenant.to_owned(),
            job,
            reply,
        };
        let job = match self.requests.send(request).await {
            Ok(()) => match outcome.await {
                Ok(Ok(stored)) => return Ok(stored),
                Ok(Err(job)) => job,
                // The writer was dropped mid-write (it panicked): whether the row was stored
                // is unknown, so the job is not written again.
                Err(_) => return Err(EnqueueError::Database(sqlx::Error::WorkerCrashed)),
            },
            // The gathering task is gone.
            Err(mpsc::error::SendError(request)) => request.job,
        };
        // The group failed: alone, with its own error.
        match enqueue::enqueue(&self.pool, &self.relay, tenant, vec![job], None).await? {
            Enqueued::Created(mut jobs) => Ok(jobs.remove(0)),
            Enqueued::Replayed(_) => unreachable!("no Idempotency-Key, no replay"),
        }
    }
}

/// Takes a writer, then everything waiting (the requests that came while every writer was
/// busy), and writes it as one group.
async fn gather(mut incoming: mpsc::Receiver<Request>, pool: PgPool, relay: RelayWaker) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    while let Some(first) = incoming.recv().await {
        let writer = Arc::clone(&writers)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match incoming.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        metrics::histogram!("conveyor_enqueue_group_size").record(group.len() as f64);
        let (pool, relay) = (pool.clone(), relay.clone());
        tokio::spawn(async move {
            write(&pool, &relay, group).await;
            drop(writer);
        });
    }
}

/// One INSERT per tenant in the group (almost always one), each committed on its own.
async fn write(pool: &PgPool, relay: &RelayWaker, group: Vec<Request>) {
    let mut by_tenant: BTreeMap<String, Vec<Request>> = BTreeMap::new();
    for request in group {
        by_tenant
            .entry(request.tenant.clone())
            .or_default()
            .push(request);
    }
    for (tenant, requests) in by_tenant {
        let (jobs, replies): (Vec<NewJob>, Vec<_>) =
            requests.into_iter().map(|r| (r.job, r.reply)).unzip();
        let stored = match pool.acquire().await {
            Ok(mut conn) => enqueue::insert(&mut conn, &tenant, &jobs).await,
            Err(e) => Err(e),
        };
        match stored {
            // `insert` returns the rows in request order, one per job (no schedule ticks here,
            // so no conflict can leave one out).
            Ok(rows) if rows.len() == jobs.len() => {
                enqueue::created_committed(relay, &rows);
                for (reply, row) in replies.into_iter().zip(rows) {
                    let _ = reply.send(Ok(row));
                }
            }
            outcome => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, jobs = jobs.len(), "group enqueue failed; writing each job alone");
                }
                for (reply, job) in replies.into_iter().zip(jobs) {
                    let _ = reply.send(Err(job));
                }
            }
        }
    }
}
