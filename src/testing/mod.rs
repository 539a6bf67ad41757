//! Test helpers for people who extend idemq (feature `testing`).
//!
//! - [`conformance`]: the store conformance suite. Every store shipped with idemq (memory, Redis,
//!   Redis Cluster, Postgres, the completed-key cache) runs it; run it against your own
//!   [`Store`](crate::Store) (DynamoDB, Cassandra, …) to check it keeps the contract the engine
//!   relies on: one owner per key, fencing tokens, leases, retention, conflicts, scans.
//!
//! The feature adds no dependencies: the suite uses the tokio and futures crates idemq already
//! depends on. Enable it in `[dev-dependencies]` only.

pub mod conformance;
