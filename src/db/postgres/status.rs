//! Reading progress and jobs, as `renderq status`, the manifest and the tests do. On Postgres.

use super::*;

#[async_trait]
impl Status for PgRecord {
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
        let row = sqlx::query(&format!(
            "SELECT {PROGRESS} FROM renderq.batch_progress WHERE batch_id = $1"
        ))
        .bind(batch.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(progress).transpose()
    }

    async fn recent_batches(&self, limit: i64) -> Result<Vec<Progress>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {PROGRESS} FROM renderq.batch_progress
             WHERE batch_id IN (SELECT id FROM renderq.batches ORDER BY created_at DESC LIMIT $1)
             ORDER BY created_at DESC"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(progress).collect()
    }

    async fn failures(&self, batch: BatchId, limit: i64) -> Result<Vec<FailedJob>, DbError> {
        let rows = sqlx::query(
            "SELECT id, attempt, error FROM renderq.jobs
             WHERE batch_id = $1 AND state = 'failed' ORDER BY finished_at LIMIT $2",
        )
        .bind(batch.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(failed_job).collect()
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

    async fn jobs_of_queue(&self, queue: &str) -> Result<Vec<JobRow>, DbError> {
        self.job_rows("queue = $1", queue).await
    }

    async fn jobs_of_batch(&self, batch: BatchId) -> Result<Vec<JobRow>, DbError> {
        self.job_rows("batch_id = $1", batch.0).await
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
}
