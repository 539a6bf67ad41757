//! The Lua scripts: each store operation is one `EVALSHA` (one round trip), atomic on the server.
//!
//! Record hash fields (format version 1):
//!
//! | field | meaning |
//! |---|---|
//! | `v` | format version, `"1"` |
//! | `st` | state: `p` in progress, `r` released tombstone, `c` completed |
//! | `tok` | fencing token |
//! | `fp` | payload fingerprint, 64 lower-case hex digits |
//! | `att` | attempt number |
//! | `lu` | lease end, server clock in ms since the epoch; read in state `p` only (left in place afterwards: saves a command) |
//! | `os`, `ob`, `ca` | outcome status, outcome body, completed-at ms (`c` only) |
//!
//! Times come from `redis.call('TIME')`, so consumers' clock skew does not matter. Redis ≥ 5 is
//! required (effects replication makes `TIME` inside a writing script safe).
//!
//! Every script first validates the record (`load`), and answers `{'corrupt', detail}` instead of
//! acting on a record it cannot read.

use redis::Script;

/// Version written in field `v`; records with another version are reported as corrupt.
pub(crate) const FORMAT_VERSION: &str = "1";

const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end

local function digits(s)
  return s and string.match(s, '^%d+$') ~= nil
end

-- nil: absent; false, why: unreadable; otherwise the record.
local function load(key)
  local ok, f = pcall(redis.call, 'HMGET', key, 'v', 'st', 'tok', 'fp', 'att', 'lu', 'os', 'ob', 'ca')
  if not ok then
    return false, 'not a hash (' .. tostring(type(f) == 'table' and f.err or f) .. ')'
  end
  local v, st, tok, fp, att, lu, os, ob, ca = f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]
  if not v then
    -- No field at all: absent (Redis drops empty hashes). Some fields but no version: corrupt.
    if not (st or tok or fp or att or lu or os or ob or ca) then return nil end
    return false, 'missing field v (format version)'
  end
  if v ~= '@VERSION@' then return false, 'unknown format version ' .. v end
  if not digits(tok) then return false, 'bad field tok' end
  if not digits(att) then return false, 'bad field att' end
  if not fp or #fp ~= 64 or not string.match(fp, '^[0-9a-f]+$') then
    return false, 'bad field fp'
  end
  if st == 'p' then
    if not digits(lu) then return false, 'bad field lu' end
  elseif st == 'c' then
    if os ~= 'succeeded' and os ~= 'failed' then return false, 'bad field os' end
    if not ob then return false, 'missing field ob' end
    if not digits(ca) then return false, 'bad field ca' end
  elseif st ~= 'r' then
    return false, 'bad field st'
  end
  return {st = st, tok = tonumber(tok), fp = fp, att = tonumber(att), lu = tonumber(lu),
          os = os, ob = ob, ca = ca}
end
"#;

/// KEYS[1] record; ARGV fingerprint, lease ms, retention ms.
const CLAIM: &str = r#"
local key, fp = KEYS[1], ARGV[1]
local lease, retention = tonumber(ARGV[2]), tonumber(ARGV[3])
local rec, why = load(key)
if rec == false then return {'corrupt', why} end
local now = now_ms()
if rec == nil then
  redis.call('HSET', key, 'v', '@VERSION@', 'st', 'p', 'tok', '1', 'fp', fp, 'att', '1', 'lu', int(now + lease))
  redis.call('PEXPIRE', key, int(math.max(retention, lease)))
  return {'acquired', 1, 1}
end
if rec.st ~= 'r' and rec.fp ~= fp then return {'conflict', rec.fp} end
if rec.st == 'c' then return {'completed', rec.os, rec.ob} end
if rec.st == 'p' and rec.lu > now then return {'inflight', rec.lu - now} end
local tok, att = rec.tok + 1, rec.att + 1
redis.call('HSET', key, 'st', 'p', 'tok', int(tok), 'fp', fp, 'att', int(att), 'lu', int(now + lease))
redis.call('PEXPIRE', key, int(math.max(retention, lease)))
return {'acquired', tok, att}
"#;

/// KEYS[1] record; ARGV token, outcome status, outcome body, retention ms.
const COMPLETE: &str = r#"
local key = KEYS[1]
local rec, why = load(key)
if rec == false then return {'corrupt', why} end
if rec == nil or rec.tok ~= tonumber(ARGV[1]) or rec.st == 'r' then return {'lost'} end
if rec.st == 'c' then return {'held'} end
redis.call('HSET', key, 'st', 'c', 'os', ARGV[2], 'ob', ARGV[3], 'ca', int(now_ms()))
redis.call('PEXPIRE', key, ARGV[4])
return {'held'}
"#;

/// KEYS[1] record; ARGV token, `retry` or `reset`.
const RELEASE: &str = r#"
local key = KEYS[1]
local rec, why = load(key)
if rec == false then return {'corrupt', why} end
if rec == nil or rec.tok ~= tonumber(ARGV[1]) or rec.st == 'c' then return {'lost'} end
if ARGV[2] == 'reset' then
  redis.call('HSET', key, 'st', 'r', 'att', '0')
else
  redis.call('HSET', key, 'st', 'r')
end
return {'held'}
"#;

/// KEYS[1] record; ARGV token, lease ms.
const RENEW: &str = r#"
local key = KEYS[1]
local lease = tonumber(ARGV[2])
local rec, why = load(key)
if rec == false then return {'corrupt', why} end
if rec == nil or rec.tok ~= tonumber(ARGV[1]) or rec.st ~= 'p' then return {'lost'} end
redis.call('HSET', key, 'lu', int(now_ms() + lease))
local ttl = redis.call('PTTL', key)
if ttl >= 0 and ttl < lease then redis.call('PEXPIRE', key, int(lease)) end
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
return {'record', now, redis.call('PTTL', key), rec.st, rec.tok, rec.fp, rec.att, left,
        rec.os or '', rec.ob or '', rec.ca or '0'}
"#;

/// The loaded scripts of one store.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) claim: Script,
    pub(crate) complete: Script,
    pub(crate) release: Script,
    pub(crate) renew: Script,
    pub(crate) get: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let s = |body: &str| {
            Script::new(&format!("{PRELUDE}\n{body}").replace("@VERSION@", FORMAT_VERSION))
        };
        Self {
            claim: s(CLAIM),
            complete: s(COMPLETE),
            release: s(RELEASE),
            renew: s(RENEW),
            get: s(GET),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 5] {
        [
            &self.claim,
            &self.complete,
            &self.release,
            &self.renew,
            &self.get,
        ]
    }
}
