//! The workers (`renderq.workers`), the one leader, and what the reconciler reads. On SQLite.

use super::*;

#[async_trait]
impl Fleet for SqliteRecord {
    async fn backlog(&self, queue: &str) -> Result<Vec<(JobState, i64)>, DbError> {
        let sql = crate::db::rows::backlog_sql("jobs", "?1");
        let row = sqlx::query(&sql).bind(queue).fetch_one(&self.pool).await?;
        crate::db::rows::backlog(&row)
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

    async fn worker_stopped(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE workers SET stopped_at = ? WHERE id = ?")
            .bind(now_ms())
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
}
