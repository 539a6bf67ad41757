//! Redis-specific behaviour of the Redis store: round trips, key layout, TTLs, corrupt records,
//! reconnects, timeouts and authentication. Tests that flush, pause or kill use a private
//! `redis-server`; the rest use the shared Redis with a unique prefix.
#![cfg(feature = "redis")]

mod support;

use idemq::store::redis::RedisStore;
use idemq::store::{
    Claim, ClaimRequest, Fence, RecordKey, RecordState, Release, StateFilter, Store, StoreError,
};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::redis_server::{admin, commandstats, PrivateRedis};
use support::services::{redis_url, require_redis, unique};

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);

fn key(scope: &str, k: &str) -> RecordKey {
    RecordKey::new(scope, IdempotencyKey::new(k).expect("key"))
}

fn fp(s: &str) -> Fingerprint {
    Fingerprint::of_bytes(s.as_bytes())
}

async fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(unique("idemq-ops"))
        .build()
        .await
        .expect("connect")
}

async fn claim(s: &RedisStore, k: &RecordKey, f: &Fingerprint) -> Result<Claim, StoreError> {
    s.claim(&ClaimRequest::new(k, f, LEASE, RETENTION)).await
}

/// Commands the scripts run inside the server; they are not round trips, except a `SET` when no
/// script ran (a plain claim, see `every_operation_is_one_round_trip`).
const SCRIPT_INTERNAL: &[&str] = &["get", "set", "time", "pttl"];

/// The commands counted between two commandstats snapshots whose names `counted` accepts.
fn deltas(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    counted: impl Fn(&str) -> bool,
) -> HashMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| counted(name))
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Client commands (round trips) between two snapshots, ignoring our own INFO calls.
fn round_trips(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    deltas(before, after, |name| {
        name != "info" && !SCRIPT_INTERNAL.contains(&name)
    })
}

/// Every command between two snapshots but our own INFO calls and `TIME` (the store reads the
/// server clock in the background now and then).
fn all_commands(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    deltas(before, after, |name| !["info", "time"].contains(&name))
}

/// One round trip per operation: a script call, or, for a claim after one that acquired, a plain
/// `SET … NX GET` (new key, replay, conflict, live lease; no script ran at all, so the server
/// counts that one `SET` and nothing else). `round_trips()` counts each once.
#[tokio::test]
async fn every_operation_is_one_round_trip() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = store(&server.url()).await;
    let mut admin = admin(&server.url()).await;
    let evalsha = HashMap::from([("evalsha".to_string(), 1)]);
    let plain = HashMap::from([("set".to_string(), 1)]);
    let k = key("rt", "k1");
    let k2 = key("rt", "k2");

    // A plain claim of a new key whose reply took more than about 5 ms (a starved test process)
    // has the script confirm its token: one `EVALSHA` (and its `SET`) more.
    let confirmed = HashMap::from([("set".to_string(), 2), ("evalsha".to_string(), 1)]);
    macro_rules! one_trip {
        ($what:expr, $expect:expr) => {{
            let expect: &HashMap<String, u64> = &$expect;
            let (before, trips) = (commandstats(&mut admin).await, s.round_trips());
            let start = Instant::now();
            let result = $what.await.expect(stringify!($what));
            let slow = start.elapsed() >= Duration::from_millis(4);
            let after = commandstats(&mut admin).await;
            let sent = if expect.contains_key("set") {
                all_commands(&before, &after)
            } else {
                round_trips(&before, &after)
            };
            if !(slow && sent == confirmed && s.round_trips() - trips == 2) {
                assert_eq!(&sent, expect, "{}", stringify!($what));
                assert_eq!(s.round_trips() - trips, 1, "{}", stringify!($what));
            }
            result
        }};
    }

    let Claim::Acquired { token, .. } = one_trip!(claim(&s, &k, &fp("a")), plain) else {
        panic!("expected Acquired")
    };
    let f = one_trip!(
        s.complete(&k, token, &Outcome::succeeded("out"), RETENTION),
        evalsha
    );
    assert_eq!(f, Fence::Held);
    // The replay carries the outcome in the claim's single round trip.
    let replay = one_trip!(claim(&s, &k, &fp("a")), plain);
    assert_eq!(
        replay,
        Claim::Completed {
            outcome: Outcome::succeeded("out")
        }
    );
    // After a claim that found its key, the script.
    let conflict = one_trip!(claim(&s, &k, &fp("b")), evalsha);
    assert!(matches!(conflict, Claim::Conflict { .. }));

    let Claim::Acquired { token, .. } = one_trip!(claim(&s, &k2, &fp("a")), evalsha) else {
        panic!("expected Acquired")
    };
    assert!(matches!(
        one_trip!(claim(&s, &k2, &fp("a")), plain),
        Claim::InFlight { .. }
    ));
    assert!(matches!(
        one_trip!(claim(&s, &k2, &fp("b")), evalsha),
        Claim::Conflict { .. }
    ));
    assert_eq!(one_trip!(s.renew(&k2, token, LEASE), evalsha), Fence::Held);
    assert_eq!(
        one_trip!(s.release(&k2, token, Release::Retry), evalsha),
        Fence::Held
    );
    assert!(one_trip!(s.get(&k2), evalsha).is_some());
    let del = HashMap::from([("del".to_string(), 1)]);
    assert!(one_trip!(s.forget(&k2), del));
}

/// Commands run inside the scripts between two snapshots (Redis counts them in commandstats too).
fn inner_calls(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    deltas(before, after, |name| SCRIPT_INTERNAL.contains(&name))
}

/// Redis CPU per operation is mostly the `redis.call`s inside the script, so they are kept to a
/// minimum, and a claim after one that acquired is no script at all: one plain `SET … NX GET`
/// (new key, replay, live lease). A complete is `GET`+`SET` in its script (the completed-at time
/// comes from the store's clock estimate), a replay after a key that existed one `GET`, and a new
/// key after a key that existed `GET`, then `TIME`+`SET`.
#[tokio::test]
async fn scripts_make_the_fewest_redis_calls() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = RedisStore::builder(server.url())
        .prefix(unique("idemq-calls"))
        .max_batch(1)
        .build()
        .await
        .expect("connect");
    let mut admin = admin(&server.url()).await;
    let calls = |list: &[(&str, u64)]| -> HashMap<String, u64> {
        list.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    };
    let k = key("calls", "k1");
    let k2 = key("calls", "k2");

    // A plain claim of a new key whose reply took more than about 5 ms (a starved test process)
    // has the script confirm its token (`GET`, `TIME`, `SET`) after its own `SET`.
    let confirmed = calls(&[("set", 2), ("get", 1), ("time", 1)]);
    macro_rules! inner {
        ($what:expr, $expect:expr) => {{
            let before = commandstats(&mut admin).await;
            let start = Instant::now();
            let result = $what.await.expect(stringify!($what));
            let slow = start.elapsed() >= Duration::from_millis(4);
            let after = commandstats(&mut admin).await;
            let made = inner_calls(&before, &after);
            if !(slow && made == confirmed) {
                assert_eq!(made, calls($expect), "{}", stringify!($what));
            }
            result
        }};
    }

    // A plain `SET … NX GET` (no script: its one `SET` is the client's).
    let plain = [("set", 1)];
    // The completed-at time comes from the store's estimate of the server clock: no `TIME`.
    let complete_calls = [("get", 1), ("set", 1)];
    let Claim::Acquired { token, .. } = inner!(claim(&s, &k, &fp("a")), &plain) else {
        panic!("expected Acquired")
    };
    inner!(
        s.complete(&k, token, &Outcome::succeeded("out"), RETENTION),
        &complete_calls
    );
    // The first replay after a new key: the plain `SET … NX GET` that finds the record (and
    // writes nothing); the conflict after it goes to the script, which reads with `GET` alone.
    let replay = inner!(claim(&s, &k, &fp("a")), &plain);
    assert!(matches!(replay, Claim::Completed { .. }));
    let conflict = inner!(claim(&s, &k, &fp("b")), &[("get", 1)]);
    assert!(matches!(conflict, Claim::Conflict { .. }));
    let replay = inner!(claim(&s, &k, &fp("a")), &[("get", 1)]);
    assert!(matches!(replay, Claim::Completed { .. }));
    // A late complete of a completed record (a retry after a lost reply) writes nothing.
    inner!(
        s.complete(&k, token, &Outcome::succeeded("out"), RETENTION),
        &[("get", 1)]
    );

    // A new key after keys that existed: `GET`, then `TIME` + `SET`.
    let found_new = [("get", 1), ("time", 1), ("set", 1)];
    let Claim::Acquired { token, .. } = inner!(claim(&s, &k2, &fp("a")), &found_new) else {
        panic!("expected Acquired")
    };
    let inflight = inner!(claim(&s, &k2, &fp("a")), &plain);
    assert!(matches!(inflight, Claim::InFlight { .. }));
    inner!(
        s.renew(&k2, token, LEASE),
        &[("get", 1), ("time", 1), ("pttl", 1), ("set", 1)]
    );
    inner!(
        s.release(&k2, token, Release::Retry),
        &[("get", 1), ("set", 1)]
    );
    inner!(s.get(&k2), &[("get", 1), ("time", 1), ("pttl", 1)]);
}

#[tokio::test]
async fn scripts_are_reloaded_after_script_flush() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = store(&server.url()).await;
    let mut admin = admin(&server.url()).await;
    // A new key's claim is a plain `SET`; its complete is the first script call.
    let k = key("flush", "k");
    let Claim::Acquired { token, .. } = claim(&s, &k, &fp("a")).await.expect("claim") else {
        panic!("expected Acquired")
    };
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .expect("SCRIPT FLUSH");
    let before = commandstats(&mut admin).await;
    let fence = s
        .complete(&k, token, &Outcome::succeeded("out"), RETENTION)
        .await;
    assert_eq!(fence.expect("complete"), Fence::Held);
    let after = commandstats(&mut admin).await;
    // NOSCRIPT → SCRIPT LOAD → EVALSHA, once.
    assert_eq!(round_trips(&before, &after).get("evalsha"), Some(&2));
    assert_eq!(round_trips(&before, &after).get("script|load"), Some(&1));
    assert!(matches!(
        claim(&s, &k, &fp("a")).await.expect("claim"),
        Claim::Completed { .. }
    ));
}

#[tokio::test]
async fn keys_carry_a_hash_tag_and_scan_by_scope() {
    if !require_redis() {
        return;
    }
    let s = store(&redis_url()).await;
    let mut admin = admin(&redis_url()).await;
    let k = key("billing:eu", "order-{7}*");
    claim(&s, &k, &fp("a")).await.expect("claim");

    let rkey = s.redis_key(&k);
    let rest = rkey
        .strip_prefix(&format!("{}:{{", s.prefix()))
        .expect("prefix");
    let (tag, tail) = rest.split_once("}:").expect("hash tag");
    assert_eq!(tag.len(), 16);
    assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(tail, "billing%3Aeu:order-{7}*");
    let kind: String = redis::cmd("TYPE")
        .arg(&rkey)
        .query_async(&mut admin)
        .await
        .expect("TYPE");
    assert_eq!(kind, "string");

    // The documented SCAN pattern finds exactly this scope's record.
    claim(&s, &key("billing", "eu:order-{7}*"), &fp("a"))
        .await
        .expect("claim");
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(s.scan_pattern("billing:eu"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut admin)
            .await
            .expect("SCAN");
        found.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(found, vec![rkey]);
}

async fn pttl(admin: &mut MultiplexedConnection, rkey: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(rkey)
        .query_async(admin)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn ttl_is_retention_never_shorter_than_the_lease() {
    if !require_redis() {
        return;
    }
    let s = store(&redis_url()).await;
    let mut admin = admin(&redis_url()).await;

    let k = key("ttl", "normal");
    let f = fp("a");
    let req = ClaimRequest::new(&k, &f, LEASE, RETENTION);
    let Claim::Acquired { token, .. } = s.claim(&req).await.expect("claim") else {
        panic!("expected Acquired")
    };
    let t = pttl(&mut admin, &s.redis_key(&k)).await;
    assert!((59_000..=60_000).contains(&t), "{t}");
    s.complete(&k, token, &Outcome::succeeded("x"), Duration::from_secs(5))
        .await
        .expect("complete");
    let t = pttl(&mut admin, &s.redis_key(&k)).await;
    assert!(
        (4_000..=5_000).contains(&t),
        "completed TTL is the retention: {t}"
    );

    // Retention shorter than the lease: the record lives as long as the lease.
    let k = key("ttl", "short");
    let f = fp("a");
    let req = ClaimRequest::new(&k, &f, Duration::from_secs(10), Duration::from_secs(1));
    let Claim::Acquired { token, .. } = s.claim(&req).await.expect("claim") else {
        panic!("expected Acquired")
    };
    let t = pttl(&mut admin, &s.redis_key(&k)).await;
    assert!((9_000..=10_000).contains(&t), "{t}");
    // Renewing past the TTL extends it.
    assert_eq!(
        s.renew(&k, token, Duration::from_secs(20))
            .await
            .expect("renew"),
        Fence::Held
    );
    let t = pttl(&mut admin, &s.redis_key(&k)).await;
    assert!((19_000..=20_000).contains(&t), "{t}");
}

#[tokio::test]
async fn leases_follow_the_server_clock() {
    if !require_redis() {
        return;
    }
    let s = store(&redis_url()).await;
    let mut admin = admin(&redis_url()).await;
    let k = key("clock", "k");
    claim(&s, &k, &fp("a")).await.expect("claim");
    let value = raw_value(&mut admin, &s.redis_key(&k)).await;
    let lu: u64 = value
        .split('|')
        .nth(4)
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("lease end in {value:?}"));
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut admin)
        .await
        .expect("TIME");
    let server_now = secs * 1000 + micros / 1000;
    let lease_ms = LEASE.as_millis() as u64;
    assert!(
        lu <= server_now + lease_ms && lu + 2_000 >= server_now + lease_ms,
        "lease end {lu} vs server now {server_now} + {lease_ms}"
    );
}

/// The documented value layout, an outcome body holding the separator and non-UTF-8 bytes, and
/// release keeping the TTL.
#[tokio::test]
async fn records_are_one_string_in_the_documented_layout() {
    if !require_redis() {
        return;
    }
    let s = store(&redis_url()).await;
    let mut admin = admin(&redis_url()).await;
    let k = key("layout", "k");
    let rkey = s.redis_key(&k);
    let f = fp("a");
    let Claim::Acquired { token, .. } = claim(&s, &k, &f).await.expect("claim") else {
        panic!("expected Acquired")
    };
    let value = raw_value(&mut admin, &rkey).await;
    let fields: Vec<&str> = value.split('|').collect();
    assert_eq!(fields.len(), 9, "{value:?}");
    assert_eq!(&fields[..2], ["2", "p"], "{value:?}");
    assert_eq!(fields[2], token.to_string(), "token: {value:?}");
    assert_eq!(fields[3], "1", "attempt: {value:?}");
    assert!(fields[4].parse::<u64>().is_ok(), "lease end: {value:?}");
    assert_eq!(&fields[5..], ["", "", &f.to_hex()[..], ""], "{value:?}");

    let body: &[u8] = b"a|b\x00\xff|2|c|";
    let outcome = Outcome {
        status: idemq::OutcomeStatus::Failed,
        body: bytes::Bytes::from_static(body),
    };
    s.complete(&k, token, &outcome, RETENTION)
        .await
        .expect("complete");
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&rkey)
        .query_async(&mut admin)
        .await
        .expect("GET");
    let head = format!("2|c|{token}|1||");
    assert!(raw.starts_with(head.as_bytes()), "{raw:?}");
    let tail = [format!("|failed|{}|", f.to_hex()).as_bytes(), body].concat();
    assert!(raw.ends_with(&tail), "{raw:?}");
    let completed_at = &raw[head.len()..raw.len() - tail.len()];
    assert!(
        !completed_at.is_empty() && completed_at.iter().all(u8::is_ascii_digit),
        "{raw:?}"
    );
    assert_eq!(
        claim(&s, &k, &f).await.expect("replay"),
        Claim::Completed { outcome }
    );

    // Release keeps the TTL the claim set (`SET … KEEPTTL`).
    let k = key("layout", "released");
    let rkey = s.redis_key(&k);
    let req = ClaimRequest::new(&k, &f, LEASE, Duration::from_secs(40));
    let Claim::Acquired { token, .. } = s.claim(&req).await.expect("claim") else {
        panic!("expected Acquired")
    };
    s.release(&k, token, Release::Reset).await.expect("release");
    assert_eq!(
        raw_value(&mut admin, &rkey).await,
        format!("2|r|{token}|0||||{}|", f.to_hex())
    );
    let t = pttl(&mut admin, &rkey).await;
    assert!((39_000..=40_000).contains(&t), "{t}");
}

/// The raw value of a record, as text.
async fn raw_value(admin: &mut MultiplexedConnection, rkey: &str) -> String {
    redis::cmd("GET")
        .arg(rkey)
        .query_async(admin)
        .await
        .expect("GET")
}

/// A completed record's value with field `i` (0 = version … 8 = body) replaced by `with`.
fn with_field(value: &str, i: usize, with: &str) -> String {
    let mut fields: Vec<&str> = value.splitn(9, '|').collect();
    assert_eq!(fields.len(), 9, "{value:?}");
    fields[i] = with;
    fields.join("|")
}

/// How a record is made unreadable: raw commands on its key, given its valid value.
type Corruption = fn(&str) -> Vec<Vec<String>>;

/// Replaces the value, keeping the TTL.
fn set(value: String) -> Vec<Vec<String>> {
    vec![vec!["SET".into(), value, "KEEPTTL".into()]]
}

/// Ways a record can be unreadable (name, part of the error detail, how), each applied with raw
/// commands to a completed record whose value is `2|c|<tok>|1||<ca>|succeeded|<fp>|ok`.
fn corruptions() -> Vec<(&'static str, &'static str, Corruption)> {
    vec![
        ("format 1 record (a hash)", "not a string", |v| {
            let fp = v.split('|').nth(7).unwrap_or_default().to_string();
            let hset = [
                "HSET",
                "v",
                "1",
                "st",
                "c",
                "tok",
                "1",
                "att",
                "1",
                "os",
                "succeeded",
            ];
            let mut hset: Vec<String> = hset.iter().map(|s| s.to_string()).collect();
            hset.extend([
                "fp".into(),
                fp,
                "ob".into(),
                "ok".into(),
                "ca".into(),
                "1".into(),
            ]);
            vec![vec!["DEL".into()], hset]
        }),
        ("a list", "not a string", |_| {
            vec![vec!["DEL".into()], vec!["RPUSH".into(), "x".into()]]
        }),
        ("not a record", "malformed value", |_| set("garbage".into())),
        ("empty value", "malformed value", |_| set(String::new())),
        ("unknown version", "unknown format version 3", |v| {
            set(with_field(v, 0, "3"))
        }),
        ("format 1 version", "unknown format version 1", |v| {
            set(with_field(v, 0, "1"))
        }),
        ("missing version", "malformed value", |v| {
            set(v.split_once('|').map(|x| x.1).unwrap_or_default().into())
        }),
        ("bad state", "bad field st", |v| set(with_field(v, 1, "x"))),
        ("bad token", "bad field tok", |v| {
            set(with_field(v, 2, "-1"))
        }),
        ("missing token", "bad field tok", |v| {
            set(with_field(v, 2, ""))
        }),
        ("bad attempt", "bad field att", |v| {
            set(with_field(v, 3, "1e3"))
        }),
        (
            "lease end in a completed record",
            "field lu set in state c",
            |v| set(with_field(v, 4, "5")),
        ),
        ("bad completed-at", "bad field ca", |v| {
            set(with_field(v, 5, "x"))
        }),
        ("missing completed-at", "bad field ca", |v| {
            set(with_field(v, 5, ""))
        }),
        ("bad outcome status", "bad field os", |v| {
            set(with_field(v, 6, "maybe"))
        }),
        ("bad fingerprint", "bad field fp", |v| {
            set(with_field(v, 7, "zz"))
        }),
        ("upper-case fingerprint", "bad field fp", |v| {
            let fp = v.split('|').nth(7).unwrap_or_default().to_uppercase();
            set(with_field(v, 7, &fp))
        }),
        ("truncated before the body", "malformed value", |v| {
            set(v.rsplit_once('|').map(|x| x.0).unwrap_or_default().into())
        }),
        (
            "in progress with an outcome",
            "outcome fields set in state p",
            |v| {
                set(with_field(
                    &with_field(&with_field(v, 1, "p"), 4, "1"),
                    5,
                    "",
                ))
            },
        ),
        ("released with a body", "fields set in state r", |v| {
            let v = with_field(&with_field(&with_field(v, 1, "r"), 5, ""), 6, "");
            set(v)
        }),
    ]
}

#[tokio::test]
async fn corrupt_records_are_typed_errors_naming_the_key_and_stay_untouched() {
    if !require_redis() {
        return;
    }
    let s = store(&redis_url()).await;
    let mut admin = admin(&redis_url()).await;
    for (i, (what, want, corruption)) in corruptions().into_iter().enumerate() {
        let k = key("corrupt", &format!("k{i}"));
        let rkey = s.redis_key(&k);
        let Claim::Acquired { token, .. } = claim(&s, &k, &fp("a")).await.expect("claim") else {
            panic!("expected Acquired")
        };
        s.complete(&k, token, &Outcome::succeeded("ok"), RETENTION)
            .await
            .expect("complete");
        let value = raw_value(&mut admin, &rkey).await;
        assert!(value.starts_with(&format!("2|c|{token}|1||")), "{value:?}");
        let tail = format!("|succeeded|{}|ok", fp("a").to_hex());
        assert!(value.ends_with(&tail), "{value:?}");
        for c in corruption(&value) {
            let mut cmd = redis::cmd(&c[0]);
            cmd.arg(&rkey).arg(&c[1..]);
            let _: redis::Value = cmd.query_async(&mut admin).await.expect("corrupt");
        }
        let dump = || {
            let mut admin = admin.clone();
            let rkey = rkey.clone();
            async move {
                redis::cmd("DUMP")
                    .arg(&rkey)
                    .query_async::<Vec<u8>>(&mut admin)
                    .await
                    .expect("DUMP")
            }
        };
        let before = dump().await;
        let results = [
            claim(&s, &k, &fp("a")).await.map(|_| ()),
            s.complete(&k, token, &Outcome::succeeded("x"), RETENTION)
                .await
                .map(|_| ()),
            s.release(&k, token, Release::Reset).await.map(|_| ()),
            s.renew(&k, token, LEASE).await.map(|_| ()),
            s.get(&k).await.map(|_| ()),
            scan_all(&s, "corrupt").await,
        ];
        for (op, r) in results.into_iter().enumerate() {
            match r {
                Err(StoreError::Corrupt { key, detail }) => {
                    assert_eq!(key, rkey, "{what}");
                    assert!(detail.contains(want), "{what}, op #{op}: {detail}");
                }
                other => panic!("{what}, op #{op}: expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(
            dump().await,
            before,
            "{what}: the record must stay untouched"
        );
        assert!(s.forget(&k).await.expect("forget"), "{what}");
    }
}

/// Pages through a whole scope; the first error ends it.
async fn scan_all(s: &RedisStore, scope: &str) -> Result<(), StoreError> {
    let mut cursor = None;
    loop {
        let page = s.scan(scope, StateFilter::All, cursor, 100).await?;
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}

/// Retries `op` until it succeeds, asserting that every failure on the way is transient.
async fn until_ok<T, F, Fut>(within: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let start = Instant::now();
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(e.is_transient(), "non-transient error: {e}");
                assert!(
                    start.elapsed() < within,
                    "no recovery within {within:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn reconnects_after_the_connection_is_killed() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = store(&server.url()).await;
    let mut admin = admin(&server.url()).await;
    let k = key("kill", "k");
    let Claim::Acquired { token, .. } = claim(&s, &k, &fp("a")).await.expect("claim") else {
        panic!("expected Acquired")
    };
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1);
    let ok = Outcome::succeeded("ok");
    let fence = until_ok(Duration::from_secs(5), || {
        s.complete(&k, token, &ok, RETENTION)
    })
    .await;
    assert_eq!(fence, Fence::Held);
    assert!(matches!(
        claim(&s, &k, &fp("a")).await.expect("claim"),
        Claim::Completed { .. }
    ));
}

#[tokio::test]
async fn server_loss_fails_fast_and_recovers_after_restart() {
    let Some(mut server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = RedisStore::builder(server.url())
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("connect");
    let k = key("down", "k");
    claim(&s, &k, &fp("a")).await.expect("claim");

    server.kill();
    let start = Instant::now();
    let err = claim(&s, &k, &fp("a")).await.expect_err("server is down");
    assert!(err.is_transient(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "fail fast, took {:?}",
        start.elapsed()
    );

    // The restarted server is empty and has no scripts: NOSCRIPT reloads them.
    server.restart();
    let f = fp("a");
    let c = until_ok(Duration::from_secs(10), || claim(&s, &k, &f)).await;
    assert!(matches!(c, Claim::Acquired { attempt: 1, .. }), "{c:?}");
}

#[tokio::test]
async fn a_stalled_server_is_a_timeout() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = RedisStore::builder(server.url())
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("connect");
    let mut admin = admin(&server.url()).await;
    let () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1500", "ALL"])
        .query_async(&mut admin)
        .await
        .expect("CLIENT PAUSE");
    let start = Instant::now();
    match claim(&s, &key("pause", "k"), &fp("a")).await {
        Err(StoreError::Timeout { op, after }) => {
            assert_eq!((op, after), ("claim", Duration::from_millis(300)))
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn password_and_acl_user_in_the_url() {
    let Some(server) = PrivateRedis::start(&["--requirepass", "s3cret"]) else {
        return;
    };
    let port = server.port();
    let with_password = format!("redis://:s3cret@127.0.0.1:{port}");
    let s = RedisStore::connect(&with_password).await.expect("AUTH");
    let k = key("auth", "k");
    assert!(matches!(
        claim(&s, &k, &fp("a")).await.expect("claim"),
        Claim::Acquired { .. }
    ));
    assert!(
        !format!("{s:?}").contains("s3cret"),
        "Debug leaks the password"
    );

    let mut admin = admin(&with_password).await;
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">apppw", "~*", "+@all"])
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let user = format!("redis://app:apppw@127.0.0.1:{port}");
    let s = idemq::store::connect(&user).await.expect("ACL user");
    assert!(matches!(
        s.claim(&ClaimRequest::new(&k, &fp("a"), LEASE, RETENTION))
            .await
            .expect("claim"),
        Claim::InFlight { .. }
    ));

    let wrong = format!("redis://app:nope@127.0.0.1:{port}");
    let err = RedisStore::builder(wrong)
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect_err("wrong password");
    assert!(!err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn bad_configuration_is_a_typed_error() {
    for (url, prefix) in [
        ("redis://127.0.0.1:6379", "a{b}"),
        ("redis://127.0.0.1:6379", ""),
        ("redis://[bad", "idemq"),
    ] {
        let r = RedisStore::builder(url).prefix(prefix).build().await;
        assert!(
            matches!(r, Err(StoreError::InvalidConfig(_))),
            "{url} {prefix}: {r:?}"
        );
    }
}

#[tokio::test]
async fn store_connect_opens_redis_urls() {
    if !require_redis() {
        return;
    }
    let prefix = unique("idemq-url");
    let url = format!("{}/?prefix={prefix}", redis_url().trim_end_matches('/'));
    let s = idemq::store::connect(&url).await.expect("connect");
    let k = key(&unique("connect"), "k");
    let Claim::Acquired { token, .. } = s
        .claim(&ClaimRequest::new(
            &k,
            &fp("a"),
            LEASE,
            Duration::from_secs(5),
        ))
        .await
        .expect("claim")
    else {
        panic!("expected Acquired")
    };
    assert_eq!(
        s.complete(&k, token, &Outcome::succeeded("ok"), Duration::from_secs(5))
            .await
            .expect("complete"),
        Fence::Held
    );
    let rec = s.get(&k).await.expect("get").expect("record");
    assert!(matches!(rec.state, RecordState::Completed { .. }));
    assert!(rec.expires_in.is_some_and(|d| d <= Duration::from_secs(5)));
    // `?prefix=` chose the key prefix.
    let same = RedisStore::builder(redis_url())
        .prefix(prefix)
        .build()
        .await
        .expect("connect");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(same.redis_key(&k))
        .query_async(&mut admin(&redis_url()).await)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 1);
}

#[tokio::test]
async fn rediss_urls_use_tls() {
    let dir = std::env::temp_dir().join(unique("idemq-tls"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        assert!(
            !support::services::in_ci(),
            "openssl is needed for the TLS test"
        );
        eprintln!("SKIPPED: openssl cannot make a test certificate");
        return;
    }
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let Some(server) = PrivateRedis::start(&[
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &cert,
        "--tls-auth-clients",
        "no",
    ]) else {
        return;
    };
    // `#insecure`: the certificate is self-signed.
    let url = format!("rediss://127.0.0.1:{}/#insecure", server.port());
    let s = RedisStore::connect(&url).await.expect("TLS connect");
    let k = self::key("tls", "k");
    let Claim::Acquired { token, .. } = claim(&s, &k, &fp("a")).await.expect("claim") else {
        panic!("expected Acquired")
    };
    assert_eq!(
        s.complete(&k, token, &Outcome::succeeded("ok"), RETENTION)
            .await
            .expect("complete"),
        Fence::Held
    );
    // A plain connection to the TLS port does not work.
    let plain = RedisStore::builder(format!("redis://127.0.0.1:{}", server.port()))
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(300))
        .build()
        .await;
    assert!(plain.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records written while tokens were a per-record counter (`1`, `2`, …) read unchanged, and their
/// next claim moves the token to the server clock (ms), past anything the counter handed out.
#[tokio::test]
async fn counter_tokens_of_older_records_move_to_the_clock_on_the_next_claim() {
    if !require_redis() {
        return;
    }
    let s = store(&redis_url()).await;
    let mut admin = admin(&redis_url()).await;
    let k = key("legacy-token", "k");
    let rkey = s.redis_key(&k);
    let f = fp("a");
    // A release tombstone with counter token 7.
    let () = redis::cmd("SET")
        .arg(&rkey)
        .arg(format!("2|r|7|1||||{}|", f.to_hex()))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut admin)
        .await
        .expect("SET");
    let rec = s.get(&k).await.expect("get").expect("record");
    assert_eq!(rec.token, idemq::store::Token(7));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let Claim::Acquired { token, attempt } = claim(&s, &k, &f).await.expect("claim") else {
        panic!("expected Acquired")
    };
    assert_eq!(attempt, 2);
    // The server's clock, within a generous skew of this host's.
    assert!(token.0 > now_ms - 60_000, "{token} vs {now_ms}");
    assert_eq!(
        s.complete(
            &k,
            idemq::store::Token(7),
            &Outcome::succeeded("x"),
            RETENTION
        )
        .await
        .expect("complete"),
        Fence::Lost
    );
    assert_eq!(
        s.complete(&k, token, &Outcome::succeeded("ok"), RETENTION)
            .await
            .expect("complete"),
        Fence::Held
    );
}
