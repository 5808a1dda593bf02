//! The record on SQLite: the embedded default (`./renderq.db`), WAL mode so readers
//! never wait for the writer, a busy timeout so several processes on one file wait
//! their turn instead of failing. Every multi-statement transaction starts with
//! `BEGIN IMMEDIATE`, so it never has to upgrade a read lock (which SQLite cannot wait
//! out).

mod attempts;
mod batches;
mod browse;
mod fleet;
mod schedules;
mod status;
mod webhooks;

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Connection, Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

use super::rows::{
    Columns, JOB_ROW, PROGRESS, SCHEDULE, failed_job, from_ms, job_row, parse_uuid as uuid_of,
    progress, schedule, state,
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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another process's write before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Now, as SQLite stores times: Unix milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The record in one SQLite file: the embedded default.
#[derive(Clone)]
pub struct SqliteRecord {
    pool: SqlitePool,
}

impl SqliteRecord {
    /// Opens (creating it when missing) the database at `url` (`sqlite://path`).
    /// A file that is not renderq's, or was written by a newer renderq, is refused
    /// before anything is written to it.
    pub async fn connect(url: &str, migrate: bool) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str(url)?;
        let path = options.get_filename().to_path_buf();
        if path.exists() {
            check_foreign_file(&path).await?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let record = SqliteRecord { pool };
        if migrate {
            record.migrate().await?;
        }
        Ok(record)
    }

    /// The connection pool, for database dispatch on the same file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Refuses a file renderq did not make, or one from a newer version, without
/// changing it (read-only connection, no journal-mode change).
async fn check_foreign_file(path: &std::path::Path) -> Result<(), DbError> {
    let shown = path.display();
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(BUSY_TIMEOUT);
    let mut con = sqlx::SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| DbError::Invalid(format!("{shown} cannot be opened as SQLite: {e}")))?;
    let verdict = check_tables(&mut con, &shown.to_string()).await;
    // Closed now, not whenever its thread gets to it: the caller may open the file
    // for writing next, or a person may move it away.
    let _ = con.close().await;
    verdict
}

/// The check of [`check_foreign_file`] on its read-only connection.
async fn check_tables(con: &mut sqlx::SqliteConnection, shown: &str) -> Result<(), DbError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut *con)
    .await
    .map_err(|e| DbError::Invalid(format!("{shown} is not a SQLite database: {e}")))?;
    if tables.is_empty() {
        return Ok(());
    }
    if !tables.iter().any(|t| t == "_sqlx_migrations") || !tables.iter().any(|t| t == "jobs") {
        return Err(DbError::Invalid(format!(
            "{shown} is not a renderq database (it has tables {}); it was left untouched. \
             Point DATABASE_URL at another file",
            tables.join(", ")
        )));
    }
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut *con)
        .await?;
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(v) = newest
        && v > known
    {
        return Err(DbError::Invalid(format!(
            "{shown} was written by a newer renderq (schema version {v}; this build knows up to {known}); \
             it was left untouched. Upgrade renderq"
        )));
    }
    Ok(())
}

fn state_of(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<JobState, DbError> {
    state(row, i)
}

fn batch_of(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Option<BatchId>, DbError> {
    Ok(row.opt_uuid(i)?.map(BatchId))
}

#[async_trait]
impl Record for SqliteRecord {
    async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

impl SqliteRecord {
    async fn job_rows(&self, filter: &str, value: String) -> Result<Vec<JobRow>, DbError> {
        let columns = JOB_ROW
            .replace("{prompt}", "json_extract(spec, '$.prompt')")
            .replace("{metadata}", "json_extract(spec, '$.metadata')");
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM jobs WHERE {filter} ORDER BY id"
        ))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }
}
