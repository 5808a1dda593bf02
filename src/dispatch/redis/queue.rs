//! The `Dispatch` operations on Redis Streams: enqueue into lanes, fair reads,
//! leases kept by heartbeats and taken over when they lapse, the delayed set.

use super::*;

#[async_trait]
impl Dispatch for RedisDispatch {
    fn queue(&self) -> &str {
        &self.queue
    }

    async fn ping(&self) -> Result<(), DispatchError> {
        let mut con = self.con.clone();
        redis::cmd("PING").query_async::<()>(&mut con).await?;
        Ok(())
    }

    async fn enqueue(&self, ids: &[JobId]) -> Result<(), DispatchError> {
        let mut con = self.con.clone();
        for chunk in ids.chunks(XADD_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("XADD")
                    .arg(&self.stream)
                    .arg("*")
                    .arg("id")
                    .arg(id.to_string())
                    .ignore();
            }
            pipe.query_async::<()>(&mut con).await?;
        }
        Ok(())
    }

    async fn enqueue_lane(
        &self,
        batch: Option<BatchId>,
        priority: i32,
        ids: &[JobId],
    ) -> Result<(), DispatchError> {
        if ids.is_empty() {
            return Ok(());
        }
        if batch.is_none() && priority == 0 {
            return self.enqueue(ids).await;
        }
        let mut con = self.con.clone();
        let stream = self.lane(batch, priority);
        // Loaded once, then every chunk's script call pipelined: each chunk is atomic
        // (stream, group and set membership made with its XADDs), and no chunk waits
        // for the one before.
        let hash = self
            .enqueue_batch
            .prepare_invoke()
            .load_async(&mut con)
            .await?;
        for calls in ids.chunks(XADD_CHUNK * PIPELINED_CHUNKS) {
            let mut pipe = redis::pipe();
            for chunk in calls.chunks(XADD_CHUNK) {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(&hash)
                    .arg(4)
                    .arg(&stream)
                    .arg(&self.batches)
                    .arg(&self.lanes)
                    .arg(&self.doorbell)
                    .arg(GROUP)
                    .arg(priority);
                for id in chunk {
                    cmd.arg(id.to_string());
                }
                cmd.ignore();
            }
            pipe.query_async::<()>(&mut con).await?;
        }
        Ok(())
    }

    async fn fetch(
        &self,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, DispatchError> {
        self.listen();
        let until = tokio::time::Instant::now() + Duration::from_millis(block_ms);
        // After a fetch that found nothing, with no ring since, wait at once: the
        // blocking read returns at once what came meanwhile to the streams it names.
        let mut fair = !self.bell.quiet();
        loop {
            if fair {
                let got = self.read_fair(consumer, count).await?;
                if !got.is_empty() {
                    self.bell.set_quiet(None);
                    return Ok(got);
                }
                // It deleted the streams it found empty: the list is read again.
                self.bell.forget_streams();
            }
            let rings = self.bell.rings();
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                // Quiet only with the main stream alone: a batch stream left empty is
                // deleted by the fair read the next fetch then makes.
                let alone = self.bell.streams().is_some_and(|s| s.len() == 1);
                self.bell.set_quiet(alone.then_some(rings));
                return Ok(Vec::new());
            }
            let mut block = (left.as_millis() as u64).max(1);
            if !self.bell.can_unblock() {
                block = block.min(doorbell::POLL_MS);
            }
            match self.read_blocking(consumer, count, block).await? {
                Some(got) if !got.is_empty() => {
                    self.bell.set_quiet(None);
                    return Ok(got);
                }
                // A stream was made or deleted meanwhile: read fairly again.
                Some(_) => fair = self.bell.rings() != rings,
                None => {
                    self.bell.set_quiet(None);
                    return Ok(Vec::new());
                }
            }
        }
    }

    async fn reclaim(
        &self,
        consumer: &str,
        lease_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>, DispatchError> {
        self.listen();
        let mut taken = Vec::new();
        let streams = self.known_streams().await?;
        for stream in &streams {
            if taken.len() >= count.max(1) {
                break;
            }
            let start = self.reclaim_cursor.lock().unwrap().get(stream).cloned();
            let start = start.unwrap_or_else(|| "0-0".into());
            let want = count.max(1) - taken.len();
            let reply: Result<StreamAutoClaimReply, DispatchError> = self
                .with_group(|| {
                    let mut con = self.con.clone();
                    let (stream, start) = (stream.clone(), start.clone());
                    async move {
                        redis::cmd("XAUTOCLAIM")
                            .arg(&stream)
                            .arg(GROUP)
                            .arg(consumer)
                            .arg(lease_ms)
                            .arg(start)
                            .arg("COUNT")
                            .arg(want)
                            .query_async(&mut con)
                            .await
                    }
                })
                .await;
            let reply = match reply {
                Ok(r) => r,
                // A batch stream deleted (emptied) since the set was read.
                Err(_) if *stream != self.stream => continue,
                Err(e) => return Err(e),
            };
            self.reclaim_cursor
                .lock()
                .unwrap()
                .insert(stream.clone(), reply.next_stream_id.clone());
            taken.extend(
                reply
                    .claimed
                    .into_iter()
                    .map(|e| self.delivery_from(stream, e, true)),
            );
        }
        // Forget the cursors of streams that are gone.
        self.reclaim_cursor
            .lock()
            .unwrap()
            .retain(|s, _| streams.contains(s));
        Ok(taken)
    }

    async fn heartbeat(
        &self,
        consumer: &str,
        entries: &[String],
    ) -> Result<Vec<String>, DispatchError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut lost = Vec::new();
        for (stream, ids) in self.by_stream(entries) {
            let batch = stream.strip_prefix(self.batch_prefix.as_str());
            let handle = |id: &str| match batch {
                Some(batch) => format!("{batch}{HANDLE_SEP}{id}"),
                None => id.to_string(),
            };
            for chunk in ids.chunks(500) {
                let mut inv = self.heartbeat.key(&stream);
                inv.arg(GROUP).arg(consumer).arg(chunk);
                let part: Vec<String> = match inv.invoke_async(&mut con).await {
                    Err(e) if e.code() == Some("NOGROUP") => {
                        chunk.iter().map(|s| s.to_string()).collect()
                    }
                    other => other?,
                };
                lost.extend(part.iter().map(|id| handle(id)));
            }
        }
        Ok(lost)
    }

    async fn ack(&self, entries: &[String]) -> Result<(), DispatchError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for (stream, ids) in self.by_stream(entries) {
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(&ids).ignore();
            pipe.cmd("XDEL").arg(&stream).arg(&ids).ignore();
        }
        match pipe.query_async::<()>(&mut con).await {
            // The group is gone (Redis lost its data): nothing is left to acknowledge.
            Err(e) if e.code() == Some("NOGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// The job goes back on the stream it came from: it keeps its batch's share and
    /// its priority.
    async fn release(&self, entry: &str, job: JobId) -> Result<(), DispatchError> {
        let (stream, _) = self.locate(entry);
        self.move_entry(entry, job, &stream).await
    }

    /// A raw producer's job that names a priority moves to the lane of raw jobs of
    /// that priority, `renderq:{<queue>}:batch:raw:p<priority>`, and is read from there
    /// in priority order.
    async fn to_lane(&self, entry: &str, job: JobId, priority: i32) -> Result<bool, DispatchError> {
        if priority == 0 {
            return Ok(false);
        }
        self.move_entry(entry, job, &self.lane(None, priority))
            .await?;
        Ok(true)
    }

    fn delayed(&self) -> Option<&dyn DelayedSet> {
        Some(self)
    }

    fn reconcile(&self) -> Option<&dyn Reconcile> {
        Some(self)
    }

    async fn backlog(&self) -> Result<usize, DispatchError> {
        let mut con = self.con.clone();
        let mut total = 0;
        for stream in self.streams().await? {
            total += con.xlen::<_, usize>(&stream).await?;
        }
        Ok(total)
    }

    async fn discard(&self) -> Result<(), DispatchError> {
        let mut keys = self.streams().await?;
        keys.extend([
            self.batches.clone(),
            self.lanes.clone(),
            self.retry_lanes.clone(),
            self.delayed.clone(),
            self.snapshot.clone(),
            self.doorbell.clone(),
        ]);
        let mut con = self.con.clone();
        con.del::<_, ()>(&keys).await?;
        Ok(())
    }
}
