//! Dispatch on Redis Streams: one stream and one consumer group per queue.
//!
//! Keys: `renderq:{<queue>}:stream` (the stream), `renderq:{<queue>}:delayed` (retries
//! waiting out their backoff, a sorted set scored by due time in Unix ms). The braces
//! keep a queue's keys in one Cluster slot, so the Lua scripts work on a cluster.
//! Finished entries are acknowledged and deleted at once: Redis holds only work in flight.

use std::{collections::HashSet, time::Duration};

use async_trait::async_trait;
use redis::{
    AsyncCommands, Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
    streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply},
};

use super::{Delivery, Dispatch, DispatchError, Payload};
use crate::job::JobId;

/// The consumer group every worker of a queue joins.
pub const GROUP: &str = "renderq";
/// Entries per XRANGE page when the reconciler reads the stream.
const HELD_PAGE: usize = 10_000;
/// Entries per pipelined XADD chunk at submit.
const XADD_CHUNK: usize = 2_000;

pub struct RedisDispatch {
    queue: String,
    stream: String,
    delayed: String,
    /// Commands that answer at once.
    con: ConnectionManager,
    /// XREADGROUP … BLOCK holds its connection; it gets one of its own.
    blocking: ConnectionManager,
    heartbeat: Script,
    move_due: Script,
    /// Where the next XAUTOCLAIM scan starts. XAUTOCLAIM examines a bounded window
    /// of the pending list per call; always starting at `0-0` would never reach a dead
    /// worker's entries behind a long list of live ones.
    reclaim_cursor: std::sync::Mutex<String>,
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
        let dispatch = RedisDispatch {
            queue: queue.to_string(),
            stream: stream_key(queue),
            delayed: delayed_key(queue),
            con,
            blocking,
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            move_due: Script::new(include_str!("lua/move_due.lua")),
            reclaim_cursor: std::sync::Mutex::new("0-0".into()),
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

    async fn fetch(
        &self,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, DispatchError> {
        let reply: Option<StreamReadReply> = self
            .with_group(|| {
                let mut con = self.blocking.clone();
                async move {
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(GROUP)
                        .arg(consumer)
                        .arg("COUNT")
                        .arg(count.max(1))
                        .arg("BLOCK")
                        .arg(block_ms)
                        .arg("STREAMS")
                        .arg(&self.stream)
                        .arg(">")
                        .query_async(&mut con)
                        .await
                }
            })
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| Self::delivery(e, false))
            .collect())
    }

    async fn reclaim(
        &self,
        consumer: &str,
        lease_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>, DispatchError> {
        let start = self.reclaim_cursor.lock().unwrap().clone();
        let reply: StreamAutoClaimReply = self
            .with_group(|| {
                let mut con = self.con.clone();
                let start = start.clone();
                async move {
                    redis::cmd("XAUTOCLAIM")
                        .arg(&self.stream)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(lease_ms)
                        .arg(start)
                        .arg("COUNT")
                        .arg(count.max(1))
                        .query_async(&mut con)
                        .await
                }
            })
            .await?;
        *self.reclaim_cursor.lock().unwrap() = reply.next_stream_id.clone();
        Ok(reply
            .claimed
            .into_iter()
            .map(|e| Self::delivery(e, true))
            .collect())
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
        for chunk in entries.chunks(500) {
            let mut inv = self.heartbeat.key(&self.stream);
            inv.arg(GROUP).arg(consumer).arg(chunk);
            let part: Vec<String> = match inv.invoke_async(&mut con).await {
                Err(e) if e.code() == Some("NOGROUP") => chunk.to_vec(),
                other => other?,
            };
            lost.extend(part);
        }
        Ok(lost)
    }

    async fn ack(&self, entries: &[String]) -> Result<(), DispatchError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(entries)
            .ignore();
        pipe.cmd("XDEL").arg(&self.stream).arg(entries).ignore();
        match pipe.query_async::<()>(&mut con).await {
            // The group is gone (Redis lost its data): nothing is left to acknowledge.
            Err(e) if e.code() == Some("NOGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    async fn defer(&self, entry: &str, job: JobId, due_ms: i64) -> Result<(), DispatchError> {
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&self.delayed, job.to_string(), due_ms)
            .ignore()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
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
        inv.key(&self.stream);
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
        con.zrem::<_, _, ()>(&self.delayed, members).await?;
        Ok(())
    }

    async fn release(&self, entry: &str, job: JobId) -> Result<(), DispatchError> {
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(entry)
            .ignore()
            .cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg("id")
            .arg(job.to_string())
            .ignore();
        pipe.query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// Scans the stream (submitted ids, and the ids of raw jobs) and the delayed set.
    async fn held(&self) -> Result<Option<HashSet<JobId>>, DispatchError> {
        let mut con = self.con.clone();
        let mut held = HashSet::new();
        let mut start = "-".to_string();
        loop {
            let page: StreamRangeReply = con
                .xrange_count(&self.stream, &start, "+", HELD_PAGE)
                .await?;
            let n = page.ids.len();
            for entry in page.ids {
                match Self::delivery(entry.clone(), false).payload {
                    Payload::Id(id) => {
                        held.insert(id);
                    }
                    Payload::Job(text) => {
                        let id = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|v| v.get("id")?.as_str()?.parse().ok())
                            .unwrap_or_else(|| JobId::for_raw_message(&self.queue, &entry.id));
                        held.insert(id);
                    }
                    Payload::Invalid(_) => {}
                }
                start = format!("({}", entry.id);
            }
            if n < HELD_PAGE {
                break;
            }
        }
        let delayed: Vec<String> = con.zrange(&self.delayed, 0, -1).await?;
        held.extend(delayed.iter().filter_map(|s| s.parse::<JobId>().ok()));
        Ok(Some(held))
    }

    async fn schedule(&self, job: JobId, due_ms: i64) -> Result<(), DispatchError> {
        let mut con = self.con.clone();
        con.zadd::<_, _, _, ()>(&self.delayed, job.to_string(), due_ms)
            .await?;
        Ok(())
    }

    async fn backlog(&self) -> Result<usize, DispatchError> {
        let mut con = self.con.clone();
        Ok(con.xlen(&self.stream).await?)
    }
}
