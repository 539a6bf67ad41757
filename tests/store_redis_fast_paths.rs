//! The Redis store's fast paths behave exactly like the general path: the plain claim (one
//! `SET … NX GET` without a script, token and lease end from the client's estimate of the server
//! clock) and the scripts' hot paths (`SET … NX GET` for a new key, plain comparisons for a replay
//! and for the owner's complete): on records written in the documented layout by hand (as
//! earlier versions wrote them), on unreadable in-progress records, batched and unbatched, and
//! when the server refuses `SET … NX GET` (here: out of memory, which refuses every write; Redis 6
//! refuses the option itself).
#![cfg(feature = "redis")]

mod support;

use idemq::store::redis::RedisStore;
use idemq::store::{
    Claim, ClaimRequest, Fence, RecordKey, RecordState, Release, Store, StoreError, Token,
};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use redis::aio::MultiplexedConnection;
use std::time::Duration;
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

/// The server clock, ms since the epoch.
async fn server_ms(admin: &mut MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(admin).await.expect("TIME");
    secs * 1000 + micros / 1000
}

/// The store's next single-key claim takes the plain path (`SET … NX GET`, no script): the
/// previous claim acquired (here: a throwaway new key).
async fn next_claim_plain(s: &RedisStore) {
    let k = key("mode", &unique("new"));
    let c = claim(s, &k, &fp("x")).await.expect("claim");
    assert!(matches!(c, Claim::Acquired { .. }), "{c:?}");
}

/// The store's next single-key claim goes through the script: the previous claim found its key.
async fn next_claim_scripted(s: &RedisStore) {
    let k = key("mode", &unique("found"));
    let Claim::Acquired { token, .. } = claim(s, &k, &fp("x")).await.expect("claim") else {
        panic!("expected Acquired")
    };
    let f = s
        .complete(&k, token, &Outcome::succeeded("x"), RETENTION)
        .await;
    assert_eq!(f.expect("complete"), Fence::Held);
    let c = claim(s, &k, &fp("x")).await.expect("replay");
    assert!(matches!(c, Claim::Completed { .. }), "{c:?}");
}

/// Client commands (`evalsha`, and `set` when no script ran) and the store's own count of one
/// claim: `(evalsha, set, round_trips)`.
async fn counted(
    s: &RedisStore,
    admin: &mut MultiplexedConnection,
    k: &RecordKey,
    f: &Fingerprint,
) -> (Claim, (u64, u64, u64)) {
    let (c, n, _) = timed(s, admin, k, f).await;
    (c, n)
}

/// [`counted`], and how long the claim took.
async fn timed(
    s: &RedisStore,
    admin: &mut MultiplexedConnection,
    k: &RecordKey,
    f: &Fingerprint,
) -> (Claim, (u64, u64, u64), Duration) {
    timed_with_lease(s, admin, k, f, LEASE).await
}

/// [`timed`] with a lease of `lease`.
async fn timed_with_lease(
    s: &RedisStore,
    admin: &mut MultiplexedConnection,
    k: &RecordKey,
    f: &Fingerprint,
    lease: Duration,
) -> (Claim, (u64, u64, u64), Duration) {
    let get = |m: &std::collections::HashMap<String, u64>, n: &str| m.get(n).copied().unwrap_or(0);
    let (before, trips) = (commandstats(admin).await, s.round_trips());
    let start = std::time::Instant::now();
    let c = s
        .claim(&ClaimRequest::new(k, f, lease, RETENTION))
        .await
        .expect("claim");
    let took = start.elapsed();
    let after = commandstats(admin).await;
    let n = (
        get(&after, "evalsha") - get(&before, "evalsha"),
        get(&after, "set") - get(&before, "set"),
        s.round_trips() - trips,
    );
    (c, n, took)
}

/// A plain claim of a new key, [`timed`]: one `SET`, no script, one round trip. Its token stands
/// when the reply comes within about 5 ms; a slower claim (a starved test process) may have had
/// the script confirm it (one `EVALSHA` and its `SET` more).
async fn plain_new_key(
    s: &RedisStore,
    admin: &mut MultiplexedConnection,
    k: &RecordKey,
    f: &Fingerprint,
) -> Claim {
    let (c, sent, took) = timed(s, admin, k, f).await;
    if took < Duration::from_millis(4) || sent != (1, 2, 2) {
        assert_eq!(
            sent,
            (0, 1, 1),
            "plain: one SET, no script, one round trip ({took:?})"
        );
    }
    c
}

/// A new key after a claim that acquired is one plain `SET … NX GET` (one round trip, no script),
/// and its token is larger than any token an earlier record of the key had, whether that record
/// was written by the script or by a plain claim, and whether it was forgotten or expired: a
/// consumer that stalled with the old token is refused (`Lost`) and cannot overwrite the new claim.
/// (A plain token leads the server clock by a few ms at most, so the claims after a forget wait
/// 20 ms here; the script's own tokens tie within the same ms.)
#[tokio::test]
async fn plain_claims_take_tokens_above_every_earlier_record_of_the_key() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let mut admin = admin(&server.url()).await;
    let after_forget = Duration::from_millis(20);
    let [batched, single] = stores(&server.url()).await;
    for (n, s) in [batched, single].iter().enumerate() {
        let f = fp("a");
        let k = key("plain-token", &format!("forgotten{n}"));
        // An earlier record written by the script (`found` mode), then one by a plain claim.
        next_claim_scripted(s).await;
        let (c, sent) = counted(s, &mut admin, &k, &f).await;
        let Claim::Acquired { token: first, .. } = c else {
            panic!("expected Acquired, got {c:?}")
        };
        assert_eq!((sent.0, sent.2), (1, 1), "scripted: {sent:?}");
        assert!(s.forget(&k).await.expect("forget"));
        // Straight after the script's record: the plain token is ahead of the clock anyway.
        let c = plain_new_key(s, &mut admin, &k, &f).await;
        let Claim::Acquired {
            token: second,
            attempt,
        } = c
        else {
            panic!("expected Acquired, got {c:?}")
        };
        assert_eq!(attempt, 1);
        assert!(second > first, "{first} -> {second}");
        assert!(s.forget(&k).await.expect("forget"));
        tokio::time::sleep(after_forget).await;
        let c = plain_new_key(s, &mut admin, &k, &f).await;
        let Claim::Acquired { token: third, .. } = c else {
            panic!("expected Acquired, got {c:?}")
        };
        assert!(third > second, "{second} -> {third}");
        // The stalled owners of the forgotten records are refused.
        for old in [first, second] {
            let late = s
                .complete(&k, old, &Outcome::succeeded("stale"), RETENTION)
                .await;
            assert_eq!(late.expect("complete"), Fence::Lost);
        }
        let record = s.get(&k).await.expect("get").expect("record");
        assert_eq!(record.token, third);
        let RecordState::InProgress { lease_remaining } = record.state else {
            panic!("expected in progress, got {:?}", record.state)
        };
        assert!(lease_remaining <= LEASE, "{lease_remaining:?}");
        assert!(
            lease_remaining > LEASE - Duration::from_secs(5),
            "{lease_remaining:?}"
        );
        // And the script's token after a plain one.
        assert!(s.forget(&k).await.expect("forget"));
        tokio::time::sleep(after_forget).await;
        next_claim_scripted(s).await;
        let (c, sent) = counted(s, &mut admin, &k, &f).await;
        let Claim::Acquired { token: fourth, .. } = c else {
            panic!("expected Acquired, got {c:?}")
        };
        assert_eq!((sent.0, sent.2), (1, 1), "scripted: {sent:?}");
        assert!(fourth > third, "{third} -> {fourth}");
        let late = s
            .complete(&k, third, &Outcome::succeeded("stale"), RETENTION)
            .await;
        assert_eq!(late.expect("complete"), Fence::Lost);
        let done = s
            .complete(&k, fourth, &Outcome::succeeded("fresh"), RETENTION)
            .await;
        assert_eq!(done.expect("complete"), Fence::Held);

        // An expired record (lease and retention 300 ms), claimed by the plain path.
        let k = key("plain-token", &format!("expired{n}"));
        let short = Duration::from_millis(300);
        next_claim_plain(s).await;
        let Claim::Acquired { token: old, .. } = s
            .claim(&ClaimRequest::new(&k, &f, short, short))
            .await
            .expect("claim")
        else {
            panic!("expected Acquired")
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let c = plain_new_key(s, &mut admin, &k, &f).await;
        let Claim::Acquired {
            token: new,
            attempt,
        } = c
        else {
            panic!("expected Acquired, got {c:?}")
        };
        assert_eq!(attempt, 1);
        assert!(new > old, "{old} -> {new}");
        let late = s
            .complete(&k, old, &Outcome::succeeded("stale"), RETENTION)
            .await;
        assert_eq!(late.expect("complete"), Fence::Lost);
        assert_eq!(s.get(&k).await.expect("get").expect("record").token, new);
    }
}

/// A lease that ran out while its record remains (retention longer than the lease): the plain
/// claim finds the record and leaves the takeover to the script (the `SET … NX` wrote nothing),
/// which gives a larger token and the next attempt; the stalled owner is refused.
#[tokio::test]
async fn a_stalled_owner_is_refused_after_a_takeover_found_by_the_plain_claim() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let mut admin = admin(&server.url()).await;
    for (n, s) in stores(&server.url()).await.iter().enumerate() {
        let k = key("takeover", &format!("k{n}"));
        let f = fp("a");
        let lease = Duration::from_millis(200);
        next_claim_plain(s).await;
        let Claim::Acquired { token: old, .. } = s
            .claim(&ClaimRequest::new(&k, &f, lease, RETENTION))
            .await
            .expect("claim")
        else {
            panic!("expected Acquired")
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (c, sent) = counted(s, &mut admin, &k, &f).await;
        let Claim::Acquired {
            token: new,
            attempt,
        } = c
        else {
            panic!("expected Acquired, got {c:?}")
        };
        assert_eq!(attempt, 2);
        assert!(new > old, "{old} -> {new}");
        // The plain `SET … NX GET` (which wrote nothing), then the script's call and its `SET`.
        assert_eq!(sent, (1, 2, 2), "{sent:?}");
        let late = s
            .complete(&k, old, &Outcome::succeeded("stale"), RETENTION)
            .await;
        assert_eq!(late.expect("complete"), Fence::Lost);
        let done = s
            .complete(&k, new, &Outcome::succeeded("fresh"), RETENTION)
            .await;
        assert_eq!(done.expect("complete"), Fence::Held);
        assert_eq!(
            claim(s, &k, &f).await.expect("replay"),
            Claim::Completed {
                outcome: Outcome::succeeded("fresh")
            }
        );
    }
}

/// A replay after a claim that acquired is one plain `SET … NX GET` that answers the stored
/// outcome and writes nothing: the value and its TTL stay as they were.
#[tokio::test]
async fn a_plain_replay_answers_the_outcome_and_writes_nothing() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let mut admin = admin(&server.url()).await;
    for (n, s) in stores(&server.url()).await.iter().enumerate() {
        let k = key("plain-replay", &format!("k{n}"));
        let f = fp("a");
        let Claim::Acquired { token, .. } = claim(s, &k, &f).await.expect("claim") else {
            panic!("expected Acquired")
        };
        let body: &[u8] = b"out|2|c|\xff";
        let outcome = Outcome {
            status: idemq::OutcomeStatus::Failed,
            body: bytes::Bytes::from_static(body),
        };
        let before = server_ms(&mut admin).await;
        let held = s.complete(&k, token, &outcome, Duration::from_secs(20));
        assert_eq!(held.await.expect("complete"), Fence::Held);
        let after = server_ms(&mut admin).await;
        // The completed-at time (from the store's estimate of the server clock) is the server's.
        let record = s.get(&k).await.expect("get").expect("record");
        let RecordState::Completed { completed_at, .. } = record.state else {
            panic!("expected completed, got {:?}", record.state)
        };
        let at = completed_at
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_millis() as u64;
        assert!(
            (before - 2..=after + 2).contains(&at),
            "{before} <= {at} <= {after}"
        );
        let rkey = s.redis_key(&k);
        let value = raw_value(&mut admin, &rkey).await;
        next_claim_plain(s).await;
        let (c, sent) = counted(s, &mut admin, &k, &f).await;
        assert_eq!(c, Claim::Completed { outcome });
        assert_eq!(sent, (0, 1, 1), "one plain SET, no script, one round trip");
        assert_eq!(raw_value(&mut admin, &rkey).await, value);
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&rkey)
            .query_async(&mut admin)
            .await
            .expect("PTTL");
        assert!((1..=20_000).contains(&ttl), "TTL kept, got {ttl}");
    }
}

/// A lease under 100 ms never takes the plain path, even right after a claim that acquired: the
/// plain token may lead the server clock by a few ms, which is safe only because a record lives
/// at least its lease (docs/redis.md, "Plain claim").
#[tokio::test]
async fn short_leases_are_claimed_through_the_script() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let mut admin = admin(&server.url()).await;
    for (n, s) in stores(&server.url()).await.iter().enumerate() {
        next_claim_plain(s).await;
        let k = key("short-lease", &format!("k{n}"));
        let lease = Duration::from_millis(99);
        let (c, sent, _) = timed_with_lease(s, &mut admin, &k, &fp("a"), lease).await;
        assert!(matches!(c, Claim::Acquired { .. }), "{c:?}");
        assert_eq!(
            sent,
            (1, 1, 1),
            "one script call (its SET inside), no plain SET"
        );
    }
}

/// For every kind of record a claim can find, the plain claim answers what the script answers:
/// each record is written twice by hand, one copy claimed through the plain path, the other
/// through the script.
#[tokio::test]
async fn plain_and_scripted_claims_answer_alike() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let mut admin = admin(&server.url()).await;
    let f = fp("a");
    let other = fp("b");
    let live = now_ms() + 60_000;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "live lease",
            format!("2|p|41|3|{live}|||{}|", f.to_hex()).into_bytes(),
        ),
        (
            "expired lease",
            format!("2|p|41|3|1000|||{}|", f.to_hex()).into_bytes(),
        ),
        (
            "released",
            format!("2|r|41|3||||{}|", f.to_hex()).into_bytes(),
        ),
        (
            "in progress, other payload",
            format!("2|p|41|3|{live}|||{}|", other.to_hex()).into_bytes(),
        ),
        (
            "expired, other payload",
            format!("2|p|41|3|1000|||{}|", other.to_hex()).into_bytes(),
        ),
        (
            "released, other payload",
            format!("2|r|41|3||||{}|", other.to_hex()).into_bytes(),
        ),
        (
            "completed",
            format!("2|c|41|3||1700000000000|succeeded|{}|ok", f.to_hex()).into_bytes(),
        ),
        (
            "completed, other payload",
            format!("2|c|41|3||1700000000000|failed|{}|no", other.to_hex()).into_bytes(),
        ),
        (
            "corrupt",
            format!("2|p|41|3|x|||{}|", f.to_hex()).into_bytes(),
        ),
        ("another version", b"3|p|41".to_vec()),
    ];
    for (n, s) in stores(&server.url()).await.iter().enumerate() {
        for (i, (what, value)) in cases.iter().enumerate() {
            let mut answers = Vec::new();
            for (mode, plain) in [("plain", true), ("script", false)] {
                let k = key("alike", &format!("s{n}-{i}-{mode}"));
                set_raw(&mut admin, &s.redis_key(&k), value).await;
                if plain {
                    next_claim_plain(s).await;
                } else {
                    next_claim_scripted(s).await;
                }
                let (trips, answer) = (s.round_trips(), claim(s, &k, &f).await);
                let trips = s.round_trips() - trips;
                // Normalised: tokens differ (clock), the lease left by a few ms.
                let answer = match answer {
                    Ok(Claim::Acquired { token, attempt }) => {
                        assert!(
                            token.0 > 41 && token.0 + 60_000 > now_ms(),
                            "{what}: {token}"
                        );
                        format!("acquired attempt {attempt}")
                    }
                    Ok(Claim::InFlight { retry_after }) => {
                        assert!(
                            retry_after > Duration::from_secs(55),
                            "{what}: {retry_after:?}"
                        );
                        assert!(
                            retry_after <= Duration::from_secs(60),
                            "{what}: {retry_after:?}"
                        );
                        "inflight".to_string()
                    }
                    Ok(other) => format!("{other:?}"),
                    Err(StoreError::Corrupt { key, detail }) => {
                        assert_eq!(key, s.redis_key(&k));
                        format!("corrupt: {detail}")
                    }
                    Err(e) => panic!("{what} ({mode}): {e}"),
                };
                answers.push((answer, trips));
            }
            assert_eq!(answers[0].0, answers[1].0, "{what}, store {n}");
            // The script takes one round trip; the plain path one when it answers, two when it
            // leaves the answer to the script (a takeover, an unreadable record).
            assert_eq!(answers[1].1, 1, "{what}");
            assert!((1..=2).contains(&answers[0].1), "{what}: {answers:?}");
        }
    }
}

/// A plain claim whose reply comes too late for its token to stand (here: writes paused for
/// 150 ms) is confirmed by the script, which reissues token and lease end from the server clock:
/// still `Acquired` on attempt 1, the record holds the answered token, and the owner completes.
#[tokio::test]
async fn a_late_plain_claim_gets_its_token_reissued_by_the_script() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let mut admin = admin(&server.url()).await;
    for (n, s) in stores(&server.url()).await.iter().enumerate() {
        let k = key("late", &format!("k{n}"));
        let f = fp("a");
        next_claim_plain(s).await;
        let () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(150)
            .arg("WRITE")
            .query_async(&mut admin)
            .await
            .expect("CLIENT PAUSE");
        let sent_at = now_ms();
        let (c, sent) = counted(s, &mut admin, &k, &f).await;
        let Claim::Acquired { token, attempt } = c else {
            panic!("expected Acquired, got {c:?}")
        };
        assert_eq!(attempt, 1);
        // The plain `SET`, then the script's call with its `SET`.
        assert_eq!(sent, (1, 2, 2), "{sent:?}");
        // From `TIME` after the pause, not from the estimate when the claim was sent.
        assert!(token.0 >= sent_at + 100, "{token} sent at {sent_at}");
        let record = s.get(&k).await.expect("get").expect("record");
        assert_eq!((record.token, record.attempt), (token, 1));
        let done = s
            .complete(&k, token, &Outcome::succeeded("ok"), RETENTION)
            .await;
        assert_eq!(done.expect("complete"), Fence::Held);
    }
}

/// With `replicas` configured the plain claim waits for them like the script does: a standalone
/// server without replicas cannot acknowledge, so the claim fails instead of answering `Acquired`.
#[tokio::test]
async fn plain_claims_wait_for_replicas() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let mut admin = admin(&server.url()).await;
    let s = RedisStore::builder(server.url())
        .prefix(unique("idemq-wait"))
        .max_batch(1)
        .replicas(1)
        .replica_timeout(Duration::from_millis(50))
        .build()
        .await
        .expect("connect");
    let k = key("wait", "k");
    let before = commandstats(&mut admin).await;
    let r = claim(&s, &k, &fp("a")).await;
    assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
    let after = commandstats(&mut admin).await;
    let delta = |n: &str| after.get(n).copied().unwrap_or(0) - before.get(n).copied().unwrap_or(0);
    assert_eq!((delta("set"), delta("wait"), delta("evalsha")), (1, 1, 0));
}
