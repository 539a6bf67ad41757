//! The Redis scripts' hot paths (`SET … NX GET` for a new key, plain comparisons for a replay and
//! for the owner's complete) behave exactly like the general path: on records written in the
//! documented layout by hand (as earlier versions wrote them), on unreadable in-progress records,
//! batched and unbatched, and when the server refuses `SET … NX GET` (here: out of memory, which
//! refuses every write; Redis 6 refuses the option itself).
#![cfg(feature = "redis")]

mod support;

use idemq::store::redis::RedisStore;
use idemq::store::{Claim, ClaimRequest, Fence, RecordKey, Release, Store, StoreError, Token};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use redis::aio::MultiplexedConnection;
use std::time::Duration;
use support::redis_server::{admin, PrivateRedis};
use support::services::{redis_url, require_redis, unique};

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);

fn key(scope: &str, k: &str) -> RecordKey {
    RecordKey::new(scope, IdempotencyKey::new(k).expect("key"))
}

fn fp(s: &str) -> Fingerprint {
    Fingerprint::of_bytes(s.as_bytes())
}

/// A batching store (the default) and one sending each operation alone (`max_batch(1)`): the
/// batched and the single-key scripts share the per-record code but not the reply shape.
async fn stores(url: &str) -> [RedisStore; 2] {
    let prefix = unique("idemq-fast");
    let batched = RedisStore::builder(url)
        .prefix(prefix.clone())
        .build()
        .await
        .expect("connect");
    let single = RedisStore::builder(url)
        .prefix(prefix)
        .max_batch(1)
        .build()
        .await
        .expect("connect");
    [batched, single]
}

async fn claim(s: &RedisStore, k: &RecordKey, f: &Fingerprint) -> Result<Claim, StoreError> {
    s.claim(&ClaimRequest::new(k, f, LEASE, RETENTION)).await
}

async fn raw_value(admin: &mut MultiplexedConnection, rkey: &str) -> Vec<u8> {
    redis::cmd("GET")
        .arg(rkey)
        .query_async(admin)
        .await
        .expect("GET")
}

async fn set_raw(admin: &mut MultiplexedConnection, rkey: &str, value: &[u8]) {
    let () = redis::cmd("SET")
        .arg(rkey)
        .arg(value)
        .arg("PX")
        .arg(60_000)
        .query_async(admin)
        .await
        .expect("SET");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Records in the layout earlier versions wrote, set by hand, go through the hot paths: the
/// owner's complete keeps token and attempt and writes the documented completed layout, a replay
/// answers the stored outcome (a body holding the separator), a conflict is still a conflict.
#[tokio::test]
async fn hand_written_records_in_the_documented_layout_take_the_hot_paths() {
    if !require_redis() {
        return;
    }
    let mut admin = admin(&redis_url()).await;
    for (n, s) in stores(&redis_url()).await.iter().enumerate() {
        let f = fp("a");
        let k = key("hand", &format!("p{n}"));
        let rkey = s.redis_key(&k);
        // In progress, attempt 3, lease live for a minute.
        let lease_end = now_ms() + 60_000;
        let value = format!("2|p|41|3|{lease_end}|||{}|", f.to_hex());
        set_raw(&mut admin, &rkey, value.as_bytes()).await;
        assert!(matches!(
            claim(s, &k, &f).await.expect("claim"),
            Claim::InFlight { .. }
        ));
        let stale = s
            .complete(&k, Token(40), &Outcome::succeeded("no"), RETENTION)
            .await;
        assert_eq!(stale.expect("complete"), Fence::Lost);
        let body: &[u8] = b"x|2|c|\xff";
        let outcome = Outcome {
            status: idemq::OutcomeStatus::Succeeded,
            body: bytes::Bytes::from_static(body),
        };
        let held = s.complete(&k, Token(41), &outcome, RETENTION).await;
        assert_eq!(held.expect("complete"), Fence::Held);
        let raw = raw_value(&mut admin, &rkey).await;
        assert!(raw.starts_with(b"2|c|41|3||"), "{raw:?}");
        let tail = [format!("|succeeded|{}|", f.to_hex()).as_bytes(), body].concat();
        assert!(raw.ends_with(&tail), "{raw:?}");
        let record = s.get(&k).await.expect("get").expect("record");
        assert_eq!((record.token, record.attempt), (Token(41), 3));

        // A completed record written by hand: replay, conflict, late complete.
        let k = key("hand", &format!("c{n}"));
        let rkey = s.redis_key(&k);
        let value = [
            format!("2|c|7|2||1700000000000|failed|{}|", f.to_hex()).as_bytes(),
            body,
        ]
        .concat();
        set_raw(&mut admin, &rkey, &value).await;
        let failed = Outcome {
            status: idemq::OutcomeStatus::Failed,
            body: bytes::Bytes::from_static(body),
        };
        assert_eq!(
            claim(s, &k, &f).await.expect("replay"),
            Claim::Completed { outcome: failed }
        );
        assert_eq!(
            claim(s, &k, &fp("b")).await.expect("conflict"),
            Claim::Conflict { stored: f }
        );
        let late = s
            .complete(&k, Token(7), &Outcome::succeeded("no"), RETENTION)
            .await;
        assert_eq!(late.expect("complete"), Fence::Held);
        assert_eq!(raw_value(&mut admin, &rkey).await, value, "left as it was");

        // An expired claim is taken over with the next token and attempt.
        let k = key("hand", &format!("e{n}"));
        let rkey = s.redis_key(&k);
        let value = format!("2|p|9|1|1000|||{}|", f.to_hex());
        set_raw(&mut admin, &rkey, value.as_bytes()).await;
        let Claim::Acquired { token, attempt } = claim(s, &k, &f).await.expect("claim") else {
            panic!("expected Acquired")
        };
        assert_eq!(attempt, 2);
        assert!(token.0 > now_ms() - 60_000, "{token}");
    }
}

/// Ways an in-progress record `2|p|<tok>|1|<lu>|||<fp>|` can be unreadable (name, part of the
/// detail, the value): the owner's complete reads such records on its hot path.
fn in_progress_corruptions(v: &str) -> Vec<(&'static str, &'static str, String)> {
    let fields: Vec<&str> = v.split('|').collect();
    assert_eq!(fields.len(), 9, "{v:?}");
    let with = |i: usize, s: &str| {
        let mut f = fields.clone();
        f[i] = s;
        f.join("|")
    };
    let fp = fields[7];
    vec![
        (
            "upper-case fingerprint",
            "bad field fp",
            with(7, &fp.to_uppercase()),
        ),
        ("short fingerprint", "bad field fp", with(7, &fp[..63])),
        (
            "non-hex fingerprint",
            "bad field fp",
            with(7, &format!("g{}", &fp[1..])),
        ),
        ("bad attempt", "bad field att", with(3, "1e3")),
        ("missing lease end", "bad field lu", with(4, "")),
        ("bad lease end", "bad field lu", with(4, "x")),
        ("a body", "outcome fields set in state p", with(8, "x")),
        (
            "completed-at set",
            "outcome fields set in state p",
            with(5, "1"),
        ),
        (
            "status set",
            "outcome fields set in state p",
            with(6, "failed"),
        ),
        (
            "one field too many",
            "outcome fields set in state p",
            format!("{v}|"),
        ),
        ("one field short", "malformed value", {
            let mut f = fields.clone();
            f.remove(5);
            f.join("|")
        }),
    ]
}

/// Every operation, the owner's complete included, refuses an unreadable in-progress record with
/// a typed error naming the key, and leaves it untouched.
#[tokio::test]
async fn unreadable_in_progress_records_are_typed_errors_and_stay_untouched() {
    if !require_redis() {
        return;
    }
    let mut admin = admin(&redis_url()).await;
    for (n, s) in stores(&redis_url()).await.iter().enumerate() {
        let k = key("corrupt-p", &format!("template{n}"));
        let Claim::Acquired { token, .. } = claim(s, &k, &fp("a")).await.expect("claim") else {
            panic!("expected Acquired")
        };
        let template =
            String::from_utf8(raw_value(&mut admin, &s.redis_key(&k)).await).expect("UTF-8 value");
        for (i, (what, want, value)) in in_progress_corruptions(&template).into_iter().enumerate() {
            let k = key("corrupt-p", &format!("s{n}-k{i}"));
            let rkey = s.redis_key(&k);
            set_raw(&mut admin, &rkey, value.as_bytes()).await;
            let results = [
                s.complete(&k, token, &Outcome::succeeded("x"), RETENTION)
                    .await
                    .map(|_| ()),
                claim(s, &k, &fp("a")).await.map(|_| ()),
                s.renew(&k, token, LEASE).await.map(|_| ()),
                s.release(&k, token, Release::Retry).await.map(|_| ()),
                s.get(&k).await.map(|_| ()),
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
                raw_value(&mut admin, &rkey).await,
                value.as_bytes(),
                "{what}: the record must stay untouched"
            );
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&rkey)
                .query_async(&mut admin)
                .await
                .expect("PTTL");
            assert!((1..=60_000).contains(&ttl), "{what}: TTL kept, got {ttl}");
            assert!(s.forget(&k).await.expect("forget"), "{what}");
        }
    }
}

/// When the server refuses `SET … NX GET` (out of memory refuses every write; Redis 6 the
/// option), a claim reads with `GET` instead: replays and conflicts are still answered, and a new
/// key fails as a write must (`Unavailable`), never `Acquired`. Once writes are allowed again,
/// new keys are claimed as before.
#[tokio::test]
async fn replays_are_answered_when_the_server_refuses_writes() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let admin = admin(&server.url()).await;
    let ss = stores(&server.url()).await;
    let f = fp("a");
    for (n, s) in ss.iter().enumerate() {
        let k = key("oom", &format!("done{n}"));
        let Claim::Acquired { token, .. } = claim(s, &k, &f).await.expect("claim") else {
            panic!("expected Acquired")
        };
        let held = s
            .complete(&k, token, &Outcome::succeeded("out"), RETENTION)
            .await;
        assert_eq!(held.expect("complete"), Fence::Held);
    }
    let maxmemory = |limit: &'static str| {
        let mut admin = admin.clone();
        async move {
            let () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(limit)
                .query_async(&mut admin)
                .await
                .expect("CONFIG SET");
        }
    };
    maxmemory("1").await;
    for (n, s) in ss.iter().enumerate() {
        // Both stores' records: each replay is answered whichever store wrote it.
        for done in 0..2 {
            let k = key("oom", &format!("done{done}"));
            assert_eq!(
                claim(s, &k, &f).await.expect("replay"),
                Claim::Completed {
                    outcome: Outcome::succeeded("out")
                },
                "store {n}"
            );
            assert_eq!(
                claim(s, &k, &fp("b")).await.expect("conflict"),
                Claim::Conflict { stored: f },
                "store {n}"
            );
        }
        let fresh = claim(s, &key("oom", &format!("new{n}")), &f).await;
        assert!(
            matches!(fresh, Err(StoreError::Unavailable { .. })),
            "store {n}: {fresh:?}"
        );
    }
    maxmemory("0").await;
    for (n, s) in ss.iter().enumerate() {
        let fresh = claim(s, &key("oom", &format!("new{n}")), &f).await;
        assert!(
            matches!(fresh, Ok(Claim::Acquired { .. })),
            "store {n}: {fresh:?}"
        );
    }
}
