//! What the API answers, as typed JSON (the OpenAPI document is derived from these
//! types): batches with their progress, jobs with their attempts, and the ids and page
//! sizes it takes from a request.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{MAX_PAGE, error::ApiError};
use crate::{
    db::{AttemptRow, BatchInfo, JobDetail, JobRow},
    job::{BatchId, JobId, JobState},
    redact::webhook_origin,
};

/// Parses an id from the path; anything but a UUID is refused before any query.
pub fn parse_id<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!("`{}` is not a {what} id (a UUID)", shown(text)))
    })
}

/// A client's text in a message: at most 80 characters, control characters dropped.
pub fn shown(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(80).collect()
}

/// A page size: 50 when not given, at most [`MAX_PAGE`].
pub fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is out of range (1 to {MAX_PAGE})"
        ))),
    }
}

/// A state filter.
pub fn parse_state(text: &str) -> Result<JobState, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "state `{}` is not one of queued, running, retrying, succeeded, failed, cancelled",
            shown(text)
        ))
    })
}

/// A batch's jobs by state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Counts {
    /// Waiting to be claimed, or waiting out a retry's backoff.
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

/// A batch's webhook: where it goes (the origin only: a URL's path or query may
/// carry a secret) and what became of its delivery.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    /// Scheme, host and port of the webhook's URL.
    pub origin: String,
    /// `delivered (200)`, `refused with 404`, …; `null` until it was sent.
    pub outcome: Option<String>,
}

/// A batch with its progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Batch {
    pub id: BatchId,
    pub name: String,
    /// The queue it was submitted to.
    pub queue: String,
    pub created_at: DateTime<Utc>,
    /// When its first job started.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last job reached a terminal state; `null` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// Whether every job reached a terminal state.
    pub done: bool,
    pub total: i64,
    pub counts: Counts,
    /// Finished jobs over all jobs, 0 to 1.
    pub progress: f64,
    /// Finished jobs per second since the first started (until the last finished).
    pub jobs_per_second: Option<f64>,
    /// Seconds until the last job finishes at that rate; `null` when done or unknown.
    pub eta_seconds: Option<f64>,
    pub webhook: Option<WebhookView>,
}

impl Batch {
    /// The view of a batch the record read.
    pub fn of(b: &BatchInfo) -> Batch {
        let p = &b.progress;
        let finished = p.finished();
        let mut rate = None;
        let mut eta = None;
        if let Some(first) = b.first_started_at {
            let until = match (p.done, b.last_finished_at) {
                (true, Some(last)) => last,
                _ => Utc::now(),
            };
            let secs = (until - first).num_milliseconds().max(1) as f64 / 1000.0;
            let r = finished as f64 / secs;
            rate = Some(r);
            if !p.done && r > 0.0 {
                eta = Some(((p.total - finished) as f64 / r).round());
            }
        }
        Batch {
            id: p.batch_id,
            name: p.name.clone(),
            queue: b.queue.clone(),
            created_at: p.created_at,
            started_at: b.first_started_at,
            finished_at: b.finished_at,
            done: p.done,
            total: p.total,
            counts: Counts {
                queued: p.queued,
                running: p.running,
                succeeded: p.succeeded,
                failed: p.failed,
                cancelled: p.cancelled,
            },
            progress: if p.total > 0 {
                finished as f64 / p.total as f64
            } else {
                1.0
            },
            jobs_per_second: rate,
            eta_seconds: eta,
            webhook: b.webhook.as_ref().map(|hook| WebhookView {
                origin: webhook_origin(&hook.url),
                outcome: hook.status.clone(),
            }),
        }
    }
}

/// A page of batches, newest first.
#[derive(Serialize, ToSchema)]
pub struct BatchList {
    pub batches: Vec<Batch>,
    /// The `before` of the next page; `null` on the last.
    pub next: Option<String>,
}

/// A job as a batch's page lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    pub batch_id: Option<BatchId>,
    pub state: JobState,
    /// Attempts started so far.
    pub attempt: i32,
    pub prompt: String,
    /// The seed it renders with (given, or derived from its id).
    pub seed: u64,
    /// The latest error, if any.
    pub error: Option<String>,
    /// The worker that claimed the latest attempt.
    pub worker: Option<String>,
    /// Where its image is stored, once it succeeded.
    pub object_key: Option<String>,
    /// The producer's own data (for CSV rows: the row's columns).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// This API's URL of its image, once it succeeded.
    pub image: Option<String>,
}

impl Job {
    pub fn of(j: &JobRow) -> Job {
        Job {
            id: j.id,
            batch_id: j.batch_id,
            state: j.state,
            attempt: j.attempt,
            prompt: j.prompt.clone(),
            seed: j.seed,
            error: j.error.clone(),
            worker: j.worker.clone(),
            object_key: j.output_key.clone(),
            metadata: j.metadata.clone(),
            image: (j.state == JobState::Succeeded).then(|| format!("/v1/jobs/{}/image", j.id)),
        }
    }
}

/// A page of a batch's jobs, by id.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// The `after` of the next page; `null` on the last.
    pub next: Option<String>,
}

/// A job with everything the record holds about it.
#[derive(Serialize, ToSchema)]
pub struct JobDetailView {
    #[serde(flatten)]
    pub job: Job,
    pub queue: String,
    /// The job as submitted (validated).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// When a `retrying` job is due again.
    pub retry_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptRow>,
}

impl JobDetailView {
    pub fn of(d: &JobDetail) -> JobDetailView {
        JobDetailView {
            job: Job::of(&d.row),
            queue: d.queue.clone(),
            spec: d.spec.clone(),
            max_attempts: d.max_attempts,
            created_at: d.created_at,
            started_at: d.started_at,
            finished_at: d.finished_at,
            retry_at: d.run_at,
            attempts: d.attempts.clone(),
        }
    }
}

/// What a cancel did.
#[derive(Serialize, ToSchema)]
pub struct CancelOutcome {
    /// Jobs moved to `cancelled`.
    pub cancelled: u64,
    /// Whether that ended the batch (its last unfinished job was cancelled).
    pub batch_finished: bool,
}

/// What a retry did.
#[derive(Serialize, ToSchema)]
pub struct RetryOutcome {
    /// Failed jobs queued again.
    pub requeued: usize,
}
