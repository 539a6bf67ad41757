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
//! one `GET` plus one `SET … PX` (value and TTL in one command) replaces `HMGET` + `HSET` +
//! `PEXPIRE`. A first-time message costs 4 calls (claim `GET` + `SET`, complete `GET` + `SET`) plus
//! one shared `TIME` per script run; a replay costs one `GET`. Format-1 records (hashes) are not
//! migrated: they read as corrupt (`WRONGTYPE`) until `idemq key forget` or their TTL removes them.
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
//! read unchanged; their next claim jumps to the clock.
//!
//! Every script first validates the record (`load`), and answers `{'corrupt', detail}` instead of
//! acting on a record it cannot read: a key of another type, a value that does not parse, another
//! format version, a malformed field, or a field the state does not use being set.
//!
//! `claim` and `complete` also come as `*_MANY` scripts for group commit (see `batch.rs`): they
//! run the same per-record Lua function over every key in `KEYS`, in order, and answer an array
//! holding, per key, exactly the reply the single-key script gives. A batch reads `TIME` at most
//! once. On standalone Redis the keys of one batch may lie in different slots; on a Cluster the
//! batcher sends one call per slot (a script may only touch keys of one slot).

use redis::Script;

/// Format version: the value's first field; records with another version are reported as corrupt.
pub(crate) const FORMAT_VERSION: &str = "2";

const PRELUDE: &str = r#"
-- Server clock in ms, read at most once per script run (a batch shares one reading), and only
-- by the paths that need it.
local clock
local function now_ms()
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock
end

local function int(n)
  return string.format('%d', n)
end

-- The server clock as text, and the lease end for a lease given as text, each computed once per
-- script run (the keys of a batch share them).
local clock_text
local function now_text()
  if not clock_text then clock_text = int(now_ms()) end
  return clock_text
end
local lease_ends = {}
local function lease_end(lease)
  local s = lease_ends[lease]
  if not s then
    s = int(now_ms() + tonumber(lease))
    lease_ends[lease] = s
  end
  return s
end

local function digits(s)
  return string.match(s, '^%d+$') ~= nil
end

-- The value of a record; lu and ca are strings ('' when unused), ob may be any bytes. Plain `..`
-- (no table, no format) because it runs once per claim and per complete; tok and att are small
-- integers, which Lua prints without exponent.
local function encode(st, tok, att, lu, ca, os, fp, ob)
  return '@VERSION@|' .. st .. '|' .. tok .. '|' .. att .. '|' .. lu .. '|' .. ca .. '|' .. os .. '|' ..
    fp .. '|' .. ob
end

-- tok and att stay text (compared as text, converted only to compute the next ones); lu is a
-- number in state p, the only state that has one. Number/text conversions (strtod, printf) are a
-- visible share of Redis CPU per message, so the hot paths make none.
local function record(st, tok, att, lu, ca, os, fp, ob)
  if st == 'p' then lu = tonumber(lu) else lu = nil end
  return {st = st, tok = tok, fp = fp, att = att, lu = lu, os = os, ob = ob, ca = ca}
end

-- The full check of a value, field by field, with the reason it is unreadable: the slow path,
-- taken only when the one-pattern check in `load` does not accept the value.
local function diagnose(s)
  local st, tok, att, lu, ca, os, fp, body =
    string.match(s, '^@VERSION@|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|()')
  if not st then
    local v = string.match(s, '^(%d+)|')
    if v and v ~= '@VERSION@' then return false, 'unknown format version ' .. string.sub(v, 1, 20) end
    return false, 'malformed value (expected @VERSION@|st|tok|att|lu|ca|os|fp|ob)'
  end
  if not digits(tok) then return false, 'bad field tok' end
  if not digits(att) then return false, 'bad field att' end
  if #fp ~= 64 or string.find(fp, '[^0-9a-f]') then return false, 'bad field fp' end
  local ob = ''
  if st == 'p' then
    if not digits(lu) then return false, 'bad field lu' end
    if ca ~= '' or os ~= '' or body <= #s then return false, 'outcome fields set in state p' end
  elseif st == 'c' then
    if os ~= 'succeeded' and os ~= 'failed' then return false, 'bad field os' end
    if not digits(ca) then return false, 'bad field ca' end
    if lu ~= '' then return false, 'field lu set in state c' end
    ob = string.sub(s, body)
  elseif st == 'r' then
    if lu ~= '' or ca ~= '' or os ~= '' or body <= #s then
      return false, 'lease or outcome fields set in state r'
    end
  else
    return false, 'bad field st'
  end
  return record(st, tok, att, lu, ca, os, fp, ob)
end

-- nil: absent; false, why: unreadable; otherwise the record. One pattern whose character classes
-- already check every fixed field accepts a well-formed value (the Lua work per record is a large
-- part of Redis's CPU per message); anything it does not accept goes through `diagnose`, which
-- has the last word.
local function load(key)
  local s = redis.pcall('GET', key)
  if not s then return nil end
  if type(s) ~= 'string' then
    return false, 'not a string (' .. tostring(type(s) == 'table' and s.err or s) ..
      '); format 1 records were hashes: forget the key or let it expire'
  end
  local st, tok, att, lu, ca, os, fp, body =
    string.match(s, '^@VERSION@|([prc])|(%d+)|(%d+)|(%d*)|(%d*)|([a-z]*)|([0-9a-f]+)|()')
  if st and #fp == 64 then
    if st == 'c' then
      if lu == '' and ca ~= '' and (os == 'succeeded' or os == 'failed') then
        return record(st, tok, att, lu, ca, os, fp, string.sub(s, body))
      end
    elseif ca == '' and os == '' and body > #s and (st == 'r') == (lu == '') then
      return record(st, tok, att, lu, ca, os, fp, '')
    end
  end
  return diagnose(s)
end
"#;

/// `claim_one(key, fingerprint, lease ms, record TTL ms)`: one record's claim; the TTL is
/// `max(retention, lease)`, computed by the client. Replay, conflict: `GET` only; in flight: `GET`
/// + `TIME`; acquire: `GET` + `TIME` + one `SET … PX`.
///
/// The token is `max(previous + 1, now ms)` (see the module docs), from the same `TIME` reading.
const CLAIM_FN: &str = r#"
local function claim_one(key, fp, lease, ttl)
  local rec, why = load(key)
  if rec == false then return {'corrupt', why} end
  -- The clock as text for a new key (formatted once per script run; the client reads numbers
  -- in either form), numbers (Lua converts the text fields) for a takeover. Tokens stay below
  -- 1e14, so Lua prints them in plain decimal, as `complete` compares them.
  -- Replays and conflicts must not read the clock (`TIME` is a `redis.call`).
  local tok, att
  if rec then
    if rec.st ~= 'r' and rec.fp ~= fp then return {'conflict', rec.fp} end
    if rec.st == 'c' then return {'completed', rec.os, rec.ob} end
    if rec.st == 'p' and rec.lu > now_ms() then return {'inflight', rec.lu - now_ms()} end
    tok, att = rec.tok + 1, rec.att + 1
    if tok <= now_ms() then tok = now_text() end
  else
    tok, att = now_text(), '1'
  end
  redis.call('SET', key, encode('p', tok, att, lease_end(lease), '', '', fp, ''), 'PX', ttl)
  return {'acquired', tok, att}
end
"#;
/// KEYS[1] record; ARGV fingerprint, lease ms, record TTL ms.
const CLAIM: &str = "return claim_one(KEYS[1], ARGV[1], ARGV[2], ARGV[3])";

/// Arguments per key of the claim scripts.
pub(crate) const CLAIM_ARGS: usize = 3;

/// `complete_one(key, token, outcome status, outcome body, retention ms)`: `GET`, and for the
/// owner `TIME` (shared) + one `SET … PX retention`. The token is compared as text: both sides
/// write it in canonical decimal.
const COMPLETE_FN: &str = r#"
local function complete_one(key, tok, os, ob, retention)
  local rec, why = load(key)
  if rec == false then return {'corrupt', why} end
  if rec == nil or rec.tok ~= tok or rec.st == 'r' then return {'lost'} end
  if rec.st == 'c' then return {'held'} end
  redis.call('SET', key, encode('c', rec.tok, rec.att, '', now_text(), os, rec.fp, ob),
             'PX', retention)
  return {'held'}
end
"#;

/// KEYS[1] record; ARGV token, outcome status, outcome body, retention ms.
const COMPLETE: &str = "return complete_one(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])";

/// Arguments per key of the complete scripts.
pub(crate) const COMPLETE_ARGS: usize = 4;

/// KEYS[1] record; ARGV token, `retry` or `reset`. `GET` + `SET … KEEPTTL`: a tombstone lives
/// until the claim's TTL ends.
const RELEASE: &str = r#"
local key = KEYS[1]
local rec, why = load(key)
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
local rec, why = load(key)
if rec == false then return {'corrupt', why} end
if rec == nil or rec.tok ~= ARGV[1] or rec.st ~= 'p' then return {'lost'} end
local value = encode('p', rec.tok, rec.att, lease_end(ARGV[2]), '', '', rec.fp, '')
local ttl = redis.call('PTTL', key)
if ttl >= 0 and ttl < lease then
  redis.call('SET', key, value, 'PX', int(lease))
else
  redis.call('SET', key, value, 'KEEPTTL')
end
return {'held'}
"#;

/// KEYS[1] record. Answers `{'absent'}` or
/// `{'record', now, pttl, st, tok, fp, att, lease_left_ms, os, ob, ca}`.
const GET: &str = r#"
local key = KEYS[1]
local rec, why = load(key)
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

/// The `*_MANY` body for a per-record function `one(key, arg1..argN)`: `KEYS` are the records,
/// `ARGV` holds `args` arguments per key in key order, and the reply is one `one` reply per key.
fn many(one: &str, args: usize) -> String {
    let argv: Vec<String> = (1..=args).map(|i| format!("ARGV[a + {i}]")).collect();
    format!(
        "local out = {{}}\nfor i, key in ipairs(KEYS) do\n  local a = (i - 1) * {args}\n  \
         out[i] = {one}(key, {})\nend\nreturn out\n",
        argv.join(", ")
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
        let s = |parts: &[&str]| {
            let mut text = PRELUDE.to_string();
            for part in parts {
                text.push('\n');
                text.push_str(part);
            }
            Script::new(&text.replace("@VERSION@", FORMAT_VERSION))
        };
        Self {
            claim: s(&[CLAIM_FN, CLAIM]),
            claim_many: s(&[CLAIM_FN, &many("claim_one", CLAIM_ARGS)]),
            complete: s(&[COMPLETE_FN, COMPLETE]),
            complete_many: s(&[COMPLETE_FN, &many("complete_one", COMPLETE_ARGS)]),
            release: s(&[RELEASE]),
            renew: s(&[RENEW]),
            get: s(&[GET]),
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
    use super::many;

    #[test]
    fn many_calls_the_per_record_function_with_each_keys_own_arguments() {
        let body = many("claim_one", 3);
        assert!(body.contains("local a = (i - 1) * 3"), "{body}");
        assert!(
            body.contains("out[i] = claim_one(key, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])"),
            "{body}"
        );
        assert!(body.trim_end().ends_with("return out"), "{body}");
    }
}
