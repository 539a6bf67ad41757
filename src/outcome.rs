//! Handler outcomes as stored bytes.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

/// Whether the stored outcome records a success or a permanent failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// The handler succeeded; the body is its serialized output.
    Succeeded,
    /// The handler failed permanently and the failure was stored so replays skip it
    /// (see [`EngineConfig::store_permanent_failures`](crate::EngineConfig::store_permanent_failures)).
    Failed,
}

impl OutcomeStatus {
    /// Short stable name used by stores and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Succeeded => "succeeded",
            OutcomeStatus::Failed => "failed",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "succeeded" => Some(OutcomeStatus::Succeeded),
            "failed" => Some(OutcomeStatus::Failed),
            _ => None,
        }
    }
}

/// The outcome of one handler run, stored as bytes (JSON when produced by the engine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Success or stored failure.
    pub status: OutcomeStatus,
    /// Serialized output (the AMQP reply body for request/reply).
    pub body: Bytes,
}

impl Outcome {
    /// A successful outcome with the given body.
    pub fn succeeded(body: impl Into<Bytes>) -> Self {
        Self {
            status: OutcomeStatus::Succeeded,
            body: body.into(),
        }
    }

    /// A stored permanent failure with the given body.
    pub fn failed(body: impl Into<Bytes>) -> Self {
        Self {
            status: OutcomeStatus::Failed,
            body: body.into(),
        }
    }

    /// A successful outcome holding `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self::succeeded(serde_json::to_vec(value)?))
    }

    /// Decodes the body as JSON.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}
