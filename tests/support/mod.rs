//! Shared test support: service discovery and service helpers (the store conformance suite is
//! `idemq::testing::conformance`, feature `testing`).
//!
//! Each integration test file does `mod support;` and uses what it needs, so not every item is
//! used by every test crate.
#![allow(dead_code, unused_macros, unused_imports)]

pub mod amqp;
pub mod example_process;
pub mod faulty;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod peak;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod redis_cluster;
pub mod redis_server;
pub mod replay;
pub mod services;
#[cfg(feature = "kafka")]
pub mod tls;
