//! The memory store against the store conformance suite.

mod support;

use idemq::store::MemoryStore;
use std::sync::Arc;
use support::conformance::{store_conformance, Subject};

store_conformance!(|| async { Some(Subject::new(Arc::new(MemoryStore::new()))) });
