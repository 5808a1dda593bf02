//! The worker's side of a job: claims, outcomes, and the ways back to the queue, every write fenced by attempt. On Postgres.

use super::*;

#[async_trait]
impl Attempts for PgRecord {
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
            for r in &rows {
                out.failed.push(job_and_batch(r)?);
            }
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
             RETURNING j.id, j.batch_id, j.attempt, j.seed, j.spec, j.created_at",
        )
        .bind(&ids)
        .bind(&takeover)
        .bind(worker)
        .fetch_all(&self.pool)
        .await?;
        let mut unreadable = Vec::new();
        for r in rows {
            let (id, batch_id) = job_and_batch(&r)?;
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
                    submitted_at: r.try_get(5).ok(),
                }),
                Err(sqlx::Error::ColumnDecode { source, .. }) => {
                    unreadable.push((id, batch_id, attempt, crate::db::unreadable_spec(source)))
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
            for r in &rows {
                out.failed.push(job_and_batch(r)?);
            }
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
        rows.iter()
            .map(|r| {
                let (id, batch) = job_and_batch(r)?;
                Ok((id, batch, r.get(2)))
            })
            .collect()
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
    async fn due_retries(&self, queue: &str, limit: i64) -> Result<Vec<JobId>, DbError> {
        let rows = sqlx::query(
            "SELECT id FROM renderq.jobs WHERE queue = $1 AND state = 'retrying' AND run_at <= now()
             ORDER BY run_at LIMIT $2",
        )
        .bind(queue)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
    }

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
            let (id, batch) = job_and_batch(r)?;
            if r.get::<&str, _>(2) == "queued" {
                out.requeued.push(id);
            } else {
                out.failed.push((id, batch));
            }
        }
        Ok(out)
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
}
