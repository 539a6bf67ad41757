//! [`RedisStoreBuilder`]: URL, key prefix, outcome limit, timeouts and batching.

use super::batch::{Batcher, Worker};
use super::clock::{self, ServerClock};
use super::conn::{Conn, Durability};
use super::keys::KeyLayout;
use super::scripts::{Scripts, CLAIM_ARGS, CLAIM_REPLY, COMPLETE_ARGS, COMPLETE_REPLY};
use super::{Inner, RedisStore};
use crate::store::{StoreError, DEFAULT_MAX_OUTCOME_BYTES};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "idemq";
/// Default bound on one store operation (including waiting for a reconnect).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on one connection attempt.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default largest number of concurrent `claim` (or `complete`) calls sent as one script call.
pub const DEFAULT_MAX_BATCH: usize = 64;
/// Default bound on one `WAIT` for replicas (only with [`RedisStoreBuilder::replicas`]).
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_millis(500);

/// Configures and opens a [`RedisStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), idemq::StoreError> {
/// use idemq::store::redis::RedisStore;
/// use std::time::Duration;
///
/// let store = RedisStore::builder("rediss://app:secret@redis.internal:6380/0")
///     .prefix("payments-idemq")
///     .max_outcome_bytes(64 * 1024)
///     .timeout(Duration::from_millis(500))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    max_outcome_bytes: usize,
    timeout: Duration,
    connect_timeout: Duration,
    max_batch: usize,
    replicas: u32,
    replica_timeout: Duration,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("max_outcome_bytes", &self.max_outcome_bytes)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_batch", &self.max_batch)
            .field("replicas", &self.replicas)
            .field("replica_timeout", &self.replica_timeout)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// A builder for `url`: `redis://[user:password@]host[:port][/db]` or `rediss://…` for TLS;
    /// for a Redis Cluster, `redis-cluster://[user:password@]host:port[,host:port…]` (or
    /// `rediss-cluster://…` for TLS), naming one or more nodes to discover the cluster from.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_PREFIX.into(),
            max_outcome_bytes: DEFAULT_MAX_OUTCOME_BYTES,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_batch: DEFAULT_MAX_BATCH,
            replicas: 0,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
        }
    }

    /// A builder for `url` that first takes idemq's own query parameters out of it, as
    /// [`store::connect`](crate::store::connect) does: `prefix=NAME` sets [`prefix`](Self::prefix)
    /// and `batch=N` sets [`max_batch`](Self::max_batch), e.g.
    /// `redis://host:6379/0?prefix=payments&batch=1`; `replicas=N` sets
    /// [`replicas`](Self::replicas) and `replica_timeout_ms=T` its bound. Other parameters stay in
    /// the URL.
    ///
    /// Fails with [`StoreError::InvalidConfig`] when `batch` is not a positive integer or
    /// `replicas` / `replica_timeout_ms` are not non-negative integers.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let (url, params) = super::split_params(url);
        let mut builder = Self::new(url);
        if let Some(prefix) = params.prefix {
            builder = builder.prefix(prefix);
        }
        if let Some(batch) = params.batch {
            match batch.parse::<usize>() {
                Ok(n) if n > 0 => builder = builder.max_batch(n),
                _ => {
                    return Err(StoreError::InvalidConfig(format!(
                        "Redis URL parameter batch={batch:?}: expected a positive integer"
                    )))
                }
            }
        }
        let number = |name: &str, value: &str| {
            value.parse::<u32>().map_err(|_| {
                StoreError::InvalidConfig(format!(
                    "Redis URL parameter {name}={value:?}: expected a non-negative integer"
                ))
            })
        };
        if let Some(n) = params.replicas {
            builder = builder.replicas(number("replicas", &n)?);
        }
        if let Some(t) = params.replica_timeout_ms {
            let ms = number("replica_timeout_ms", &t)?;
            builder = builder.replica_timeout(Duration::from_millis(u64::from(ms)));
        }
        Ok(builder)
    }

    /// Durability across failover: after each `claim` and `complete` script call, `WAIT` until
    /// `n` replicas of the primary that ran it have the write (default 0: no wait). Redis
    /// replicates asynchronously, so without it a primary that dies right after answering can
    /// lose the write and the promoted replica lets the key run again. When fewer than `n`
    /// replicas acknowledge within [`replica_timeout`](Self::replica_timeout), the operation fails
    /// with [`StoreError::Unavailable`] (the write may be on the primary; the engine treats it as
    /// an outage and does not ack). Costs one `WAIT` in the same round trip (batched calls share
    /// it) plus the replication delay. Keep [`timeout`](Self::timeout) above the replica timeout.
    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = n;
        self
    }

    /// Bound on one `WAIT` for [`replicas`](Self::replicas) (default 500 ms).
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// First part of every key (default `idemq`); must not contain `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Largest outcome body `complete` accepts (default 1 MiB).
    pub fn max_outcome_bytes(mut self, limit: usize) -> Self {
        self.max_outcome_bytes = limit;
        self
    }

    /// Bound on one operation, including any wait for a reconnect (default 2 s). Past it the
    /// operation fails with [`StoreError::Timeout`]; it may still have been applied.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound on one connection attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Group commit: up to `n` concurrent `claim` calls (and, separately, `complete` calls) of
    /// this store and its clones travel as one script call (default [`DEFAULT_MAX_BATCH`], 64).
    /// A call is sent as soon as the previous batch of its kind has been answered, together with
    /// whatever calls queued meanwhile; nothing waits for a timer, so a lone call is not delayed.
    /// Each call keeps its own result, errors and [`timeout`](Self::timeout). `1` turns batching
    /// off: one command per operation (an `EVALSHA`, or the plain claim's `SET … NX GET`, see
    /// the [module docs](super)), sent without queueing. `0` is rejected by
    /// [`build`](Self::build).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Connects, loads the scripts and returns the store.
    ///
    /// Fails with [`StoreError::InvalidConfig`] for a bad URL or prefix and with
    /// [`StoreError::Unavailable`] / [`StoreError::Timeout`] when Redis cannot be reached.
    pub async fn build(self) -> Result<RedisStore, StoreError> {
        let layout = KeyLayout::new(&self.prefix).map_err(StoreError::InvalidConfig)?;
        if self.max_batch == 0 {
            return Err(StoreError::InvalidConfig(
                "max_batch must be at least 1 (1 turns batching off)".into(),
            ));
        }
        let scripts = Scripts::new();
        let bound = self.connect_timeout * 4 + self.timeout;
        let conn = match tokio::time::timeout(bound, self.open(&scripts)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StoreError::Timeout {
                    op: "connect",
                    after: bound,
                })
            }
        };
        // The first reading of the server clock for plain claims (see `RedisStore::plain_claim`);
        // without one, claims use the script until a background read succeeds.
        let clock = Arc::new(ServerClock::default());
        let cluster = conn.is_cluster();
        if !cluster {
            let _ = tokio::time::timeout(self.timeout, clock::read(&conn, &clock)).await;
        }
        let durability = (self.replicas > 0).then_some(Durability {
            replicas: self.replicas,
            timeout: self.replica_timeout,
        });
        let round_trips = Arc::new(AtomicU64::new(0));
        let batcher = |op, script: &redis::Script, args_per_key, reply_width| {
            (self.max_batch > 1).then(|| {
                Batcher::spawn(Worker {
                    op,
                    script: script.clone(),
                    args_per_key,
                    reply_width,
                    conn: conn.clone(),
                    max_batch: self.max_batch,
                    timeout: self.timeout,
                    round_trips: round_trips.clone(),
                    durability,
                })
            })
        };
        let claim_batch = batcher("claim", &scripts.claim_many, CLAIM_ARGS, CLAIM_REPLY);
        let complete_batch = batcher(
            "complete",
            &scripts.complete_many,
            COMPLETE_ARGS,
            COMPLETE_REPLY,
        );
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                layout,
                scripts,
                claim_batch,
                complete_batch,
                max_batch: self.max_batch,
                durability,
                round_trips,
                claim_found: AtomicBool::new(false),
                plain: AtomicBool::new(!cluster),
                clock,
                max_outcome_bytes: self.max_outcome_bytes,
                timeout: self.timeout,
                url: redact(&self.url),
                prefix: self.prefix,
            }),
        })
    }
}

impl RedisStoreBuilder {
    /// Connects (standalone or Cluster, by the URL's scheme) and loads the scripts.
    async fn open(&self, scripts: &Scripts) -> Result<Conn, StoreError> {
        let invalid = |e: redis::RedisError| {
            StoreError::InvalidConfig(format!("invalid Redis URL {}: {e}", redact(&self.url)))
        };
        let fail = |e| super::map_error("connect", e, self.timeout);
        let mut conn = match cluster_nodes(&self.url) {
            Some(nodes) => {
                let nodes = nodes.map_err(StoreError::InvalidConfig)?;
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.timeout)
                    .retries(4)
                    .max_retry_wait(1000)
                    .build()
                    .map_err(invalid)?;
                Conn::Cluster(client.get_async_connection().await.map_err(fail)?)
            }
            None => {
                let client = redis::Client::open(self.url.as_str()).map_err(invalid)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(4)
                    .set_max_delay(Duration::from_secs(1));
                Conn::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(fail)?,
                )
            }
        };
        // Loading up front keeps the first operations at one round trip (in a Cluster `SCRIPT
        // LOAD` goes to every node); after a restart, failover, new node or SCRIPT FLUSH, the
        // calls reload on NOSCRIPT.
        for script in scripts.all() {
            script.load_async(&mut conn).await.map_err(fail)?;
        }
        Ok(conn)
    }
}

/// For a `redis-cluster://` / `rediss-cluster://` URL, one `redis://` / `rediss://` URL per node
/// named (credentials, query and fragment copied to each); `None` for any other URL.
pub(crate) fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme {
        "redis-cluster" => "redis",
        "rediss-cluster" => "rediss",
        _ => return None,
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, format!("#{f}")),
        None => (rest, String::new()),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("/?{q}")),
        None => (rest, String::new()),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    if !matches!(path, "" | "0") {
        return Some(Err(format!(
            "Redis Cluster URL {}: a cluster has only database 0",
            redact(url)
        )));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{userinfo}{h}{query}{fragment}"))
        .collect();
    if nodes.is_empty() {
        return Some(Err(format!(
            "Redis Cluster URL {}: name at least one node (host:port)",
            redact(url)
        )));
    }
    Some(Ok(nodes))
}

/// The URL with any password replaced by `***`, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{cluster_nodes, redact};

    #[test]
    fn cluster_urls_name_every_node_with_the_same_credentials() {
        let nodes = |u| cluster_nodes(u).map(|r| r.expect("valid"));
        assert_eq!(nodes("redis://h:1"), None);
        assert_eq!(
            nodes("redis-cluster://h1:7000,h2:7001"),
            Some(vec!["redis://h1:7000".into(), "redis://h2:7001".into()])
        );
        assert_eq!(
            nodes("rediss-cluster://app:pw@h1:7000,h2:7001/0?protocol=resp3#insecure"),
            Some(vec![
                "rediss://app:pw@h1:7000/?protocol=resp3#insecure".into(),
                "rediss://app:pw@h2:7001/?protocol=resp3#insecure".into()
            ])
        );
        assert!(matches!(
            cluster_nodes("redis-cluster://h:1/2"),
            Some(Err(_))
        ));
        assert!(matches!(cluster_nodes("redis-cluster://"), Some(Err(_))));
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("rediss://app:s3cr@t@h:6380/0"),
            "rediss://app:***@h:6380/0"
        );
        assert_eq!(redact("redis://tok@h"), "redis://***@h");
        assert_eq!(redact("redis://h:6379/1"), "redis://h:6379/1");
    }
}
