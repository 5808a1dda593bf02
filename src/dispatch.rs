//! Dispatch: how jobs reach workers. The record says what a job is; dispatch only says
//! "this one is yours now" and keeps that lease alive. Three dispatchers: Redis
//! Streams, and the Postgres or SQLite record's own table. The core trait is what
//! every one of them does; [`DelayedSet`] and [`Reconcile`] are what only Redis needs
//! (it keeps retries outside the record, and can lose jobs the record still has).

pub mod postgres;
pub mod redis;
pub mod sqlite;

use async_trait::async_trait;

use crate::job::{BatchId, JobId, Placed};

pub use self::{postgres::PgDispatch, redis::RedisDispatch, sqlite::SqliteDispatch};

/// Most batches one read of the database dispatchers shares itself between (the oldest
/// with queued jobs); later ones get their turn as these finish.
pub(crate) const FAIR_LANES: usize = 64;

/// Why dispatch failed; the message never holds the connection URL.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// The database behind database dispatch failed.
    #[error("database dispatch: {0}")]
    Database(String),
}

/// What a delivered message carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A job submitted through renderq: its row and spec are in the record.
    Id(JobId),
    /// A raw producer's job JSON (`XADD … job <json>`): its row may not exist yet.
    Job(String),
    /// Neither: the message is recorded as a failed job and acknowledged.
    Invalid(String),
}

/// One message handed to this worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The dispatch's own handle (the stream entry id).
    pub entry: String,
    /// What the delivery carries: a job id, or a raw message.
    pub payload: Payload,
    /// Taken over from a worker whose lease ran out.
    pub takeover: bool,
}

/// A queue of jobs shared by workers, with leases.
#[async_trait]
pub trait Dispatch: Send + Sync {
    /// The queue's name.
    fn queue(&self) -> &str;
    /// Dispatches jobs whose rows are committed.
    async fn enqueue(&self, ids: &[JobId]) -> Result<(), DispatchError>;
    /// Dispatches jobs of one batch (or none) and one priority whose rows are
    /// committed. Higher priorities are read first; reads share each level between
    /// batches, so a small batch is not starved by a big one before it.
    async fn enqueue_lane(
        &self,
        batch: Option<BatchId>,
        priority: i32,
        ids: &[JobId],
    ) -> Result<(), DispatchError> {
        let _ = (batch, priority);
        self.enqueue(ids).await
    }
    /// Moves a delivered job that names a `priority` to where that priority is
    /// served, instead of its being claimed now (a raw producer's message on Redis);
    /// false when dispatch serves priorities itself and the job may be claimed.
    async fn to_lane(&self, entry: &str, job: JobId, priority: i32) -> Result<bool, DispatchError> {
        let _ = (entry, job, priority);
        Ok(false)
    }
    /// Takes up to `count` new deliveries, waiting up to `block_ms` for the first.
    async fn fetch(
        &self,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, DispatchError>;
    /// Takes over deliveries whose lease (idle time) passed `lease_ms`.
    async fn reclaim(
        &self,
        consumer: &str,
        lease_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>, DispatchError>;
    /// One round trip to the dispatcher, for readiness.
    async fn ping(&self) -> Result<(), DispatchError>;
    /// Renews the leases of `entries`; returns those this consumer no longer holds.
    async fn heartbeat(
        &self,
        consumer: &str,
        entries: &[String],
    ) -> Result<Vec<String>, DispatchError>;
    /// Forgets finished deliveries (acknowledged and deleted).
    async fn ack(&self, entries: &[String]) -> Result<(), DispatchError>;
    /// Gives a delivery back: acknowledged, and its job dispatched anew.
    async fn release(&self, entry: &str, job: JobId) -> Result<(), DispatchError>;
    /// Where retries wait out their backoff; `None` when dispatch lives in the record,
    /// whose `retrying` rows and their `run_at` are the wait.
    fn delayed(&self) -> Option<&dyn DelayedSet> {
        None
    }
    /// What the reconciler compares with the record; `None` when dispatch lives in
    /// the record and cannot lose a job.
    fn reconcile(&self) -> Option<&dyn Reconcile> {
        None
    }
    /// Messages waiting or in flight (for status and tests).
    async fn backlog(&self) -> Result<usize, DispatchError>;
    /// Deletes what dispatch keeps for this queue outside the record. Only for a
    /// queue no one else uses: `renderq bench` removes its own when it ends.
    async fn discard(&self) -> Result<(), DispatchError> {
        Ok(())
    }
}

/// Dispatches jobs, each in its batch's lane of its priority, highest first.
pub async fn enqueue_placed(dispatch: &dyn Dispatch, jobs: &[Placed]) -> Result<(), DispatchError> {
    let mut lanes: std::collections::BTreeMap<(i32, Option<BatchId>), Vec<JobId>> =
        Default::default();
    for (id, batch, priority) in jobs {
        lanes.entry((*priority, *batch)).or_default().push(*id);
    }
    for ((priority, batch), ids) in lanes.iter().rev() {
        dispatch.enqueue_lane(*batch, *priority, ids).await?;
    }
    Ok(())
}

/// How far a snapshot of what dispatch holds has got: the streams to read, and where
/// in them. Made by [`Reconcile::begin_snapshot`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub(crate) streams: Vec<String>,
    pub(crate) next: usize,
    pub(crate) after: String,
    /// Entries copied so far.
    pub entries: u64,
    /// Pages copied so far.
    pub pages: u64,
}

/// What the delayed set holds now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Due {
    /// Jobs whose time has come.
    pub ids: Vec<JobId>,
    /// When the first job not yet due is (Unix ms); `None` when none waits among those
    /// read.
    pub next_ms: Option<i64>,
}

/// Retries waiting out their backoff outside the record (a sorted set on Redis), so a
/// dispatcher that keeps its own queue hands them out again when they are due.
#[async_trait]
pub trait DelayedSet: Send + Sync {
    /// Forgets a delivery and puts its job in the delayed set until `due_ms` (Unix ms).
    async fn defer(&self, entry: &str, job: JobId, due_ms: i64) -> Result<(), DispatchError>;
    /// Jobs in the delayed set whose time has come (at most `limit`), and when the next
    /// is due.
    async fn due(&self, now_ms: i64, limit: usize) -> Result<Due, DispatchError>;
    /// Moves due jobs (already `queued` in the record) from the delayed set to the queue.
    async fn move_due(&self, ids: &[JobId]) -> Result<usize, DispatchError>;
    /// Forgets jobs in the delayed set that are no longer waiting (cancelled, finished).
    async fn drop_due(&self, ids: &[JobId]) -> Result<(), DispatchError>;
}

/// What a dispatch that can lose jobs (Redis) offers the reconciler. The snapshot of
/// the jobs it holds is kept on the dispatch's server, filled a bounded number of
/// pages per call, and asked about a page of ids at a time: a leader's memory and
/// each call's work stay bounded however long the queue is.
#[async_trait]
pub trait Reconcile: Send + Sync {
    /// Starts a new, empty snapshot (an earlier one is dropped).
    async fn begin_snapshot(&self) -> Result<Snapshot, DispatchError>;
    /// Reads up to `pages` pages of `page` entries into the snapshot; true once every
    /// stream has been read.
    async fn continue_snapshot(
        &self,
        snapshot: &mut Snapshot,
        pages: usize,
        page: usize,
    ) -> Result<bool, DispatchError>;
    /// Those of `ids` that neither the snapshot nor the delayed set holds.
    async fn missing(&self, ids: &[JobId]) -> Result<Vec<JobId>, DispatchError>;
    /// Drops the snapshot.
    async fn end_snapshot(&self) -> Result<(), DispatchError>;
    /// Puts a job in the delayed set until `due_ms` (a lost retry's repair).
    async fn schedule(&self, job: JobId, due_ms: i64) -> Result<(), DispatchError>;
}

/// For dispatch that polls (the database backends): tries `take` until it returns
/// something or `block_ms` has passed, sleeping `every` in between.
pub(crate) async fn poll<F, Fut>(
    block_ms: u64,
    every: std::time::Duration,
    mut take: F,
) -> Result<Vec<Delivery>, DispatchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Delivery>, DispatchError>>,
{
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(block_ms);
    loop {
        let got = take().await?;
        if !got.is_empty() || tokio::time::Instant::now() + every > until {
            return Ok(got);
        }
        tokio::time::sleep(every).await;
    }
}
