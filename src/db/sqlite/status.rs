//! Reading progress and jobs, as `renderq status`, the manifest and the tests do. On SQLite.

use super::*;

#[async_trait]
impl Status for SqliteRecord {
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
            "SELECT {PROGRESS} FROM batch_progress WHERE batch_id = ?"
        ))
        .bind(batch.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(progress).transpose()
    }

    async fn recent_batches(&self, limit: i64) -> Result<Vec<Progress>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {PROGRESS} FROM batch_progress
             WHERE batch_id IN (SELECT id FROM batches ORDER BY created_at DESC LIMIT ?)
             ORDER BY created_at DESC"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(progress).collect()
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
        rows.iter().map(failed_job).collect()
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
}
