//! The Postgres store against the store conformance suite (one shared, migrated table; every case
//! uses its own scope).
#![cfg(all(feature = "postgres", feature = "testing"))]

mod support;

use futures::FutureExt;
use idemq::store::RecordKey;
use idemq::testing::conformance::{store_conformance, Subject};
use std::sync::Arc;

store_conformance!(|| async {
    let store = support::postgres::shared_store().await?;
    let raw = store.clone();
    let purger = store.clone();
    Some(
        Subject::new(Arc::new(store))
            .with_corrupter(Box::new(move |key: RecordKey| {
                let raw = raw.clone();
                async move { support::postgres::corrupt(&raw, &key).await }.boxed()
            }))
            // Expired rows of other tests read as absent already, so purging the shared table
            // changes nothing they can observe.
            .with_purger(Box::new(move || {
                let store = purger.clone();
                async move {
                    store.purge_expired().await.expect("purge_expired");
                }
                .boxed()
            })),
    )
});
