//! Dispatch through the Postgres record, for deployments without Redis: the
//! `renderq.jobs` table is the queue. Work is leased with `FOR UPDATE SKIP LOCKED`, so
//! workers never wait on each other's rows; heartbeats push the lease forward; rows
//! whose lease ran out are taken over. Retries wait in the table (`retrying`, `run_at`),
//! so there is no delayed set: the worker asks the record for due retries. Higher `priority` is taken first; batches share each level fairly.
//!
//! The lease columns (`lease_owner`, `lease_until`) belong to this dispatcher alone:
//! the record never writes them, and a heartbeat extends only leases of running jobs.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{Delivery, Dispatch, DispatchError, Payload, sqlite::db_error};
use crate::job::JobId;

const POLL: Duration = Duration::from_millis(100);

/// Dispatch through `renderq.jobs` on Postgres, for deployments without Redis.
pub struct PgDispatch {
    pool: PgPool,
    queue: String,
    lease: Duration,
}

impl PgDispatch {
    /// Dispatches `queue` through the record's pool, with leases of `lease`.
    pub fn new(pool: PgPool, queue: &str, lease: Duration) -> Self {
        PgDispatch {
            pool,
            queue: queue.to_string(),
            lease,
        }
    }

    async fn lease(
        &self,
        consumer: &str,
        count: usize,
        takeover: bool,
    ) -> Result<Vec<Delivery>, DispatchError> {
        let sql = if takeover {
            "UPDATE renderq.jobs SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond'
             WHERE id IN (SELECT id FROM renderq.jobs WHERE queue = $3 AND state = 'running' AND lease_owner IS NOT NULL
                          AND lease_until < now() ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id"
        } else {
            // The highest priority with queued jobs is served first. Within it, an
            // equal share from each batch with jobs at that priority (the oldest `$5`)
            // and from jobs without a batch: a small batch is not starved by a big one.
            // Each active batch's highest queued priority (not leased to a worker
            // that is about to claim it) is one probe of its index.
            "WITH active AS (
                 SELECT b.id, b.created_at, top.priority FROM renderq.batches b
                 CROSS JOIN LATERAL (
                     SELECT q.priority FROM renderq.jobs q
                     WHERE q.batch_id = b.id AND q.state = 'queued'
                       AND (q.lease_until IS NULL OR q.lease_until < now())
                     ORDER BY q.priority DESC, q.id LIMIT 1) top
                 WHERE b.finished_at IS NULL AND b.queue = $3),
             loose_top AS (
                 SELECT max(priority) AS priority FROM renderq.jobs
                 WHERE batch_id IS NULL AND state = 'queued' AND queue = $3
                   AND (lease_until IS NULL OR lease_until < now())),
             level AS (
                 SELECT greatest((SELECT max(priority) FROM active),
                                 (SELECT priority FROM loose_top)) AS p),
             lanes AS (
                 SELECT a.id FROM active a WHERE a.priority = (SELECT p FROM level)
                 ORDER BY a.created_at LIMIT $5),
             share AS (SELECT ceil($4::float8 / greatest(1, (SELECT count(*) FROM lanes)
                 + (SELECT count(*) FROM loose_top WHERE priority = (SELECT p FROM level))))::bigint AS n),
             batched AS (
                 SELECT j.id FROM lanes l CROSS JOIN LATERAL (
                     SELECT id FROM renderq.jobs
                     WHERE batch_id = l.id AND state = 'queued' AND queue = $3
                       AND priority = (SELECT p FROM level)
                       AND (lease_until IS NULL OR lease_until < now())
                     ORDER BY priority DESC, id LIMIT (SELECT n FROM share) FOR UPDATE SKIP LOCKED) j
                 LIMIT $4),
             loose AS (
                 SELECT id FROM renderq.jobs
                 WHERE batch_id IS NULL AND state = 'queued' AND queue = $3
                   AND priority = (SELECT p FROM level)
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY id
                 LIMIT least((SELECT n FROM share), $4 - (SELECT count(*) FROM batched))
                 FOR UPDATE SKIP LOCKED)
             UPDATE renderq.jobs SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond'
             WHERE id IN (SELECT id FROM batched UNION ALL SELECT id FROM loose)
             RETURNING id"
        };
        let mut query = sqlx::query(sql)
            .bind(consumer)
            .bind(self.lease.as_millis() as f64)
            .bind(&self.queue)
            .bind(count as i64);
        if !takeover {
            query = query.bind(super::FAIR_LANES as i64);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                Delivery {
                    entry: id.to_string(),
                    payload: Payload::Id(JobId(id)),
                    takeover,
                }
            })
            .collect())
    }
}

fn ids_of(entries: &[String]) -> Vec<Uuid> {
    entries.iter().filter_map(|e| e.parse().ok()).collect()
}

#[async_trait]
impl Dispatch for PgDispatch {
    fn queue(&self) -> &str {
        &self.queue
    }

    async fn ping(&self) -> Result<(), DispatchError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn enqueue(&self, _ids: &[JobId]) -> Result<(), DispatchError> {
        Ok(()) // a committed `queued` row is already on the queue
    }

    async fn fetch(
        &self,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, DispatchError> {
        super::poll(block_ms, POLL, || self.lease(consumer, count, false)).await
    }

    async fn reclaim(
        &self,
        consumer: &str,
        _lease_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>, DispatchError> {
        self.lease(consumer, count, true).await
    }

    async fn heartbeat(
        &self,
        consumer: &str,
        entries: &[String],
    ) -> Result<Vec<String>, DispatchError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids_of(entries);
        sqlx::query(
            "UPDATE renderq.jobs SET lease_until = now() + $1 * interval '1 millisecond'
             WHERE id = ANY($2) AND lease_owner = $3 AND state = 'running'",
        )
        .bind(self.lease.as_millis() as f64)
        .bind(&ids)
        .bind(consumer)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        let rows = sqlx::query(
            // By id through the primary key, as in `db::postgres` (a state constant
            // could make the planner scan every running job on a stale estimate).
            "SELECT j.id FROM renderq.jobs j
             JOIN (SELECT u.id, 'running' AS from_state FROM unnest($1::uuid[]) AS u(id) OFFSET 0) AS c
               ON j.id = c.id AND j.state = c.from_state
             WHERE j.lease_owner IS DISTINCT FROM $2",
        )
        .bind(&ids)
        .bind(consumer)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .iter()
            .map(|r| r.get::<Uuid, _>(0).to_string())
            .collect())
    }

    async fn ack(&self, _entries: &[String]) -> Result<(), DispatchError> {
        Ok(())
    }

    async fn release(&self, _entry: &str, job: JobId) -> Result<(), DispatchError> {
        sqlx::query(
            "UPDATE renderq.jobs SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND state = 'queued'",
        )
        .bind(job.0)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn backlog(&self) -> Result<usize, DispatchError> {
        let n: i64 = sqlx::query_scalar(
            // Running jobs of this dispatch hold a lease: the running-jobs index serves them.
            "SELECT count(*) FROM renderq.jobs
             WHERE queue = $1 AND (state = 'queued' OR (state = 'running' AND lease_owner IS NOT NULL))",
        )
        .bind(&self.queue)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(n as usize)
    }
}
