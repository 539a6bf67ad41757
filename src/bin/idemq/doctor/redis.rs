//! Redis checks. Each primary (one for a standalone server) is asked over its own plain
//! connection (`INFO`, `CONFIG GET`, `SCRIPT LOAD` / `EVALSHA`), and one record is read through
//! the store itself, which runs idemq's own scripts.

use super::{Check, Status};
use crate::keys::store_failure;
use crate::Failure;
use idemq::store::redis::RedisStoreBuilder;
use idemq::store::{RecordKey, Store};
use idemq::IdempotencyKey;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::time::Duration;

/// The oldest Redis the scripts run on: they use `SET … KEEPTTL` (Redis 6.0); `TIME` inside a
/// writing script relies on effects replication, the default since 5.0.
const MIN_VERSION: (u32, u32, u32) = (6, 0, 0);
/// Bound on each connection and command of the checks.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What one primary says about itself.
#[derive(Debug)]
struct Node {
    /// `host:port`, or empty for a standalone server.
    addr: String,
    version: String,
    mode: String,
    maxmemory: u64,
    policy: String,
    aof: bool,
    /// `CONFIG GET appendfsync`; `Err` when CONFIG is disabled (managed services rename it).
    fsync: Result<String, String>,
    /// `SCRIPT LOAD` + `EVALSHA` of a one-line script.
    scripts: Result<(), String>,
    /// `connected_slaves` of `INFO replication`.
    replicas: u32,
}

/// The parts of a Redis URL the checks need to reach each node.
struct UrlParts<'a> {
    tls: bool,
    cluster: bool,
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    /// `/db` of a standalone URL (empty if none).
    path: &'a str,
    /// `?replicas=N`: the `WAIT` durability the store was given (validated by the store's own
    /// URL parser before the checks run).
    replicas: Option<u32>,
    fragment: Option<&'a str>,
}

fn parse(url: &str) -> Result<UrlParts<'_>, Failure> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Failure::Usage(format!("not a Redis URL: {url:?}")))?;
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let replicas = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("replicas="))
        .and_then(|n| n.parse().ok());
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    Ok(UrlParts {
        tls: scheme.starts_with("rediss"),
        cluster: scheme.ends_with("-cluster"),
        userinfo,
        hosts: hosts.split(',').filter(|h| !h.is_empty()).collect(),
        path,
        replicas,
        fragment,
    })
}

impl UrlParts<'_> {
    /// A plain `redis://` / `rediss://` URL for one node (`addr`), or for the URL's own host
    /// when `addr` is empty.
    fn node_url(&self, addr: &str) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = self.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let (host, path) = if addr.is_empty() {
            (self.hosts.first().copied().unwrap_or_default(), self.path)
        } else {
            (addr, "")
        };
        let fragment = self.fragment.map(|f| format!("#{f}")).unwrap_or_default();
        format!("{scheme}://{user}{host}{path}{fragment}")
    }
}

/// Runs every Redis check.
pub async fn checks(url: &str) -> Result<Vec<Check>, Failure> {
    let parts = parse(url)?;
    let builder = RedisStoreBuilder::from_url(url).map_err(store_failure)?;
    let store = match builder.connect_timeout(TIMEOUT).build().await {
        Ok(store) => store,
        Err(err) => {
            // A cluster URL on a standalone server fails to connect; say so instead of
            // "unreachable" when the first node answers as a standalone server.
            if parts.cluster {
                if let Ok(node) = probe(
                    &parts.node_url(parts.hosts.first().copied().unwrap_or_default()),
                    "",
                )
                .await
                {
                    if node.mode != "cluster" {
                        return Ok(vec![Check::fail(
                            "cluster-mode",
                            format!(
                                "the URL names a Redis Cluster, but the server runs in {} mode (connecting failed: {err})",
                                node.mode
                            ),
                            "use a redis:// (or rediss://) URL for a standalone server",
                        )]);
                    }
                }
            }
            return Err(store_failure(err));
        }
    };
    let primaries = store.primaries().await.map_err(store_failure)?;
    let mut nodes = Vec::with_capacity(primaries.len());
    for addr in &primaries {
        let node = probe(&parts.node_url(addr), addr)
            .await
            .map_err(Failure::Unreachable)?;
        nodes.push(node);
    }
    let probe_key = RecordKey::new(
        "idemq-doctor",
        IdempotencyKey::new("doctor-probe").map_err(|e| Failure::Usage(e.to_string()))?,
    );
    let store_read = store.get(&probe_key).await.map(|_| ());
    Ok(vec![
        version(&nodes),
        cluster_mode(&parts, &nodes),
        maxmemory(&nodes),
        persistence(&nodes),
        replication(parts.replicas, &nodes),
        scripts(&nodes, store_read.map_err(|e| e.to_string())),
    ])
}

/// Connects to one node and reads what the checks need.
async fn probe(url: &str, addr: &str) -> Result<Node, String> {
    let client = redis::Client::open(url).map_err(|e| format!("Redis URL: {e}"))?;
    let mut conn = bounded(client.get_multiplexed_async_connection())
        .await
        .map_err(|e| format!("{}: {e}", shown(addr)))?;
    let mut info = HashMap::new();
    for section in ["server", "memory", "persistence", "replication"] {
        let text: String = bounded(redis::cmd("INFO").arg(section).query_async(&mut conn))
            .await
            .map_err(|e| format!("{}: INFO {section}: {e}", shown(addr)))?;
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':') {
                info.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    let field = |k: &str| info.get(k).cloned().unwrap_or_default();
    let fsync = config_get(&mut conn, "appendfsync").await;
    Ok(Node {
        addr: addr.to_string(),
        version: field("redis_version"),
        mode: field("redis_mode"),
        maxmemory: field("maxmemory").parse().unwrap_or(0),
        policy: field("maxmemory_policy"),
        aof: field("aof_enabled") == "1",
        fsync,
        scripts: eval_check(&mut conn).await,
        replicas: field("connected_slaves").parse().unwrap_or(0),
    })
}

async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

async fn config_get(conn: &mut MultiplexedConnection, name: &str) -> Result<String, String> {
    let pairs: Vec<String> =
        bounded(redis::cmd("CONFIG").arg("GET").arg(name).query_async(conn)).await?;
    pairs
        .get(1)
        .cloned()
        .ok_or_else(|| format!("CONFIG GET {name} answered nothing"))
}

async fn eval_check(conn: &mut MultiplexedConnection) -> Result<(), String> {
    let sha: String = bounded(
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg("return 1")
            .query_async(conn),
    )
    .await
    .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
    let one: i64 = bounded(redis::cmd("EVALSHA").arg(&sha).arg(0).query_async(conn))
        .await
        .map_err(|e| format!("EVALSHA: {e}"))?;
    if one == 1 {
        Ok(())
    } else {
        Err(format!("EVALSHA of `return 1` answered {one}"))
    }
}

fn shown(addr: &str) -> &str {
    if addr.is_empty() {
        "server"
    } else {
        addr
    }
}

/// One line per node for a Cluster, the bare text for a standalone server.
fn per_node(nodes: &[Node], text: impl Fn(&Node) -> String) -> String {
    match nodes {
        [one] if one.addr.is_empty() => text(one),
        _ => nodes
            .iter()
            .map(|n| format!("{}: {}", n.addr, text(n)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn worst(nodes: &[Node], status: impl Fn(&Node) -> Status) -> Status {
    nodes.iter().map(status).max().unwrap_or(Status::Pass)
}

fn check(name: &'static str, status: Status, detail: String, fix: &str) -> Check {
    match status {
        Status::Pass => Check::pass(name, detail),
        Status::Warn => Check::warn(name, detail, fix),
        Status::Fail => Check::fail(name, detail, fix),
    }
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

fn version(nodes: &[Node]) -> Check {
    let (a, b, c) = MIN_VERSION;
    let status = worst(nodes, |n| match parse_version(&n.version) {
        Some(v) if v >= MIN_VERSION => Status::Pass,
        Some(_) => Status::Fail,
        None => Status::Warn,
    });
    check(
        "version",
        status,
        format!(
            "{} (idemq's scripts need Redis >= {a}.{b}.{c} for SET ... KEEPTTL)",
            per_node(nodes, |n| format!("Redis {}", n.version))
        ),
        &format!("upgrade Redis to {a}.{b} or later"),
    )
}

fn cluster_mode(parts: &UrlParts<'_>, nodes: &[Node]) -> Check {
    let on_cluster = nodes.iter().any(|n| n.mode == "cluster");
    match (parts.cluster, on_cluster) {
        (false, true) => Check::fail(
            "cluster-mode",
            "the server is a Redis Cluster node, but the URL is a standalone one: records in \
             slots of other nodes fail with MOVED",
            "use redis-cluster://host:port[,host:port...] (rediss-cluster:// with TLS)",
        ),
        (true, _) => Check::pass(
            "cluster-mode",
            format!("Redis Cluster with {} primaries", nodes.len()),
        ),
        (false, false) => Check::pass(
            "cluster-mode",
            per_node(nodes, |n| format!("{} server, standalone URL", n.mode)),
        ),
    }
}

fn maxmemory(nodes: &[Node]) -> Check {
    let status = worst(nodes, |n| match (n.policy.as_str(), n.maxmemory) {
        ("noeviction", _) => Status::Pass,
        // No memory limit: nothing is evicted today, but setting one later would start evicting.
        (_, 0) => Status::Warn,
        _ => Status::Fail,
    });
    let mut detail = per_node(nodes, |n| {
        let limit = if n.maxmemory == 0 {
            "no maxmemory limit".to_string()
        } else {
            format!("maxmemory {} bytes", n.maxmemory)
        };
        format!("{} with {limit}", n.policy)
    });
    if status != Status::Pass {
        detail.push_str(
            ": every idemq record has a TTL, so volatile-* policies evict live claims and \
             completed records as allkeys-* do, and an evicted record means duplicate processing",
        );
    }
    check(
        "maxmemory-policy",
        status,
        detail,
        "CONFIG SET maxmemory-policy noeviction (a full Redis then refuses writes, which idemq \
         treats as an outage: nothing is acked), and set it in redis.conf or the managed \
         service's parameters; keep other applications' evictable data in another Redis",
    )
}

fn persistence(nodes: &[Node]) -> Check {
    let status = worst(nodes, |n| match (&n.fsync, n.aof) {
        (_, false) => Status::Fail,
        (Ok(f), true) if f == "always" || f == "everysec" => Status::Pass,
        (Ok(_), true) => Status::Warn,
        (Err(_), true) => Status::Warn,
    });
    check(
        "persistence",
        status,
        per_node(nodes, |n| match (&n.fsync, n.aof) {
            (_, false) => "appendonly no: a restart forgets every completed key (RDB snapshots \
                           lose everything since the last one)"
                .to_string(),
            (Ok(f), true) => format!("appendonly yes, appendfsync {f}"),
            (Err(e), true) => {
                format!("appendonly yes, appendfsync unknown (CONFIG GET failed: {e})")
            }
        }),
        "CONFIG SET appendonly yes and CONFIG SET appendfsync everysec (or always), then \
         CONFIG REWRITE or the same in redis.conf; appendfsync no leaves flushing to the OS",
    )
}

/// Whether the primaries have the replicas the URL's `?replicas=N` makes every claim and
/// complete wait for, and, without it, whether replicas exist that a failover would promote
/// without the consumers' last writes.
fn replication(wanted: Option<u32>, nodes: &[Node]) -> Check {
    let connected = |n: &Node| match n.replicas {
        1 => "1 replica connected".to_string(),
        r => format!("{r} replicas connected"),
    };
    let mut detail = per_node(nodes, connected);
    match wanted {
        Some(want) => {
            let status = worst(nodes, |n| {
                if n.replicas >= want {
                    Status::Pass
                } else {
                    Status::Fail
                }
            });
            detail.push_str(&format!(
                "; the store URL makes every claim and complete wait for {want} (WAIT {want})"
            ));
            if status == Status::Fail {
                detail.push_str(
                    ": with fewer, each one times out and fails as unavailable, so consumers \
                     stop acking (fail closed)",
                );
            }
            check(
                "replication",
                status,
                detail,
                &format!(
                    "connect at least {want} replica(s) to every primary (replicaof), or lower \
                     ?replicas= in the store URL"
                ),
            )
        }
        None => {
            let status = if nodes.iter().any(|n| n.replicas > 0) {
                detail.push_str(
                    "; the store URL has no ?replicas=N, so nothing waits for them: replication \
                     is asynchronous and a failover can lose records a consumer already acked \
                     (a duplicate run)",
                );
                Status::Warn
            } else {
                detail.push_str("; durability rests on this server's persistence");
                Status::Pass
            };
            check(
                "replication",
                status,
                detail,
                "add ?replicas=1&replica_timeout_ms=100 to the store URL so claims and \
                 completes wait for a replica (WAIT)",
            )
        }
    }
}

fn scripts(nodes: &[Node], store_read: Result<(), String>) -> Check {
    let mut status = worst(nodes, |n| match n.scripts {
        Ok(()) => Status::Pass,
        Err(_) => Status::Fail,
    });
    if store_read.is_err() {
        status = Status::Fail;
    }
    let mut detail = per_node(nodes, |n| match &n.scripts {
        Ok(()) => "SCRIPT LOAD + EVALSHA work".to_string(),
        Err(e) => e.clone(),
    });
    match &store_read {
        Ok(()) => detail.push_str("; a read through idemq's own scripts works"),
        Err(e) => detail.push_str(&format!("; a read through idemq's own scripts failed: {e}")),
    }
    check(
        "scripts",
        status,
        detail,
        "allow EVAL / EVALSHA / SCRIPT for idemq's user (ACL: +@scripting), and use a Redis or \
         proxy that supports Lua scripts",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_keep_credentials_tls_and_fragment() {
        let p = parse("rediss-cluster://u:pw@a:1,b:2/?prefix=x#insecure").unwrap();
        assert!(p.cluster && p.tls);
        assert_eq!(p.node_url("c:3"), "rediss://u:pw@c:3#insecure");
        let s = parse("redis://h:6379/2?prefix=x").unwrap();
        assert_eq!(s.node_url(""), "redis://h:6379/2");
        assert_eq!(parse_version("7.2.4"), Some((7, 2, 4)));
        assert_eq!(parse_version("6.0"), Some((6, 0, 0)));
    }
}
