//! Writing batches and steering them: what producers and operators do. On Postgres.

use super::*;

#[async_trait]
impl Batches for PgRecord {
    /// Writes a batch and its jobs in one transaction. Returns the ids that were new:
    /// a job whose id exists already is not written again (nor dispatched again).
    async fn create_batch_for(
        &self,
        name: &str,
        queue: &str,
        jobs: &[NewJob],
        max_attempts: i32,
        once: Once<'_>,
    ) -> Result<Option<(BatchId, Vec<JobId>)>, DbError> {
        let batch = BatchId::generate();
        let ((schedule, at), (key, hash)) = (once.firing(), once.request());
        let mut tx = self.pool.begin().await?;
        // Without a conflict target, both unique constraints are arbiters: a firing's
        // (schedule, scheduled_for) and a request's idempotency key.
        let made = sqlx::query(
            "INSERT INTO renderq.batches
                 (id, name, queue, total, schedule, scheduled_for, idempotency_key, idempotency_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT DO NOTHING",
        )
        .bind(batch.0)
        .bind(name)
        .bind(queue)
        .bind(jobs.len() as i32)
        .bind(schedule)
        .bind(at)
        .bind(key)
        .bind(hash)
        .execute(&mut *tx)
        .await?;
        if made.rows_affected() == 0 {
            return Ok(None); // this firing's (or key's) batch exists: another call won
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

    async fn batch_for_key(&self, key: &str) -> Result<Option<(BatchId, i64, Vec<u8>)>, DbError> {
        let row = sqlx::query(
            "SELECT id, total, idempotency_hash FROM renderq.batches WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                BatchId(r.try_get(0)?),
                r.try_get::<i32, _>(1)? as i64,
                r.try_get(2)?,
            ))
        })
        .transpose()
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
    /// can see why; a job recorded already is left as it is.
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
}
