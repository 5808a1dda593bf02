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

mod connection;
mod delayed;
mod doorbell;
mod queue;
mod repair;
mod target;

pub use connection::Connection;
pub use target::Target;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use redis::{
    AsyncCommands, Script,
    streams::{StreamAutoClaimReply, StreamId, StreamReadReply},
};

use super::{DelayedSet, Delivery, Dispatch, DispatchError, Due, Payload, Reconcile, Snapshot};
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
/// Most streams one blocking read waits on.
const BLOCK_STREAMS: usize = 64;
/// How long a connection that sends XREAD … BLOCK waits for a reply (the longest
/// BLOCK is 10 s, the doorbell's).
const BLOCKING_RESPONSE: Duration = Duration::from_secs(30);
/// Separates a batch stream's id from the entry id in a delivery's handle.
const HANDLE_SEP: char = '|';

/// Dispatch on Redis Streams: a stream per batch and priority, one consumer group.
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
    /// `renderq:{<queue>}:doorbell`, rung when a stream is opened (`doorbell.rs`).
    doorbell: String,
    bell: Arc<doorbell::Bell>,
    /// For the doorbell's own connections, made when a worker first reads.
    target: Target,
    /// Commands that answer at once.
    con: Connection,
    /// XREADGROUP … BLOCK holds its connection; it gets one of its own.
    blocking: Connection,
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

impl Drop for RedisDispatch {
    fn drop(&mut self) {
        self.bell.stop();
    }
}

impl From<redis::RedisError> for DispatchError {
    fn from(e: redis::RedisError) -> Self {
        DispatchError::Redis(e.to_string())
    }
}

/// The main stream of a queue, where raw producers XADD.
pub fn stream_key(queue: &str) -> String {
    format!("renderq:{{{queue}}}:stream")
}

/// The sorted set of a queue's retries waiting out their backoff.
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
    /// Connects to the Redis `url` names (one server, Sentinel or Cluster: `Target`)
    /// and loads the scripts for `queue`.
    pub async fn connect(url: &str, queue: &str) -> Result<Self, DispatchError> {
        let target = Target::parse(url)?;
        let con = target.connect(Duration::from_secs(10)).await?;
        let blocking = target.connect(BLOCKING_RESPONSE).await?;
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
            doorbell: format!("renderq:{{{queue}}}:doorbell"),
            bell: Arc::default(),
            target,
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
            .key(&self.doorbell)
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

    /// Listens for the doorbell from now on (once): a reader's blocking reads then wake
    /// for streams opened while they wait.
    fn listen(&self) {
        let target = self.target.clone();
        self.bell.start(&self.doorbell, async move {
            let listen = target.connect(BLOCKING_RESPONSE).await.ok()?;
            let unblock = target.connect(Duration::from_secs(10)).await.ok()?;
            Some((listen, unblock))
        });
    }

    /// The streams as last read, read again after a ring or when stale.
    async fn known_streams(&self) -> Result<Vec<String>, DispatchError> {
        if let Some(streams) = self.bell.streams() {
            return Ok(streams);
        }
        let rings = self.bell.rings();
        let streams = self.streams().await?;
        self.bell.keep_streams(streams.clone(), rings);
        Ok(streams)
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

    /// Waits up to `block_ms` for any known stream to get work, or for the doorbell;
    /// the reply is the first entries that arrived, a share per stream. `None`: a
    /// stream or the group is gone, and a fair read must come next.
    async fn read_blocking(
        &self,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Option<Vec<Delivery>>, DispatchError> {
        let mut streams = self.known_streams().await?;
        streams.truncate(BLOCK_STREAMS);
        let share = count.max(1).div_ceil(streams.len());
        let mut con = self.blocking.clone();
        if self.bell.blocked_client() == 0 {
            // On a cluster, the id on the server that holds the queue's streams.
            let id: Result<i64, redis::RedisError> = con
                .on_server_of(&self.stream, redis::cmd("CLIENT").arg("ID"))
                .await;
            match id {
                Ok(id) => self.bell.set_blocked_client(id),
                // A managed Redis that refuses CLIENT: no ring can end a wait, so
                // reads wait briefly and look for new streams each time, as a poll.
                Err(e) if e.code().is_some() => {
                    tracing::warn!("Redis refuses CLIENT ID ({e}): idle workers poll");
                    self.bell.set_blocked_client(doorbell::CANNOT_UNBLOCK);
                }
                Err(e) => return Err(e.into()),
            }
        }
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
            Ok(reply) => Ok(Some(self.deliveries(reply, false))),
            // A batch stream emptied and deleted meanwhile, or the group lost: the next
            // fair read makes good what is missing.
            Err(e) if e.code() == Some("NOGROUP") => {
                self.bell.forget_streams();
                Ok(None)
            }
            Err(e) => {
                // The connection may be a new one now, with another id.
                self.bell.set_blocked_client(0);
                Err(e.into())
            }
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
