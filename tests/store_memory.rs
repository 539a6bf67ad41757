//! The memory store against the store conformance suite.

#![cfg(feature = "testing")]

mod support;

use idemq::store::MemoryStore;
use idemq::testing::conformance::{store_conformance, Subject};
use std::sync::Arc;

store_conformance!(|| async { Some(Subject::new(Arc::new(MemoryStore::new()))) });
