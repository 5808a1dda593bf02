//! The record: every job's state, in Postgres (`renderq.jobs`, `renderq.batches`) or
//! SQLite (the embedded default, the same tables in one file).
//!
//! The record is the truth; dispatch (Redis, or the database itself) only hands jobs
//! to workers. The trait is cut by role: [`Batches`] (producers and operators),
//! [`Attempts`] (the worker's fenced writes), [`Status`] (reads), [`Schedules`],
//! [`Webhooks`], [`Fleet`] (workers, the leader, the reconciler), [`Browse`] (the
//! HTTP API's paged reads) and [`Tokens`] (the API's bearer tokens). Every write that moves a running job
//! is fenced by its attempt number (`WHERE id = … AND attempt = … AND state =
//! 'running'`), so a worker that lost its lease changes nothing when it wakes up.

pub mod postgres;
mod rows;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{
    job::{BatchId, ClaimedJob, JobId, JobSpec, JobState, NewJob, Placed},
    schedule::Schedule,
    token::Scope,
};

pub use postgres::PgRecord;
pub use sqlite::SqliteRecord;

/// Errors from the record. The message never contains the connection URL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A query failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value is not the JSON it should be.
    #[error("a stored job spec is unreadable: {0}")]
    Spec(#[from] serde_json::Error),
    /// Anything else, said in words.
    #[error("{0}")]
    Invalid(String),
}

/// The error of a claimed row whose stored spec does not decode.
pub(crate) fn unreadable_spec(e: impl std::fmt::Display) -> String {
    format!("the stored job spec is not a valid job: {e}")
}

/// A batch's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Where the summary is POSTed.
    pub url: String,
    /// The delivery's outcome (`delivered (200)`, `refused with 404`, …); `None`
    /// until one is recorded.
    pub status: Option<String>,
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled {
    /// Jobs moved to `cancelled`.
    pub jobs: u64,
    /// The batch the id names or the job belongs to, to be checked for its end.
    pub batch: Option<BatchId>,
}

/// What one claim did.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    /// Jobs this worker now holds.
    pub jobs: Vec<ClaimedJob>,
    /// Jobs the claim ended as `failed` instead, with their batch (to be checked for
    /// its end): a takeover on the last attempt (its workers died each time), or a
    /// stored spec that does not decode (written by hand or by another version).
    pub failed: Vec<(JobId, Option<BatchId>)>,
}

/// The error a job gets when its attempts ran out in workers that died.
pub const WORKER_DIED: &str = "worker stopped responding (died or stalled past its lease)";

/// Asks to claim a job delivered by the stream. `takeover` is set for deliveries
/// taken from a worker whose lease ran out: those may be `running` already.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    /// The job delivered.
    pub id: JobId,
    /// Whether the delivery was taken over from a worker whose lease ran out.
    pub takeover: bool,
}

/// The end of one attempt, as the worker reports it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The image is stored: the job succeeded.
    Stored {
        /// The object's key.
        key: String,
    },
    /// The attempt failed.
    Failed {
        /// Why, in words a person can act on.
        error: String,
        /// Whether another attempt may succeed.
        retry: bool,
        /// How long to wait before it, in milliseconds.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The batch.
    pub batch_id: BatchId,
    /// The batch's name (the file's, or `--name`).
    pub name: String,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// Its jobs.
    pub total: i64,
    /// Jobs waiting: `queued` and `retrying`.
    pub queued: i64,
    /// Jobs a worker holds.
    pub running: i64,
    /// Jobs whose image is stored.
    pub succeeded: i64,
    /// Jobs that failed for good.
    pub failed: i64,
    /// Jobs cancelled.
    pub cancelled: i64,
    /// Whether every job is terminal.
    pub done: bool,
}

impl Progress {
    /// Jobs that reached a terminal state.
    pub fn finished(&self) -> i64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// A failed job, for `renderq status`.
#[derive(Debug, Clone)]
pub struct FailedJob {
    /// The job.
    pub id: JobId,
    /// The attempt that failed.
    pub attempt: i32,
    /// Its last error.
    pub error: Option<String>,
}

/// One job as `renderq status` and the tests read it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    /// The job.
    pub id: JobId,
    /// Its batch, if it came in one.
    pub batch_id: Option<BatchId>,
    /// Where it is in its life.
    pub state: JobState,
    /// Attempts started so far.
    pub attempt: i32,
    /// The last error, if any.
    pub error: Option<String>,
    /// Where its image is stored, once it succeeded.
    pub output_key: Option<String>,
    /// The seed it renders with.
    pub seed: u64,
    /// Its prompt.
    pub prompt: String,
    /// The worker that claimed the latest attempt.
    pub worker: Option<String>,
    /// The job's `metadata` (for CSV jobs: the source row's columns).
    pub metadata: Option<serde_json::Value>,
}

/// What a rescue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Back to `queued`: to be dispatched again.
    pub requeued: Vec<JobId>,
    /// Out of attempts: `failed`, with their batch (to be checked for its end).
    pub failed: Vec<(JobId, Option<BatchId>)>,
}

/// Held while this process leads (the reconciler): dropping it gives the lead up.
pub struct Leadership {
    _hold: Option<Box<dyn std::any::Any + Send>>,
}

impl Leadership {
    /// Holds `hold` (a lock's connection, or nothing) for as long as this process leads.
    pub fn new(hold: Option<Box<dyn std::any::Any + Send>>) -> Self {
        Leadership { _hold: hold }
    }
}

/// A worker as `renderq.workers` shows it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The worker's name (`--worker-id`, or host-pid-random).
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    /// The device it renders on.
    pub device: String,
    /// The models it serves.
    pub models: Vec<String>,
    /// The queue it works.
    pub queue: String,
}

/// The record of every job. Two backends: Postgres (`renderq.*` tables) and SQLite
/// (the embedded default). Every method that moves a running job is fenced by attempt.
/// Its methods are grouped by role in the traits below; a `dyn Record` has them all.
#[async_trait]
pub trait Record:
    Batches + Attempts + Status + Schedules + Webhooks + Fleet + Browse + Tokens
{
    /// Applies this backend's migrations.
    async fn migrate(&self) -> Result<(), DbError>;
    /// One round trip to the database, for readiness.
    async fn ping(&self) -> Result<(), DbError>;
}

/// What makes a batch unique, so that a repeat writes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub enum Once<'a> {
    /// Nothing: every call makes a batch.
    #[default]
    Always,
    /// A schedule's firing: `(schedule, scheduled_for)`.
    Firing(&'a str, DateTime<Utc>),
    /// An API request's `Idempotency-Key` (as stored), and a hash of the request, kept
    /// to tell a repeat from another request that reuses the key.
    Request(&'a str, &'a [u8]),
}

impl<'a> Once<'a> {
    /// The schedule and time of a firing.
    pub fn firing(&self) -> (Option<&'a str>, Option<DateTime<Utc>>) {
        match *self {
            Once::Firing(name, at) => (Some(name), Some(at)),
            _ => (None, None),
        }
    }

    /// The key and request hash of an API request.
    pub fn request(&self) -> (Option<&'a str>, Option<&'a [u8]>) {
        match *self {
            Once::Request(key, hash) => (Some(key), Some(hash)),
            _ => (None, None),
        }
    }
}

/// Writing batches and steering them: what producers and operators do.
#[async_trait]
pub trait Batches: Send + Sync {
    /// Writes a batch and its jobs in one transaction; returns the batch and the ids
    /// that were new (a job whose id exists already is not written again).
    async fn create_batch(
        &self,
        name: &str,
        queue: &str,
        jobs: &[NewJob],
        max_attempts: i32,
    ) -> Result<(BatchId, Vec<JobId>), DbError> {
        self.create_batch_for(name, queue, jobs, max_attempts, Once::Always)
            .await?
            .ok_or_else(|| DbError::Invalid("a batch without a schedule cannot collide".into()))
    }
    /// As `create_batch`, once per schedule firing or per request key: writes nothing
    /// and returns `None` when that firing's or that key's batch exists.
    async fn create_batch_for(
        &self,
        name: &str,
        queue: &str,
        jobs: &[NewJob],
        max_attempts: i32,
        once: Once<'_>,
    ) -> Result<Option<(BatchId, Vec<JobId>)>, DbError>;
    /// The batch an API request made under `key` (see [`Once::Request`]): its id, its
    /// number of jobs, and the request's hash.
    async fn batch_for_key(&self, key: &str) -> Result<Option<(BatchId, i64, Vec<u8>)>, DbError>;
    /// Creates the row of a job that arrived without one (a raw producer); no-op if it exists.
    async fn ensure_raw_job(
        &self,
        id: JobId,
        queue: &str,
        spec: &JobSpec,
        max_attempts: i32,
    ) -> Result<(), DbError>;
    /// Records a message that is not a valid job as a failed job, with the reason.
    async fn record_unparseable(
        &self,
        id: JobId,
        queue: &str,
        raw: &str,
        error: &str,
    ) -> Result<(), DbError>;
    /// Cancels a job or every unfinished job of a batch.
    async fn cancel(&self, id: uuid::Uuid) -> Result<Cancelled, DbError>;
    /// Puts a batch's failed jobs back in `queued` with `extra_attempts` more attempts;
    /// returns them (to be dispatched). The batch is unfinished again, and its webhook
    /// is due again when it next finishes.
    async fn retry_failed(
        &self,
        batch: BatchId,
        extra_attempts: i32,
    ) -> Result<Vec<JobId>, DbError>;
}

/// The worker's side of a job: claims, outcomes, and the ways back to the queue, every write fenced by attempt.
#[async_trait]
pub trait Attempts: Send + Sync {
    /// `queued` (or, on takeover, `running`/`retrying`) → `running`, attempt + 1.
    /// A takeover of a job whose attempts are used up fails it instead, and so does a
    /// row whose stored spec does not decode: only that row, with the decode error.
    async fn claim(&self, requests: &[ClaimRequest], worker: &str) -> Result<Claimed, DbError>;
    /// Records attempts' outcomes, fenced by attempt; one `Recorded` per input.
    async fn record_outcomes(
        &self,
        outcomes: &[(JobId, i32, Outcome)],
    ) -> Result<Vec<Recorded>, DbError>;
    /// Where each of `ids` waits: its batch and its priority (missing ids are left
    /// out), for dispatching them again in their lane.
    async fn placement(&self, ids: &[JobId]) -> Result<Vec<Placed>, DbError>;
    /// Current state and attempt of jobs (missing ids are left out).
    async fn states(&self, ids: &[JobId]) -> Result<Vec<(JobId, JobState, i32)>, DbError>;
    /// Up to `limit` `retrying` jobs of `queue` whose backoff is over, soonest first:
    /// the due retries of database dispatch, where the row is the wait.
    async fn due_retries(&self, queue: &str, limit: i64) -> Result<Vec<JobId>, DbError>;
    /// `retrying` → `queued` for `ids`; returns those now `queued`.
    async fn requeue_due(&self, ids: &[JobId]) -> Result<Vec<JobId>, DbError>;
    /// `running` → `queued` (fenced) for attempts a draining worker gives back.
    async fn release(&self, jobs: &[(JobId, i32)]) -> Result<Vec<JobId>, DbError>;
    /// The reconciler's rescue of running attempts whose worker died (fenced by
    /// attempt): `queued` again while attempts are left, else `failed` with
    /// [`WORKER_DIED`], as a takeover would. A job that kills every worker it runs on
    /// must not circle for ever.
    async fn rescue(&self, jobs: &[(JobId, i32)]) -> Result<Rescued, DbError>;
    /// Marks finished the batches among `batches` whose every job is terminal, once
    /// each (Postgres also announces `{"batch_id", "state": "done"}` on
    /// `renderq_events`). Returns the batches that finished now.
    async fn finish_batches(&self, batches: &[BatchId]) -> Result<Vec<BatchId>, DbError>;
}

/// Reading progress and jobs, as `renderq status`, the manifest and the tests do.
#[async_trait]
pub trait Status: Send + Sync {
    /// Whether `id` names a batch or a job.
    async fn exists(&self, id: uuid::Uuid) -> Result<bool, DbError>;
    /// A batch's counts, as `renderq.batch_progress` has them; `None` for an unknown id.
    async fn progress(&self, batch: BatchId) -> Result<Option<Progress>, DbError>;
    /// The newest `limit` batches with their counts, newest first.
    async fn recent_batches(&self, limit: i64) -> Result<Vec<Progress>, DbError>;
    /// Up to `limit` failed jobs of a batch with their errors, in the order they failed.
    async fn failures(&self, batch: BatchId, limit: i64) -> Result<Vec<FailedJob>, DbError>;
    /// Counts of jobs by state for one queue.
    async fn queue_counts(&self, queue: &str) -> Result<Vec<(String, i64)>, DbError>;
    /// Every job of a queue, oldest first.
    async fn jobs_of_queue(&self, queue: &str) -> Result<Vec<JobRow>, DbError>;
    /// Every job of a batch, oldest first.
    async fn jobs_of_batch(&self, batch: BatchId) -> Result<Vec<JobRow>, DbError>;
    /// When the batch was marked finished (see `finish_batches`); `None` while it
    /// has unfinished jobs. One row read, unlike `progress`, which counts every job.
    async fn batch_finished_at(&self, batch: BatchId) -> Result<Option<DateTime<Utc>>, DbError>;
    /// When the batch's first job started and its latest one finished.
    async fn batch_times(
        &self,
        batch: BatchId,
    ) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), DbError>;
}

/// Stored cron schedules and their firings.
#[async_trait]
pub trait Schedules: Send + Sync {
    /// Stores a schedule; false when one of that name exists.
    async fn add_schedule(&self, schedule: &Schedule) -> Result<bool, DbError>;
    /// Every stored schedule, by name.
    async fn schedules(&self) -> Result<Vec<Schedule>, DbError>;
    /// Removes a schedule (its batches stay); false when there is none of that name.
    async fn remove_schedule(&self, name: &str) -> Result<bool, DbError>;
    /// Records that the firing at `at` was handled (never moves backwards).
    async fn mark_fired(&self, name: &str, at: DateTime<Utc>) -> Result<(), DbError>;
}

/// A batch's webhook and what became of its delivery.
#[async_trait]
pub trait Webhooks: Send + Sync {
    /// Sets the URL a batch's summary is POSTed to when it finishes.
    async fn set_webhook(&self, batch: BatchId, url: &str) -> Result<(), DbError>;
    /// The batch's webhook and what became of its delivery; `None` without one.
    async fn webhook(&self, batch: BatchId) -> Result<Option<Webhook>, DbError>;
    /// Records what became of a batch's webhook delivery; it is then no longer due.
    async fn set_webhook_status(&self, batch: BatchId, status: &str) -> Result<(), DbError>;
    /// Takes up to `limit` due webhook deliveries of `queue`: finished batches with a
    /// webhook and no recorded outcome, not taken by any worker in the last
    /// `retake_after` (a worker that died mid-delivery). Marks them taken now.
    async fn take_webhooks(
        &self,
        queue: &str,
        retake_after: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<BatchId>, DbError>;
}

/// The workers (`renderq.workers`), the one leader, and what the reconciler reads.
#[async_trait]
pub trait Fleet: Send + Sync {
    /// Records that this worker is alive, what it serves and how many jobs it has done.
    async fn worker_heartbeat(&self, worker: &WorkerInfo, jobs_done: i64) -> Result<(), DbError>;
    /// Records that this worker stopped, so its running jobs are rescued without waiting.
    async fn worker_stopped(&self, id: &str) -> Result<(), DbError>;
    /// A page of a queue's jobs in `state` (`queued` or `retrying`), by id after
    /// `after`, for the reconciler; with each one's due time (Unix ms; 0 if none).
    async fn unfinished_page(
        &self,
        queue: &str,
        state: JobState,
        after: Option<JobId>,
        limit: i64,
    ) -> Result<Vec<(JobId, i64)>, DbError>;
    /// Up to `limit` running jobs of a queue whose worker stopped heartbeating more
    /// than `silent_ms` ago (or said it stopped), with their attempt.
    async fn orphans(
        &self,
        queue: &str,
        silent_ms: i64,
        limit: i64,
    ) -> Result<Vec<(JobId, i32)>, DbError>;
    /// A queue's unfinished jobs by state (`queued`, `running`, `retrying`), each read
    /// through a partial index: the backlog metric and autoscalers ask it often.
    async fn backlog(&self, queue: &str) -> Result<Vec<(JobState, i64)>, DbError>;
    /// Tries to become the one leader for `name` among all processes on this record.
    async fn lead(&self, name: &str) -> Result<Option<Leadership>, DbError>;
}

/// Which batches a page holds: newest first, before a cursor, filtered.
#[derive(Debug, Clone, Default)]
pub struct BatchQuery {
    /// Only batches whose name contains this (any case).
    pub name: Option<String>,
    /// Only finished (`true`) or unfinished (`false`) batches.
    pub done: Option<bool>,
    /// Only batches older than this one (the previous page's last id).
    pub before: Option<BatchId>,
    /// Most batches in the page.
    pub limit: i64,
}

/// A batch with its counts, its queue and when it finished.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchInfo {
    /// Its counts, as `renderq.batch_progress` has them.
    pub progress: Progress,
    /// The queue it was submitted to.
    pub queue: String,
    /// When its last job reached a terminal state; `None` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
    /// When its first job started (the earliest `started_at` of its jobs).
    pub first_started_at: Option<DateTime<Utc>>,
    /// The latest `finished_at` of its jobs.
    pub last_finished_at: Option<DateTime<Utc>>,
    /// Its webhook and that delivery's outcome, if it has one.
    pub webhook: Option<Webhook>,
}

/// Which jobs of a batch a page holds: by id after a cursor, filtered.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs whose prompt contains this (any case).
    pub search: Option<String>,
    /// Only jobs after this one (the previous page's last id).
    pub after: Option<JobId>,
    /// Most jobs in the page.
    pub limit: i64,
}

/// One job with everything the record holds about it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDetail {
    /// The columns `renderq status` reads.
    pub row: JobRow,
    /// Its queue.
    pub queue: String,
    /// The spec as submitted (validated), as stored.
    pub spec: serde_json::Value,
    /// Attempts it may use.
    pub max_attempts: i32,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// When a `retrying` job is due again.
    pub run_at: Option<DateTime<Utc>>,
    /// Every attempt so far, oldest first; the latest one from the job's own row.
    pub attempts: Vec<AttemptRow>,
}

/// One attempt at a job: who ran it, when, and how it ended (also as the API answers
/// it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptRow {
    /// Its number, from 1.
    pub attempt: i32,
    /// The worker that claimed it.
    pub worker: Option<String>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended; `None` while it runs.
    pub ended_at: Option<DateTime<Utc>>,
    /// The state it left the job in: `running` while it runs (or, once ended, taken
    /// over from a silent worker), `succeeded`, `retrying`, `failed`, `queued` (given
    /// back: its worker stopped or went silent), `cancelled`.
    pub outcome: String,
    /// Its error, when it failed.
    pub error: Option<String>,
}

/// The paged reads of the HTTP API: batches newest first, a batch's jobs by cursor.
#[async_trait]
pub trait Browse: Send + Sync {
    /// A page of batches, newest first.
    async fn batch_page(&self, query: &BatchQuery) -> Result<Vec<BatchInfo>, DbError>;
    /// One batch; `None` for an unknown id.
    async fn batch_info(&self, batch: BatchId) -> Result<Option<BatchInfo>, DbError>;
    /// A page of a batch's jobs, by id.
    async fn job_page(&self, batch: BatchId, query: &JobQuery) -> Result<Vec<JobRow>, DbError>;
    /// One job; `None` for an unknown id.
    async fn job_detail(&self, job: JobId) -> Result<Option<JobDetail>, DbError>;
    /// A batch's jobs that started, finished or were put off for a retry at `since`
    /// or later, with their state now: how `/v1/events` follows jobs where the record
    /// cannot announce them (SQLite).
    async fn job_changes(
        &self,
        batch: BatchId,
        since: DateTime<Utc>,
    ) -> Result<Vec<(JobId, JobState)>, DbError>;
    /// Workers as `renderq.workers` has them: running ones first, the latest heartbeat
    /// first; at most 500.
    async fn workers(&self) -> Result<Vec<WorkerRow>, DbError>;
    /// The queues of the newest 1,000 batches and of every worker, by name.
    async fn queues(&self) -> Result<Vec<String>, DbError>;
}

/// A row of `renderq.workers`.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    /// Who it is and what it serves.
    pub info: WorkerInfo,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its latest heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// Jobs it has finished.
    pub jobs_done: i64,
    /// When it said it stopped.
    pub stopped_at: Option<DateTime<Utc>>,
}

/// An API token as `renderq token list` shows it (its secret is never stored).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// The token's public part, `rq_<id>_…`.
    pub id: String,
    /// Who or what holds it.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last authenticated a request (kept to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The HTTP API's bearer tokens, stored as hashes of their secrets.
#[async_trait]
pub trait Tokens: Send + Sync {
    /// Stores a new token.
    async fn create_token(
        &self,
        id: &str,
        name: &str,
        scope: Scope,
        secret_hash: &[u8],
    ) -> Result<(), DbError>;
    /// The scope and secret hash of an unrevoked token, and when it was last used.
    async fn active_token(
        &self,
        id: &str,
    ) -> Result<Option<(Scope, Vec<u8>, Option<DateTime<Utc>>)>, DbError>;
    /// Records that the token authenticated a request now.
    async fn touch_token(&self, id: &str) -> Result<(), DbError>;
    /// Whether any unrevoked token exists (then the API requires one).
    async fn any_active_token(&self) -> Result<bool, DbError>;
    /// Every token, revoked ones included, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenInfo>, DbError>;
    /// Revokes the tokens with this id or name; returns how many were revoked now.
    async fn revoke_token(&self, id_or_name: &str) -> Result<u64, DbError>;
}
