//! The worker's side of a job: claims, outcomes, and the ways back to the queue, every write fenced by attempt. On SQLite.

use super::*;

#[async_trait]
impl Attempts for SqliteRecord {
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
                 RETURNING batch_id, attempt, seed, spec, created_at",
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
                    submitted_at: chrono::DateTime::from_timestamp_millis(row.get(4)),
                }),
                Err(e) => {
                    // Only this row fails; the rest of the chunk is claimed.
                    sqlx::query(
                        "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?
                         WHERE id = ? AND attempt = ? AND state = 'running'",
                    )
                    .bind(now)
                    .bind(crate::db::unreadable_spec(e))
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
                            state_of(&row, 0)?,
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
                out.push((*id, state_of(&row, 0)?, row.get(1)));
            }
        }
        Ok(out)
    }

    async fn due_retries(&self, queue: &str, limit: i64) -> Result<Vec<JobId>, DbError> {
        let rows = sqlx::query(
            "SELECT id FROM jobs WHERE queue = ? AND state = 'retrying' AND run_at <= ?
             ORDER BY run_at LIMIT ?",
        )
        .bind(queue)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(JobId(r.uuid(0)?))).collect()
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
                "UPDATE jobs SET state = 'queued', worker = NULL
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
                                  ELSE ? || ' during attempt ' || attempt || ' of ' || max_attempts END
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
}
