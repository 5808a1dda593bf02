//! The record on Postgres. Bulk writes go through `unnest` of arrays: one round trip
//! per chunk of jobs, never one per job.
//!
//! Statements that change jobs by id compare the state with a column of the unnested
//! input (`c.from_state`), not with a constant. A constant would let the planner find
//! the rows by state, and its estimate for `queued` or `running` is stale on a table
//! that is mostly finished (~1 row, where a drain has thousands, plus dead index
//! entries): every chunk then scanned all of them, and a 100,000-job drain took four
//! times as long. As a join condition, the only cheap path is the primary key.

mod attempts;
mod batches;
mod browse;
mod fleet;
mod schedules;
mod status;
mod webhooks;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{
    Connection, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use async_trait::async_trait;

use super::rows::{
    JOB_ROW, PROGRESS, SCHEDULE, failed_job, job_and_batch, job_row, progress, schedule,
};
use super::{
    Attempts, BatchInfo, BatchQuery, Batches, Browse, Cancelled, ClaimRequest, Claimed, DbError,
    FailedJob, Fleet, JobDetail, JobQuery, JobRow, Leadership, Once, Outcome, Progress, Record,
    Recorded, Rescued, Schedules, Status, TokenInfo, Tokens, WORKER_DIED, Webhook, Webhooks,
    WorkerInfo, WorkerRow,
};
use crate::{
    job::{BatchId, ClaimedJob, JobId, JobSpec, JobState, NewJob, Placed},
    schedule::Schedule,
    token::Scope,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows per INSERT statement at submit.
const INSERT_CHUNK: usize = 10_000;

/// The record on Postgres, in the schema `renderq`.
#[derive(Clone)]
pub struct PgRecord {
    pool: PgPool,
}

impl PgRecord {
    /// Connects (with a bounded wait) and, unless `migrate` is false, applies migrations.
    pub async fn connect(url: &str, migrate: bool) -> Result<Self, DbError> {
        let options: PgConnectOptions = url.parse()?;
        // One plain connection first: a refused connection or a failed login is
        // reported as itself at once, not as a pool timeout ten seconds later.
        sqlx::PgConnection::connect_with(&options)
            .await?
            .close()
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let record = PgRecord { pool };
        if migrate {
            record.migrate().await?;
        }
        Ok(record)
    }

    /// The connection pool, for database dispatch on the same server.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Record for PgRecord {
    async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

impl PgRecord {
    async fn job_rows<T>(&self, filter: &str, value: T) -> Result<Vec<JobRow>, DbError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    {
        let columns = JOB_ROW
            .replace("{prompt}", "spec->>'prompt'")
            .replace("{metadata}", "spec->'metadata'");
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM renderq.jobs WHERE {filter} ORDER BY id"
        ))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }
}
