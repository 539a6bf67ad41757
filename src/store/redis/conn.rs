//! The store's connection: a standalone server (connection manager) or a Redis Cluster (the redis
//! crate's async cluster client, which follows `MOVED` / `ASK`, refreshes the topology and
//! reconnects by itself), plus the one call shape both share: a script call on one slot,
//! optionally followed by `WAIT` on the same connection.

use super::map_error;
use crate::store::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, ErrorKind, RedisFuture, RedisResult, Script, ServerErrorKind, Value};
use std::time::Duration;

/// One connection (cheap to clone: clones share the sockets).
#[derive(Clone)]
pub(crate) enum Conn {
    /// A standalone server (or a primary with replicas, without Cluster).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether this is a Cluster connection (batches must then stay within one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// The addresses (`host:port`) of the current primaries; one entry, `""`, for a standalone
    /// server (its own connection).
    pub(crate) async fn primaries(&mut self) -> RedisResult<Vec<String>> {
        match self {
            Conn::Single(_) => Ok(vec![String::new()]),
            Conn::Cluster(c) => {
                // With no response policy the client answers a map from node address to reply.
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = c.route_command(redis::cmd("PING"), routing).await?;
                let mut nodes: Vec<String> = match reply {
                    Value::Map(pairs) => pairs
                        .into_iter()
                        .filter_map(|(addr, _)| match addr {
                            Value::BulkString(b) => String::from_utf8(b).ok(),
                            Value::SimpleString(s) => Some(s),
                            _ => None,
                        })
                        .collect(),
                    other => {
                        return Err(redis::RedisError::from((
                            ErrorKind::Client,
                            "unexpected reply listing the primaries",
                            format!("{other:?}"),
                        )))
                    }
                };
                // Sorted, so scan cursors (an index into this list) mean the same node next time.
                nodes.sort();
                Ok(nodes)
            }
        }
    }

    /// Runs `cmd` on the primary at `addr` (from [`Self::primaries`]); on a standalone server, on
    /// the server.
    pub(crate) async fn on_node(&mut self, addr: &str, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let (host, port) = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| {
                        redis::RedisError::from((
                            ErrorKind::Client,
                            "bad node address",
                            addr.to_string(),
                        ))
                    })?;
                let routing =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                c.route_command(cmd, routing).await
            }
        }
    }

    /// Runs `cmd` on every primary; the replies in [`Self::primaries`] order with their address.
    pub(crate) async fn on_all_primaries(&mut self, cmd: Cmd) -> RedisResult<Vec<(String, Value)>> {
        match self {
            Conn::Single(c) => Ok(vec![(String::new(), cmd.query_async(c).await?)]),
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    None::<ResponsePolicy>,
                ));
                let mut out: Vec<(String, Value)> = match c.route_command(cmd, routing).await? {
                    Value::Map(pairs) => pairs
                        .into_iter()
                        .filter_map(|(addr, v)| match addr {
                            Value::BulkString(b) => Some((String::from_utf8(b).ok()?, v)),
                            Value::SimpleString(s) => Some((s, v)),
                            _ => None,
                        })
                        .collect(),
                    other => vec![(String::new(), other)],
                };
                out.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(out)
            }
        }
    }
}

/// The Cluster route (slot on its primary) of a Redis key: keys with equal routes may share one
/// script call.
pub(crate) fn route(key: &str) -> Route {
    Route::with_key(key.as_bytes(), SlotAddr::Master)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Replication a write must reach before `claim` / `complete` report it (see
/// [`RedisStoreBuilder::replicas`](super::RedisStoreBuilder::replicas)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Durability {
    /// Replicas that must acknowledge the write.
    pub(crate) replicas: u32,
    /// How long `WAIT` may block.
    pub(crate) timeout: Duration,
}

/// Sends `cmd` on one slot; with `durability`, `WAIT` follows in the same pipeline, so it runs on
/// the same node and connection right after `cmd`. Answers `cmd`'s reply and, with `durability`,
/// how many replicas acknowledged (see [`durable`]).
pub(crate) async fn query(
    conn: &Conn,
    cmd: &Cmd,
    durability: Option<Durability>,
) -> RedisResult<(Value, Option<i64>)> {
    let mut conn = conn.clone();
    match durability {
        None => cmd.query_async::<Value>(&mut conn).await.map(|v| (v, None)),
        Some(d) => {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd.clone())
                .cmd("WAIT")
                .arg(d.replicas)
                .arg(
                    u64::try_from(d.timeout.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
            let (v, acked): (Value, i64) = pipe.query_async(&mut conn).await?;
            Ok((v, Some(acked)))
        }
    }
}

/// Fails `op` ([`StoreError::Unavailable`]) unless the replicas `WAIT` counted (`acked`, from
/// [`query`]) meet `durability`.
pub(crate) fn durable(
    op: &'static str,
    durability: Option<Durability>,
    acked: Option<i64>,
) -> Result<(), StoreError> {
    if let (Some(d), Some(acked)) = (durability, acked) {
        if acked < i64::from(d.replicas) {
            return Err(StoreError::unavailable(
                op,
                format!(
                    "write not durable: WAIT {} {}ms answered {acked} replica(s); not counting it \
                     as done",
                    d.replicas,
                    d.timeout.as_millis()
                ),
            ));
        }
    }
    Ok(())
}

/// Sends one `EVALSHA` (`cmd`, already built for `script`) through [`query`], so with
/// `durability` the call fails ([`StoreError::Unavailable`]) unless enough replicas acknowledged.
/// On `NOSCRIPT` (server restart, failover to a replica, new node, `SCRIPT FLUSH`) the script is
/// loaded (on every node, in a Cluster) and the call repeated once.
pub(crate) async fn eval(
    conn: &mut Conn,
    op: &'static str,
    script: &Script,
    cmd: &Cmd,
    durability: Option<Durability>,
    timeout: Duration,
) -> Result<Value, StoreError> {
    let result = match query(conn, cmd, durability).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script
                .load_async(conn)
                .await
                .map_err(|e| map_error(op, e, timeout))?;
            query(conn, cmd, durability).await
        }
        other => other,
    };
    let (value, acked) = result.map_err(|e| map_error(op, e, timeout))?;
    durable(op, durability, acked)?;
    Ok(value)
}
