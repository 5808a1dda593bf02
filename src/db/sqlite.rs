//! The record on SQLite: the embedded default (`./renderq.db`), WAL mode so readers
//! never wait for the writer, a busy timeout so several processes on one file wait
//! their turn instead of failing. Every multi-statement transaction starts with
//! `BEGIN IMMEDIATE`, so it never has to upgrade a read lock (which SQLite cannot wait
//! out).

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Connection, Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

use super::{
    Cancelled, ClaimRequest, Claimed, DbError, FailedJob, JobRow, Leadership, Outcome, Progress,
    Record, Recorded, Rescued, WORKER_DIED, Webhook, WorkerInfo,
};
use crate::{
    job::{BatchId, ClaimedJob, JobId, JobSpec, JobState, NewJob, Placed},
    schedule::Schedule,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another process's write before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

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
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut con)
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
        .fetch_one(&mut con)
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

fn state_of(text: String) -> Result<JobState, DbError> {
    text.parse().map_err(DbError::Invalid)
}

fn uuid_of(text: &str) -> Result<Uuid, DbError> {
    Uuid::parse_str(text).map_err(|e| DbError::Invalid(format!("bad id `{text}`: {e}")))
}

fn progress_of(r: &sqlx::sqlite::SqliteRow) -> Result<Progress, DbError> {
    Ok(Progress {
        batch_id: uuid_of(&r.get::<String, _>(0))?,
        name: r.get(1),
        created_at: from_ms(r.get(2)),
        total: r.get(3),
        queued: r.get(4),
        running: r.get(5),
        succeeded: r.get(6),
        failed: r.get(7),
        cancelled: r.get(8),
        done: r.get(9),
    })
}

const PROGRESS_COLUMNS: &str =
    "batch_id, name, created_at, total, queued, running, succeeded, failed, cancelled, done";

#[async_trait]
impl Record for SqliteRecord {
    async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn create_batch_for(
        &self,
        name: &str,
        queue: &str,
        jobs: &[NewJob],
        max_attempts: i32,
        firing: Option<(&str, DateTime<Utc>)>,
    ) -> Result<Option<(BatchId, Vec<JobId>)>, DbError> {
        let batch = BatchId::generate();
        let now = now_ms();
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let made = sqlx::query(
            "INSERT INTO batches (id, name, queue, total, created_at, schedule, scheduled_for)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (schedule, scheduled_for) DO NOTHING",
        )
        .bind(batch.to_string())
        .bind(name)
        .bind(queue)
        .bind(jobs.len() as i64)
        .bind(now)
        .bind(firing.map(|f| f.0))
        .bind(firing.map(|f| f.1.timestamp_millis()))
        .execute(&mut *tx)
        .await?;
        if made.rows_affected() == 0 {
            return Ok(None);
        }
        let mut inserted = Vec::with_capacity(jobs.len());
        for job in jobs {
            let done = sqlx::query(
                "INSERT INTO jobs (id, batch_id, queue, model, seed, spec, max_attempts, created_at, priority)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            )
            .bind(job.id.to_string())
            .bind(batch.to_string())
            .bind(queue)
            .bind(&job.spec.model)
            .bind(job.spec.effective_seed(job.id) as i64)
            .bind(serde_json::to_string(&job.spec)?)
            .bind(max_attempts)
            .bind(now)
            .bind(job.spec.priority)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                inserted.push(job.id);
            }
        }
        tx.commit().await?;
        Ok(Some((batch, inserted)))
    }

    async fn add_schedule(&self, s: &Schedule) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO schedules (name, cron, timezone, file, queue, options, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.file)
        .bind(&s.queue)
        .bind(serde_json::to_string(&s.options)?)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, DbError> {
        let rows = sqlx::query(
            "SELECT name, cron, timezone, file, queue, options, last_fired_for, created_at
             FROM schedules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Schedule {
                    name: r.get(0),
                    cron: r.get(1),
                    timezone: r.get(2),
                    file: r.get(3),
                    queue: r.get(4),
                    options: serde_json::from_str(&r.get::<String, _>(5))?,
                    last_fired_for: r.get::<Option<i64>, _>(6).map(from_ms),
                    created_at: from_ms(r.get(7)),
                })
            })
            .collect()
    }

    async fn set_webhook(&self, batch: BatchId, url: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE batches SET webhook = ? WHERE id = ?")
            .bind(url)
            .bind(batch.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn webhook(&self, batch: BatchId) -> Result<Option<Webhook>, DbError> {
        let row = sqlx::query(
            "SELECT webhook, webhook_status FROM batches WHERE id = ? AND webhook IS NOT NULL",
        )
        .bind(batch.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Webhook {
            url: r.get(0),
            status: r.get(1),
        }))
    }

    async fn set_webhook_status(&self, batch: BatchId, status: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE batches SET webhook_status = ? WHERE id = ?")
            .bind(status)
            .bind(batch.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn take_webhooks(
        &self,
        queue: &str,
        retake_after: Duration,
        limit: i64,
    ) -> Result<Vec<BatchId>, DbError> {
        let now = now_ms();
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE batches SET webhook_taken_at = ?1
             WHERE id IN (
                 SELECT id FROM batches
                 WHERE queue = ?2 AND webhook IS NOT NULL AND webhook_status IS NULL
                   AND finished_at IS NOT NULL
                   AND (webhook_taken_at IS NULL OR webhook_taken_at < ?3)
                 LIMIT ?4)
             RETURNING id",
        )
        .bind(now)
        .bind(queue)
        .bind(now - retake_after.as_millis() as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| Ok(BatchId(uuid_of(id)?))).collect()
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM schedules WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_fired(&self, name: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE schedules SET last_fired_for = max(coalesce(last_fired_for, 0), ?2) WHERE name = ?1",
        )
        .bind(name)
        .bind(at.timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn ensure_raw_job(
        &self,
        id: JobId,
        queue: &str,
        spec: &JobSpec,
        max_attempts: i32,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO jobs (id, queue, model, seed, spec, max_attempts, created_at, priority)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(queue)
        .bind(&spec.model)
        .bind(spec.effective_seed(id) as i64)
        .bind(serde_json::to_string(spec)?)
        .bind(max_attempts)
        .bind(now_ms())
        .bind(spec.priority)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_unparseable(
        &self,
        id: JobId,
        queue: &str,
        raw: &str,
        error: &str,
    ) -> Result<(), DbError> {
        let raw: String = raw.chars().take(4096).collect();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO jobs (id, queue, state, model, seed, spec, error, created_at, finished_at)
             VALUES (?, ?, 'failed', '', 0, json_object('raw', ?), ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(queue)
        .bind(raw)
        .bind(error)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim(&self, requests: &[ClaimRequest], worker: &str) -> Result<Claimed, DbError> {
        let mut out = Claimed::default();
        if requests.is_empty() {
            return Ok(out);
        }
        let now = now_ms();
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        for r in requests {
            if r.takeover {
                let failed = sqlx::query(
                    "UPDATE jobs SET state = 'failed', finished_at = ?,
                            error = ? || ' during attempt ' || attempt || ' of ' || max_attempts
                     WHERE id = ? AND state = 'running' AND attempt >= max_attempts
                     RETURNING batch_id",
                )
                .bind(now)
                .bind(WORKER_DIED)
                .bind(r.id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = failed {
                    out.failed.push((r.id, batch_of(&row, 0)?));
                    continue;
                }
            }
            let row = sqlx::query(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, started_at = ?, worker = ?, run_at = NULL
                 WHERE id = ? AND (state = 'queued' OR (? AND state IN ('running', 'retrying')))
                 RETURNING batch_id, attempt, seed, spec",
            )
            .bind(now)
            .bind(worker)
            .bind(r.id.to_string())
            .bind(r.takeover)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            let batch_id = batch_of(&row, 0)?;
            let attempt: i32 = row.get(1);
            match serde_json::from_str(&row.get::<String, _>(3)) {
                Ok(spec) => out.jobs.push(ClaimedJob {
                    id: r.id,
                    batch_id,
                    attempt,
                    seed: row.get::<i64, _>(2) as u64,
                    spec,
                }),
                Err(e) => {
                    // Only this row fails; the rest of the chunk is claimed.
                    sqlx::query(
                        "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?
                         WHERE id = ? AND attempt = ? AND state = 'running'",
                    )
                    .bind(now)
                    .bind(super::unreadable_spec(e))
                    .bind(r.id.to_string())
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                    out.failed.push((r.id, batch_id));
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn record_outcomes(
        &self,
        outcomes: &[(JobId, i32, Outcome)],
    ) -> Result<Vec<Recorded>, DbError> {
        let now = now_ms();
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let mut result = Vec::with_capacity(outcomes.len());
        for (id, attempt, outcome) in outcomes {
            let recorded = match outcome {
                Outcome::Stored { key } => {
                    let done = sqlx::query(
                        "UPDATE jobs SET state = 'succeeded', finished_at = ?, output_key = ?, error = NULL
                         WHERE id = ? AND attempt = ? AND state = 'running'",
                    )
                    .bind(now)
                    .bind(key)
                    .bind(id.to_string())
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 1 {
                        Recorded::Moved(JobState::Succeeded, None)
                    } else {
                        Recorded::Stale
                    }
                }
                Outcome::Failed {
                    error,
                    retry,
                    backoff_ms,
                } => {
                    let row = sqlx::query(
                        "UPDATE jobs
                         SET state = CASE WHEN ?1 AND attempt < max_attempts THEN 'retrying' ELSE 'failed' END,
                             error = ?2,
                             run_at = CASE WHEN ?1 AND attempt < max_attempts THEN ?3 + ?4 END,
                             finished_at = CASE WHEN ?1 AND attempt < max_attempts THEN NULL ELSE ?3 END
                         WHERE id = ?5 AND attempt = ?6 AND state = 'running'
                         RETURNING state, run_at",
                    )
                    .bind(retry)
                    .bind(error)
                    .bind(now)
                    .bind(backoff_ms)
                    .bind(id.to_string())
                    .bind(attempt)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match row {
                        Some(row) => Recorded::Moved(
                            state_of(row.get(0))?,
                            row.get::<Option<i64>, _>(1).map(from_ms),
                        ),
                        None => Recorded::Stale,
                    }
                }
            };
            result.push(recorded);
        }
        tx.commit().await?;
        Ok(result)
    }

    async fn placement(&self, ids: &[JobId]) -> Result<Vec<Placed>, DbError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut con = self.pool.acquire().await?;
        for id in ids {
            let row = sqlx::query("SELECT batch_id, priority FROM jobs WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *con)
                .await?;
            if let Some(row) = row {
                out.push((*id, batch_of(&row, 0)?, row.get(1)));
            }
        }
        Ok(out)
    }

    async fn states(&self, ids: &[JobId]) -> Result<Vec<(JobId, JobState, i32)>, DbError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut con = self.pool.acquire().await?;
        for id in ids {
            let row = sqlx::query("SELECT state, attempt FROM jobs WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *con)
                .await?;
            if let Some(row) = row {
                out.push((*id, state_of(row.get(0))?, row.get(1)));
            }
        }
        Ok(out)
    }

    async fn requeue_due(&self, ids: &[JobId]) -> Result<Vec<JobId>, DbError> {
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let mut queued = Vec::new();
        for id in ids {
            sqlx::query("UPDATE jobs SET state = 'queued', run_at = NULL WHERE id = ? AND state = 'retrying'")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            if state.as_deref() == Some("queued") {
                queued.push(*id);
            }
        }
        tx.commit().await?;
        Ok(queued)
    }

    async fn release(&self, jobs: &[(JobId, i32)]) -> Result<Vec<JobId>, DbError> {
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let mut released = Vec::new();
        for (id, attempt) in jobs {
            let done = sqlx::query(
                "UPDATE jobs SET state = 'queued', worker = NULL, lease_owner = NULL, lease_until = NULL
                 WHERE id = ? AND attempt = ? AND state = 'running'",
            )
            .bind(id.to_string())
            .bind(attempt)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                released.push(*id);
            }
        }
        tx.commit().await?;
        Ok(released)
    }

    async fn rescue(&self, jobs: &[(JobId, i32)]) -> Result<Rescued, DbError> {
        let now = now_ms();
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Rescued::default();
        for (id, attempt) in jobs {
            let row = sqlx::query(
                "UPDATE jobs
                 SET state = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
                     worker = CASE WHEN attempt < max_attempts THEN NULL ELSE worker END,
                     finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE ? END,
                     error = CASE WHEN attempt < max_attempts THEN error
                                  ELSE ? || ' during attempt ' || attempt || ' of ' || max_attempts END,
                     lease_owner = NULL, lease_until = NULL
                 WHERE id = ? AND attempt = ? AND state = 'running'
                 RETURNING state, batch_id",
            )
            .bind(now)
            .bind(WORKER_DIED)
            .bind(id.to_string())
            .bind(attempt)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(r) if r.get::<String, _>(0) == "queued" => out.requeued.push(*id),
                Some(r) => out.failed.push((*id, batch_of(&r, 1)?)),
                None => {}
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn cancel(&self, id: Uuid) -> Result<Cancelled, DbError> {
        let id = id.to_string();
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?
             WHERE (id = ? OR batch_id = ?) AND state IN ('queued', 'retrying', 'running')",
        )
        .bind(now_ms())
        .bind(&id)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        let batch: Option<String> = sqlx::query_scalar(
            "SELECT COALESCE((SELECT id FROM batches WHERE id = ?1),
                             (SELECT batch_id FROM jobs WHERE id = ?1))",
        )
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Cancelled {
            jobs: done.rows_affected(),
            batch: batch.map(|b| uuid_of(&b).map(BatchId)).transpose()?,
        })
    }

    async fn exists(&self, id: Uuid) -> Result<bool, DbError> {
        let id = id.to_string();
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM batches WHERE id = ?) OR EXISTS (SELECT 1 FROM jobs WHERE id = ?)",
        )
        .bind(&id)
        .bind(&id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn progress(&self, batch: BatchId) -> Result<Option<Progress>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {PROGRESS_COLUMNS} FROM batch_progress WHERE batch_id = ?"
        ))
        .bind(batch.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(progress_of).transpose()
    }

    async fn recent_batches(&self, limit: i64) -> Result<Vec<Progress>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {PROGRESS_COLUMNS} FROM batch_progress
             WHERE batch_id IN (SELECT id FROM batches ORDER BY created_at DESC LIMIT ?)
             ORDER BY created_at DESC"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(progress_of).collect()
    }

    async fn failures(&self, batch: BatchId, limit: i64) -> Result<Vec<FailedJob>, DbError> {
        let rows = sqlx::query(
            "SELECT id, attempt, error FROM jobs WHERE batch_id = ? AND state = 'failed'
             ORDER BY finished_at LIMIT ?",
        )
        .bind(batch.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FailedJob {
                    id: uuid_of(&r.get::<String, _>(0))?,
                    attempt: r.get(1),
                    error: r.get(2),
                })
            })
            .collect()
    }

    async fn queue_counts(&self, queue: &str) -> Result<Vec<(String, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT state, count(*) FROM jobs WHERE queue = ? GROUP BY state ORDER BY state",
        )
        .bind(queue)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn jobs_of_queue(&self, queue: &str) -> Result<Vec<JobRow>, DbError> {
        self.job_rows("queue = ?", queue.to_string()).await
    }

    async fn jobs_of_batch(&self, batch: BatchId) -> Result<Vec<JobRow>, DbError> {
        self.job_rows("batch_id = ?", batch.to_string()).await
    }

    async fn worker_heartbeat(&self, worker: &WorkerInfo, jobs_done: i64) -> Result<(), DbError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO workers (id, host, device, models, queue, started_at, last_heartbeat, jobs_done)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat, jobs_done = excluded.jobs_done",
        )
        .bind(&worker.id)
        .bind(&worker.host)
        .bind(&worker.device)
        .bind(worker.models.join(","))
        .bind(&worker.queue)
        .bind(now)
        .bind(now)
        .bind(jobs_done)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unfinished_page(
        &self,
        queue: &str,
        state: JobState,
        after: Option<JobId>,
        limit: i64,
    ) -> Result<Vec<(JobId, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT id, coalesce(run_at, 0) FROM jobs
             WHERE queue = ? AND state = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(queue)
        .bind(state.as_str())
        .bind(after.map_or(String::new(), |a| a.to_string()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((JobId(uuid_of(&r.get::<String, _>(0))?), r.get(1))))
            .collect()
    }

    async fn orphans(
        &self,
        queue: &str,
        silent_ms: i64,
        limit: i64,
    ) -> Result<Vec<(JobId, i32)>, DbError> {
        let since = now_ms() - silent_ms;
        let rows = sqlx::query(
            "SELECT j.id, j.attempt FROM jobs j LEFT JOIN workers w ON w.id = j.worker
             WHERE j.queue = ?1 AND j.state = 'running' AND j.started_at < ?2
               AND (w.id IS NULL OR w.stopped_at IS NOT NULL OR w.last_heartbeat < ?2)
             LIMIT ?3",
        )
        .bind(queue)
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((JobId(uuid_of(&r.get::<String, _>(0))?), r.get(1))))
            .collect()
    }

    /// One machine, and every reconciler action is idempotent: each process may lead.
    async fn lead(&self, _name: &str) -> Result<Option<Leadership>, DbError> {
        Ok(Some(Leadership::new(None)))
    }

    async fn finish_batches(&self, batches: &[BatchId]) -> Result<Vec<BatchId>, DbError> {
        let mut done = Vec::new();
        for b in batches {
            let moved = sqlx::query(
                "UPDATE batches SET finished_at = ?1
                 WHERE id = ?2 AND finished_at IS NULL
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = ?2
                                   AND j.state IN ('queued', 'running', 'retrying'))",
            )
            .bind(now_ms())
            .bind(b.to_string())
            .execute(&self.pool)
            .await?;
            if moved.rows_affected() == 1 {
                done.push(*b);
            }
        }
        Ok(done)
    }

    async fn retry_failed(
        &self,
        batch: BatchId,
        extra_attempts: i32,
    ) -> Result<Vec<JobId>, DbError> {
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'queued', error = NULL, finished_at = NULL, run_at = NULL,
                    lease_owner = NULL, lease_until = NULL, max_attempts = attempt + ?2
             WHERE batch_id = ?1 AND state = 'failed' RETURNING id",
        )
        .bind(batch.to_string())
        .bind(extra_attempts)
        .fetch_all(&mut *tx)
        .await?;
        // Reopened only when a job was requeued: nothing else would finish it again.
        if !rows.is_empty() {
            sqlx::query(
                "UPDATE batches SET finished_at = NULL, webhook_status = NULL, webhook_taken_at = NULL
                 WHERE id = ?",
            )
            .bind(batch.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok(JobId(uuid_of(&r.get::<String, _>(0))?)))
            .collect()
    }

    async fn batch_finished_at(&self, batch: BatchId) -> Result<Option<DateTime<Utc>>, DbError> {
        let at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT finished_at FROM batches WHERE id = ?")
                .bind(batch.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(at.flatten().map(from_ms))
    }

    async fn batch_times(
        &self,
        batch: BatchId,
    ) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), DbError> {
        let row =
            sqlx::query("SELECT min(started_at), max(finished_at) FROM jobs WHERE batch_id = ?")
                .bind(batch.to_string())
                .fetch_one(&self.pool)
                .await?;
        Ok((
            row.get::<Option<i64>, _>(0).map(from_ms),
            row.get::<Option<i64>, _>(1).map(from_ms),
        ))
    }

    async fn worker_stopped(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE workers SET stopped_at = ? WHERE id = ?")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl SqliteRecord {
    async fn job_rows(&self, filter: &str, value: String) -> Result<Vec<JobRow>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT id, batch_id, state, attempt, error, output_key, seed,
                    coalesce(json_extract(spec, '$.prompt'), ''), worker, json_extract(spec, '$.metadata') FROM jobs WHERE {filter} ORDER BY id"
        ))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let batch: Option<String> = r.get(1);
                Ok(JobRow {
                    id: JobId(uuid_of(&r.get::<String, _>(0))?),
                    batch_id: batch.as_deref().map(uuid_of).transpose()?.map(BatchId),
                    state: state_of(r.get(2))?,
                    attempt: r.get(3),
                    error: r.get(4),
                    output_key: r.get(5),
                    seed: r.get::<i64, _>(6) as u64,
                    prompt: r.get(7),
                    worker: r.get(8),
                    metadata: r
                        .get::<Option<String>, _>(9)
                        .and_then(|m| serde_json::from_str(&m).ok()),
                })
            })
            .collect()
    }
}

/// The batch id in column `i` of a returned row.
fn batch_of(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Option<BatchId>, DbError> {
    let batch: Option<String> = row.get(i);
    Ok(batch.as_deref().map(uuid_of).transpose()?.map(BatchId))
}
