//! What every engine holds besides its handler: the store, the settings, the scope and the
//! store's health. Shared by [`Engine`](super::Engine) and the Postgres transactional engine, so
//! both validate, time store calls and back off the same way.

use super::health::StoreHealth;
use super::process::sleep_or_cancel;
use super::{ConfigError, DeadLetterReason, Disposition, EngineConfig, RetryCause};
use crate::fingerprint::Fingerprint;
use crate::key::{derive_from_payload, KeyLogging, MissingKeyPolicy, Scope};
use crate::message::Message;
use crate::store::{RecordKey, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Span};

/// Where a message is claimed; see [`EngineCore::identify`].
pub(crate) struct Identity {
    /// The message's scope (shared with its handler context).
    pub(crate) scope: Arc<str>,
    /// The record to claim and the message's fingerprint; `None` without deduplication.
    pub(crate) claim: Option<(RecordKey, Fingerprint)>,
}

/// An engine's state apart from its handler; `S` is the store (a `dyn Store` or a concrete one).
pub(crate) struct EngineCore<S> {
    pub(crate) store: S,
    pub(crate) config: EngineConfig,
    /// The scope's label ([`Scope::label`]): the scope itself when fixed, shared cheaply with
    /// every handler context; otherwise what logs and metrics show.
    pub(crate) scope: Arc<str>,
    pub(crate) health: StoreHealth,
}

impl<S> EngineCore<S> {
    /// Validates `config`; fails if it contradicts itself.
    pub(crate) fn new(store: S, config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        crate::metrics::describe();
        let scope: Arc<str> = Arc::from(config.scope.label());
        Ok(EngineCore {
            store,
            health: StoreHealth::new(scope.clone()),
            scope,
            config,
        })
    }

    /// The scope, key and fingerprint of `message`: what claiming it takes. `claim` is `None`
    /// when the missing-key policy runs it without deduplication; `Err` with the dead letter
    /// when it cannot be claimed (no or invalid key, empty custom scope, unreadable payload).
    pub(crate) fn identify(&self, message: &Message) -> Result<Identity, Disposition> {
        let cfg = &self.config;
        let scope = match &cfg.scope {
            Scope::Fixed(_) => self.scope.clone(),
            other => Arc::from(
                other
                    .resolve(message)
                    .map_err(|e| Disposition::dead_letter(DeadLetterReason::InvalidKey, e))?,
            ),
        };
        let key = match cfg.key.extract(message) {
            Ok(key) => key,
            Err(err) => match cfg.key.missing {
                MissingKeyPolicy::Reject => {
                    return Err(Disposition::dead_letter((&err).into(), err.to_string()))
                }
                MissingKeyPolicy::ProcessWithoutDedup => {
                    warn!(%err, "processing without deduplication (ProcessWithoutDedup policy)");
                    return Ok(Identity { scope, claim: None });
                }
                MissingKeyPolicy::DeriveFromPayload => {
                    debug!(%err, "deriving the key from the payload");
                    derive_from_payload(message)
                }
            },
        };
        match cfg.log_key {
            KeyLogging::Plain => Span::current().record("key", key.as_str()),
            // A string field either way, so log processors see the same shape.
            _ => Span::current().record("key", cfg.log_key.show(key.as_str()).to_string()),
        };
        let fingerprint = cfg
            .fingerprint
            .fingerprint(message)
            .map_err(|e| Disposition::dead_letter((&e).into(), e.to_string()))?;
        let record = RecordKey::new(&*scope, key);
        Ok(Identity {
            scope,
            claim: Some((record, fingerprint)),
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
        let result = self.health.call(op, self.config.store_timeout, fut).await;
        result.map_err(|err| self.shown(err))
    }

    /// `err` with the record name of an unreadable record as [`EngineConfig::log_key`] shows
    /// keys: that name embeds the key, and the error is logged and becomes a dead letter's text.
    pub(crate) fn shown(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::Corrupt { key, detail } => StoreError::Corrupt {
                key: self.config.log_key.show(&key).to_string(),
                detail,
            },
            other => other,
        }
    }

    /// Another consumer holds the key (`InFlight`, lease left `retry_after`): waits before the next
    /// claim, waking no later than the owner's lease end so a crashed owner is taken over
    /// promptly. `Err` once the wait bound `wait_until` has passed (retry later) or on shutdown.
    /// `polls` counts the waits of this message.
    pub(crate) async fn wait_in_flight(
        &self,
        retry_after: Duration,
        wait_until: Instant,
        polls: &mut u32,
        shutdown: &CancellationToken,
    ) -> Result<(), Disposition> {
        let cfg = &self.config;
        let now = Instant::now();
        if now >= wait_until {
            return Err(Disposition::Retry {
                after: retry_after.min(cfg.in_flight_poll.max),
                cause: RetryCause::InFlightElsewhere,
            });
        }
        *polls += 1;
        let nap = cfg
            .in_flight_poll
            .delay(*polls)
            .min(retry_after.saturating_add(Duration::from_millis(1)))
            .min(wait_until - now);
        if sleep_or_cancel(nap, shutdown).await {
            return Err(Disposition::Abandoned);
        }
        Ok(())
    }

    /// The record could not be read (`err` is `Corrupt`): backs off before reading it again.
    /// `Err` with a dead letter past `corrupt_record_retries`, or on shutdown. `corrupt` counts
    /// the failed reads of this message.
    pub(crate) async fn back_off_corrupt(
        &self,
        err: StoreError,
        corrupt: &mut u32,
        shutdown: &CancellationToken,
    ) -> Result<(), Disposition> {
        *corrupt += 1;
        if *corrupt > self.config.corrupt_record_retries {
            return Err(Disposition::dead_letter(
                DeadLetterReason::CorruptRecord,
                err.to_string(),
            ));
        }
        warn!(%err, corrupt = *corrupt, "unreadable record; retrying");
        if sleep_or_cancel(self.config.store_backoff.delay(*corrupt), shutdown).await {
            return Err(Disposition::Abandoned);
        }
        Ok(())
    }
}
