//! Dispatch through the SQLite record (the embedded default): the `jobs` table is the
//! queue. Taking work is one atomic `UPDATE … RETURNING` that leases rows to this
//! worker; heartbeats push the lease forward; rows whose lease ran out are taken over.
//! Retries wait in the table (`state = 'retrying'`, `run_at`): this dispatcher has no
//! delayed set (the worker asks the record for due retries), and acknowledging needs
//! no work.
//!
//! The lease columns (`lease_owner`, `lease_until`) belong to this dispatcher alone:
//! the record never writes them, and a heartbeat extends only leases of running jobs.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Connection, Row, SqlitePool};

use super::{Delivery, Dispatch, DispatchError, Payload};
use crate::{db::sqlite::now_ms, job::JobId};

/// How often an idle worker looks for new rows.
const POLL: Duration = Duration::from_millis(100);

/// Dispatch through the `jobs` table of the SQLite record.
pub struct SqliteDispatch {
    pool: SqlitePool,
    queue: String,
    lease: Duration,
}

impl SqliteDispatch {
    /// Dispatches `queue` through the record's pool, with leases of `lease`.
    pub fn new(pool: SqlitePool, queue: &str, lease: Duration) -> Self {
        SqliteDispatch {
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
        let now = now_ms();
        let mut con = self.pool.acquire().await.map_err(db_error)?;
        let mut tx = con.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
        let picked: Vec<String> = if takeover {
            sqlx::query_scalar(
                "SELECT id FROM jobs WHERE queue = ?1 AND state = 'running' AND lease_until < ?2
                 ORDER BY id LIMIT ?3",
            )
            .bind(&self.queue)
            .bind(now)
            .bind(count as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?
        } else {
            self.pick_fairly(&mut tx, now, count).await?
        };
        let rows = sqlx::query(
            "UPDATE jobs SET lease_owner = ?1, lease_until = ?2
             WHERE id IN (SELECT value FROM json_each(?3)) RETURNING id",
        )
        .bind(consumer)
        .bind(now + self.lease.as_millis() as i64)
        .bind(serde_json::to_string(&picked).unwrap_or_default())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id: String = r.get(0);
                let job = id.parse().ok()?;
                Some(Delivery {
                    entry: id,
                    payload: Payload::Id(job),
                    takeover,
                })
            })
            .collect())
    }

    /// Up to `count` queued jobs of the highest priority waiting, an equal share from
    /// each batch with jobs at that priority (oldest batches first, at most
    /// `super::FAIR_LANES` of them) and from jobs without a batch.
    async fn pick_fairly(
        &self,
        tx: &mut sqlx::SqliteConnection,
        now: i64,
        count: usize,
    ) -> Result<Vec<String>, DispatchError> {
        // Each unfinished batch with queued jobs, and its highest queued priority.
        let active: Vec<(String, i32)> = sqlx::query_as(
            "SELECT id, top FROM (
                 SELECT b.id, b.created_at,
                        (SELECT j.priority FROM jobs j WHERE j.batch_id = b.id AND j.state = 'queued'
                           AND (j.lease_until IS NULL OR j.lease_until < ?2)
                         ORDER BY j.priority DESC, j.id LIMIT 1) AS top
                 FROM batches b WHERE b.finished_at IS NULL AND b.queue = ?1)
             WHERE top IS NOT NULL ORDER BY created_at",
        )
        .bind(&self.queue)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let loose: Option<i32> = sqlx::query_scalar(
            "SELECT max(priority) FROM jobs WHERE batch_id IS NULL AND state = 'queued' AND queue = ?1
               AND (lease_until IS NULL OR lease_until < ?2)",
        )
        .bind(&self.queue)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        // The highest priority with queued jobs is served first; batches share it.
        let level = active.iter().map(|a| a.1).chain(loose).max().unwrap_or(0);
        let mut lanes: Vec<Option<String>> = active
            .into_iter()
            .filter(|a| a.1 == level)
            .map(|a| Some(a.0))
            .take(super::FAIR_LANES)
            .collect();
        if loose == Some(level) || lanes.is_empty() {
            lanes.push(None);
        }
        let share = count.max(1).div_ceil(lanes.len()) as i64;
        let mut picked = Vec::with_capacity(count);
        for lane in lanes {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE batch_id IS ?1 AND state = 'queued' AND queue = ?2
                   AND (lease_until IS NULL OR lease_until < ?3) AND priority = ?5
                 ORDER BY id LIMIT ?4",
            )
            .bind(lane)
            .bind(&self.queue)
            .bind(now)
            .bind(share.min((count - picked.len()) as i64))
            .bind(level)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            picked.extend(ids);
            if picked.len() >= count {
                break;
            }
        }
        Ok(picked)
    }
}

pub(crate) fn db_error(e: sqlx::Error) -> DispatchError {
    DispatchError::Database(e.to_string())
}

#[async_trait]
impl Dispatch for SqliteDispatch {
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
        let until = now_ms() + self.lease.as_millis() as i64;
        let mut lost = Vec::new();
        for chunk in entries.chunks(500) {
            let ids = serde_json::to_string(chunk).unwrap_or_default();
            sqlx::query(
                "UPDATE jobs SET lease_until = ?1
                 WHERE id IN (SELECT value FROM json_each(?2)) AND lease_owner = ?3
                   AND state = 'running'",
            )
            .bind(until)
            .bind(&ids)
            .bind(consumer)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
            let rows = sqlx::query(
                "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?1))
                 AND state = 'running' AND lease_owner IS NOT ?2",
            )
            .bind(&ids)
            .bind(consumer)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            lost.extend(rows.iter().map(|r| r.get::<String, _>(0)));
        }
        Ok(lost)
    }

    async fn ack(&self, _entries: &[String]) -> Result<(), DispatchError> {
        Ok(()) // a finished row is no longer `queued`: nothing to remove
    }

    async fn release(&self, _entry: &str, job: JobId) -> Result<(), DispatchError> {
        sqlx::query("UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND state = 'queued'")
            .bind(job.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn backlog(&self) -> Result<usize, DispatchError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE queue = ? AND state IN ('queued', 'running')",
        )
        .bind(&self.queue)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(n as usize)
    }
}
