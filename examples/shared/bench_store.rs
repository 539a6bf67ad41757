//! The store side of the benchmarks: commands per message (Redis counts the commands it sends, a
//! batch of claims or completes being one; other stores are wrapped in [`Counting`], which counts
//! calls) and the engine settings they run with.

use async_trait::async_trait;
use idemq::store::{
    CachedStore, Claim, ClaimRequest, Fence, Record, RecordKey, Release, ScanPage, StateFilter,
    Store, StoreError, Token,
};
use idemq::{EngineConfig, Outcome};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Reads a store's count of commands sent.
pub type SentCounter = Box<dyn Fn() -> u64 + Send + Sync>;

/// Opens `url` as `idemq::store::connect` does; for Redis also returns the store's count of
/// commands sent, so batched calls are reported as the round trips they are.
pub async fn open_store(url: &str) -> BoxResult<(Arc<dyn Store>, Option<SentCounter>)> {
    #[cfg(feature = "redis")]
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let store = idemq::store::redis::RedisStoreBuilder::from_url(url)?
            .build()
            .await?;
        let counter = store.clone();
        let sent: SentCounter = Box::new(move || counter.round_trips());
        return Ok((Arc::new(store), Some(sent)));
    }
    Ok((idemq::store::connect(url).await?, None))
}

/// Counts store operations to report store commands per message (for stores that cannot count
/// their own commands), and times claims and completes as the consumer sees them (queueing for a
/// batch and the round trip included).
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn Store>,
    calls: AtomicU64,
    /// (calls, total ns) of `claim` and of `complete`.
    claims: (AtomicU64, AtomicU64),
    completes: (AtomicU64, AtomicU64),
}

impl Counting {
    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Mean latency of `claim` and of `complete` in µs so far (`None` before the first call).
    pub fn mean_latency_us(&self) -> (Option<f64>, Option<f64>) {
        let mean = |(n, ns): &(AtomicU64, AtomicU64)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then(|| ns.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0)
        };
        (mean(&self.claims), mean(&self.completes))
    }
}

fn timed(slot: &(AtomicU64, AtomicU64), since: std::time::Instant) {
    slot.0.fetch_add(1, Ordering::Relaxed);
    slot.1
        .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

#[async_trait]
impl Store for Counting {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        self.hit();
        let t = std::time::Instant::now();
        let r = self.inner.claim(req).await;
        timed(&self.claims, t);
        r
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: Token,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<Fence, StoreError> {
        self.hit();
        let t = std::time::Instant::now();
        let r = self.inner.complete(key, token, outcome, retention).await;
        timed(&self.completes, t);
        r
    }
    async fn release(
        &self,
        key: &RecordKey,
        token: Token,
        mode: Release,
    ) -> Result<Fence, StoreError> {
        self.hit();
        self.inner.release(key, token, mode).await
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: Token,
        lease: Duration,
    ) -> Result<Fence, StoreError> {
        self.hit();
        self.inner.renew(key, token, lease).await
    }
    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        self.hit();
        self.inner.get(key).await
    }
    async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError> {
        self.hit();
        self.inner.forget(key).await
    }
    async fn scan(
        &self,
        scope: &str,
        filter: StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        self.hit();
        self.inner.scan(scope, filter, cursor, count).await
    }
}

impl Counting {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Counting {
            inner,
            calls: AtomicU64::new(0),
            claims: Default::default(),
            completes: Default::default(),
        }
    }
}

/// Store operations (calls that reached the store) per message.
pub fn ops_per_message(counting: &Counting, messages: f64) -> f64 {
    counting.calls.load(Ordering::Relaxed) as f64 / messages
}

/// Store commands per message between `before` (the sent count at the start of the phase) and
/// now: what Redis sent when it counts, otherwise the calls `counting` saw.
pub fn per_message(
    sent: &Option<SentCounter>,
    before: Option<u64>,
    counting: &Counting,
    messages: f64,
) -> f64 {
    match (sent, before) {
        (Some(f), Some(before)) => (f() - before) as f64 / messages,
        _ => counting.calls.load(Ordering::Relaxed) as f64 / messages,
    }
}

/// Engine settings of a benchmark: defaults, except that records expire after 10 minutes so
/// repeated runs do not fill a shared store with keys nobody reads again.
pub fn bench_engine(scope: impl Into<String>) -> EngineConfig {
    let scope: String = scope.into();
    let mut config = EngineConfig::new(scope);
    config.retention = Duration::from_secs(600);
    config
}

/// The local cache of completed keys a benchmark runs with, to read its hits.
pub type LocalCache = Arc<CachedStore<Arc<dyn Store>>>;

/// `inner` behind a local cache of `entries` completed keys kept at most `max_age` each, or
/// `inner` itself when `entries` is 0.
pub fn with_local_cache(
    inner: Arc<dyn Store>,
    entries: usize,
    max_age: Duration,
) -> (Arc<dyn Store>, Option<LocalCache>) {
    if entries == 0 {
        return (inner, None);
    }
    let cache = Arc::new(CachedStore::new(inner, entries, max_age));
    (cache.clone(), Some(cache))
}
