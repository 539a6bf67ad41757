//! Redis store (being built).

use super::{Store, StoreError};
use std::sync::Arc;

/// Opens the store named by `url` (used by [`connect`](super::connect)).
pub(crate) async fn open(_url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::InvalidConfig(
        "redis store not implemented yet".into(),
    ))
}
