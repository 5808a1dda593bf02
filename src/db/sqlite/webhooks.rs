//! A batch's webhook and what became of its delivery. On SQLite.

use super::*;

#[async_trait]
impl Webhooks for SqliteRecord {
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
}
