//! Retries waiting out their backoff in `renderq:{<queue>}:delayed`, a sorted set by
//! due time, with `renderq:{<queue>}:retry-lanes` naming the stream each returns to.

use super::*;

#[async_trait]
impl DelayedSet for RedisDispatch {
    async fn defer(&self, entry: &str, job: JobId, due_ms: i64) -> Result<(), DispatchError> {
        let (stream, entry) = self.locate(entry);
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&self.delayed, job.to_string(), due_ms)
            .ignore();
        if stream != self.stream {
            // When it is due, the job goes back to its batch's stream: it keeps its
            // share and its priority.
            pipe.hset(&self.retry_lanes, job.to_string(), &stream)
                .ignore();
        }
        pipe.cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(entry)
            .ignore();
        pipe.query_async::<()>(&mut con).await?;
        Ok(())
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<JobId>, DispatchError> {
        let mut con = self.con.clone();
        let ids: Vec<String> = con
            .zrangebyscore_limit(&self.delayed, "-inf", now_ms, 0, limit as isize)
            .await?;
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }

    async fn move_due(&self, ids: &[JobId]) -> Result<usize, DispatchError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut con = self.con.clone();
        let mut inv = self.move_due.key(&self.delayed);
        inv.key(&self.stream)
            .key(&self.retry_lanes)
            .key(&self.batches)
            .key(&self.lanes)
            .arg(GROUP);
        for id in ids {
            inv.arg(id.to_string());
        }
        Ok(inv.invoke_async(&mut con).await?)
    }

    async fn drop_due(&self, ids: &[JobId]) -> Result<(), DispatchError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        let members: Vec<String> = ids.iter().map(JobId::to_string).collect();
        redis::pipe()
            .zrem(&self.delayed, &members)
            .ignore()
            .hdel(&self.retry_lanes, &members)
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }
}
