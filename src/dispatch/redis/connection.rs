//! A connection to whichever Redis `REDIS_URL` names, that mends itself: the redis
//! crate's `ConnectionManager` for one server, its cluster client (which follows MOVED
//! replies and failovers) for a cluster, and for Sentinel a connection to the master
//! that is looked up again through the sentinels whenever it breaks or its server is no
//! longer master.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError,
    RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};

use super::target::Target;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the Redis a `Target` names; clones share it.
#[derive(Clone)]
pub enum Connection {
    /// One server, reconnected to by the redis crate.
    Single(ConnectionManager),
    /// The master the sentinels name now.
    Sentinel(SentinelConnection),
    /// A cluster: each command goes to the node of its keys' slot.
    Cluster(ClusterConnection),
}

impl Target {
    /// Connects, with replies awaited up to `response` (longer than any BLOCK sent).
    pub async fn connect(&self, response: Duration) -> RedisResult<Connection> {
        match self {
            Target::Single(info) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response)
                    .set_number_of_retries(3)
                    .set_max_delay(2_000);
                let client = Client::open(info.clone())?;
                Ok(Connection::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response)
                    .build()?;
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
            Target::Sentinel {
                sentinels,
                master_name,
                master,
            } => {
                let client = SentinelClient::build(
                    sentinels.clone(),
                    master_name.clone(),
                    Some(SentinelNodeConnectionInfo {
                        tls_mode: None,
                        redis_connection_info: Some(master.clone()),
                    }),
                    SentinelServerType::Master,
                )?;
                let link = SentinelConnection(Arc::new(SentinelLink {
                    client: tokio::sync::Mutex::new(client),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(CONNECT_TIMEOUT)
                        .set_response_timeout(response),
                    db: master.db,
                    current: Mutex::new((0, None)),
                }));
                // Fails now, as the others do, when no sentinel knows a master.
                link.0.current().await?;
                Ok(Connection::Sentinel(link))
            }
        }
    }
}

/// The hash slot of a key: CRC16 of its `{tag}` when it has one, else of the key.
fn slot(key: &str) -> u16 {
    let hashed = key
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag)
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed.as_bytes()) % 16_384
}

impl Connection {
    /// Runs a command that names no key (CLIENT ID, CLIENT UNBLOCK) on the server that
    /// holds `key`: on a cluster, the master of its slot; elsewhere the one server.
    pub async fn on_server_of<T: FromRedisValue>(
        &mut self,
        key: &str,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match self {
            Connection::Cluster(c) => {
                let route = Route::new(slot(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                T::from_owned_redis_value(c.route_command(cmd, routing).await?)
            }
            other => cmd.query_async(other).await,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Sentinel(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Sentinel(c) => c.0.db,
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The master a set of sentinels names, connected to on first use and after each
/// failure that says the connection or its server's role is gone.
#[derive(Clone)]
pub struct SentinelConnection(Arc<SentinelLink>);

struct SentinelLink {
    /// Asked (one caller at a time) for the master's address.
    client: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    db: i64,
    /// The connection in use and its generation, so that a failure seen on an older
    /// connection does not throw away a newer one.
    current: Mutex<(u64, Option<MultiplexedConnection>)>,
}

/// Whether an error means the master must be looked up again.
fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::ReadOnly | ErrorKind::MasterDown | ErrorKind::BusyLoadingError
        )
}

impl SentinelLink {
    async fn current(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let known = |link: &Self| {
            let current = link.current.lock().unwrap();
            current.1.clone().map(|c| (current.0, c))
        };
        if let Some(c) = known(self) {
            return Ok(c);
        }
        let mut client = self.client.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(c) = known(self) {
            return Ok(c);
        }
        let con = client
            .get_async_connection_with_config(&self.config)
            .await?;
        let mut current = self.current.lock().unwrap();
        current.0 += 1;
        current.1 = Some(con.clone());
        Ok((current.0, con))
    }

    fn check<T>(&self, generation: u64, reply: &RedisResult<T>) {
        if let Err(e) = reply
            && lost_master(e)
        {
            let mut current = self.current.lock().unwrap();
            if current.0 == generation {
                tracing::warn!("lost the Redis master ({e}); asking the sentinels again");
                current.1 = None;
            }
        }
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut con) = self.0.current().await?;
            let reply = con.req_packed_command(cmd).await;
            self.0.check(generation, &reply);
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut con) = self.0.current().await?;
            let reply = con.req_packed_commands(cmd, offset, count).await;
            self.0.check(generation, &reply);
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("renderq:{default}:stream"), slot("default"));
        assert_eq!(slot("a:{default}:b"), slot("c:{default}:d"));
        assert_eq!(slot("{}x"), slot("{}x"));
        assert_ne!(slot("{}x"), slot("x"));
    }
}
