//! The reconciler's view of Redis: a snapshot of the job ids the streams hold, taken
//! a page at a time in a set on the server, so the leader's memory stays flat.

use super::*;

#[async_trait]
impl Reconcile for RedisDispatch {
    async fn begin_snapshot(&self) -> Result<Snapshot, DispatchError> {
        let mut con = self.con.clone();
        con.del::<_, ()>(&self.snapshot).await?;
        Ok(Snapshot {
            streams: self.streams().await?,
            after: "-".into(),
            ..Snapshot::default()
        })
    }

    async fn continue_snapshot(
        &self,
        snap: &mut Snapshot,
        pages: usize,
        page: usize,
    ) -> Result<bool, DispatchError> {
        let mut con = self.con.clone();
        for _ in 0..pages {
            let Some(stream) = snap.streams.get(snap.next) else {
                return Ok(true);
            };
            let (last, read): (String, usize) = self
                .snapshot_page
                .key(stream)
                .key(&self.snapshot)
                .arg(&snap.after)
                .arg(page)
                .arg(MAX_RAW_JOB_BYTES)
                .arg(SNAPSHOT_TTL_SECS)
                .invoke_async(&mut con)
                .await?;
            snap.pages += 1;
            snap.entries += read as u64;
            if read < page {
                snap.next += 1;
                snap.after = "-".into();
            } else {
                snap.after = last;
            }
        }
        Ok(snap.next >= snap.streams.len())
    }

    async fn missing(&self, ids: &[JobId]) -> Result<Vec<JobId>, DispatchError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let members: Vec<String> = ids.iter().map(JobId::to_string).collect();
        let mut con = self.con.clone();
        let (in_streams, delayed): (Vec<bool>, Vec<Option<f64>>) = redis::pipe()
            .cmd("SMISMEMBER")
            .arg(&self.snapshot)
            .arg(&members)
            .cmd("ZMSCORE")
            .arg(&self.delayed)
            .arg(&members)
            .query_async(&mut con)
            .await?;
        Ok(ids
            .iter()
            .zip(in_streams.iter().zip(&delayed))
            .filter(|(_, (streamed, delayed))| !**streamed && delayed.is_none())
            .map(|(id, _)| *id)
            .collect())
    }

    async fn end_snapshot(&self) -> Result<(), DispatchError> {
        let mut con = self.con.clone();
        con.del::<_, ()>(&self.snapshot).await?;
        Ok(())
    }

    async fn schedule(&self, job: JobId, due_ms: i64) -> Result<(), DispatchError> {
        let mut con = self.con.clone();
        con.zadd::<_, _, _, ()>(&self.delayed, job.to_string(), due_ms)
            .await?;
        Ok(())
    }
}
