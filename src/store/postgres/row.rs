//! Turning rows into records. Anything unexpected in a row is [`StoreError::Corrupt`] naming the
//! key, never a panic: rows may have been written by another version or edited by hand.

use crate::fingerprint::Fingerprint;
use crate::outcome::{Outcome, OutcomeStatus};
use crate::store::{Record, RecordKey, RecordState, StoreError, Token};
use std::time::{Duration, SystemTime};
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

/// A record as read (columns of `sql::READ_COLUMNS`, starting at some offset in the row).
#[derive(Debug)]
pub(crate) struct Stored {
    pub token: Token,
    pub fingerprint: Fingerprint,
    pub attempt: u32,
    pub state: RecordState,
    /// Time until the row expires; zero or less means it reads as absent.
    pub expires_us: i64,
}

impl Stored {
    pub(crate) fn into_record(self, key: RecordKey) -> Record {
        Record {
            key,
            token: self.token,
            fingerprint: self.fingerprint,
            attempt: self.attempt,
            state: self.state,
            expires_in: Some(micros(self.expires_us)),
        }
    }
}

/// A non-negative duration from microseconds (negative → zero).
pub(crate) fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// Duration → microseconds for SQL parameters (saturating; centuries fit).
pub(crate) fn to_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Reads one typed column, naming the key and column when it does not fit.
pub(crate) fn col<'a, T: FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    key: &RecordKey,
) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| corrupt(key, format!("column {idx}: {e}")))
}

pub(crate) fn corrupt(key: &RecordKey, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.into(),
    }
}

pub(crate) fn token(raw: i64, key: &RecordKey) -> Result<Token, StoreError> {
    u64::try_from(raw)
        .map(Token)
        .map_err(|_| corrupt(key, format!("negative token {raw}")))
}

pub(crate) fn attempt(raw: i32, key: &RecordKey) -> Result<u32, StoreError> {
    u32::try_from(raw).map_err(|_| corrupt(key, format!("negative attempt {raw}")))
}

/// Parses the read columns starting at `at`.
pub(crate) fn stored(row: &Row, at: usize, key: &RecordKey) -> Result<Stored, StoreError> {
    let token = token(col(row, at, key)?, key)?;
    let fp: &[u8] = col(row, at + 1, key)?;
    let fingerprint = <[u8; 32]>::try_from(fp)
        .map(Fingerprint)
        .map_err(|_| corrupt(key, format!("fingerprint is {} bytes, not 32", fp.len())))?;
    let attempt = attempt(col(row, at + 2, key)?, key)?;
    let state_name: &str = col(row, at + 3, key)?;
    let state = match state_name {
        "in_progress" => {
            let lease_us: Option<i64> = col(row, at + 4, key)?;
            let lease_us = lease_us.ok_or_else(|| corrupt(key, "in_progress without a lease"))?;
            RecordState::InProgress {
                lease_remaining: micros(lease_us),
            }
        }
        "released" => RecordState::Released,
        "completed" => {
            let status: Option<&str> = col(row, at + 5, key)?;
            let status = status
                .and_then(OutcomeStatus::parse)
                .ok_or_else(|| corrupt(key, format!("unknown outcome status {status:?}")))?;
            let body: Option<Vec<u8>> = col(row, at + 6, key)?;
            let body = body.ok_or_else(|| corrupt(key, "completed without an outcome"))?;
            let at_us: Option<i64> = col(row, at + 7, key)?;
            let at_us = at_us.ok_or_else(|| corrupt(key, "completed without completed_at"))?;
            let completed_at = match u64::try_from(at_us) {
                Ok(us) => SystemTime::UNIX_EPOCH + Duration::from_micros(us),
                Err(_) => SystemTime::UNIX_EPOCH,
            };
            RecordState::Completed {
                outcome: Outcome {
                    status,
                    body: body.into(),
                },
                completed_at,
            }
        }
        other => return Err(corrupt(key, format!("unknown state {other:?}"))),
    };
    let expires_us: i64 = col(row, at + 8, key)?;
    Ok(Stored {
        token,
        fingerprint,
        attempt,
        state,
        expires_us,
    })
}
