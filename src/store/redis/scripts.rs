//! The Lua scripts: each store operation is one `EVALSHA` (one round trip), atomic on the server.
//!
//! A record is one Redis **string** (format version 2), fixed-format fields first and the outcome
//! body last, so the body may hold any bytes (including `|`):
//!
//! ```text
//! 2|<st>|<tok>|<att>|<lu>|<ca>|<os>|<fp>|<ob>
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `2` | format version |
//! | `st` | state: `p` in progress, `r` released tombstone, `c` completed |
//! | `tok` | fencing token (decimal): `max(previous + 1, server clock in ms)`, see below |
//! | `att` | attempt number (decimal) |
//! | `lu` | lease end, server clock in ms since the epoch; state `p` only, empty otherwise |
//! | `ca` | completed-at, ms since the epoch; state `c` only, empty otherwise |
//! | `os` | outcome status `succeeded` / `failed`; state `c` only, empty otherwise |
//! | `fp` | payload fingerprint, 64 lower-case hex digits |
//! | `ob` | outcome body, raw bytes to the end of the value; empty unless state `c` |
//!
//! Why a string rather than a hash (format 1): Redis CPU per operation is dominated by the
//! `redis.call`s a script makes (each one marshals its arguments and reply between Lua and RESP), so
//! one read plus one `SET … PX` (value and TTL in one command) replaces `HMGET` + `HSET` +
//! `PEXPIRE`. Format-1 records (hashes) are not migrated: they read as corrupt (`WRONGTYPE`) until
//! `idemq key forget` or their TTL removes them.
//!
//! Calls per operation (issue 16): a claim of a new key is one `SET key <record> NX GET PX ttl`
//! (Redis ≥ 7.0) plus the run's shared `TIME`; a replay reads the record with that same call (it
//! writes nothing when the key exists) or, when the previous key of its batch existed, with a
//! `GET`; a complete is `GET` + `SET … PX` (+ the shared `TIME` in a batch; a single-key complete
//! gets its completed-at time from the store's clock estimate when it has one). Where `SET … NX GET` is refused
//! (Redis 6 has no `NX GET`; a server out of memory refuses every write) the claim reads with `GET`
//! and writes with `SET … PX` for the rest of the run, so replays are still answered. A single-key
//! claim after one that acquired usually runs no script at all: the store sends that same
//! `SET … NX GET PX` itself, with a token and lease end from its estimate of the server clock
//! (the plain claim, see `mod.rs`), and calls `CLAIM` only for what that cannot answer; `CLAIM`'s
//! optional fifth argument then confirms a plain claim whose reply came too late for its token.
//!
//! The hot paths avoid Lua work too: a replay (a completed record with the caller's fingerprint)
//! and the owner's complete (an in-progress record with the caller's token) are recognised with
//! plain comparisons and one short anchored pattern over the fixed fields, checking everything
//! the general `parse` checks; any other value goes through `parse`, which names what is wrong.
//!
//! Times come from `redis.call('TIME')`, read lazily and at most once per script run, so consumers'
//! clock skew does not matter. Redis ≥ 6 is required (`SET … KEEPTTL`; effects replication, which
//! makes `TIME` inside a writing script safe, is the default since 5).
//!
//! **Tokens** are `max(previous token + 1, server clock in ms since the epoch)`, the clock being
//! the `TIME` the acquiring claim reads anyway (no extra `redis.call`). So a key's token keeps
//! growing even across the record's expiry: a claim of a key whose record expired (and is
//! therefore gone from Redis) gets a token larger than any the old record had, and an owner that
//! stalled past the record's lifetime is refused (`lost`) instead of overwriting the new owner.
//! This holds as long as the server clock does not step back by more than a record's lifetime
//! (at least its lease); more than one claim of the same key per millisecond only moves its token
//! ahead of the clock by one per claim. Records written with the old counter tokens (1, 2, …)
//! read unchanged; their next claim jumps to the clock. A plain claim's token (written by the
//! store, see `mod.rs`) is at least the server clock when its `SET` ran, and at most a few ms
//! ahead of it, so the same holds across both kinds of claims: a record that vanished was written
//! before (expired: at least its lease before, and plain claims need leases of 100 ms or more).
//!
//! Every script validates the record before acting on it (hot-path checks or `parse`), and answers
//! `corrupt, detail` instead of acting on a record it cannot read: a key of another type, a value that does not parse, another
//! format version, a malformed field, or a field the state does not use being set.
//!
//! `claim` and `complete` also come as `*_MANY` scripts for group commit (see `batch.rs`): they
//! run the same per-record Lua function over every key in `KEYS`, in order, and answer one flat
//! array with a fixed number of items per key ([`CLAIM_REPLY`], [`COMPLETE_REPLY`]), which the
//! batcher cuts back into the reply the single-key script gives (a flat array costs Redis less to
//! convert than one table per key). A batch reads `TIME` at most once. On standalone Redis the
//! keys of one batch may lie in different slots; on a Cluster the batcher sends one call per slot
//! (a script may only touch keys of one slot).

use redis::Script;

/// Format version: the value's first field; records with another version are reported as corrupt.
pub(crate) const FORMAT_VERSION: &str = "2";

/// The server clock, read at most once per script run (a batch shares one reading) and only by
/// the paths that need it; `clock_text` is the same reading as text, formatted once.
const CLOCK: &str = r#"
local clock, clock_text
local function now_ms()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    clock_text = string.format('%d', clock)
  end
  return clock
end
"#;

/// The lease end (text) for a lease given as text, computed once per distinct lease per run (the
/// keys of a batch normally share one).
const LEASE_END: &str = r#"
local lease_text, lease_end_text
local function lease_end(lease)
  if lease ~= lease_text then
    lease_text = lease
    lease_end_text = string.format('%d', now_ms() + tonumber(lease))
  end
  return lease_end_text
end
"#;

/// `parse` validates a value field by field (the general path; the hot paths of `claim` and
/// `complete` accept the common records with a few plain comparisons first, see there) and
/// `encode` writes one. tok and att stay text (compared as text, converted only to compute the
/// next ones); lu is a number in state p, the only state that has one.
const RECORD: &str = r#"
-- The value of a record; lu and ca are strings ('' when unused), ob may be any bytes. Plain `..`
-- (no table, no format); tok and att are small integers, which Lua prints without exponent.
local function encode(st, tok, att, lu, ca, os, fp, ob)
  return '@VERSION@|' .. st .. '|' .. tok .. '|' .. att .. '|' .. lu .. '|' .. ca .. '|' .. os .. '|' ..
    fp .. '|' .. ob
end

-- `s` is what `redis.pcall('GET' | 'SET … GET')` answered: false for no key, an error table for a
-- key of another type. nil: absent; false, why: unreadable; otherwise the record. One pattern
-- accepts a well-formed value; anything else is checked field by field for the reason.
local function parse(s)
  if not s then return nil end
  if type(s) ~= 'string' then
    return false, 'not a string (' .. tostring(type(s) == 'table' and s.err or s) ..
      '); format 1 records were hashes: forget the key or let it expire'
  end
  local st, tok, att, lu, ca, os, fp, body =
    string.match(s, '^@VERSION@|([prc])|(%d+)|(%d+)|(%d*)|(%d*)|([a-z]*)|([0-9a-f]+)|()')
  local ok = false
  if st and #fp == 64 then
    if st == 'c' then
      ok = lu == '' and ca ~= '' and (os == 'succeeded' or os == 'failed')
    else
      ok = ca == '' and os == '' and body > #s and (st == 'r') == (lu == '')
    end
  end
  if not ok then
    st, tok, att, lu, ca, os, fp, body =
      string.match(s, '^@VERSION@|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|()')
    if not st then
      local v = string.match(s, '^(%d+)|')
      if v and v ~= '@VERSION@' then
        return false, 'unknown format version ' .. string.sub(v, 1, 20)
      end
      return false, 'malformed value (expected @VERSION@|st|tok|att|lu|ca|os|fp|ob)'
    end
    if not string.find(tok, '^%d+$') then return false, 'bad field tok' end
    if not string.find(att, '^%d+$') then return false, 'bad field att' end
    if #fp ~= 64 or string.find(fp, '[^0-9a-f]') then return false, 'bad field fp' end
    if st == 'p' then
      if not string.find(lu, '^%d+$') then return false, 'bad field lu' end
      if ca ~= '' or os ~= '' or body <= #s then return false, 'outcome fields set in state p' end
    elseif st == 'c' then
      if os ~= 'succeeded' and os ~= 'failed' then return false, 'bad field os' end
      if not string.find(ca, '^%d+$') then return false, 'bad field ca' end
      if lu ~= '' then return false, 'field lu set in state c' end
    elseif st == 'r' then
      if lu ~= '' or ca ~= '' or os ~= '' or body <= #s then
        return false, 'lease or outcome fields set in state r'
      end
    else
      return false, 'bad field st'
    end
  end
  local ob = ''
  if st == 'c' then ob = string.sub(s, body) end
  if st == 'p' then lu = tonumber(lu) else lu = nil end
  return {st = st, tok = tok, fp = fp, att = att, lu = lu, os = os, ob = ob, ca = ca}
end
"#;

/// `claim_one(key, fingerprint, lease ms, record TTL ms)`: one record's claim; the TTL is
/// `max(retention, lease)`, computed by the client. It answers its reply as multiple values:
/// `acquired, tok, att` / `inflight, ms` / `completed, os, ob` / `conflict, fp` / `corrupt, why`.
///
/// It starts with `SET key <new in-progress record> NX GET PX ttl` (Redis ≥ 7.0): a new key is
/// claimed in that one call (plus the run's shared `TIME`, which the token and lease end need),
/// and any other key is left as it was, its value answered for the checks below. That call costs
/// a replay more than a `GET` (it builds the new value and carries six arguments), and the keys of
/// one batch tend to be alike (new traffic, or a redelivered burst), so after a key that existed
/// the next key of the run is read with `GET` (and written with `SET … PX` if absent). A completed
/// record with the caller's fingerprint (a replay) is recognised by plain comparisons and answered
/// from there. Everything else takes the general path: `parse`, then as the contract says (a
/// takeover writes one more `SET … PX`). Where the server refuses `NX GET` (Redis 6; or out of
/// memory, when it refuses every write) the rest of the run reads with `GET`.
///
/// The token is `max(previous + 1, now ms)` (see the module docs), from the same `TIME` reading.
const CLAIM_FN: &str = r#"
local nx_get, expect_new = true, true
local function claim_one(key, fp, lease, ttl)
  local s
  if nx_get and expect_new then
    now_ms()
    s = redis.pcall('SET', key,
      '@VERSION@|p|' .. clock_text .. '|1|' .. lease_end(lease) .. '|||' .. fp .. '|',
      'NX', 'GET', 'PX', ttl)
    if not s then return 'acquired', clock_text, '1' end
    if type(s) == 'table' and not string.find(tostring(s.err), 'WRONGTYPE', 1, true) then
      nx_get = false
      s = redis.pcall('GET', key)
    end
  else
    s = redis.pcall('GET', key)
  end
  -- The next key of the run is probably like this one.
  expect_new = not s
  if not s then
    now_ms()
    redis.call('SET', key,
      '@VERSION@|p|' .. clock_text .. '|1|' .. lease_end(lease) .. '|||' .. fp .. '|', 'PX', ttl)
    return 'acquired', clock_text, '1'
  end
  -- A replay: `@VERSION@|c|<tok>|<att>||<ca>|<os>|<fp>|<ob>` with the caller's fingerprint (so a
  -- valid one); every other field is checked as `parse` would.
  if type(s) == 'string' and string.sub(s, 1, 4) == '@VERSION@|c|' then
    local _, e = string.find(s, '^%d+|%d+||%d+|', 5)
    if e then
      local os, p
      if string.sub(s, e + 1, e + 10) == 'succeeded|' then
        os, p = 'succeeded', e + 11
      elseif string.sub(s, e + 1, e + 7) == 'failed|' then
        os, p = 'failed', e + 8
      end
      if p and #fp == 64 and string.sub(s, p, p + 63) == fp and string.byte(s, p + 64) == 124 then
        return 'completed', os, string.sub(s, p + 65)
      end
    end
  end
  local rec, why = parse(s)
  if rec == false then return 'corrupt', why end
  -- Replays and conflicts must not read the clock when `GET` read the record (`TIME` is a
  -- `redis.call`). Tokens stay below 1e14, so Lua prints them in plain decimal, as `complete`
  -- compares them.
  local tok, att
  if rec then
    if rec.st ~= 'r' and rec.fp ~= fp then return 'conflict', rec.fp end
    if rec.st == 'c' then return 'completed', rec.os, rec.ob end
    if rec.st == 'p' and rec.lu > now_ms() then return 'inflight', rec.lu - now_ms() end
    tok, att = rec.tok + 1, rec.att + 1
    if tok <= now_ms() then tok = clock_text end
  else
    now_ms()
    tok, att = clock_text, '1'
  end
  redis.call('SET', key, encode('p', tok, att, lease_end(lease), '', '', fp, ''), 'PX', ttl)
  return 'acquired', tok, att
end
"#;
/// KEYS[1] record; ARGV fingerprint, lease ms, record TTL ms, `found` when the store's previous
/// claim found its key (a run of one key has no previous key of its own to go by), and optionally
/// the value a plain `SET … NX` of this caller just wrote (see the plain claim in `mod.rs`).
///
/// That value's token came from the client's estimate of this server's clock, and its reply took
/// too long for the estimate to be trusted: if the record is still exactly that value, its token
/// and lease end are reissued from `TIME` (`max(token + 1, now)`, as a takeover would) and the
/// claim is `acquired`, attempt 1; otherwise (taken over, completed, gone) the claim is answered
/// as any other from the record as it is now.
const CLAIM: &str = r#"
expect_new = ARGV[4] ~= 'found'
if ARGV[5] then
  local s = redis.pcall('GET', KEYS[1])
  if s == ARGV[5] then
    local tok = tonumber(string.match(s, '^@VERSION@|p|(%d+)|')) + 1
    if tok <= now_ms() then tok = clock_text end
    redis.call('SET', KEYS[1], encode('p', tok, '1', lease_end(ARGV[2]), '', '', ARGV[1], ''),
      'PX', ARGV[3])
    return {'acquired', tok, '1'}
  end
  expect_new = false
end
return {claim_one(KEYS[1], ARGV[1], ARGV[2], ARGV[3])}
"#;

/// Arguments per key of the claim scripts.
pub(crate) const CLAIM_ARGS: usize = 3;
/// Reply items per key of the batched claim script (`claim_one`'s values, padded with `''`).
pub(crate) const CLAIM_REPLY: usize = 3;

/// `complete_one(key, token, outcome status, outcome body, retention ms[, completed-at ms])`:
/// `GET`, and for the owner `TIME` (shared; not when the caller passed the completed-at time) +
/// one `SET … PX retention`; answers `held` / `lost` / `corrupt, why`.
/// The token is compared as text: both sides write it in canonical decimal. The owner's own
/// in-progress record is recognised by plain comparisons and one short pattern; anything else
/// takes the general path through `parse`.
const COMPLETE_FN: &str = r#"
local function complete_one(key, tok, os, ob, retention, ca)
  local s = redis.pcall('GET', key)
  -- `@VERSION@|p|<tok>|<att>|<lu>|||<fp>|` with the caller's token; the fingerprint is copied
  -- into the completed record, so it is checked (64 lower-case hex digits) as `parse` would.
  if type(s) == 'string' then
    local head = '@VERSION@|p|' .. tok .. '|'
    local n = #head
    if string.sub(s, 1, n) == head then
      local _, e, att = string.find(s, '^(%d+)|%d+|||', n + 1)
      if e and #s == e + 65 then
        local _, f = string.find(s, '^[0-9a-f]+|', e + 1)
        if f == e + 65 then
          if not ca then now_ms() ca = clock_text end
          redis.call('SET', key, '@VERSION@|c|' .. tok .. '|' .. att .. '||' .. ca .. '|' ..
            os .. string.sub(s, e) .. ob, 'PX', retention)
          return 'held'
        end
      end
    end
  end
  local rec, why = parse(s)
  if rec == false then return 'corrupt', why end
  if rec == nil or rec.tok ~= tok or rec.st == 'r' then return 'lost' end
  if rec.st == 'c' then return 'held' end
  if not ca then now_ms() ca = clock_text end
  redis.call('SET', key, encode('c', rec.tok, rec.att, '', ca, os, rec.fp, ob), 'PX', retention)
  return 'held'
end
"#;

/// KEYS[1] record; ARGV token, outcome status, outcome body, retention ms, and optionally the
/// completed-at time (server clock ms, from the store's estimate of it: a `redis.call('TIME')`
/// costs the script about a seventh of its server time; the value is only reported).
const COMPLETE: &str =
    "return {complete_one(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])}";

/// Arguments per key of the complete scripts.
pub(crate) const COMPLETE_ARGS: usize = 4;
/// Reply items per key of the batched complete script.
pub(crate) const COMPLETE_REPLY: usize = 2;

/// KEYS[1] record; ARGV token, `retry` or `reset`. `GET` + `SET … KEEPTTL`: a tombstone lives
/// until the claim's TTL ends.
const RELEASE: &str = r#"
local key = KEYS[1]
local rec, why = parse(redis.pcall('GET', key))
if rec == false then return {'corrupt', why} end
if rec == nil or rec.tok ~= ARGV[1] or rec.st == 'c' then return {'lost'} end
local att = rec.att
if ARGV[2] == 'reset' then att = '0' end
redis.call('SET', key, encode('r', rec.tok, att, '', '', '', rec.fp, ''), 'KEEPTTL')
return {'held'}
"#;

/// KEYS[1] record; ARGV token, lease ms. `GET` + `TIME` + `PTTL` + one `SET`: `KEEPTTL` when the
/// TTL outlives the new lease (or there is none), else `PX lease`.
const RENEW: &str = r#"
local key = KEYS[1]
local lease = tonumber(ARGV[2])
local rec, why = parse(redis.pcall('GET', key))
if rec == false then return {'corrupt', why} end
if rec == nil or rec.tok ~= ARGV[1] or rec.st ~= 'p' then return {'lost'} end
local value = encode('p', rec.tok, rec.att, lease_end(ARGV[2]), '', '', rec.fp, '')
local ttl = redis.call('PTTL', key)
if ttl >= 0 and ttl < lease then
  redis.call('SET', key, value, 'PX', string.format('%d', lease))
else
  redis.call('SET', key, value, 'KEEPTTL')
end
return {'held'}
"#;

/// KEYS[1] record. Answers `{'absent'}` or
/// `{'record', now, pttl, st, tok, fp, att, lease_left_ms, os, ob, ca}`.
const GET: &str = r#"
local key = KEYS[1]
local rec, why = parse(redis.pcall('GET', key))
if rec == false then return {'corrupt', why} end
if rec == nil then return {'absent'} end
local now = now_ms()
local left = 0
if rec.st == 'p' and rec.lu > now then left = rec.lu - now end
local ca = rec.ca
if ca == '' then ca = '0' end
return {'record', now, redis.call('PTTL', key), rec.st, tonumber(rec.tok), rec.fp,
        tonumber(rec.att), left, rec.os, rec.ob, ca}
"#;

/// The `*_MANY` body for a per-record function `one(key, arg1..argN)` answering up to `width`
/// values: `KEYS` are the records, `ARGV` holds `args` arguments per key in key order, and the
/// reply is flat, `width` items per key in key order (missing values padded with `''`). A flat
/// array costs Redis less to convert than one table per key.
fn many(one: &str, args: usize, width: usize) -> String {
    let argv: Vec<String> = (1..=args).map(|i| format!("ARGV[a + {i}]")).collect();
    let vals: Vec<String> = (1..=width).map(|i| format!("v{i}")).collect();
    let stores: Vec<String> = (1..=width)
        .map(|i| {
            if i == 1 {
                format!("out[n + {i}] = v{i}")
            } else {
                format!("out[n + {i}] = v{i} or ''")
            }
        })
        .collect();
    format!(
        "local out, n = {{}}, 0\nfor i, key in ipairs(KEYS) do\n  local a = (i - 1) * {args}\n  \
         local {} = {one}(key, {})\n  {}\n  n = n + {width}\nend\nreturn out\n",
        vals.join(", "),
        argv.join(", "),
        stores.join("\n  "),
    )
}

/// The loaded scripts of one store.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) claim: Script,
    pub(crate) claim_many: Script,
    pub(crate) complete: Script,
    pub(crate) complete_many: Script,
    pub(crate) release: Script,
    pub(crate) renew: Script,
    pub(crate) get: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        // Each script holds only the helpers it uses: every `local function` is a closure Redis
        // creates again on each run.
        let s = |parts: &[&str]| {
            let text: String = parts.iter().flat_map(|p| [p, "\n"]).collect();
            Script::new(&text.replace("@VERSION@", FORMAT_VERSION))
        };
        let claim_many = many("claim_one", CLAIM_ARGS, CLAIM_REPLY);
        let complete_many = many("complete_one", COMPLETE_ARGS, COMPLETE_REPLY);
        Self {
            claim: s(&[CLOCK, LEASE_END, RECORD, CLAIM_FN, CLAIM]),
            claim_many: s(&[CLOCK, LEASE_END, RECORD, CLAIM_FN, &claim_many]),
            complete: s(&[CLOCK, RECORD, COMPLETE_FN, COMPLETE]),
            complete_many: s(&[CLOCK, RECORD, COMPLETE_FN, &complete_many]),
            release: s(&[RECORD, RELEASE]),
            renew: s(&[CLOCK, LEASE_END, RECORD, RENEW]),
            get: s(&[CLOCK, RECORD, GET]),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 7] {
        [
            &self.claim,
            &self.claim_many,
            &self.complete,
            &self.complete_many,
            &self.release,
            &self.renew,
            &self.get,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::{many, FORMAT_VERSION};

    #[test]
    fn many_calls_the_per_record_function_with_each_keys_own_arguments() {
        let body = many("claim_one", 3, 3);
        assert!(body.contains("local a = (i - 1) * 3"), "{body}");
        assert!(
            body.contains(
                "local v1, v2, v3 = claim_one(key, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])"
            ),
            "{body}"
        );
        assert!(body.contains("out[n + 1] = v1\n"), "{body}");
        assert!(body.contains("out[n + 3] = v3 or ''"), "{body}");
        assert!(body.contains("n = n + 3"), "{body}");
        assert!(body.trim_end().ends_with("return out"), "{body}");
    }

    #[test]
    fn the_hot_paths_fixed_offsets_assume_a_one_character_version() {
        // `claim_one` finds the fields after `2|c|` at offset 5.
        assert_eq!(FORMAT_VERSION.len(), 1);
    }
}
