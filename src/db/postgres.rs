//! The record on Postgres. Bulk writes go through `unnest` of arrays: one round trip
//! per chunk of jobs, never one per job.
//!
//! Statements that change jobs by id compare the state with a column of the unnested
//! input (`c.from_state`), not with a constant. A constant would let the planner find
//! the rows by state, and its estimate for `queued` or `running` is stale on a table
//! that is mostly finished (~1 row, where a drain has thousands, plus dead index
//! entries): every chunk then scanned all of them, and a 100,000-job drain took four
//! times as long. As a join condition, the only cheap path is the primary key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{
    Connection, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use async_trait::async_trait;

use super::{
    Cancelled, ClaimRequest, Claimed, DbError, FailedJob, JobRow, Leadership, Outcome, Progress,
    Record, Recorded, Rescued, WORKER_DIED, Webhook, WorkerInfo,
};
use crate::{
    job::{BatchId, ClaimedJob, JobId, JobSpec, JobState, NewJob, Placed},
    schedule::Schedule,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows per INSERT statement at submit.
const INSERT_CHUNK: usize = 10_000;

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

    /// Writes a batch and its jobs in one transaction. Returns the ids that were new:
    /// a job whose id exists already is not written again (nor dispatched again).
    async fn create_batch_for(
        &self,
        name: &str,
        queue: &str,
        jobs: &[NewJob],
        max_attempts: i32,
        firing: Option<(&str, DateTime<Utc>)>,
    ) -> Result<Option<(BatchId, Vec<JobId>)>, DbError> {
        let batch = BatchId::generate();
        let mut tx = self.pool.begin().await?;
        let made = sqlx::query(
            "INSERT INTO renderq.batches (id, name, queue, total, schedule, scheduled_for)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT ON CONSTRAINT batches_schedule_firing_unique DO NOTHING",
        )
        .bind(batch.0)
        .bind(name)
        .bind(queue)
        .bind(jobs.len() as i32)
        .bind(firing.map(|f| f.0))
        .bind(firing.map(|f| f.1))
        .execute(&mut *tx)
        .await?;
        if made.rows_affected() == 0 {
            return Ok(None); // this firing's batch exists: another scheduler won
        }
        let mut inserted = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(INSERT_CHUNK) {
            let ids: Vec<Uuid> = chunk.iter().map(|j| j.id.0).collect();
            let models: Vec<&str> = chunk.iter().map(|j| j.spec.model.as_str()).collect();
            let seeds: Vec<i64> = chunk
                .iter()
                .map(|j| j.spec.effective_seed(j.id) as i64)
                .collect();
            let specs: Vec<serde_json::Value> = chunk
                .iter()
                .map(|j| serde_json::to_value(&j.spec))
                .collect::<Result<_, _>>()?;
            let priorities: Vec<i32> = chunk.iter().map(|j| j.spec.priority).collect();
            let rows = sqlx::query(
                "INSERT INTO renderq.jobs (id, batch_id, queue, model, seed, spec, max_attempts, priority)
                 SELECT u.id, $2, $3, u.model, u.seed, u.spec, $4, u.priority
                 FROM unnest($1::uuid[], $5::text[], $6::bigint[], $7::jsonb[], $8::int[])
                      AS u(id, model, seed, spec, priority)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id",
            )
            .bind(&ids)
            .bind(batch.0)
            .bind(queue)
            .bind(max_attempts)
            .bind(&models)
            .bind(&seeds)
            .bind(&specs)
            .bind(&priorities)
            .fetch_all(&mut *tx)
            .await?;
            inserted.extend(rows.iter().map(|r| JobId(r.get::<Uuid, _>(0))));
        }
        tx.commit().await?;
        Ok(Some((batch, inserted)))
    }

    async fn add_schedule(&self, s: &Schedule) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO renderq.schedules (name, cron, timezone, file, queue, options)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.file)
        .bind(&s.queue)
        .bind(serde_json::to_value(&s.options)?)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, DbError> {
        let rows = sqlx::query(
            "SELECT name, cron, timezone, file, queue, options, last_fired_for, created_at
             FROM renderq.schedules ORDER BY name",
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
                    options: serde_json::from_value(r.get(5))?,
                    last_fired_for: r.get(6),
                    created_at: r.get(7),
                })
            })
            .collect()
    }

    async fn set_webhook(&self, batch: BatchId, url: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE renderq.batches SET webhook = $2 WHERE id = $1")
            .bind(batch.0)
            .bind(url)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn webhook(&self, batch: BatchId) -> Result<Option<Webhook>, DbError> {
        let row = sqlx::query(
            "SELECT webhook, webhook_status FROM renderq.batches
             WHERE id = $1 AND webhook IS NOT NULL",
        )
        .bind(batch.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Webhook {
            url: r.get(0),
            status: r.get(1),
        }))
    }

    async fn set_webhook_status(&self, batch: BatchId, status: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE renderq.batches SET webhook_status = $2 WHERE id = $1")
            .bind(batch.0)
            .bind(status)
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
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE renderq.batches SET webhook_taken_at = now()
             WHERE id IN (
                 SELECT id FROM renderq.batches
                 WHERE queue = $1 AND webhook IS NOT NULL AND webhook_status IS NULL
                   AND finished_at IS NOT NULL
                   AND (webhook_taken_at IS NULL
                        OR webhook_taken_at < now() - $2 * interval '1 millisecond')
                 LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(queue)
        .bind(retake_after.as_millis() as f64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(BatchId).collect())
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM renderq.schedules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_fired(&self, name: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE renderq.schedules SET last_fired_for = greatest(last_fired_for, $2) WHERE name = $1",
        )
        .bind(name)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates the row of a job that arrived on the stream without one (a raw producer).
    /// Does nothing when the row exists.
    async fn ensure_raw_job(
        &self,
        id: JobId,
        queue: &str,
        spec: &JobSpec,
        max_attempts: i32,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO renderq.jobs (id, queue, model, seed, spec, max_attempts, priority)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.0)
        .bind(queue)
        .bind(&spec.model)
        .bind(spec.effective_seed(id) as i64)
        .bind(serde_json::to_value(spec)?)
        .bind(max_attempts)
        .bind(spec.priority)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a stream message that is not a valid job as a failed job, so the producer
    /// can see why; returns false if that job was recorded already.
    async fn record_unparseable(
        &self,
        id: JobId,
        queue: &str,
        raw: &str,
        error: &str,
    ) -> Result<(), DbError> {
        let raw: String = raw.chars().take(4096).collect();
        sqlx::query(
            "INSERT INTO renderq.jobs (id, queue, state, model, seed, spec, error, finished_at)
             VALUES ($1, $2, 'failed', '', 0, jsonb_build_object('raw', $3::text), $4, now())
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.0)
        .bind(queue)
        .bind(raw)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims delivered jobs for `worker`, bumping each one's attempt. Jobs that are
    /// not claimable (cancelled, finished, held by a live worker) are left out.
    async fn claim(&self, requests: &[ClaimRequest], worker: &str) -> Result<Claimed, DbError> {
        let mut out = Claimed::default();
        if requests.is_empty() {
            return Ok(out);
        }
        let taken: Vec<Uuid> = requests
            .iter()
            .filter(|r| r.takeover)
            .map(|r| r.id.0)
            .collect();
        if !taken.is_empty() {
            let rows = sqlx::query(
                "UPDATE renderq.jobs j SET state = 'failed', finished_at = now(),
                        error = format('%s during attempt %s of %s', $2::text, j.attempt, j.max_attempts)
                 FROM (SELECT u.id, 'running' AS from_state FROM unnest($1::uuid[]) AS u(id) OFFSET 0) AS c
                 WHERE j.id = c.id AND j.state = c.from_state AND j.attempt >= j.max_attempts
                 RETURNING j.id, j.batch_id",
            )
            .bind(&taken)
            .bind(WORKER_DIED)
            .fetch_all(&self.pool)
            .await?;
            out.failed.extend(rows.iter().map(job_and_batch));
        }
        let ids: Vec<Uuid> = requests.iter().map(|r| r.id.0).collect();
        let takeover: Vec<bool> = requests.iter().map(|r| r.takeover).collect();
        let rows = sqlx::query(
            "UPDATE renderq.jobs j
             SET state = 'running', attempt = j.attempt + 1, started_at = now(), worker = $3, run_at = NULL
             FROM (SELECT u.*, 'queued' AS from_state
                   FROM unnest($1::uuid[], $2::bool[]) AS u(id, takeover) OFFSET 0) AS c
             WHERE j.id = c.id
               AND (j.state = c.from_state OR (c.takeover AND j.state IN ('running', 'retrying')))
             RETURNING j.id, j.batch_id, j.attempt, j.seed, j.spec",
        )
        .bind(&ids)
        .bind(&takeover)
        .bind(worker)
        .fetch_all(&self.pool)
        .await?;
        let mut unreadable = Vec::new();
        for r in rows {
            let (id, batch_id) = job_and_batch(&r);
            let attempt: i32 = r.get(2);
            // Straight from the bytes: a `serde_json::Value` in between cost an
            // allocation per field of every claimed job.
            match r.try_get::<sqlx::types::Json<JobSpec>, _>(4) {
                Ok(spec) => out.jobs.push(ClaimedJob {
                    id,
                    batch_id,
                    attempt,
                    seed: r.get::<i64, _>(3) as u64,
                    spec: spec.0,
                }),
                Err(sqlx::Error::ColumnDecode { source, .. }) => {
                    unreadable.push((id, batch_id, attempt, super::unreadable_spec(source)))
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !unreadable.is_empty() {
            let ids: Vec<Uuid> = unreadable.iter().map(|u| u.0.0).collect();
            let attempts: Vec<i32> = unreadable.iter().map(|u| u.2).collect();
            let errors: Vec<&str> = unreadable.iter().map(|u| u.3.as_str()).collect();
            let rows = sqlx::query(
                "UPDATE renderq.jobs j SET state = 'failed', finished_at = now(), error = c.error
                 FROM (SELECT u.*, 'running' AS from_state
                       FROM unnest($1::uuid[], $2::int[], $3::text[]) AS u(id, attempt, error) OFFSET 0) AS c
                 WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = c.from_state
                 RETURNING j.id, j.batch_id",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(&errors)
            .fetch_all(&self.pool)
            .await?;
            out.failed.extend(rows.iter().map(job_and_batch));
        }
        Ok(out)
    }

    /// Records the outcomes of attempts, fenced by attempt. Returns, per input, what
    /// happened, in input order.
    async fn record_outcomes(
        &self,
        outcomes: &[(JobId, i32, Outcome)],
    ) -> Result<Vec<Recorded>, DbError> {
        let mut result = vec![Recorded::Stale; outcomes.len()];
        let (ok, failed): (Vec<_>, Vec<_>) = outcomes
            .iter()
            .enumerate()
            .partition(|(_, (_, _, o))| matches!(o, Outcome::Stored { .. }));
        if !ok.is_empty() {
            let ids: Vec<Uuid> = ok.iter().map(|(_, (id, _, _))| id.0).collect();
            let attempts: Vec<i32> = ok.iter().map(|(_, (_, a, _))| *a).collect();
            let keys: Vec<&str> = ok
                .iter()
                .map(|(_, (_, _, o))| match o {
                    Outcome::Stored { key } => key.as_str(),
                    Outcome::Failed { .. } => unreachable!("partitioned"),
                })
                .collect();
            let rows = sqlx::query(
                "UPDATE renderq.jobs j
                 SET state = 'succeeded', finished_at = now(), output_key = c.key, error = NULL
                 FROM (SELECT u.*, 'running' AS from_state
                       FROM unnest($1::uuid[], $2::int[], $3::text[]) AS u(id, attempt, key) OFFSET 0) AS c
                 WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = c.from_state
                 RETURNING j.id",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(&keys)
            .fetch_all(&self.pool)
            .await?;
            let moved: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
            for (i, (id, _, _)) in &ok {
                if moved.contains(&id.0) {
                    result[*i] = Recorded::Moved(JobState::Succeeded, None);
                }
            }
        }
        if !failed.is_empty() {
            let mut ids = Vec::new();
            let mut attempts = Vec::new();
            let mut errors = Vec::new();
            let mut retry = Vec::new();
            let mut delays = Vec::new();
            for (_, (id, attempt, o)) in &failed {
                if let Outcome::Failed {
                    error,
                    retry: r,
                    backoff_ms,
                } = o
                {
                    ids.push(id.0);
                    attempts.push(*attempt);
                    errors.push(error.as_str());
                    retry.push(*r);
                    delays.push(*backoff_ms);
                }
            }
            let rows = sqlx::query(
                "UPDATE renderq.jobs j
                 SET state = CASE WHEN c.retry AND j.attempt < j.max_attempts THEN 'retrying' ELSE 'failed' END,
                     error = c.error,
                     run_at = CASE WHEN c.retry AND j.attempt < j.max_attempts
                                   THEN now() + c.delay_ms * interval '1 millisecond' END,
                     finished_at = CASE WHEN c.retry AND j.attempt < j.max_attempts THEN NULL ELSE now() END
                 FROM (SELECT u.*, 'running' AS from_state
                       FROM unnest($1::uuid[], $2::int[], $3::text[], $4::bool[], $5::bigint[])
                            AS u(id, attempt, error, retry, delay_ms) OFFSET 0) AS c
                 WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = c.from_state
                 RETURNING j.id, j.state, j.run_at",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(&errors)
            .bind(&retry)
            .bind(&delays)
            .fetch_all(&self.pool)
            .await?;
            let moved: std::collections::HashMap<Uuid, (String, Option<DateTime<Utc>>)> = rows
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect();
            for (i, (id, _, _)) in &failed {
                if let Some((state, run_at)) = moved.get(&id.0) {
                    let state = state.parse().map_err(DbError::Invalid)?;
                    result[*i] = Recorded::Moved(state, *run_at);
                }
            }
        }
        Ok(result)
    }

    async fn placement(&self, ids: &[JobId]) -> Result<Vec<Placed>, DbError> {
        let ids: Vec<Uuid> = ids.iter().map(|j| j.0).collect();
        let rows =
            sqlx::query("SELECT id, batch_id, priority FROM renderq.jobs WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let (id, batch) = job_and_batch(r);
                (id, batch, r.get(2))
            })
            .collect())
    }

    /// Current state and attempt of jobs (missing ids are left out).
    async fn states(&self, ids: &[JobId]) -> Result<Vec<(JobId, JobState, i32)>, DbError> {
        let ids: Vec<Uuid> = ids.iter().map(|j| j.0).collect();
        let rows = sqlx::query("SELECT id, state, attempt FROM renderq.jobs WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let state: String = r.get(1);
                Ok((
                    JobId(r.get(0)),
                    state.parse().map_err(DbError::Invalid)?,
                    r.get(2),
                ))
            })
            .collect()
    }

    /// Moves due retries back to `queued`. Returns the jobs now `queued` among `ids`
    /// (including ones an earlier, interrupted move left queued).
    async fn requeue_due(&self, ids: &[JobId]) -> Result<Vec<JobId>, DbError> {
        let ids: Vec<Uuid> = ids.iter().map(|j| j.0).collect();
        sqlx::query(
            "UPDATE renderq.jobs j SET state = 'queued', run_at = NULL
             FROM (SELECT u.id, 'retrying' AS from_state FROM unnest($1::uuid[]) AS u(id) OFFSET 0) AS c
             WHERE j.id = c.id AND j.state = c.from_state",
        )
        .bind(&ids)
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT j.id FROM renderq.jobs j
             JOIN (SELECT u.id, 'queued' AS from_state FROM unnest($1::uuid[]) AS u(id) OFFSET 0) AS c
               ON j.id = c.id AND j.state = c.from_state",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
    }

    /// Gives back running attempts a draining worker could not finish: they become
    /// `queued` again (fenced by attempt) and are dispatched anew by the caller.
    async fn release(&self, jobs: &[(JobId, i32)]) -> Result<Vec<JobId>, DbError> {
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.0.0).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.1).collect();
        let rows = sqlx::query(
            "UPDATE renderq.jobs j SET state = 'queued', worker = NULL
             FROM (SELECT u.*, 'running' AS from_state
                   FROM unnest($1::uuid[], $2::int[]) AS u(id, attempt) OFFSET 0) AS c
             WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = c.from_state
             RETURNING j.id",
        )
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
    }

    async fn rescue(&self, jobs: &[(JobId, i32)]) -> Result<Rescued, DbError> {
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.0.0).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.1).collect();
        let rows = sqlx::query(
            "UPDATE renderq.jobs j
             SET state = CASE WHEN j.attempt < j.max_attempts THEN 'queued' ELSE 'failed' END,
                 worker = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE j.worker END,
                 finished_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE now() END,
                 error = CASE WHEN j.attempt < j.max_attempts THEN j.error
                              ELSE format('%s during attempt %s of %s', $3::text, j.attempt, j.max_attempts) END
             FROM (SELECT u.*, 'running' AS from_state
                   FROM unnest($1::uuid[], $2::int[]) AS u(id, attempt) OFFSET 0) AS c
             WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = c.from_state
             RETURNING j.id, j.batch_id, j.state",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(WORKER_DIED)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Rescued::default();
        for r in &rows {
            let (id, batch) = job_and_batch(r);
            if r.get::<&str, _>(2) == "queued" {
                out.requeued.push(id);
            } else {
                out.failed.push((id, batch));
            }
        }
        Ok(out)
    }

    /// Cancels a job, or every unfinished job of a batch.
    async fn cancel(&self, id: Uuid) -> Result<Cancelled, DbError> {
        let row = sqlx::query(
            "WITH moved AS (
                 UPDATE renderq.jobs SET state = 'cancelled', finished_at = now()
                 WHERE (id = $1 OR batch_id = $1) AND state IN ('queued', 'retrying', 'running')
                 RETURNING 1)
             SELECT (SELECT count(*) FROM moved),
                    COALESCE((SELECT id FROM renderq.batches WHERE id = $1),
                             (SELECT batch_id FROM renderq.jobs WHERE id = $1))",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Cancelled {
            jobs: row.get::<i64, _>(0) as u64,
            batch: row.get::<Option<Uuid>, _>(1).map(BatchId),
        })
    }

    /// Whether `id` names a batch or a job (for messages to the user).
    async fn exists(&self, id: Uuid) -> Result<bool, DbError> {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM renderq.batches WHERE id = $1)
                 OR EXISTS (SELECT 1 FROM renderq.jobs WHERE id = $1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get(0))
    }

    async fn progress(&self, batch: BatchId) -> Result<Option<Progress>, DbError> {
        Ok(sqlx::query_as::<_, Progress>(
            "SELECT batch_id, name, created_at, total, queued, running, succeeded, failed, cancelled, done
             FROM renderq.batch_progress WHERE batch_id = $1",
        )
        .bind(batch.0)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn recent_batches(&self, limit: i64) -> Result<Vec<Progress>, DbError> {
        Ok(sqlx::query_as::<_, Progress>(
            "SELECT p.batch_id, p.name, p.created_at, p.total, p.queued, p.running, p.succeeded,
                    p.failed, p.cancelled, p.done
             FROM (SELECT id FROM renderq.batches ORDER BY created_at DESC LIMIT $1) b
             JOIN renderq.batch_progress p ON p.batch_id = b.id
             ORDER BY p.created_at DESC",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn failures(&self, batch: BatchId, limit: i64) -> Result<Vec<FailedJob>, DbError> {
        Ok(sqlx::query_as::<_, FailedJob>(
            "SELECT id, attempt, error FROM renderq.jobs
             WHERE batch_id = $1 AND state = 'failed' ORDER BY finished_at LIMIT $2",
        )
        .bind(batch.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Counts of jobs by state for one queue (`renderq status` without a batch).
    async fn queue_counts(&self, queue: &str) -> Result<Vec<(String, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT state, count(*) FROM renderq.jobs WHERE queue = $1 GROUP BY state ORDER BY state",
        )
        .bind(queue)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Registers a worker and keeps its heartbeat (`renderq.workers`).
    async fn worker_heartbeat(&self, worker: &WorkerInfo, jobs_done: i64) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO renderq.workers (id, host, device, models, queue, jobs_done)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET last_heartbeat = now(), jobs_done = $6",
        )
        .bind(&worker.id)
        .bind(&worker.host)
        .bind(&worker.device)
        .bind(&worker.models)
        .bind(&worker.queue)
        .bind(jobs_done)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn worker_stopped(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE renderq.workers SET stopped_at = now() WHERE id = $1")
            .bind(id)
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
        // Keyset paging: `queued` through its (queue, id) index; `retrying` jobs are
        // few (they wait out a backoff) and served by theirs.
        // The state is written into the statement: a partial index's predicate cannot
        // be matched to a parameter in a generic plan.
        let sql = match state {
            JobState::Queued => {
                "SELECT id, 0::bigint FROM renderq.jobs
                 WHERE queue = $1 AND state = 'queued' AND id > $2 ORDER BY id LIMIT $3"
            }
            JobState::Retrying => {
                "SELECT id, coalesce((extract(epoch FROM run_at) * 1000)::bigint, 0) FROM renderq.jobs
                 WHERE queue = $1 AND state = 'retrying' AND id > $2 ORDER BY id LIMIT $3"
            }
            other => return Err(DbError::Invalid(format!("no page of `{other}` jobs"))),
        };
        let rows = sqlx::query(sql)
            .bind(queue)
            .bind(after.map_or(Uuid::nil(), |a| a.0))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (JobId(r.get(0)), r.get(1))).collect())
    }

    async fn orphans(
        &self,
        queue: &str,
        silent_ms: i64,
        limit: i64,
    ) -> Result<Vec<(JobId, i32)>, DbError> {
        let rows = sqlx::query(
            // Running jobs by batch and state (the running-jobs index holds only
            // database-leased jobs, migration 10), for every batch of the queue,
            // finished ones too (the reconciler repairs what went wrong elsewhere, so
            // it does not rely on the finished mark), and for raw jobs.
            "WITH running AS (
                 SELECT j.id, j.attempt, j.started_at, j.worker
                 FROM renderq.batches b
                 JOIN renderq.jobs j ON j.batch_id = b.id AND j.state = 'running'
                 WHERE b.queue = $1 AND j.queue = $1
                 UNION ALL
                 SELECT id, attempt, started_at, worker FROM renderq.jobs
                 WHERE batch_id IS NULL AND state = 'running' AND queue = $1)
             SELECT r.id, r.attempt FROM running r LEFT JOIN renderq.workers w ON w.id = r.worker
             WHERE r.started_at < now() - $2 * interval '1 millisecond'
               AND (w.id IS NULL OR w.stopped_at IS NOT NULL
                    OR w.last_heartbeat < now() - $2 * interval '1 millisecond')
             LIMIT $3",
        )
        .bind(queue)
        .bind(silent_ms as f64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (JobId(r.get(0)), r.get(1))).collect())
    }

    /// A session advisory lock on a connection taken out of the pool: closing that
    /// connection (dropping the `Leadership`) is what releases it, also when the
    /// process dies.
    async fn lead(&self, name: &str) -> Result<Option<Leadership>, DbError> {
        let mut con = self.pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(name)
            .fetch_one(&mut con)
            .await?;
        Ok(got.then(|| Leadership::new(Some(Box::new(con)))))
    }

    async fn finish_batches(&self, batches: &[BatchId]) -> Result<Vec<BatchId>, DbError> {
        const NO_JOB_LEFT: &str = "NOT EXISTS (SELECT 1 FROM renderq.jobs j WHERE j.batch_id = b.id
                                  AND j.state IN ('queued', 'running', 'retrying'))";
        let ids: Vec<Uuid> = batches.iter().map(|b| b.0).collect();
        // Nearly every call is for a batch with work left: a plain read says so.
        let candidates: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT b.id FROM renderq.batches b
             WHERE b.id = ANY($1) AND b.finished_at IS NULL AND {NO_JOB_LEFT}"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Lock first, then check on the next statement's fresh snapshot. A check on a
        // snapshot taken before the lock was granted would miss the jobs that a
        // `retry` holding the lock had just requeued, and finish the batch under them.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM renderq.batches WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&candidates)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(&format!(
            "WITH done AS (
                UPDATE renderq.batches b SET finished_at = now()
                WHERE b.id = ANY($1) AND b.finished_at IS NULL AND {NO_JOB_LEFT}
                RETURNING b.id)
             SELECT id, pg_notify('renderq_events', json_build_object(
                 'job_id', NULL, 'batch_id', id, 'state', 'done')::text) FROM done"
        ))
        .bind(&candidates)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.iter().map(|r| BatchId(r.get(0))).collect())
    }

    async fn retry_failed(
        &self,
        batch: BatchId,
        extra_attempts: i32,
    ) -> Result<Vec<JobId>, DbError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE renderq.jobs SET state = 'queued', error = NULL, finished_at = NULL, run_at = NULL,
                    max_attempts = attempt + $2
             WHERE batch_id = $1 AND state = 'failed' RETURNING id",
        )
        .bind(batch.0)
        .bind(extra_attempts)
        .fetch_all(&mut *tx)
        .await?;
        // Reopened only when a job was requeued: nothing else would finish it again.
        if !rows.is_empty() {
            sqlx::query(
                "UPDATE renderq.batches
                 SET finished_at = NULL, webhook_status = NULL, webhook_taken_at = NULL
                 WHERE id = $1",
            )
            .bind(batch.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
    }

    async fn batch_finished_at(&self, batch: BatchId) -> Result<Option<DateTime<Utc>>, DbError> {
        let at = sqlx::query_scalar("SELECT finished_at FROM renderq.batches WHERE id = $1")
            .bind(batch.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(at.flatten())
    }

    async fn batch_times(
        &self,
        batch: BatchId,
    ) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), DbError> {
        let row = sqlx::query(
            "SELECT min(started_at), max(finished_at) FROM renderq.jobs WHERE batch_id = $1",
        )
        .bind(batch.0)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.get(0), row.get(1)))
    }

    async fn jobs_of_queue(&self, queue: &str) -> Result<Vec<JobRow>, DbError> {
        self.job_rows("queue = $1", queue).await
    }

    async fn jobs_of_batch(&self, batch: BatchId) -> Result<Vec<JobRow>, DbError> {
        self.job_rows("batch_id = $1", batch.0).await
    }
}

impl PgRecord {
    async fn job_rows<T>(&self, filter: &str, value: T) -> Result<Vec<JobRow>, DbError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    {
        let rows = sqlx::query(&format!(
            "SELECT id, batch_id, state, attempt, error, output_key, seed,
                    coalesce(spec->>'prompt', ''), worker, spec->'metadata' FROM renderq.jobs WHERE {filter} ORDER BY id"
        ))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let state: String = r.get(2);
                Ok(JobRow {
                    id: JobId(r.get(0)),
                    batch_id: r.get::<Option<Uuid>, _>(1).map(BatchId),
                    state: state.parse().map_err(DbError::Invalid)?,
                    attempt: r.get(3),
                    error: r.get(4),
                    output_key: r.get(5),
                    seed: r.get::<i64, _>(6) as u64,
                    prompt: r.get(7),
                    worker: r.get(8),
                    metadata: r.get(9),
                })
            })
            .collect()
    }
}

/// The `(id, batch_id)` at the start of a returned row.
fn job_and_batch(r: &sqlx::postgres::PgRow) -> (JobId, Option<BatchId>) {
    (JobId(r.get(0)), r.get::<Option<Uuid>, _>(1).map(BatchId))
}
