//! The record: every job's state, in Postgres (`renderq.jobs`, `renderq.batches`).
//!
//! Postgres is the truth; Redis only dispatches. Every write that moves a running job
//! is fenced by its attempt number (`WHERE id = … AND attempt = … AND state =
//! 'running'`), so a worker that lost its lease changes nothing when it wakes up.

pub mod postgres;

use chrono::{DateTime, Utc};

use crate::job::{BatchId, JobId, JobSpec, JobState};

pub use postgres::PgRecord;

/// Errors from the record. The message never contains the connection URL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a stored job spec is unreadable: {0}")]
    Spec(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A job about to be written by a producer.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub spec: JobSpec,
}

/// A job a worker now holds: `attempt` fences everything it writes afterwards.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub batch_id: Option<BatchId>,
    pub attempt: i32,
    pub seed: u64,
    pub spec: JobSpec,
}

/// Asks to claim a job delivered by the stream. `takeover` is set for deliveries
/// taken from a worker whose lease ran out: those may be `running` already.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    pub id: JobId,
    pub takeover: bool,
}

/// The end of one attempt, as the worker reports it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Stored {
        key: String,
    },
    Failed {
        error: String,
        retry: bool,
        backoff_ms: i64,
    },
}

/// What became of a reported outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The row moved: to `succeeded`, `failed` or `retrying` (with its due time).
    Moved(JobState, Option<DateTime<Utc>>),
    /// Fenced out: the attempt is stale or the job was cancelled. Nothing changed.
    Stale,
}

/// Counts of one batch, as `renderq.batch_progress` has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Progress {
    pub batch_id: uuid::Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub total: i64,
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub done: bool,
}

impl Progress {
    pub fn finished(&self) -> i64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// A failed job, for `renderq status`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedJob {
    pub id: uuid::Uuid,
    pub attempt: i32,
    pub error: Option<String>,
}
