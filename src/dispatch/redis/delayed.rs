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

    /// One read of the set's first entries tells both what is due and when the next
    /// is: an idle worker asks once, then sleeps until then.
    async fn due(&self, now_ms: i64, limit: usize) -> Result<Due, DispatchError> {
        let mut con = self.con.clone();
        let first: Vec<(String, f64)> = con
            .zrangebyscore_limit_withscores(&self.delayed, "-inf", "+inf", 0, limit as isize)
            .await?;
        let (due, later): (Vec<_>, Vec<_>) =
            first.into_iter().partition(|(_, at)| *at <= now_ms as f64);
        Ok(Due {
            ids: due.iter().filter_map(|(id, _)| id.parse().ok()).collect(),
            next_ms: later.first().map(|(_, at)| *at as i64),
        })
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
            .key(&self.doorbell)
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
