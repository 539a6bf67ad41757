//! What every engine holds besides its handler: the store, the settings, the scope and the
//! store's health. Shared by [`Engine`](super::Engine) and the Postgres transactional engine, so
//! both validate, time store calls and back off the same way.

use super::health::StoreHealth;
use super::{ConfigError, Disposition, EngineConfig};
use crate::store::StoreError;
use std::future::Future;
use std::sync::Arc;

/// An engine's state apart from its handler; `S` is the store (a `dyn Store` or a concrete one).
pub(crate) struct EngineCore<S> {
    pub(crate) store: S,
    pub(crate) config: EngineConfig,
    /// The configured scope, shared cheaply with every handler context.
    pub(crate) scope: Arc<str>,
    pub(crate) health: StoreHealth,
}

impl<S> EngineCore<S> {
    /// Validates `config`; fails if it contradicts itself.
    pub(crate) fn new(store: S, config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate().map_err(ConfigError)?;
        Ok(EngineCore {
            store,
            scope: Arc::from(config.scope.as_str()),
            config,
            health: StoreHealth::default(),
        })
    }

    /// The disposition for a message whose store call failed: retry after the store backoff.
    pub(crate) fn store_down(&self, err: StoreError) -> Disposition {
        self.health.unavailable(err, &self.config.store_backoff)
    }

    /// Runs one store operation under the store timeout, recording the failure streak.
    pub(crate) async fn store_call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.health.call(op, self.config.store_timeout, fut).await
    }
}
