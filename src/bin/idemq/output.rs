//! Rendering records as text or JSON.

use crate::args::Output;
use idemq::store::{Record, RecordState};
use serde_json::{json, Value};
use std::time::UNIX_EPOCH;

/// A record as a JSON object (the `--output json` form).
pub fn record_json(r: &Record, raw: bool) -> Value {
    let mut v = json!({
        "scope": r.key.scope,
        "key": r.key.key.as_str(),
        "state": r.state.name(),
        "token": r.token.0,
        "attempt": r.attempt,
        "fingerprint": r.fingerprint.to_hex(),
        "expires_in_ms": r.expires_in.map(|d| d.as_millis() as u64),
    });
    match &r.state {
        RecordState::InProgress { lease_remaining } => {
            v["lease_remaining_ms"] = json!(lease_remaining.as_millis() as u64);
            v["lease_expired"] = json!(lease_remaining.is_zero());
        }
        RecordState::Completed {
            outcome,
            completed_at,
        } => {
            v["outcome_status"] = json!(outcome.status.as_str());
            v["completed_at_ms"] = json!(completed_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0));
            v["outcome"] = if raw {
                json!(String::from_utf8_lossy(&outcome.body))
            } else {
                serde_json::from_slice(&outcome.body)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&outcome.body)))
            };
        }
        RecordState::Released => {}
    }
    v
}

/// Prints a record.
pub fn record(out: Output, r: &Record, raw: bool) {
    let v = record_json(r, raw);
    match out {
        Output::Json => println!("{v}"),
        Output::Text => {
            let fields = [
                "scope",
                "key",
                "state",
                "token",
                "attempt",
                "fingerprint",
                "lease_remaining_ms",
                "lease_expired",
                "expires_in_ms",
                "outcome_status",
                "completed_at_ms",
            ];
            for f in fields {
                if let Some(x) = v.get(f).filter(|x| !x.is_null()) {
                    println!("{f:<19}{}", plain(x));
                }
            }
            if let RecordState::Completed { outcome, .. } = &r.state {
                if raw {
                    println!("outcome");
                    println!("{}", String::from_utf8_lossy(&outcome.body));
                } else {
                    let pretty = serde_json::to_string_pretty(&v["outcome"]).unwrap_or_default();
                    println!("outcome\n{pretty}");
                }
            }
        }
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints any JSON value, or its text rendering.
pub fn value(out: Output, v: &Value, text: impl FnOnce() -> String) {
    match out {
        Output::Json => println!("{v}"),
        Output::Text => println!("{}", text()),
    }
}

/// Prints an error to stderr.
pub fn error(out: Output, kind: &str, msg: &str) {
    match out {
        Output::Json => eprintln!("{}", json!({ "error": kind, "message": msg })),
        Output::Text => eprintln!("idemq: {msg}"),
    }
}
