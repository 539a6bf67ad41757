//! Store benchmark: first-time and replay throughput, sequential and concurrent, Redis commands per
//! message, and the bare two-round-trip floor, in one run.
//!
//! ```text
//! cargo run --release --features redis --example store_bench -- --store redis://127.0.0.1:6379 --messages 20000
//! cargo run --release --features redis --example store_bench -- --store memory --messages 20000
//! cargo run --release --features redis,postgres --example store_bench -- \
//!     --store "postgres://postgres@127.0.0.1:5432/test?idemq_migrate=true" --messages 20000
//! ```
//!
//! Options (`--help` lists them): `--store URL` (`memory`, `redis://…` / `rediss://…`, a Redis
//! Cluster as `redis-cluster://host:port[,host:port…]`, where `?batch=N` sets the store's
//! batching, `?batch=1` turning it off, or, with feature `postgres`, `postgres://…` as accepted by
//! `PostgresStore::from_url`; default `memory`), `--messages N` (default 20000, at least 50),
//! `--in-flight N` (default 64), `--outcome-bytes N` (default 64), `--local-cache N` (default 0:
//! off) and `--local-cache-age-ms MS` (default 60000): put a `CachedStore` of N completed keys in
//! front of the store, so replays of keys this process completed are answered in process
//! (commands per message then show what still reaches the store).
//!
//! Phases (each over `--messages` distinct keys):
//! - first-time, sequential: `claim` → `Acquired` → `complete`, one message after the other;
//! - raw two-trip floor (Redis only): `SET k NX PX lease` + `SET k outcome PX retention`,
//!   sequentially. It runs interleaved with the first-time phase in 50 chunks so both see the same
//!   machine load (on a busy machine, load changes within seconds);
//! - replay, sequential: `claim` → `Completed` for the first-time keys;
//! - first-time and replay with `--in-flight` messages in flight (that many tasks sharing one store).
//!
//! Commands per message come from `INFO commandstats` deltas, counting client commands only
//! (`evalsha`, `eval`, `script|load`, `set`, …); commands the Lua scripts run inside the server are
//! shown separately, and "server µs/msg" is the server time of the client commands (JSON
//! `first_server_us_per_msg`, `replay_server_us_per_msg`, `concurrent_first_server_us_per_msg`,
//! `concurrent_replay_server_us_per_msg`; Redis counts a script's whole run, the commands it
//! makes included, as its call's time). On a shared
//! Redis, other clients' commands during the run inflate the counts. For Postgres the store talks
//! through a local TCP proxy that counts round trips (the client speaking again after the server
//! answered; pipelined statements count once), shown as `round trips` in the commands column; the
//! proxy's extra hop is included in the Postgres throughput. Records are deleted at the end.
//!
//! On a Redis Cluster the commandstats are summed over the primaries, and the client commands each
//! primary served during the measured phases are printed per primary (JSON `per_primary_cmds`).
//!
//! Prints a table, then as its last line one JSON object with the figures.

use clap::Parser;
use idemq::store::redis::{RedisStore, RedisStoreBuilder};
use idemq::store::{CachedStore, Claim, ClaimRequest, Fence, MemoryStore, RecordKey, Store};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::error::Error;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn Error + Send + Sync>;
type BoxResult<T> = Result<T, BoxError>;

const LEASE: Duration = Duration::from_secs(30);
/// Long enough for the replay phases, short enough that a crashed run cleans itself up.
const RETENTION: Duration = Duration::from_secs(300);
/// Chunks the first-time and raw phases are interleaved in.
const CHUNKS: usize = 50;
/// Commands the store's Lua scripts run inside the server (not round trips) in the store phases.
/// The store itself sends a plain `SET` only for a claim after one that acquired (the plain
/// claim, no script): those are told apart with the store's own count of round trips
/// ([`STORE_TRIPS`]); its background `TIME` reads (a few a second) stay uncounted. In the raw
/// phase every command is a client command.
const SCRIPT_INTERNAL: &[&str] = &["get", "set", "time", "pttl"];
/// Pseudo-command in a Redis snapshot: `RedisStore::round_trips()`.
const STORE_TRIPS: &str = "(store round trips)";

/// Store benchmark: first-time and replay throughput, sequential and concurrent, Redis commands
/// and server time per message, and the raw two-round-trip floor, in one run.
#[derive(Parser)]
#[command(name = "store_bench")]
struct Args {
    /// `memory`, `redis://…` / `rediss://…` (`?batch=N` sets the store's batching, `?batch=1`
    /// turns it off), a Redis Cluster as `redis-cluster://host:port[,host:port…]`, or (feature
    /// `postgres`) `postgres://…` as `PostgresStore::from_url` accepts it.
    #[arg(long, default_value = "memory")]
    store: String,
    /// Distinct keys per phase.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Messages in flight in the concurrent phases (that many tasks sharing one store).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Size of each stored outcome body.
    #[arg(long, default_value_t = 64)]
    outcome_bytes: usize,
    /// Completed keys a `CachedStore` in front of the store keeps (0: no local cache).
    #[arg(long, default_value_t = 0)]
    local_cache: usize,
    /// How long the local cache answers for a completed key.
    #[arg(long, default_value_t = 60_000)]
    local_cache_age_ms: u64,
}

fn parse_args() -> BoxResult<Args> {
    let args = Args::parse();
    if args.messages < CHUNKS || args.in_flight == 0 {
        return Err(format!("--messages must be at least {CHUNKS}, --in-flight positive").into());
    }
    Ok(args)
}

/// `INFO commandstats`: command → (calls, usec).
type Counts = BTreeMap<String, (u64, u64)>;

async fn commandstats(conn: &mut MultiplexedConnection) -> BoxResult<Counts> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(parse_commandstats(&info))
}

/// Where the commandstats come from: one server, or every primary of a Cluster (summed).
enum Stats {
    Single(MultiplexedConnection),
    Cluster(RedisStore),
}

impl Stats {
    /// Commandstats summed over the primaries.
    async fn commandstats(&mut self) -> BoxResult<Counts> {
        let mut sum = Counts::new();
        for (_, counts) in self.per_primary().await? {
            // Replicas' acknowledgements are replication traffic, not the store's commands.
            for (name, (calls, usec)) in counts.into_iter().filter(|(n, _)| n != "replconf") {
                let e = sum.entry(name).or_default();
                e.0 += calls;
                e.1 += usec;
            }
        }
        Ok(sum)
    }

    /// Commandstats per primary (`standalone` for a single server).
    async fn per_primary(&mut self) -> BoxResult<Vec<(String, Counts)>> {
        match self {
            Stats::Single(c) => Ok(vec![("standalone".into(), commandstats(c).await?)]),
            Stats::Cluster(store) => Ok(store
                .info_per_primary("commandstats")
                .await?
                .into_iter()
                .map(|(addr, info)| (addr, parse_commandstats(&info)))
                .collect()),
        }
    }

    /// Client commands (not those run inside scripts, nor `INFO`) per primary.
    async fn client_calls_per_primary(&mut self) -> BoxResult<BTreeMap<String, u64>> {
        Ok(self
            .per_primary()
            .await?
            .into_iter()
            .map(|(addr, counts)| {
                let calls = counts
                    .iter()
                    .filter(|(name, _)| {
                        !SCRIPT_INTERNAL.contains(&name.as_str())
                            && !matches!(name.as_str(), "info" | "replconf")
                    })
                    .map(|(_, (calls, _))| calls)
                    .sum();
                (addr, calls)
            })
            .collect())
    }
}

/// The raw phase's connection: one server or a Cluster.
#[derive(Clone)]
enum RawConn {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RawConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RawConn::Single(c) => c.req_packed_command(cmd),
            RawConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RawConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RawConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RawConn::Single(c) => c.get_db(),
            RawConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Client connections for a Redis or Redis Cluster `url`: the stats source and the raw phase's.
async fn redis_conns(url: &str, store: &RedisStore) -> BoxResult<(Stats, RawConn)> {
    let plain = url.split(['?', '#']).next().unwrap_or(url);
    if store.is_cluster() {
        let (scheme, rest) = plain.split_once("://").ok_or("bad URL")?;
        let scheme = scheme.trim_end_matches("-cluster");
        let (auth, hosts) = match rest.trim_end_matches('/').rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest.trim_end_matches('/')),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(|h| format!("{scheme}://{auth}{}", h.trim_end_matches("/0")))
            .collect();
        let client = redis::cluster::ClusterClient::new(nodes)?;
        Ok((
            Stats::Cluster(store.clone()),
            RawConn::Cluster(client.get_async_connection().await?),
        ))
    } else {
        let client = redis::Client::open(url)?;
        Ok((
            Stats::Single(client.get_multiplexed_async_connection().await?),
            RawConn::Single(client.get_multiplexed_async_connection().await?),
        ))
    }
}

fn parse_commandstats(info: &str) -> Counts {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
            };
            Some((name.to_string(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// One measured phase, possibly accumulated over several chunks.
#[derive(Default)]
struct Phase {
    messages: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Client commands: name → (calls, server usec).
    client: Counts,
    /// Calls made inside scripts.
    internal_calls: u64,
    counted: bool,
}

impl Phase {
    /// Adds the commandstats deltas; `scripted`: the phase ran store scripts (not the raw loop).
    fn add_counts(&mut self, before: &Counts, after: &Counts, scripted: bool) {
        self.counted = true;
        let delta = |name: &str| {
            let (c1, u1) = after.get(name).copied().unwrap_or((0, 0));
            let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
            (c1.saturating_sub(c0), u1.saturating_sub(u0))
        };
        let mut plain = 0;
        if scripted {
            // Plain claims: the store's round trips that were no script call (nor DEL / SCAN);
            // their server time is their share of all `SET` time (a `SET` costs the same inside a
            // script or not).
            let (trips, _) = delta(STORE_TRIPS);
            let client: u64 = after
                .keys()
                .filter(|n| {
                    !SCRIPT_INTERNAL.contains(&n.as_str())
                        && !["info", STORE_TRIPS].contains(&n.as_str())
                })
                .map(|n| delta(n).0)
                .sum();
            let (sets, set_usec) = delta("set");
            plain = trips.saturating_sub(client).min(sets);
            if plain > 0 {
                let e = self.client.entry("set".into()).or_default();
                e.0 += plain;
                e.1 += set_usec * plain / sets;
            }
        }
        for (name, (calls, usec)) in after {
            let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
            let (dc, du) = (calls.saturating_sub(c0), usec.saturating_sub(u0));
            if dc == 0 || name == "info" || name == STORE_TRIPS {
                continue;
            }
            if scripted && SCRIPT_INTERNAL.contains(&name.as_str()) {
                self.internal_calls += dc;
            } else {
                let e = self.client.entry(name.clone()).or_default();
                e.0 += dc;
                e.1 += du;
            }
        }
        self.internal_calls -= plain;
    }

    fn msgs_per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn per_msg(&self, n: u64) -> f64 {
        n as f64 / self.messages as f64
    }

    fn cmds_per_msg(&self) -> Option<f64> {
        self.counted
            .then(|| self.per_msg(self.client.values().map(|c| c.0).sum()))
    }

    fn server_us_per_msg(&self) -> Option<f64> {
        self.counted
            .then(|| self.per_msg(self.client.values().map(|c| c.1).sum()))
    }

    fn percentile_us(&mut self, p: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).map(|d| d.as_secs_f64() * 1e6)
    }
}

struct Bench {
    store: Arc<dyn Store>,
    stats: Option<Stats>,
    raw: Option<RawConn>,
    /// Postgres round trips so far (through the counting proxy).
    round_trips: Option<Arc<AtomicU64>>,
    /// The Redis store (its own count of round trips tells its plain `SET`s from the scripts').
    redis: Option<RedisStore>,
    run: String,
    outcome: Outcome,
    in_flight: usize,
}

fn key(run: &str, phase: &str, i: usize) -> BoxResult<RecordKey> {
    Ok(RecordKey::new(
        "bench",
        IdempotencyKey::new(format!("{run}-{phase}-{i}"))?,
    ))
}

fn raw_key(run: &str, i: usize) -> String {
    format!("idemq-bench-raw:{run}:{i}")
}

fn fingerprint(i: usize) -> Fingerprint {
    Fingerprint::of_bytes(format!("payload-{i}").as_bytes())
}

/// claim → Acquired → complete, as a consumer does for a new message.
async fn first_time(
    store: &dyn Store,
    k: &RecordKey,
    f: &Fingerprint,
    o: &Outcome,
) -> BoxResult<()> {
    match store
        .claim(&ClaimRequest::new(k, f, LEASE, RETENTION))
        .await?
    {
        Claim::Acquired { token, .. } => match store.complete(k, token, o, RETENTION).await? {
            Fence::Held => Ok(()),
            Fence::Lost => Err(format!("{k}: complete lost its fence").into()),
        },
        other => Err(format!("{k}: expected Acquired, got {other:?}").into()),
    }
}

/// claim → Completed, as a consumer does for a duplicate.
async fn replay(store: &dyn Store, k: &RecordKey, f: &Fingerprint) -> BoxResult<()> {
    match store
        .claim(&ClaimRequest::new(k, f, LEASE, RETENTION))
        .await?
    {
        Claim::Completed { .. } => Ok(()),
        other => Err(format!("{k}: expected Completed, got {other:?}").into()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    First,
    Replay,
    Raw,
}

impl Bench {
    async fn snapshot(&mut self) -> BoxResult<Option<Counts>> {
        match &mut self.stats {
            Some(c) => {
                let mut counts = c.commandstats().await?;
                if let Some(store) = &self.redis {
                    counts.insert(STORE_TRIPS.into(), (store.round_trips(), 0));
                }
                Ok(Some(counts))
            }
            None => Ok(self.round_trips.as_ref().map(|n| {
                let trips = n.load(Ordering::SeqCst);
                Counts::from([("round trips".to_string(), (trips, 0))])
            })),
        }
    }

    /// Runs messages `range` of `set` one after the other into `phase`.
    async fn sequential(
        &mut self,
        phase: &mut Phase,
        op: Op,
        set: &str,
        range: std::ops::Range<usize>,
    ) -> BoxResult<()> {
        let keys: Vec<RecordKey> = range
            .clone()
            .map(|i| key(&self.run, set, i))
            .collect::<BoxResult<_>>()?;
        let before = self.snapshot().await?;
        let start = Instant::now();
        for (k, i) in keys.iter().zip(range.clone()) {
            let t = Instant::now();
            match op {
                Op::First => first_time(&*self.store, k, &fingerprint(i), &self.outcome).await?,
                Op::Replay => replay(&*self.store, k, &fingerprint(i)).await?,
                Op::Raw => self.raw_two_trips(i).await?,
            }
            phase.latencies.push(t.elapsed());
        }
        phase.elapsed += start.elapsed();
        phase.messages += range.len();
        if let (Some(b), Some(a)) = (before, self.snapshot().await?) {
            phase.add_counts(&b, &a, op != Op::Raw);
        }
        Ok(())
    }

    /// The floor: `SET key NX PX lease`, then `SET key outcome PX retention`.
    async fn raw_two_trips(&mut self, i: usize) -> BoxResult<()> {
        let conn = self.raw.as_mut().ok_or("raw phase needs Redis")?;
        let k = raw_key(&self.run, i);
        let claimed: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg("claimed")
            .arg("NX")
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            .query_async(conn)
            .await?;
        if claimed.is_none() {
            return Err(format!("raw key {k} already existed").into());
        }
        let () = redis::cmd("SET")
            .arg(&k)
            .arg(&self.outcome.body[..])
            .arg("PX")
            .arg(RETENTION.as_millis() as u64)
            .query_async(conn)
            .await?;
        Ok(())
    }

    /// Runs `messages` of `set` with `in_flight` tasks.
    async fn concurrent(&mut self, op: Op, set: &str, messages: usize) -> BoxResult<Phase> {
        let keys: Arc<Vec<RecordKey>> = Arc::new(
            (0..messages)
                .map(|i| key(&self.run, set, i))
                .collect::<BoxResult<_>>()?,
        );
        let before = self.snapshot().await?;
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let workers: Vec<_> = (0..self.in_flight)
            .map(|_| {
                let (store, keys, next, outcome) = (
                    self.store.clone(),
                    keys.clone(),
                    next.clone(),
                    self.outcome.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(k) = keys.get(i) else {
                            return Ok::<_, BoxError>(());
                        };
                        match op {
                            Op::Replay => replay(&*store, k, &fingerprint(i)).await?,
                            _ => first_time(&*store, k, &fingerprint(i), &outcome).await?,
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.await??;
        }
        let mut phase = Phase {
            messages,
            elapsed: start.elapsed(),
            ..Phase::default()
        };
        if let (Some(b), Some(a)) = (before, self.snapshot().await?) {
            phase.add_counts(&b, &a, true);
        }
        Ok(phase)
    }

    /// Deletes what the run wrote (not measured).
    async fn clean_up(&mut self, sets: &[(&str, usize)], raw: usize) -> BoxResult<()> {
        for (set, n) in sets {
            for i in 0..*n {
                self.store.forget(&key(&self.run, set, i)?).await?;
            }
        }
        if let Some(conn) = self.raw.as_mut() {
            for chunk in (0..raw).collect::<Vec<_>>().chunks(1000) {
                let mut cmd = redis::cmd("UNLINK");
                for i in chunk {
                    cmd.arg(raw_key(&self.run, *i));
                }
                let _: i64 = cmd.query_async(conn).await?;
            }
        }
        Ok(())
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn fmt_cmds(p: &Phase) -> String {
    if !p.counted {
        return "-".into();
    }
    if p.client.is_empty() {
        return "none".into();
    }
    p.client
        .iter()
        .map(|(name, (calls, _))| format!("{name} {:.2}", p.per_msg(*calls)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_string(),
    }
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let is_redis = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ]
    .iter()
    .any(|s| args.store.starts_with(s));
    let is_postgres =
        args.store.starts_with("postgres://") || args.store.starts_with("postgresql://");
    let mut cluster = false;
    let mut bench = if is_redis {
        // `?batch=N` in the URL sets the store's batching (`batch=1`: one EVALSHA per operation).
        let store = RedisStoreBuilder::from_url(&args.store)?
            .prefix("idemq-bench")
            .build()
            .await?;
        let (stats, raw) = redis_conns(&args.store, &store).await?;
        cluster = store.is_cluster();
        Bench {
            store: Arc::new(store.clone()),
            stats: Some(stats),
            raw: Some(raw),
            round_trips: None,
            redis: Some(store),
            run,
            outcome: Outcome::succeeded(vec![b'o'; args.outcome_bytes]),
            in_flight: args.in_flight,
        }
    } else if args.store == "memory" || args.store == "mem" {
        Bench {
            store: Arc::new(MemoryStore::new()),
            stats: None,
            raw: None,
            round_trips: None,
            redis: None,
            run,
            outcome: Outcome::succeeded(vec![b'o'; args.outcome_bytes]),
            in_flight: args.in_flight,
        }
    } else if is_postgres {
        postgres_bench(&args, run).await?
    } else {
        return Err(format!(
            "--store must be memory, redis://… or postgres://…, got {:?}",
            args.store
        )
        .into());
    };
    let n = args.messages;
    // The local cache wraps whichever store was opened; Redis still counts what reaches it.
    let cache = (args.local_cache > 0).then(|| {
        Arc::new(CachedStore::new(
            bench.store.clone(),
            args.local_cache,
            Duration::from_millis(args.local_cache_age_ms),
        ))
    });
    if let Some(c) = &cache {
        bench.store = c.clone();
    }

    // Warm-up: connections, script cache, allocator.
    let warm = n.min(1000);
    let mut scratch = Phase::default();
    bench
        .sequential(&mut scratch, Op::First, "warm", 0..warm)
        .await?;
    if is_redis {
        bench
            .sequential(&mut scratch, Op::Raw, "", n..n + warm)
            .await?;
    }

    let primaries_before = match bench.stats.as_mut() {
        Some(s) => Some(s.client_calls_per_primary().await?),
        None => None,
    };
    let (mut first, mut raw) = (Phase::default(), Phase::default());
    for c in 0..CHUNKS {
        let range = c * n / CHUNKS..(c + 1) * n / CHUNKS;
        bench
            .sequential(&mut first, Op::First, "seq", range.clone())
            .await?;
        if is_redis {
            bench.sequential(&mut raw, Op::Raw, "", range).await?;
        }
    }
    let mut replayed = Phase::default();
    bench
        .sequential(&mut replayed, Op::Replay, "seq", 0..n)
        .await?;
    let mut conc_first = bench.concurrent(Op::First, "conc", n).await?;
    let mut conc_replay = bench.concurrent(Op::Replay, "conc", n).await?;
    // Client commands each primary served in the measured phases (raw loop included).
    let per_primary: Option<BTreeMap<String, u64>> = match (bench.stats.as_mut(), primaries_before)
    {
        (Some(s), Some(before)) => Some(
            s.client_calls_per_primary()
                .await?
                .into_iter()
                .map(|(addr, n)| {
                    let b = before.get(&addr).copied().unwrap_or(0);
                    (addr, n.saturating_sub(b))
                })
                .collect(),
        ),
        _ => None,
    };
    bench
        .clean_up(&[("warm", warm), ("seq", n), ("conc", n)], n + warm)
        .await?;

    println!(
        "store_bench: store={} messages={n} in_flight={} outcome_bytes={} local_cache={}",
        redact(&args.store),
        args.in_flight,
        args.outcome_bytes,
        args.local_cache
    );
    println!();
    println!("| phase | msgs/s | p50 µs | p99 µs | client cmds/msg | server µs/msg | in-script cmds/msg |");
    println!("|---|---:|---:|---:|---|---:|---:|");
    let in_flight = format!("{} in flight", args.in_flight);
    let mut rows: Vec<(String, &mut Phase)> = vec![
        ("first-time, sequential".into(), &mut first),
        ("replay, sequential".into(), &mut replayed),
        (format!("first-time, {in_flight}"), &mut conc_first),
        (format!("replay, {in_flight}"), &mut conc_replay),
    ];
    if is_redis {
        rows.push(("raw SET NX PX + SET, sequential".into(), &mut raw));
    }
    for (name, p) in rows {
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} | {} |",
            p.msgs_per_s(),
            fmt_opt(p.percentile_us(0.5), 0),
            fmt_opt(p.percentile_us(0.99), 0),
            fmt_cmds(p),
            fmt_opt(p.server_us_per_msg().filter(|_| !is_postgres), 1),
            fmt_opt(
                p.counted
                    .then(|| p.per_msg(p.internal_calls))
                    .filter(|_| !is_postgres),
                2
            ),
        );
    }

    if let Some(pp) = &per_primary {
        println!();
        let shown: Vec<String> = pp.iter().map(|(a, n)| format!("{a} {n}")).collect();
        println!("client commands per primary: {}", shown.join(", "));
    }

    let raw_rate = is_redis.then(|| raw.msgs_per_s());
    let first_vs_raw = raw_rate.map(|r| first.msgs_per_s() / r);
    let speedup = conc_first.msgs_per_s() / first.msgs_per_s();
    let (first_cmds, replay_cmds) = (first.cmds_per_msg(), replayed.cmds_per_msg());
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a (no Redis)",
    };
    println!();
    println!("targets:");
    println!(
        "  first-time commands/msg = {} (target 2): {}",
        fmt_opt(first_cmds, 2),
        verdict(first_cmds.map(|c| c <= 2.005))
    );
    println!(
        "  replay commands/msg = {} (target 1{}): {}",
        fmt_opt(replay_cmds, 2),
        if cache.is_some() {
            ", local cache on"
        } else {
            ""
        },
        verdict(replay_cmds.map(|c| c <= 1.005))
    );
    println!(
        "  sequential first-time / raw two-trip loop = {} (target >= 0.9): {}",
        fmt_opt(first_vs_raw, 2),
        verdict(first_vs_raw.map(|r| r >= 0.9))
    );
    println!(
        "  {in_flight} / sequential first-time = {speedup:.2} (target >= 5): {}",
        verdict(Some(speedup >= 5.0))
    );
    // Redis server time (`INFO commandstats` usec of the client commands) per message.
    let server_us = |p: &Phase| p.server_us_per_msg().filter(|_| is_redis);
    let (conc_first_us, conc_replay_us) = (server_us(&conc_first), server_us(&conc_replay));
    println!(
        "  first-time server µs/msg, {in_flight} = {} (target <= 7): {}",
        fmt_opt(conc_first_us, 2),
        verdict(conc_first_us.map(|us| us <= 7.0))
    );
    println!(
        "  replay server µs/msg, {in_flight} = {} (target <= 3): {}",
        fmt_opt(conc_replay_us, 2),
        verdict(conc_replay_us.map(|us| us <= 3.0))
    );

    let json = serde_json::json!({
        "store": if cluster { "redis-cluster" } else if is_redis { "redis" } else if is_postgres { "postgres" } else { "memory" },
        "per_primary_cmds": per_primary,
        "messages": n,
        "in_flight": args.in_flight,
        "outcome_bytes": args.outcome_bytes,
        "first_msgs_per_s": first.msgs_per_s().round(),
        "replay_msgs_per_s": replayed.msgs_per_s().round(),
        "concurrent_first_msgs_per_s": conc_first.msgs_per_s().round(),
        "concurrent_replay_msgs_per_s": conc_replay.msgs_per_s().round(),
        "raw_two_trip_msgs_per_s": raw_rate.map(f64::round),
        "first_p50_us": first.percentile_us(0.5),
        "first_p99_us": first.percentile_us(0.99),
        "replay_p50_us": replayed.percentile_us(0.5),
        "raw_p50_us": if is_redis { raw.percentile_us(0.5) } else { None },
        "first_cmds_per_msg": first_cmds,
        "replay_cmds_per_msg": replay_cmds,
        "concurrent_first_cmds_per_msg": conc_first.cmds_per_msg(),
        "raw_cmds_per_msg": if is_redis { raw.cmds_per_msg() } else { None },
        "first_server_us_per_msg": first.server_us_per_msg().filter(|_| !is_postgres),
        "replay_server_us_per_msg": server_us(&replayed),
        "concurrent_first_server_us_per_msg": conc_first_us,
        "concurrent_replay_server_us_per_msg": conc_replay_us,
        "raw_server_us_per_msg": if is_redis { raw.server_us_per_msg() } else { None },
        "first_vs_raw_ratio": first_vs_raw,
        "concurrent_vs_sequential_ratio": speedup,
        "replay_vs_first_ratio": replayed.msgs_per_s() / first.msgs_per_s(),
        "concurrent_replay_cmds_per_msg": conc_replay.cmds_per_msg(),
        "local_cache": args.local_cache,
        "local_cache_age_ms": args.local_cache_age_ms,
        "local_cache_hits": cache.as_ref().map(|c| c.hits()),
    });
    println!("{json}");
    Ok(())
}

/// A bench on the Postgres store, connected through a round-trip counting proxy.
#[cfg(feature = "postgres")]
async fn postgres_bench(args: &Args, run: String) -> BoxResult<Bench> {
    use idemq::store::postgres::PostgresStore;
    // The proxy needs only host, port, user and database; the user's options (table, pool size,
    // …) go on the proxied URL.
    let (base, query) = match args.store.find('?') {
        Some(i) => args.store.split_at(i),
        None => (args.store.as_str(), ""),
    };
    let (proxied, round_trips) = pg_round_trips::counting_proxy(base).await?;
    let store = PostgresStore::from_url(&format!("{proxied}{query}")).await?;
    Ok(Bench {
        store: Arc::new(store),
        stats: None,
        raw: None,
        round_trips: Some(round_trips),
        redis: None,
        run,
        outcome: Outcome::succeeded(vec![b'o'; args.outcome_bytes]),
        in_flight: args.in_flight,
    })
}

#[cfg(not(feature = "postgres"))]
async fn postgres_bench(_args: &Args, _run: String) -> BoxResult<Bench> {
    Err("--store postgres://… needs the `postgres` feature".into())
}

#[cfg(feature = "postgres")]
#[path = "shared/pg_round_trips.rs"]
mod pg_round_trips;
