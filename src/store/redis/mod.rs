//! The production store: Redis (standalone, or one Cluster slot per record), one round trip per
//! operation (two for a takeover found by a plain claim, see below), fewer under concurrency.
//!
//! Each record is one string at `{prefix}:{<hash tag>}:<scope>:<key>` (see the key layout below) and
//! every operation is one `EVALSHA` of a Lua script that reads, checks and updates the record
//! atomically on the server, except the plain claim below. A replay of a completed key gets its
//! stored outcome in the claim's single round trip. `Script::invoke_async` sends `EVALSHA` and, on
//! `NOSCRIPT` (after a server restart, failover or `SCRIPT FLUSH`), loads the script and retries;
//! the scripts are also loaded when the store connects, so the steady state is one command per
//! operation.
//!
//! - **Plain claim** (standalone Redis ≥ 7.0): a claim sent alone (no other claim queued or on
//!   the wire, or `max_batch(1)`) after a claim that acquired is one plain
//!   `SET key <in-progress record> NX GET PX ttl`, no script: a script call costs Redis several
//!   times what a `SET` does, which shows when messages come one at a time. Its token and lease
//!   end come from the store's estimate of the server clock (`TIME` read at connect and every
//!   200 ms in the background, never on the claim's path; a reading older than 500 ms is not
//!   used): the token is the estimate's high bound plus 5 ms, and it stands only if the server
//!   clock cannot have passed it when the reply came (drift allowance included), so it is at
//!   least what the script would have given (`TIME` when the `SET` ran) and larger than any token
//!   of an earlier record of the key; the lease end is the low bound plus the lease (never longer
//!   than asked). A key that exists is left as it was (`NX`) and answered from the returned
//!   value as the script would: `Completed` (replay), `Conflict`, `InFlight` (when the lease ends
//!   after the high bound). Everything else goes to the script, a second round trip: a takeover
//!   (released, or a lease that may have ended), a value that does not parse, a key of another
//!   type, a server that refuses the command (Redis 6 has no `NX GET`: the plain claim is then off
//!   for the store's life; out of memory), and a reply too late for the token to stand (the
//!   script then reissues the token from `TIME` if the record is still the value written). Not
//!   on a Cluster (each node has its own clock), nor for leases under 100 ms. The `WAIT` of
//!   `replicas` follows the `SET` as it follows a script call. The plain token leads the server
//!   clock by a few ms at most, so a key forgotten within that time after its plain claim may get
//!   a token no larger on its next claim through the script (whose own tokens tie within a ms).
//!
//! - **Batching (group commit)**: Redis spends most of a script call's CPU on the call, not on the
//!   record. So concurrent `claim` calls of one store (and its clones) share one `EVALSHA` of a
//!   multi-key script, and so do concurrent `complete` calls: a background task per kind sends
//!   the first queued call at once, and the calls that queue while it is on the wire form the
//!   next batch (up to [`RedisStoreBuilder::max_batch`], default 64; no timer, so a lone call is
//!   not delayed; a call made while no other of its kind is queued or on the wire is sent by its
//!   caller, without the hop through the task). The script handles the keys in order with the
//!   single-key logic, so results are the same as one call after the other (the same key twice
//!   in a batch: `Acquired`, then `InFlight`). A failed batch call fails each of its callers with its own error; a corrupt
//!   record fails only its own call; each call keeps its own timeout. `max_batch(1)` (or `?batch=1`
//!   in the URL) sends one command per operation (an `EVALSHA`, or a plain claim).
//!   `release`, `renew`, `get` are never batched.
//!   [`RedisStore::round_trips`] counts the commands actually sent.
//! - **Cluster**: `redis-cluster://host:port[,host:port…]` (or `rediss-cluster://` for TLS) uses
//!   the redis crate's async cluster client, which follows `MOVED` / `ASK`, refreshes the slot map
//!   and reconnects. Each record lives in one slot (hash tag), so every operation is still one
//!   script call on one node. A script may only touch keys of one slot, so a batch is split by
//!   slot into one `EVALSHA` per slot, sent at once (the client pipelines the calls bound for one
//!   node); with keys spread over 16,384 slots that is about one call per operation (batching
//!   saves round trips only for keys that share a slot). `SCRIPT LOAD` goes to every node at
//!   connect; a `NOSCRIPT` (failover, new node) reloads and repeats the call. `scan` walks every
//!   primary in turn.
//! - **Durability across failover**: [`RedisStoreBuilder::replicas`] (`?replicas=N&
//!   replica_timeout_ms=T`) sends `WAIT N T` right after each `claim` / `complete` script call (in
//!   the same pipeline, so on the same node and connection) and fails the operation
//!   ([`StoreError::Unavailable`]) unless N replicas acknowledged: nothing is acked on a write a
//!   failover could lose.
//! - **Clocks**: lease ends are computed from the Redis server clock (`TIME` inside the script, or
//!   the store's estimate of it for a plain claim), so the consumers' clocks may disagree.
//! - **Expiry**: a record's TTL is the retention (never shorter than the lease), set by the same
//!   `SET … PX` that writes it; Redis drops it. Release keeps the TTL (`KEEPTTL`); renewal extends
//!   it when the lease would outlive it.
//! - **Key layout**: `idemq:{3fa4…16 hex}:<scope>:<key>`. The hash tag is derived from (scope, key),
//!   so a record's keys share a Cluster slot and records spread over all slots. `:` and `%` in the
//!   scope are percent-encoded, so `SCAN MATCH idemq:{????????????????}:<scope>:*` lists one scope
//!   exactly (see [`RedisStore::scan_pattern`]); [`RedisStore::redis_key`] names one record.
//! - **Format** (version 2): the value is `2|<st>|<tok>|<att>|<lu>|<ca>|<os>|<fp>|<ob>` — state
//!   (`p`, `r`, `c`), token, attempt, lease end (ms, state `p` only), completed-at (ms, state `c`
//!   only), outcome status, fingerprint (64 hex), then the outcome body as raw bytes to the end.
//!   One string (not a hash) so that each operation makes as few `redis.call`s as possible inside
//!   its script (claim of a new key: one `SET … NX GET PX` on Redis ≥ 7.0; a replay: that same
//!   call, which writes nothing, or a `GET`; complete: `GET` + `SET … PX`), which is where Redis
//!   spends its CPU. Operators read a record with `redis-cli GET <key>` (see [`RedisStore::redis_key`]).
//!   A value that does not parse, another version, or a key of another type (format 1 wrote
//!   hashes; they are not migrated) is reported as [`StoreError::Corrupt`] naming the Redis key,
//!   and left untouched ([`Store::forget`] still deletes it, and so does its TTL). Requires
//!   Redis ≥ 6 (`SET … KEEPTTL`).
//! - **Failures**: connection and protocol errors are [`StoreError::Unavailable`], an operation
//!   slower than [`RedisStoreBuilder::timeout`] is [`StoreError::Timeout`] (it may still have been
//!   applied). The connection manager reconnects in the background with backoff.
//! - **URLs**: `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS (append
//!   `#insecure` to skip certificate verification in tests only), `redis-cluster://[user:password@]
//!   host:port[,host:port…]` / `rediss-cluster://…` for a Cluster. Through
//!   [`store::connect`](super::connect) (and so the CLI) or [`RedisStoreBuilder::from_url`],
//!   `?prefix=NAME` sets the key prefix, `?batch=N` the largest batch and `?replicas=N&
//!   replica_timeout_ms=T` the `WAIT` durability.
//!
//! ```no_run
//! # async fn demo() -> Result<(), idemq::StoreError> {
//! use idemq::store::redis::RedisStore;
//! use idemq::{Engine, EngineConfig, HandlerContext, HandlerError};
//! use std::sync::Arc;
//!
//! let store = RedisStore::builder("redis://127.0.0.1:6379").prefix("billing").build().await?;
//! let engine = Engine::new(Arc::new(store), EngineConfig::new("billing-consumer"),
//!     |_ctx: HandlerContext| async { Ok::<_, HandlerError>("charged") });
//! # let _ = engine; Ok(()) }
//! ```

mod batch;
mod clock;
mod config;
mod conn;
mod keys;
mod reply;
mod scripts;

pub use config::{
    RedisStoreBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_PREFIX,
    DEFAULT_REPLICA_TIMEOUT, DEFAULT_TIMEOUT,
};

use super::types::*;
use super::{Store, StoreError};
use crate::outcome::Outcome;
use async_trait::async_trait;
use batch::Batcher;
use bytes::Bytes;
use clock::{Estimate, ServerClock};
use conn::{Conn, Durability};
use keys::KeyLayout;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};
use reply::{Reply, Stored};
use scripts::Scripts;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far ahead of the high bound of the server clock a plain claim puts its token (ms): the
/// token stands if the server clock when the reply came cannot have passed it (see
/// [`RedisStore::plain_claim`]), so replies within 4–5 ms (drift allowance included); a later
/// reply costs a second round trip. Kept small: the token leads the server clock by up to this
/// plus one `TIME` round trip, and a record forgotten sooner than that after its plain claim may
/// see a token no larger on its next claim through the script (whose own tokens tie within the
/// same ms).
const PLAIN_MARGIN_MS: u64 = 5;
/// Shortest lease (ms) a plain claim takes: a record lives at least its lease, so a record that
/// expired is older than the plain token's lead over the server clock by far.
const PLAIN_MIN_LEASE_MS: u64 = 100;

/// Upper bound for durations sent to Redis (100 years), so huge retentions cannot overflow `PEXPIRE`.
const MAX_MS: u128 = 100 * 365 * 24 * 3600 * 1000;
/// Smallest SCAN `COUNT`: small pages still walk the keyspace quickly.
const MIN_SCAN_COUNT: usize = 256;
/// SCAN calls one [`Store::scan`] page may make while looking for matching keys.
const SCAN_ROUNDS: usize = 16;

/// Opens the store named by `url` (used by [`connect`](super::connect)): default options, except
/// for idemq's own query parameters (see [`RedisStoreBuilder::from_url`]).
pub(crate) async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(RedisStoreBuilder::from_url(url)?.build().await?))
}

/// idemq's own query parameters of a Redis URL (not meant for the Redis client).
#[derive(Debug, Default, PartialEq)]
struct UrlParams {
    /// `prefix=NAME`: the key prefix.
    prefix: Option<String>,
    /// `batch=N`: the largest batch, still unparsed.
    batch: Option<String>,
    /// `replicas=N`: replicas to `WAIT` for, still unparsed.
    replicas: Option<String>,
    /// `replica_timeout_ms=T`: the `WAIT` bound, still unparsed.
    replica_timeout_ms: Option<String>,
}

/// Removes idemq's own query parameters from a Redis URL, returning them separately.
fn split_params(url: &str) -> (String, UrlParams) {
    let mut params = UrlParams::default();
    let (rest, fragment) = match url.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (url, None),
    };
    let Some((base, query)) = rest.split_once('?') else {
        return (url.to_string(), params);
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "prefix" => &mut params.prefix,
                "batch" => &mut params.batch,
                "replicas" => &mut params.replicas,
                "replica_timeout_ms" => &mut params.replica_timeout_ms,
                _ => return !pair.is_empty(),
            };
            *slot = Some(value.to_string());
            false
        })
        .collect();
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    (out, params)
}

/// [`Store`] on Redis: one Lua script (one round trip) per operation, or per batch of concurrent
/// `claim` / `complete` calls. Cheap to clone; clones share the connection and the batches.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    layout: KeyLayout,
    scripts: Scripts,
    /// Group commit of `claim` / `complete`; `None` when `max_batch` is 1.
    claim_batch: Option<Batcher>,
    complete_batch: Option<Batcher>,
    max_batch: usize,
    /// `WAIT` after each claim / complete, when configured.
    durability: Option<Durability>,
    /// Commands sent (a batch counts once).
    round_trips: Arc<AtomicU64>,
    /// Whether the last claim answered found its key (replay, conflict, in flight): the next
    /// single-key claim then goes through the script and reads with `GET` rather than
    /// `SET … NX GET` (see `scripts.rs`); otherwise it tries the plain claim first.
    claim_found: AtomicBool,
    /// Whether single-key claims may try the plain `SET … NX GET` (not on a Cluster, whose nodes
    /// have clocks of their own; turned off for good when the server refuses the command).
    plain: AtomicBool,
    /// The server clock estimate plain claims take tokens and lease ends from.
    clock: Arc<ServerClock>,
    max_outcome_bytes: usize,
    timeout: Duration,
    /// URL without password, for Debug.
    url: String,
    prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("max_outcome_bytes", &self.inner.max_outcome_bytes)
            .field("timeout", &self.inner.timeout)
            .field("max_batch", &self.inner.max_batch)
            .field("cluster", &self.inner.conn.is_cluster())
            .field("durability", &self.inner.durability)
            .finish()
    }
}

impl RedisStore {
    /// Connects to `url` with default options (prefix `idemq`, 1 MiB outcomes, 2 s timeout).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        RedisStoreBuilder::new(url).build().await
    }

    /// A builder for non-default options.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(url)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key holding `key`'s record (for operators: `redis-cli GET <this>`).
    pub fn redis_key(&self, key: &RecordKey) -> String {
        self.inner.layout.record(key)
    }

    /// The `SCAN MATCH` pattern that selects exactly the records of `scope`.
    pub fn scan_pattern(&self, scope: &str) -> String {
        self.inner.layout.scan_pattern(scope)
    }

    /// Redis commands this store and its clones have sent so far: one per `EVALSHA` (a batch of
    /// `claim` or `complete` calls counts once per slot it spans), plain claim (`SET … NX GET`),
    /// `DEL` and `SCAN`, not counting script reloads after `NOSCRIPT`, the `WAIT` sent in the same
    /// round trip or the background reads of the server clock (`TIME`, at most five a second).
    /// Divided by the messages handled, it gives round trips per message.
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// Whether the store runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.conn.is_cluster()
    }

    /// The addresses (`host:port`) of the Cluster's current primaries, sorted; for a standalone
    /// server, one empty string.
    pub async fn primaries(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.inner.conn.clone();
        let call = async move { conn.primaries().await };
        self.run("primaries", call).await
    }

    /// Sends `INFO <section>` to every primary (one standalone server: itself) and returns each
    /// answer with the primary's address (empty for a standalone server), for operators and
    /// benchmarks (e.g. `commandstats` per primary).
    pub async fn info_per_primary(
        &self,
        section: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.inner.conn.clone();
        let mut cmd = redis::cmd("INFO");
        cmd.arg(section);
        let replies = self.run("info", conn.on_all_primaries(cmd)).await?;
        replies
            .into_iter()
            .map(|(addr, v)| match v {
                Value::BulkString(b) => Ok((addr, String::from_utf8_lossy(&b).into_owned())),
                Value::VerbatimString { text, .. } => Ok((addr, text)),
                Value::SimpleString(s) => Ok((addr, s)),
                other => Err(reply::bad(
                    "info",
                    format!("unexpected INFO reply {other:?}"),
                )),
            })
            .collect()
    }

    /// One script call for a single key (claim / complete unbatched): `EVALSHA`, then `WAIT`
    /// when durability is configured.
    async fn eval_one(
        &self,
        op: &'static str,
        script: &redis::Script,
        rkey: &str,
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let mut cmd = Cmd::new();
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(1).arg(rkey);
        for a in args {
            cmd.arg(*a);
        }
        let mut conn = self.inner.conn.clone();
        let (durability, timeout) = (self.inner.durability, self.inner.timeout);
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        let call = conn::eval(&mut conn, op, script, &cmd, durability, timeout);
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout { op, after: timeout }),
        }
    }

    /// Runs one Redis call under the operation timeout.
    async fn run<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(op, e, self.inner.timeout)),
            Err(_) => Err(StoreError::Timeout {
                op,
                after: self.inner.timeout,
            }),
        }
    }

    /// Queues one operation for `batcher`, bounded by the operation timeout like [`Self::run`]
    /// (the batching task answers by the deadline; see [`Batcher::call`]).
    async fn batched(
        &self,
        batcher: &Batcher,
        rkey: String,
        args: Vec<Bytes>,
    ) -> Result<Value, StoreError> {
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        batcher.call(rkey, args, deadline).await
    }

    /// Ends a claim: its turn (if batching) is over, and the next single-key claim goes by
    /// whether this one found its key.
    fn claimed(&self, claim: Claim, turn: Option<batch::Turn<'_>>) -> Result<Claim, StoreError> {
        drop(turn);
        let found = !matches!(claim, Claim::Acquired { .. });
        // Written only on a change: concurrent claims would otherwise contend for the line.
        if self.inner.claim_found.load(Ordering::Relaxed) != found {
            self.inner.claim_found.store(found, Ordering::Relaxed);
        }
        Ok(claim)
    }

    /// A single-key claim as one plain `SET rkey <in-progress record> NX GET PX ttl`: no script,
    /// so the server spends about what a plain `SET` costs instead of a script call. Tried when
    /// the store's previous claim acquired (new traffic) and no other claim is in progress.
    ///
    /// The token and lease end come from the estimate of the server clock ([`ServerClock`]), not
    /// from `TIME` on the server: the token is the high bound at sending plus
    /// [`PLAIN_MARGIN_MS`]. If the server clock cannot have passed the token by the time the
    /// reply came (high bound plus the time elapsed, drift allowance included), the token is at
    /// least the server clock (ms) when the `SET` ran, as the script's would be, and so larger
    /// than any token a record of this key had before it expired or was forgotten (a vanished
    /// record was written earlier; see the module docs of `scripts.rs`). The lease end is the low
    /// bound plus the lease, so the lease is never longer than asked.
    ///
    /// The answer: nothing stored → `Acquired` (attempt 1). A record (`NX`: nothing written) is
    /// answered as the script answers it: another fingerprint → `Conflict`, completed →
    /// `Completed`, in progress with a lease that ends after the high bound of the server clock →
    /// `InFlight`. Anything else (a takeover, which writes: released, or a lease that may have
    /// ended; a value that does not parse; a key of another type; a server that refuses the
    /// command: Redis 6 has no `NX GET`, which turns the plain claim off for good, or out of
    /// memory) goes to the script for the authoritative answer ([`Plain::Script`],
    /// [`Plain::Found`]: nothing was written). A reply too late for the token to stand goes to the
    /// script with the value written ([`Plain::Late`]), which reissues the token from `TIME` if
    /// the record is still that value.
    async fn plain_claim(
        &self,
        rkey: &str,
        fingerprint: &str,
        lease: u64,
        ttl: u64,
    ) -> Result<Plain, StoreError> {
        let inner = &self.inner;
        if !inner.plain.load(Ordering::Relaxed) || lease < PLAIN_MIN_LEASE_MS {
            return Ok(Plain::Script);
        }
        let start = Instant::now();
        let Some(estimate) = self.clock_estimate(start) else {
            return Ok(Plain::Script);
        };
        let token = estimate.high_us / 1000 + PLAIN_MARGIN_MS;
        let lease_end = estimate.low_us / 1000 + lease;
        let value = format!(
            "{}|p|{token}|1|{lease_end}|||{fingerprint}|",
            scripts::FORMAT_VERSION
        );
        let mut cmd = redis::cmd("SET");
        cmd.arg(rkey)
            .arg(&value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl);
        inner.round_trips.fetch_add(1, Ordering::Relaxed);
        let call = conn::query(&inner.conn, &cmd, inner.durability);
        let reply = match tokio::time::timeout(inner.timeout, call).await {
            Ok(reply) => reply,
            Err(_) => {
                return Err(StoreError::Timeout {
                    op: "claim",
                    after: inner.timeout,
                })
            }
        };
        let elapsed = start.elapsed();
        let (v, acked) = match reply {
            Ok(reply) => reply,
            // The server refused the `SET` (not just the `WAIT` after it): nothing was written,
            // the script answers.
            Err(e) if refused_first(&e) => {
                if e.to_string().contains("syntax error") {
                    inner.plain.store(false, Ordering::Relaxed);
                }
                return Ok(Plain::Script);
            }
            Err(e) => return Err(map_error("claim", e, inner.timeout)),
        };
        conn::durable("claim", inner.durability, acked)?;
        match v {
            Value::Nil => {
                // The server clock (ms) when the reply came is at most this; the `SET` ran before.
                let latest = estimate
                    .high_us
                    .saturating_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
                    .saturating_add(Estimate::drift_us(elapsed))
                    / 1000;
                let late = latest > token;
                Ok(if late {
                    Plain::Late(value)
                } else {
                    Plain::Answer(Claim::Acquired {
                        token: Token(token),
                        attempt: 1,
                    })
                })
            }
            // `NX`: nothing was written; the claim is answered from the record as the script
            // would answer it, except a takeover (a write), left to the script.
            Value::BulkString(value) => Ok(match reply::stored(&value) {
                Some(Stored::Completed { fp, .. } | Stored::InProgress { fp, .. })
                    if fp != fingerprint =>
                {
                    match fp.parse() {
                        Ok(stored) => Plain::Answer(Claim::Conflict { stored }),
                        Err(_) => Plain::Found,
                    }
                }
                Some(Stored::Completed { outcome, .. }) => {
                    Plain::Answer(Claim::Completed { outcome })
                }
                Some(Stored::InProgress { lease_end, .. }) => {
                    // Live for sure only if it ends after the highest the server clock can be.
                    let now = inner
                        .clock
                        .estimate(Instant::now())
                        .map(|e| e.high_us / 1000);
                    match now {
                        Some(now) if lease_end > now => Plain::Answer(Claim::InFlight {
                            retry_after: Duration::from_millis(lease_end - now),
                        }),
                        _ => Plain::Found,
                    }
                }
                Some(Stored::Released) | None => Plain::Found,
            }),
            other => Err(reply::bad(
                "claim",
                format!("unexpected SET … NX GET reply {other:?}"),
            )),
        }
    }

    /// The server clock estimate at `now` (refreshed in the background when getting old); `None`
    /// on a Cluster (each node has its own clock) or without a recent reading.
    fn clock_estimate(&self, now: Instant) -> Option<Estimate> {
        if self.inner.conn.is_cluster() {
            return None;
        }
        self.refresh_clock(now);
        self.inner.clock.estimate(now)
    }

    /// Reads the server clock again in the background when the reading is getting old (never on
    /// the caller's path; at most one read at a time).
    fn refresh_clock(&self, now: Instant) {
        let clock = &self.inner.clock;
        if !clock.claim_refresh(now) {
            return;
        }
        let (conn, timeout) = (self.inner.conn.clone(), self.inner.timeout);
        // Ends the refresh however the task ends (also if it is dropped unrun at shutdown).
        let refresh = clock::Refresh::new(clock.clone());
        tokio::spawn(async move {
            // A failed read leaves the old reading, which ages out: claims then use the script.
            let _ = tokio::time::timeout(timeout, clock::read(&conn, refresh.clock())).await;
        });
    }

    async fn get_redis_key(
        &self,
        rkey: &str,
        key: &RecordKey,
    ) -> Result<Option<Record>, StoreError> {
        let mut inv = self.inner.scripts.get.prepare_invoke();
        inv.key(rkey);
        let mut conn = self.inner.conn.clone();
        let v: Value = self.run("get", inv.invoke_async(&mut conn)).await?;
        Reply::new("get", rkey, v)?.record(key)
    }
}

/// What a plain claim ([`RedisStore::plain_claim`]) decided.
enum Plain {
    /// The claim's answer.
    Answer(Claim),
    /// The script must answer; nothing was written.
    Script,
    /// The script must answer a key that exists (so it reads with `GET`); nothing was written.
    Found,
    /// The script must confirm the value the plain `SET` wrote: its token cannot stand.
    Late(String),
}

/// Whether `e` is the server's refusal of the first command sent (alone or first of a pipeline).
fn refused_first(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(i, _)| *i == 0))
}

/// Connection and I/O errors are `Unavailable`; socket timeouts are `Timeout`.
pub(crate) fn map_error(op: &'static str, e: RedisError, after: Duration) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout { op, after }
    } else {
        StoreError::unavailable(op, e)
    }
}

/// Whole milliseconds, rounded up so a sub-millisecond lease never becomes "already expired".
fn ms(d: Duration) -> u64 {
    // Lossless: MAX_MS fits in u64.
    d.as_micros().div_ceil(1000).min(MAX_MS) as u64
}

#[async_trait]
impl Store for RedisStore {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let rkey = self.inner.layout.record(req.key);
        let fingerprint = req.fingerprint.to_hex();
        // The record lives at least as long as its lease.
        let (lease, ttl) = (ms(req.lease), ms(req.retention.max(req.lease)));
        // With no other claim queued or on the wire, the call goes out at once from here: the
        // batching task would send it alone anyway, a task hop later.
        let turn = self.inner.claim_batch.as_ref().map(Batcher::start);
        let claim = match (&self.inner.claim_batch, &turn) {
            (Some(batcher), Some(turn)) if !turn.alone() => {
                let args = vec![
                    Bytes::from(fingerprint),
                    Bytes::from(lease.to_string()),
                    Bytes::from(ttl.to_string()),
                ];
                let v = self.batched(batcher, rkey.clone(), args).await?;
                Reply::new("claim", &rkey, v)?.claim()?
            }
            _ => {
                let found = self.inner.claim_found.load(Ordering::Relaxed);
                let plain = if found {
                    Plain::Found
                } else {
                    self.plain_claim(&rkey, &fingerprint, lease, ttl).await?
                };
                let (found, written) = match plain {
                    Plain::Answer(claim) => return self.claimed(claim, turn),
                    Plain::Script => (false, None),
                    Plain::Found => (true, None),
                    Plain::Late(value) => (false, Some(value)),
                };
                let (lease, ttl) = (lease.to_string(), ttl.to_string());
                let found: &[u8] = if found { b"found" } else { b"new" };
                let mut args = vec![
                    fingerprint.as_bytes(),
                    lease.as_bytes(),
                    ttl.as_bytes(),
                    found,
                ];
                if let Some(written) = &written {
                    args.push(written.as_bytes());
                }
                let v = self
                    .eval_one("claim", &self.inner.scripts.claim, &rkey, &args)
                    .await?;
                Reply::new("claim", &rkey, v)?.claim()?
            }
        };
        self.claimed(claim, turn)
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: Token,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<Fence, StoreError> {
        if outcome.body.len() > self.inner.max_outcome_bytes {
            return Err(StoreError::OutcomeTooLarge {
                size: outcome.body.len(),
                limit: self.inner.max_outcome_bytes,
            });
        }
        let rkey = self.inner.layout.record(key);
        let turn = self.inner.complete_batch.as_ref().map(Batcher::start);
        let v: Value = match (&self.inner.complete_batch, &turn) {
            (Some(batcher), Some(turn)) if !turn.alone() => {
                let args = vec![
                    Bytes::from(token.0.to_string()),
                    Bytes::from_static(outcome.status.as_str().as_bytes()),
                    outcome.body.clone(),
                    Bytes::from(ms(retention).to_string()),
                ];
                self.batched(batcher, rkey.clone(), args).await?
            }
            _ => {
                let (token, retention) = (token.0.to_string(), ms(retention).to_string());
                // The completed-at time from the clock estimate, when there is one (it is only
                // reported, so any reading within the bounds will do), saves the script `TIME`.
                let completed_at = self
                    .clock_estimate(Instant::now())
                    .map(|e| (e.low_us / 2 + e.high_us / 2) / 1000);
                let completed_at = completed_at.map(|ms| ms.to_string());
                let mut args = vec![
                    token.as_bytes(),
                    outcome.status.as_str().as_bytes(),
                    &outcome.body[..],
                    retention.as_bytes(),
                ];
                if let Some(at) = &completed_at {
                    args.push(at.as_bytes());
                }
                self.eval_one("complete", &self.inner.scripts.complete, &rkey, &args)
                    .await?
            }
        };
        drop(turn);
        Reply::new("complete", &rkey, v)?.fence()
    }

    async fn release(
        &self,
        key: &RecordKey,
        token: Token,
        mode: Release,
    ) -> Result<Fence, StoreError> {
        let rkey = self.inner.layout.record(key);
        let mode = match mode {
            Release::Retry => "retry",
            Release::Reset => "reset",
        };
        let mut inv = self.inner.scripts.release.prepare_invoke();
        inv.key(&rkey).arg(token.0).arg(mode);
        let mut conn = self.inner.conn.clone();
        let v: Value = self.run("release", inv.invoke_async(&mut conn)).await?;
        Reply::new("release", &rkey, v)?.fence()
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: Token,
        lease: Duration,
    ) -> Result<Fence, StoreError> {
        let rkey = self.inner.layout.record(key);
        let mut inv = self.inner.scripts.renew.prepare_invoke();
        inv.key(&rkey).arg(token.0).arg(ms(lease));
        let mut conn = self.inner.conn.clone();
        let v: Value = self.run("renew", inv.invoke_async(&mut conn)).await?;
        Reply::new("renew", &rkey, v)?.fence()
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        self.get_redis_key(&self.inner.layout.record(key), key)
            .await
    }

    async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError> {
        let rkey = self.inner.layout.record(key);
        let mut conn = self.inner.conn.clone();
        let deleted: i64 = self
            .run(
                "forget",
                redis::cmd("DEL").arg(&rkey).query_async(&mut conn),
            )
            .await?;
        Ok(deleted > 0)
    }

    /// Pages with `SCAN … MATCH <scope pattern> COUNT max(count, 256)`, up to 16 SCAN calls per
    /// page; the cursor is Redis's. As with SCAN, `count` is a hint: a page may hold more or fewer
    /// records, and a record may show up on two pages. An unreadable record fails the page with
    /// [`StoreError::Corrupt`] naming it.
    async fn scan(
        &self,
        scope: &str,
        filter: StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        // Standalone: Redis's cursor. Cluster: `<primary index>-<cursor>`, walking the sorted
        // primaries one after the other (a topology change during a scan may skip or repeat
        // records, as SCAN itself may).
        let bad_cursor = |c: &str| StoreError::InvalidConfig(format!("invalid scan cursor {c:?}"));
        let (mut node, mut cursor): (usize, u64) = match cursor.as_deref() {
            None => (0, 0),
            Some(c) => match c.split_once('-') {
                Some((n, c2)) => (
                    n.parse().map_err(|_| bad_cursor(c))?,
                    c2.parse().map_err(|_| bad_cursor(c))?,
                ),
                None => (0, c.parse().map_err(|_| bad_cursor(c))?),
            },
        };
        let pattern = self.inner.layout.scan_pattern(scope);
        let mut conn = self.inner.conn.clone();
        let primaries = self.primaries().await?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for _ in 0..SCAN_ROUNDS {
            let Some(addr) = primaries.get(node) else {
                break;
            };
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(count.max(MIN_SCAN_COUNT));
            let reply = self.run("scan", conn.on_node(addr, cmd)).await?;
            let (next, batch): (u64, Vec<Vec<u8>>) =
                redis::from_redis_value(reply).map_err(|e| StoreError::unavailable("scan", e))?;
            names.extend(batch);
            cursor = next;
            if cursor == 0 {
                node += 1;
            }
            if node >= primaries.len() || names.len() >= count.max(1) {
                break;
            }
        }
        names.sort_unstable();
        names.dedup();
        let mut keys = Vec::with_capacity(names.len());
        for name in &names {
            let rkey = String::from_utf8_lossy(name).into_owned();
            let key = self
                .inner
                .layout
                .parse(name)
                .map_err(|detail| StoreError::Corrupt {
                    key: rkey.clone(),
                    detail,
                })?;
            if key.scope == scope {
                keys.push((rkey, key));
            }
        }
        // The reads are pipelined on the multiplexed connection.
        let reads = keys.iter().map(|(rkey, key)| self.get_redis_key(rkey, key));
        let records = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .filter(|r| filter.matches(&r.state))
            .collect();
        Ok(ScanPage {
            records,
            next: match (node < primaries.len(), self.inner.conn.is_cluster()) {
                (false, _) => None,
                (true, false) => Some(cursor.to_string()),
                (true, true) => Some(format!("{node}-{cursor}")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{split_params, UrlParams};

    #[test]
    fn durations_round_up_to_milliseconds_and_are_capped() {
        use std::time::Duration;
        assert_eq!(super::ms(Duration::from_micros(1)), 1);
        assert_eq!(super::ms(Duration::from_millis(600)), 600);
        assert_eq!(super::ms(Duration::ZERO), 0);
        assert_eq!(super::ms(Duration::MAX), super::MAX_MS as u64);
    }

    #[test]
    fn prefix_and_batch_query_parameters_are_ours() {
        let p = |prefix: Option<&str>, batch: Option<&str>| UrlParams {
            prefix: prefix.map(str::to_string),
            batch: batch.map(str::to_string),
            ..UrlParams::default()
        };
        let cases = [
            ("redis://h:1/0", ("redis://h:1/0", p(None, None))),
            (
                "redis://h/0?prefix=pay",
                ("redis://h/0", p(Some("pay"), None)),
            ),
            (
                "rediss://u:p@h/?protocol=resp3&prefix=a:b#insecure",
                (
                    "rediss://u:p@h/?protocol=resp3#insecure",
                    p(Some("a:b"), None),
                ),
            ),
            (
                "redis://h/?prefix=x&db=2",
                ("redis://h/?db=2", p(Some("x"), None)),
            ),
            (
                "redis://h/?batch=1&prefix=x",
                ("redis://h/", p(Some("x"), Some("1"))),
            ),
            (
                "redis://h/?protocol=resp3&batch=16#insecure",
                ("redis://h/?protocol=resp3#insecure", p(None, Some("16"))),
            ),
            // A name that merely starts like ours is not ours.
            (
                "redis://h/?batches=2",
                ("redis://h/?batches=2", p(None, None)),
            ),
        ];
        for (url, (want_url, want)) in cases {
            let (u, params) = split_params(url);
            assert_eq!((u.as_str(), params), (want_url, want), "{url}");
        }
    }

    #[test]
    fn replica_parameters_are_ours_and_checked() {
        use super::RedisStoreBuilder;
        use crate::store::StoreError;
        let (url, params) =
            split_params("redis-cluster://h:1,h:2/?replicas=1&replica_timeout_ms=250&prefix=p");
        assert_eq!(url, "redis-cluster://h:1,h:2/");
        assert_eq!(params.replicas.as_deref(), Some("1"));
        assert_eq!(params.replica_timeout_ms.as_deref(), Some("250"));
        let b = RedisStoreBuilder::from_url("redis://h/?replicas=2&replica_timeout_ms=250")
            .expect("valid");
        let shown = format!("{b:?}");
        assert!(
            shown.contains("replicas: 2") && shown.contains("replica_timeout: 250ms"),
            "{shown}"
        );
        for url in ["redis://h/?replicas=-1", "redis://h/?replica_timeout_ms=x"] {
            assert!(
                matches!(
                    RedisStoreBuilder::from_url(url),
                    Err(StoreError::InvalidConfig(_))
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn batch_parameter_must_be_a_positive_integer() {
        use super::RedisStoreBuilder;
        use crate::store::StoreError;
        for url in [
            "redis://h/?batch=0",
            "redis://h/?batch=x",
            "redis://h/?batch=",
        ] {
            assert!(
                matches!(
                    RedisStoreBuilder::from_url(url),
                    Err(StoreError::InvalidConfig(_))
                ),
                "{url}"
            );
        }
        let b = RedisStoreBuilder::from_url("redis://h/?batch=8&prefix=p").expect("valid");
        let shown = format!("{b:?}");
        assert!(
            shown.contains("max_batch: 8") && shown.contains("prefix: \"p\""),
            "{shown}"
        );
    }
}
