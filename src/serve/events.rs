//! `GET /v1/events`: server-sent events. `progress` (a batch's counts, whenever they
//! change; read from the record twice a second), `job` (`{"job_id", "batch_id",
//! "state"}`) and `batch` (`{"batch_id", "state": "done"}`). On Postgres the last two
//! come as they happen from `LISTEN renderq_events` (one listening connection per
//! server, shared by every client); on SQLite, for a followed batch, from the same
//! twice-a-second reads. `?batch=ID` keeps one batch's events.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use chrono::{DateTime, Utc};
use futures::{SinkExt, Stream, channel::mpsc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use utoipa::IntoParams;

use super::{
    Api,
    batches::query,
    error::{ApiError, ItemRefusals},
    views::{Batch, Counts, parse_id},
};
use crate::{
    db::BatchQuery,
    job::{BatchId, JobId, JobState},
    token::Scope,
};

/// How often a client's batches are read for `progress`.
const POLL: Duration = Duration::from_millis(500);
/// Batches a client without `?batch=` follows: the newest unfinished ones.
const FOLLOWED: i64 = 20;
/// Notifications kept for a slow client before it misses some (it is told).
pub const BACKLOG: usize = 4096;

/// Relays `renderq_events` from Postgres to every client, reconnecting after a
/// lost connection. Runs until the process ends.
pub async fn relay(url: String, events: broadcast::Sender<Value>) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => match listener.listen("renderq_events").await {
                Ok(()) => loop {
                    match listener.recv().await {
                        Ok(n) => {
                            if let Ok(v) = serde_json::from_str(n.payload()) {
                                // No client: nothing to do.
                                let _ = events.send(v);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("LISTEN renderq_events: {e}; listening again");
                            break;
                        }
                    }
                },
                Err(e) => tracing::warn!("LISTEN renderq_events: {e}"),
            },
            Err(e) => tracing::warn!("connecting to LISTEN renderq_events: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this batch's events; without it, the newest unfinished batches'.
    batch: Option<String>,
}

/// Server-sent events: `progress` (a batch as `GET /v1/batches/{id}` answers, when
/// its counts change); `job` (`{"job_id", "batch_id", "state"}`) and `batch`
/// (`{"batch_id", "state": "done", "job_id": null}`), on Postgres as they happen and
/// on SQLite for a followed batch (`batch=`) from the same reads as its progress; and
/// on Postgres `lagged` (how many a slow client missed).
#[utoipa::path(get, path = "/v1/events", operation_id = "stream_events", tag = "events", params(EventsQuery),
    security(("bearer" = ["read"])),
    responses((status = 200, description = "The event stream", content_type = "text/event-stream"),
              ItemRefusals))]
pub async fn events(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    api.authorize(&headers, Scope::Read).await?;
    let batch = query(q)?
        .batch
        .as_deref()
        .map(|b| parse_id::<BatchId>(b, "batch"))
        .transpose()?;
    if let Some(b) = batch
        && api.record.batch_info(b).await?.is_none()
    {
        return Err(ApiError::not_found("batch", b));
    }
    let (tx, rx) = mpsc::channel(64);
    let notes = api.events.as_ref().map(|e| e.subscribe());
    tokio::spawn(follow(api, batch, notes, tx));
    Ok(Sse::new(rx).keep_alive(KeepAlive::default()))
}

type Sink = mpsc::Sender<Result<Event, Infallible>>;

/// Sends one client its events until it goes away.
async fn follow(
    api: Arc<Api>,
    batch: Option<BatchId>,
    mut notes: Option<broadcast::Receiver<Value>>,
    mut tx: Sink,
) {
    let mut last: HashMap<BatchId, (Counts, bool)> = HashMap::new();
    // Without LISTEN (SQLite), a followed batch's job and end events come from
    // polling the record too.
    let mut polled = (notes.is_none())
        .then_some(batch)
        .flatten()
        .map(PolledJobs::new);
    let mut tick = tokio::time::interval(POLL);
    loop {
        let sent = tokio::select! {
            _ = tick.tick() => {
                let ended = progress(&api, batch, &mut last, &mut tx).await;
                match (&mut polled, ended) {
                    (_, None) => false,
                    (Some(p), Some(ended)) => p.poll(&api, ended, &mut tx).await,
                    (None, Some(_)) => true,
                }
            }
            note = next_note(&mut notes) => match note {
                Ok(v) => relay_note(v, batch, &mut tx).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    send(&mut tx, Event::default().event("lagged").data(n.to_string())).await
                }
                Err(broadcast::error::RecvError::Closed) => {
                    notes = None;
                    true
                }
            },
        };
        if !sent {
            return; // the client went away
        }
    }
}

async fn next_note(
    notes: &mut Option<broadcast::Receiver<Value>>,
) -> Result<Value, broadcast::error::RecvError> {
    match notes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn send(tx: &mut Sink, event: Event) -> bool {
    tx.send(Ok(event)).await.is_ok()
}

/// A notification as a `job` or `batch` event, if it is about the followed batch.
async fn relay_note(note: Value, batch: Option<BatchId>, tx: &mut Sink) -> bool {
    let of_batch = note.get("batch_id").and_then(Value::as_str);
    if let Some(b) = batch
        && of_batch != Some(b.to_string().as_str())
    {
        return true;
    }
    // A batch's end carries `"job_id": null`.
    let kind = if note["job_id"].is_string() {
        "job"
    } else {
        "batch"
    };
    match Event::default().event(kind).json_data(&note) {
        Ok(event) => send(tx, event).await,
        Err(_) => true,
    }
}

/// The jobs of a followed batch as this client was last told of them, and since when
/// the record has been read.
struct PolledJobs {
    batch: BatchId,
    told: HashMap<JobId, JobState>,
    since: DateTime<Utc>,
}

/// How far back each poll reads again: a change committed a little after its
/// timestamp is still seen (and one seen twice is told once).
const POLL_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

impl PolledJobs {
    fn new(batch: BatchId) -> Self {
        PolledJobs {
            batch,
            told: HashMap::new(),
            since: Utc::now(),
        }
    }

    /// Sends a `job` event for each job whose state changed since the last poll, and
    /// the `batch` event if the batch `ended` on this tick. False once the client left.
    async fn poll(&mut self, api: &Api, ended: bool, tx: &mut Sink) -> bool {
        let now = Utc::now();
        let changes = match api
            .record
            .job_changes(self.batch, self.since - POLL_OVERLAP)
            .await
        {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!("reading job changes for /v1/events: {e}");
                return !tx.is_closed();
            }
        };
        self.since = now;
        let batch_id = self.batch.to_string();
        for (id, state) in changes {
            if self.told.insert(id, state) == Some(state) {
                continue;
            }
            let note = json!({"job_id": id.to_string(), "batch_id": batch_id, "state": state});
            if !relay_note(note, Some(self.batch), tx).await {
                return false;
            }
        }
        if ended {
            let note = json!({"job_id": null, "batch_id": batch_id, "state": "done"});
            return relay_note(note, Some(self.batch), tx).await;
        }
        true
    }
}

/// A `progress` event for each followed batch whose counts changed. `None` once the
/// client left; otherwise whether a followed batch was seen to end on this read.
async fn progress(
    api: &Api,
    batch: Option<BatchId>,
    last: &mut HashMap<BatchId, (Counts, bool)>,
    tx: &mut Sink,
) -> Option<bool> {
    let infos = match batch {
        Some(b) => api
            .record
            .batch_info(b)
            .await
            .map(|i| i.into_iter().collect()),
        None => {
            api.record
                .batch_page(&BatchQuery {
                    done: Some(false),
                    limit: FOLLOWED,
                    ..BatchQuery::default()
                })
                .await
        }
    };
    let infos: Vec<_> = match infos {
        Ok(infos) => infos,
        Err(e) => {
            tracing::warn!("reading progress for /v1/events: {e}");
            return (!tx.is_closed()).then_some(false);
        }
    };
    let mut ended = false;
    for info in infos {
        let view = Batch::of(&info);
        let seen = (view.counts.clone(), view.done);
        if last.get(&view.id) == Some(&seen) {
            continue;
        }
        ended |= view.done && last.get(&view.id).is_some_and(|(_, done)| !done);
        last.insert(view.id, seen);
        if let Ok(event) = Event::default().event("progress").json_data(&view)
            && !send(tx, event).await
        {
            return None;
        }
    }
    (!tx.is_closed()).then_some(ended)
}
