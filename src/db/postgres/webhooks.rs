//! A batch's webhook and what became of its delivery. On Postgres.

use super::*;

#[async_trait]
impl Webhooks for PgRecord {
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
}
