//! Writing batches and steering them: what producers and operators do. On SQLite.

use super::*;

#[async_trait]
impl Batches for SqliteRecord {
    async fn create_batch_for(
        &self,
        name: &str,
        queue: &str,
        jobs: &[NewJob],
        max_attempts: i32,
        once: Once<'_>,
    ) -> Result<Option<(BatchId, Vec<JobId>)>, DbError> {
        let batch = BatchId::generate();
        let now = now_ms();
        let ((schedule, at), (key, hash)) = (once.firing(), once.request());
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let made = sqlx::query(
            "INSERT INTO batches (id, name, queue, total, created_at, schedule, scheduled_for,
                                  idempotency_key, idempotency_hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(batch.to_string())
        .bind(name)
        .bind(queue)
        .bind(jobs.len() as i64)
        .bind(now)
        .bind(schedule)
        .bind(at.map(|t| t.timestamp_millis()))
        .bind(key)
        .bind(hash)
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

    async fn batch_for_key(&self, key: &str) -> Result<Option<(BatchId, i64, Vec<u8>)>, DbError> {
        let row = sqlx::query(
            "SELECT id, total, idempotency_hash FROM batches WHERE idempotency_key = ?",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((BatchId(r.uuid(0)?), r.int(1)?, r.try_get(2)?)))
            .transpose()
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

    async fn retry_failed(
        &self,
        batch: BatchId,
        extra_attempts: i32,
    ) -> Result<Vec<JobId>, DbError> {
        let mut con = self.pool.acquire().await?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'queued', error = NULL, finished_at = NULL, run_at = NULL,
                    max_attempts = attempt + ?2
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
}
