//! The workers (`renderq.workers`), the one leader, and what the reconciler reads. On Postgres.

use super::*;

#[async_trait]
impl Fleet for PgRecord {
    async fn backlog(&self, queue: &str) -> Result<Vec<(JobState, i64)>, DbError> {
        let sql = crate::db::rows::backlog_sql("renderq.jobs", "$1");
        let row = sqlx::query(&sql).bind(queue).fetch_one(&self.pool).await?;
        crate::db::rows::backlog(&row)
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
}
