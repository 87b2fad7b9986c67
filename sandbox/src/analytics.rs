//! The analytics service stand-in: `POST /analytics/v1/batch` and, for tests, `GET /analytics/v1/events`.
//!
//! Events are deduplicated by `id` (the first copy wins), so a retried batch never counts an event
//! twice; `batches` counts every accepted batch request, duplicates or not, so tests can see batching.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ErrorResponse;

/// Routes under `/analytics/v1`.
pub fn routes(analytics: Arc<Analytics>) -> Router {
    Router::new()
        .route("/batch", post(receive_batch))
        .route("/events", get(list_events))
        .with_state(analytics)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Batch {
    pub events: Vec<Event>,
}

/// The answer to a batch: how many events were new and how many were already known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub accepted: usize,
    pub duplicates: usize,
}

/// Everything received so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub events: Vec<Event>,
    pub batches: u64,
}

#[derive(Debug, Default)]
pub struct Analytics {
    store: Mutex<Store>,
}

#[derive(Debug, Default)]
struct Store {
    /// In arrival order.
    events: Vec<Event>,
    seen: HashSet<String>,
    batches: u64,
}

impl Analytics {
    /// Record a batch: all of it or, if any event is invalid, none of it.
    pub fn record(&self, batch: Batch) -> Result<Receipt, ErrorResponse> {
        if let Some((index, problem)) = batch
            .events
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.problem().map(|p| (i, p)))
        {
            return Err(ErrorResponse::invalid(format!(
                "events[{index}]: {problem}"
            )));
        }
        let mut store = self.store();
        store.batches += 1;
        let mut receipt = Receipt {
            accepted: 0,
            duplicates: 0,
        };
        for event in batch.events {
            if store.seen.insert(event.id.clone()) {
                store.events.push(event);
                receipt.accepted += 1;
            } else {
                receipt.duplicates += 1;
            }
        }
        Ok(receipt)
    }

    pub fn snapshot(&self) -> Snapshot {
        let store = self.store();
        Snapshot {
            events: store.events.clone(),
            batches: store.batches,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // Nothing panics while holding the lock, and the data stays consistent if something did.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Event {
    fn problem(&self) -> Option<&'static str> {
        if self.id.trim().is_empty() {
            Some("id must not be empty")
        } else if self.event.trim().is_empty() {
            Some("event must not be empty")
        } else {
            None
        }
    }
}

async fn receive_batch(
    State(analytics): State<Arc<Analytics>>,
    body: Result<Json<Batch>, JsonRejection>,
) -> Result<Json<Receipt>, ErrorResponse> {
    let Json(batch) = body?;
    let receipt = analytics.record(batch)?;
    tracing::debug!(
        accepted = receipt.accepted,
        duplicates = receipt.duplicates,
        "analytics batch received"
    );
    Ok(Json(receipt))
}

async fn list_events(State(analytics): State<Arc<Analytics>>) -> Json<Snapshot> {
    Json(analytics.snapshot())
}
