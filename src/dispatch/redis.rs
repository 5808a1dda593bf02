//! Dispatch on Redis Streams, with one consumer group per stream.
//!
//! Keys (the braces keep a queue's keys in one Cluster slot, so the Lua scripts work
//! on a cluster):
//! - `renderq:{<queue>}:stream`: the main stream (raw producers, released jobs without
//!   a batch, jobs the reconciler repairs);
//! - `renderq:{<queue>}:batch:<batch id>`: one stream per submitted batch with work
//!   left, listed in the set `renderq:{<queue>}:batches`;
//! - `renderq:{<queue>}:batch:<batch id>:p<priority>`: a batch's jobs of a priority
//!   other than 0, listed in the sorted set `renderq:{<queue>}:lanes` by priority;
//! - `renderq:{<queue>}:delayed`: retries waiting out their backoff (a sorted set by
//!   due time in Unix ms), with `renderq:{<queue>}:retry-lanes` naming the stream each
//!   came from;
//! - `renderq:{<queue>}:reconcile:held`: while the reconciler runs a round, the job
//!   ids the streams hold.
//!
//! A read serves the highest priority with work first and shares each level between
//! its streams (`lua/fair_read.lua`), which is what keeps a small batch from waiting
//! behind a big one. Finished entries are acknowledged and deleted at once: Redis
//! holds only work in flight.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use async_trait::async_trait;
use redis::{
    AsyncCommands, Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::{StreamAutoClaimReply, StreamId, StreamReadReply},
};

use super::{Delivery, Dispatch, DispatchError, Payload, Reconcile, Snapshot};
use crate::job::{BatchId, JobId};

/// Functions shared by the scripts that add to a batch's stream.
const LANE_LUA: &str = include_str!("lua/lane.lua");

/// The consumer group every worker of a queue joins.
pub const GROUP: &str = "renderq";
/// Raw job messages longer than this are not decoded by the reconciler's snapshot
/// (the worker refuses them at claim: `Limits::max_line_bytes`).
const MAX_RAW_JOB_BYTES: usize = 64 * 1024;
/// A snapshot left by a leader that died mid-round expires on its own.
const SNAPSHOT_TTL_SECS: u64 = 600;
/// Entries per pipelined XADD chunk (or script call) at submit.
const XADD_CHUNK: usize = 2_000;
/// Script calls per pipeline at submit.
const PIPELINED_CHUNKS: usize = 10;
/// Longest single blocking read. A blocking XREADGROUP only wakes for the streams it
/// names, so an idle worker looks again this often for batches submitted meanwhile.
const BLOCK_SLICE_MS: u64 = 100;
/// Most streams one blocking read waits on.
const BLOCK_STREAMS: usize = 64;
/// Separates a batch stream's id from the entry id in a delivery's handle.
const HANDLE_SEP: char = '|';

pub struct RedisDispatch {
    queue: String,
    stream: String,
    /// `renderq:{<queue>}:batch:`, which a batch stream's key starts with.
    batch_prefix: String,
    batches: String,
    /// `renderq:{<queue>}:lanes`: batch streams of a priority other than 0, scored by it.
    lanes: String,
    delayed: String,
    /// `renderq:{<queue>}:retry-lanes`: the batch stream each deferred job came from.
    retry_lanes: String,
    /// The reconciler's snapshot of the job ids the streams hold (a set).
    snapshot: String,
    /// Commands that answer at once.
    con: ConnectionManager,
    /// XREADGROUP … BLOCK holds its connection; it gets one of its own.
    blocking: ConnectionManager,
    heartbeat: Script,
    move_due: Script,
    fair_read: Script,
    enqueue_batch: Script,
    snapshot_page: Script,
    release: Script,
    /// Which batch stream a read starts with, turned each read.
    rotation: AtomicU64,
    /// Where the next XAUTOCLAIM scan of each stream starts. XAUTOCLAIM examines a
    /// bounded window of the pending list per call; always starting at `0-0` would
    /// never reach a dead worker's entries behind a long list of live ones.
    reclaim_cursor: std::sync::Mutex<HashMap<String, String>>,
}

impl From<redis::RedisError> for DispatchError {
    fn from(e: redis::RedisError) -> Self {
        DispatchError::Redis(e.to_string())
    }
}

pub fn stream_key(queue: &str) -> String {
    format!("renderq:{{{queue}}}:stream")
}

pub fn delayed_key(queue: &str) -> String {
    format!("renderq:{{{queue}}}:delayed")
}

/// The set of a queue's batch streams.
pub fn batches_key(queue: &str) -> String {
    format!("renderq:{{{queue}}}:batches")
}

/// The stream of one batch's jobs (of priority 0).
pub fn batch_stream_key(queue: &str, batch: BatchId) -> String {
    format!("renderq:{{{queue}}}:batch:{batch}")
}

/// The stream of one batch's jobs of `priority`: `…:batch:<id>` for 0, else
/// `…:batch:<id>:p<priority>`.
pub fn lane_stream_key(queue: &str, batch: BatchId, priority: i32) -> String {
    match priority {
        0 => batch_stream_key(queue, batch),
        p => format!("{}:p{p}", batch_stream_key(queue, batch)),
    }
}

impl RedisDispatch {
    pub async fn connect(url: &str, queue: &str) -> Result<Self, DispatchError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(10))
            .set_number_of_retries(3)
            .set_max_delay(2_000);
        let con = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        let blocking = client
            .get_connection_manager_with_config(
                config.set_response_timeout(Duration::from_secs(30)),
            )
            .await?;
        // The scripts that add to a batch's stream share `lane.lua`'s functions.
        let with_lanes = |script: &str| Script::new(&format!("{LANE_LUA}{script}"));
        let dispatch = RedisDispatch {
            queue: queue.to_string(),
            stream: stream_key(queue),
            batch_prefix: format!("renderq:{{{queue}}}:batch:"),
            batches: batches_key(queue),
            lanes: format!("renderq:{{{queue}}}:lanes"),
            delayed: delayed_key(queue),
            retry_lanes: format!("renderq:{{{queue}}}:retry-lanes"),
            snapshot: format!("renderq:{{{queue}}}:reconcile:held"),
            con,
            blocking,
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            move_due: with_lanes(include_str!("lua/move_due.lua")),
            fair_read: Script::new(include_str!("lua/fair_read.lua")),
            enqueue_batch: with_lanes(include_str!("lua/enqueue_batch.lua")),
            snapshot_page: Script::new(include_str!("lua/snapshot_page.lua")),
            release: with_lanes(include_str!("lua/release.lua")),
            rotation: AtomicU64::new(0),
            reclaim_cursor: std::sync::Mutex::new(HashMap::new()),
        };
        dispatch.ensure_group().await?;
        Ok(dispatch)
    }

    /// Creates the stream and the group when missing (first start, or after Redis lost
    /// its data). Reading from `0` means entries XADDed before the group are served.
    pub async fn ensure_group(&self) -> Result<(), DispatchError> {
        let mut con = self.con.clone();
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// A delivery from `stream`; its handle names the stream unless it is the main one.
    fn delivery_from(&self, stream: &str, entry: StreamId, takeover: bool) -> Delivery {
        let mut d = Self::delivery(entry, takeover);
        if let Some(batch) = stream.strip_prefix(self.batch_prefix.as_str()) {
            d.entry = format!("{batch}{HANDLE_SEP}{}", d.entry);
        }
        d
    }

    /// The stream key and the entry id behind a delivery's handle.
    fn locate<'a>(&self, handle: &'a str) -> (String, &'a str) {
        match handle.split_once(HANDLE_SEP) {
            Some((batch, id)) => (format!("{}{batch}", self.batch_prefix), id),
            None => (self.stream.clone(), handle),
        }
    }

    /// The stream of a batch's (or, without one, raw producers') jobs of `priority`.
    fn lane(&self, batch: Option<BatchId>, priority: i32) -> String {
        match batch {
            Some(b) => lane_stream_key(&self.queue, b, priority),
            None => format!("{}raw:p{priority}", self.batch_prefix),
        }
    }

    /// Acknowledges and deletes a delivery and adds its job to `to` (see `release.lua`).
    async fn move_entry(&self, handle: &str, job: JobId, to: &str) -> Result<(), DispatchError> {
        let (stream, entry) = self.locate(handle);
        let mut con = self.con.clone();
        self.release
            .key(&stream)
            .key(to)
            .key(&self.stream)
            .key(&self.batches)
            .key(&self.lanes)
            .arg(GROUP)
            .arg(entry)
            .arg(job.to_string())
            .invoke_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// Handles grouped by their stream.
    fn by_stream<'a>(&self, handles: &'a [String]) -> BTreeMap<String, Vec<&'a str>> {
        let mut map: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for h in handles {
            let (stream, id) = self.locate(h);
            map.entry(stream).or_default().push(id);
        }
        map
    }

    /// The main stream, then every batch stream.
    async fn streams(&self) -> Result<Vec<String>, DispatchError> {
        let mut con = self.con.clone();
        let mut batches: Vec<String> = con.smembers(&self.batches).await?;
        batches.sort();
        let lanes: Vec<String> = con.zrevrange(&self.lanes, 0, -1).await?;
        let mut all = lanes;
        all.push(self.stream.clone());
        all.extend(batches);
        Ok(all)
    }

    /// One non-blocking read, shared fairly between the streams.
    async fn read_fair(
        &self,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, DispatchError> {
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        let mut con = self.con.clone();
        let reply: Option<StreamReadReply> = self
            .fair_read
            .key(&self.stream)
            .key(&self.batches)
            .key(&self.lanes)
            .arg(GROUP)
            .arg(consumer)
            .arg(count.max(1))
            .arg(rotation)
            .invoke_async(&mut con)
            .await?;
        Ok(self.deliveries(reply, false))
    }

    fn deliveries(&self, reply: Option<StreamReadReply>, takeover: bool) -> Vec<Delivery> {
        let mut out = Vec::new();
        for k in reply.into_iter().flat_map(|r| r.keys) {
            out.extend(
                k.ids
                    .into_iter()
                    .map(|e| self.delivery_from(&k.key, e, takeover)),
            );
        }
        out
    }

    /// Waits up to `block_ms` for any stream to get work; the reply is the first
    /// entries that arrived, a share per stream.
    async fn read_blocking(
        &self,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, DispatchError> {
        let mut streams = self.streams().await?;
        streams.truncate(BLOCK_STREAMS);
        let share = count.max(1).div_ceil(streams.len());
        let mut con = self.blocking.clone();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(share)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&streams);
        for _ in &streams {
            cmd.arg(">");
        }
        match cmd.query_async::<Option<StreamReadReply>>(&mut con).await {
            Ok(reply) => Ok(self.deliveries(reply, false)),
            // A batch stream emptied and deleted meanwhile, or the group lost: the next
            // fair read makes good what is missing.
            Err(e) if e.code() == Some("NOGROUP") => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn delivery(entry: StreamId, takeover: bool) -> Delivery {
        let payload = if let Some(text) = entry.get::<String>("job") {
            Payload::Job(text)
        } else if let Some(id) = entry.get::<String>("id") {
            match id.parse() {
                Ok(id) => Payload::Id(id),
                Err(e) => Payload::Invalid(format!("field `id` is not a UUID: {e}")),
            }
        } else {
            let fields: Vec<&String> = entry.map.keys().collect();
            Payload::Invalid(format!(
                "message has no `job` field (fields: {fields:?}); send XADD <stream> * job '<job JSON>'"
            ))
        };
        Delivery {
            entry: entry.id,
            payload,
            takeover,
        }
    }

    /// Runs a command; when Redis forgot the group (FLUSHALL, restart without AOF),
    /// makes it again and runs the command once more.
    async fn with_group<T, F, Fut>(&self, f: F) -> Result<T, DispatchError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        match f().await {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                Ok(f().await?)
            }
            other => Ok(other?),
        }
    }
}

#[async_trait]
impl Dispatch for RedisDispatch {
    fn queue(&self) -> &str {
        &self.queue
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
                    .arg(3)
                    .arg(&stream)
                    .arg(&self.batches)
                    .arg(&self.lanes)
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
        let until = tokio::time::Instant::now() + Duration::from_millis(block_ms);
        loop {
            let got = self.read_fair(consumer, count).await?;
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            let slice = (left.as_millis() as u64).clamp(1, BLOCK_SLICE_MS);
            let got = self.read_blocking(consumer, count, slice).await?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
    }

    async fn reclaim(
        &self,
        consumer: &str,
        lease_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>, DispatchError> {
        let mut taken = Vec::new();
        let streams = self.streams().await?;
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
        ]);
        let mut con = self.con.clone();
        con.del::<_, ()>(&keys).await?;
        Ok(())
    }
}

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
