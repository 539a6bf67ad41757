//! The messages of one run: valid orders whose keys repeat (duplicate publishes) mixed with bad
//! inputs, each tagged with a unique `x-chaos-id` header so the dead-letter destination can be
//! matched back to what was published.

use std::collections::{BTreeMap, BTreeSet};

/// The header carrying each message's run-unique id.
pub const ID_HEADER: &str = "x-chaos-id";
/// The idempotency key header the consumers read.
pub const KEY_HEADER: &str = "Idempotency-Key";

/// Dead-letter reasons, as written by idemq in `x-idemq-reason`.
pub const MISSING: &str = "missing-idempotency-key";
/// Empty, too long or non-UTF-8 key.
pub const INVALID: &str = "invalid-idempotency-key";
/// Same key, other payload.
pub const CONFLICT: &str = "idempotency-key-conflict";

/// What the harness expects to become of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A valid order: its key's handler must run exactly once (over all copies).
    Valid,
    /// A bad input that must reach the dead-letter destination with this reason.
    DeadLetter(&'static str),
    /// An earlier key with another payload: exactly one of the pair runs, the other is
    /// dead-lettered as a conflict.
    Conflict,
}

/// One message to publish.
#[derive(Clone, Debug)]
pub struct Msg {
    /// Run-unique id (`x-chaos-id`).
    pub id: String,
    /// The `Idempotency-Key` header value; `None` leaves the header out.
    pub key: Option<Vec<u8>>,
    /// The body.
    pub payload: Vec<u8>,
    /// What must become of it.
    pub expect: Expect,
}

/// Everything published in one run, and the figures the verdict is checked against.
#[derive(Debug)]
pub struct Plan {
    /// In publish order.
    pub msgs: Vec<Msg>,
    /// Distinct keys of valid orders (conflict keys included: their first payload is valid).
    pub valid_keys: BTreeSet<String>,
    /// Bad inputs by id, with the reason they must be dead-lettered with.
    pub bad: BTreeMap<String, &'static str>,
    /// Keys that were also published with another payload.
    pub conflict_keys: BTreeSet<String>,
}

/// A small deterministic generator (xorshift64*), so a run can be repeated with `--seed`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

fn order_payload(key: &str, variant: &str) -> Vec<u8> {
    let amount = key
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 997
        + 1;
    format!(r#"{{"order":"{key}","amount":{amount},"variant":"{variant}"}}"#).into_bytes()
}

/// Builds `total` messages: a `bad_rate` share of bad inputs (missing, empty, too long and
/// non-UTF-8 keys, and conflicting payloads, in turn), the rest valid orders of which a
/// `dup_rate` share repeat an earlier key with the identical payload.
pub fn plan(run: &str, total: usize, dup_rate: f64, bad_rate: f64, rng: &mut Rng) -> Plan {
    let bad_total = ((total as f64) * bad_rate).round() as usize;
    let mut kinds: Vec<bool> = (0..total).map(|i| i < bad_total).collect();
    // Shuffle so bad inputs are spread over the run (Fisher–Yates); the first message stays
    // valid, so a conflict always has an earlier key to collide with.
    for i in (2..kinds.len()).rev() {
        let j = 1 + rng.below(i);
        kinds.swap(i, j);
    }
    if kinds.first() == Some(&true) {
        if let Some(pos) = kinds.iter().position(|b| !b) {
            kinds.swap(0, pos);
        }
    }
    let mut p = Plan {
        msgs: Vec::with_capacity(total),
        valid_keys: BTreeSet::new(),
        bad: BTreeMap::new(),
        conflict_keys: BTreeSet::new(),
    };
    let mut keys: Vec<String> = Vec::new();
    let mut bad_seen = 0usize;
    for (n, is_bad) in kinds.into_iter().enumerate() {
        let id = format!("{run}-m{n}");
        let msg = if !is_bad || keys.is_empty() {
            let key = if !keys.is_empty() && rng.chance(dup_rate) {
                keys[rng.below(keys.len())].clone()
            } else {
                let k = format!("order-{run}-{}", keys.len());
                keys.push(k.clone());
                k
            };
            p.valid_keys.insert(key.clone());
            Msg {
                id,
                payload: order_payload(&key, "a"),
                key: Some(key.into_bytes()),
                expect: Expect::Valid,
            }
        } else {
            bad_seen += 1;
            let (key, expect): (Option<Vec<u8>>, Expect) = match bad_seen % 5 {
                1 => (None, Expect::DeadLetter(MISSING)),
                2 => (Some(Vec::new()), Expect::DeadLetter(INVALID)),
                3 => (Some(vec![b'k'; 300]), Expect::DeadLetter(INVALID)),
                4 => (
                    Some(vec![b'o', 0xff, 0xfe, b'x']),
                    Expect::DeadLetter(INVALID),
                ),
                _ => {
                    let key = keys[rng.below(keys.len())].clone();
                    p.conflict_keys.insert(key.clone());
                    (Some(key.into_bytes()), Expect::Conflict)
                }
            };
            let payload = match &expect {
                Expect::Conflict => {
                    order_payload(&String::from_utf8_lossy(key.as_deref().unwrap_or(b"")), "b")
                }
                _ => format!(r#"{{"bad":"{id}"}}"#).into_bytes(),
            };
            if let Expect::DeadLetter(reason) = expect {
                p.bad.insert(id.clone(), reason);
            }
            Msg {
                id,
                key,
                payload,
                expect,
            }
        };
        p.msgs.push(msg);
    }
    p
}
