//! What `REDIS_URL` names: one server, a master that Redis Sentinel manages, or a
//! Redis Cluster.
//!
//! - `redis://[user:password@]host:port[/db]` (or `unix://`): one server;
//! - `redis+sentinel://[user:password@]host:port[,host:port…]/<master name>[/db]`: the
//!   sentinels to ask and the name they know the master by; the credentials are the
//!   master's, and `?sentinel_password=…` (with `sentinel_username=…`) those of the
//!   sentinels when they want any;
//! - `redis+cluster://[user:password@]host:port[,host:port…]`: seed nodes of a cluster
//!   (any few of its masters; the rest are found from them).

use redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::dispatch::DispatchError;

/// The Redis deployment a URL names.
#[derive(Debug, Clone)]
pub enum Target {
    /// One server.
    Single(ConnectionInfo),
    /// A master found through sentinels, found again after a failover.
    Sentinel {
        /// The sentinels to ask, with their own credentials.
        sentinels: Vec<ConnectionInfo>,
        /// The name the sentinels know the master by.
        master_name: String,
        /// Database and credentials on the master.
        master: RedisConnectionInfo,
    },
    /// A cluster, from its seed nodes.
    Cluster(Vec<ConnectionInfo>),
}

fn invalid(message: String) -> DispatchError {
    DispatchError::Redis(format!("REDIS_URL: {message}"))
}

/// `host:port` (port 6379 when left out; `[v6]:port` for IPv6) as the redis crate's
/// address.
fn node(spec: &str, auth: &RedisConnectionInfo) -> Result<ConnectionInfo, DispatchError> {
    if spec.is_empty() {
        return Err(invalid("an empty host in the list of nodes".into()));
    }
    let mut info = format!("redis://{spec}")
        .into_connection_info()
        .map_err(|e| invalid(format!("node `{spec}`: {e}")))?;
    info.redis = auth.clone();
    Ok(info)
}

/// The credentials of a percent-encoded `user:password`, read as the redis crate reads
/// them in a `redis://` URL (a bare `name` is a user).
fn credentials(userinfo: &str) -> Result<RedisConnectionInfo, DispatchError> {
    format!("redis://{userinfo}@localhost")
        .into_connection_info()
        .map(|info| info.redis)
        .map_err(|_| invalid("the user or password is not valid".into()))
}

impl Target {
    /// Reads a `REDIS_URL`; errors say what is wrong without repeating a password.
    pub fn parse(url: &str) -> Result<Target, DispatchError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected a URL such as redis://127.0.0.1:6379".into()))?;
        let kind = match scheme {
            "redis+sentinel" => "sentinel",
            "redis+cluster" => "cluster",
            _ => {
                let info = url
                    .into_connection_info()
                    .map_err(|e| invalid(e.to_string()))?;
                return Ok(Target::Single(info));
            }
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (mut auth, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (credentials(userinfo)?, hosts),
            None => (RedisConnectionInfo::default(), authority),
        };
        let nodes = |auth: &RedisConnectionInfo| {
            hosts
                .split(',')
                .map(|h| node(h.trim(), auth))
                .collect::<Result<Vec<_>, _>>()
        };
        if kind == "cluster" {
            if !path.trim_matches('/').is_empty() {
                return Err(invalid(
                    "a cluster has database 0 only: leave the path out".into(),
                ));
            }
            return Ok(Target::Cluster(nodes(&auth)?));
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master_name = segments
            .next()
            .ok_or_else(|| {
                invalid(
                    "name the master after the sentinels: redis+sentinel://host:26379/mymaster"
                        .into(),
                )
            })?
            .to_string();
        if let Some(db) = segments.next() {
            auth.db = db
                .parse()
                .map_err(|_| invalid(format!("database `{db}` is not a number")))?;
        }
        let (mut user, mut password) = ("", "");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sentinel_password" => password = value,
                "sentinel_username" => user = value,
                other => {
                    return Err(invalid(format!(
                        "unknown parameter `{other}` (known: sentinel_username, sentinel_password)"
                    )));
                }
            }
        }
        let sentinel_auth = credentials(&format!("{user}:{password}"))?;
        Ok(Target::Sentinel {
            sentinels: nodes(&sentinel_auth)?,
            master_name,
            master: auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(info: &ConnectionInfo) -> String {
        info.addr.to_string()
    }

    #[test]
    fn a_plain_url_is_one_server() {
        let Target::Single(info) = Target::parse("redis://:pw@10.0.0.1:6380/2").unwrap() else {
            panic!("not single");
        };
        assert_eq!(addr(&info), "10.0.0.1:6380");
        assert_eq!(info.redis.db, 2);
        assert_eq!(info.redis.password.as_deref(), Some("pw"));
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_both_credentials() {
        let t = Target::parse(
            "redis+sentinel://app:p%40ss@s1:26379,s2,[::1]:26380/mymaster/3?sentinel_password=sp",
        )
        .unwrap();
        let Target::Sentinel {
            sentinels,
            master_name,
            master,
        } = t
        else {
            panic!("not sentinel");
        };
        let addrs: Vec<String> = sentinels.iter().map(addr).collect();
        assert_eq!(addrs, ["s1:26379", "s2:6379", "::1:26380"]);
        assert_eq!(master_name, "mymaster");
        assert_eq!(master.db, 3);
        assert_eq!(master.username.as_deref(), Some("app"));
        assert_eq!(master.password.as_deref(), Some("p@ss"));
        assert!(
            sentinels
                .iter()
                .all(|s| s.redis.password.as_deref() == Some("sp"))
        );
        assert!(sentinels.iter().all(|s| s.redis.username.is_none()));
    }

    #[test]
    fn cluster_urls_list_seed_nodes_with_the_credentials() {
        let Target::Cluster(nodes) =
            Target::parse("redis+cluster://:secret@a:7000,b:7001").unwrap()
        else {
            panic!("not cluster");
        };
        let addrs: Vec<String> = nodes.iter().map(addr).collect();
        assert_eq!(addrs, ["a:7000", "b:7001"]);
        assert!(
            nodes
                .iter()
                .all(|n| n.redis.password.as_deref() == Some("secret"))
        );
        // Credentials read as in a one-server URL: a bare name is a user.
        let Target::Cluster(nodes) = Target::parse("redis+cluster://bob@a:7000").unwrap() else {
            panic!("not cluster");
        };
        let Target::Single(one) = Target::parse("redis://bob@a:7000").unwrap() else {
            panic!("not single");
        };
        assert_eq!(nodes[0].redis.username, one.redis.username);
        assert_eq!(nodes[0].redis.username.as_deref(), Some("bob"));
        assert_eq!(nodes[0].redis.password, None);
    }

    #[test]
    fn mistakes_are_named_and_passwords_are_not_repeated() {
        for (url, says) in [
            ("redis+sentinel://s1:26379", "name the master"),
            ("redis+sentinel://s1:26379/m/x", "database `x`"),
            ("redis+sentinel://s1/m?pool=3", "unknown parameter `pool`"),
            ("redis+cluster://a:7000/1", "database 0 only"),
            ("redis+cluster://:hunter2@a:7000,,b", "empty host"),
            ("127.0.0.1:6379", "expected a URL"),
        ] {
            let e = Target::parse(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
