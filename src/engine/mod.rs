//! The broker-neutral engine: key → fingerprint → claim → run with lease renewal → settle.
//!
//! An [`Engine`] binds a store, a configuration and a handler. Broker adapters call
//! [`Processor::process`] for each message and map the returned [`Disposition`] to ack, retry or
//! dead-letter; the engine never acknowledges anything itself, which keeps acknowledgement where the
//! broker connection is.
//!
//! The decisions follow the processing contract (`docs/semantics.md`). Where it leaves room, the
//! engine behaves as follows:
//!
//! - **Panics are retriable failures.** A panic in the handler's future, in the handler *before*
//!   it returns its future (synchronous work in a closure or in a hand-written
//!   [`Handler::handle`]), or in the outcome's `Serialize` implementation
//!   releases the claim and returns `Retry` (`retries-exhausted` dead letter after
//!   `max_attempts`). The handler's effects may have happened.
//! - **Handlers may set the retry delay.** A retriable failure built with
//!   [`HandlerError::retry_after`](crate::HandlerError::retry_after) (e.g. from a dependency's
//!   `Retry-After`) becomes `Retry { after }` with that delay instead of
//!   [`EngineConfig::retry_backoff`]'s, clamped to `retry_backoff.max` so one dependency cannot
//!   stall a Kafka partition (retried in place) longer than the configuration allows. The broker
//!   adapters wait `after` as given. Without deduplication the in-place retries wait the same.
//! - **Unreadable payloads are their own dead-letter reason.** A handler's
//!   [`HandlerError::invalid_payload`](crate::HandlerError::invalid_payload) (what
//!   [`HandlerContext::json`](crate::HandlerContext::json) returns for bad JSON) is permanent
//!   and dead-lettered as `invalid-payload` rather than `handler-failed`.
//! - **Hung handlers time out.** A run longer than [`EngineConfig::handler_timeout`] (default 10
//!   min, `None` to disable) is dropped and treated like a panic: claim released, retriable
//!   failure, effects may have happened. The lease is renewed meanwhile, so the timeout may exceed
//!   the lease; the lease detects dead consumers, the timeout hung handlers in live ones.
//! - **The record is gone when the outcome is stored.** `complete` answering that the claim is
//!   lost means either that another consumer took the key over after our lease expired, or that
//!   nobody owns it (the record expired, was evicted, forgotten with `idemq key forget --force`,
//!   or released). The engine claims the key once more to tell them apart. Acquired: nobody owned
//!   it, so the record is re-created with this run's outcome and the message is `Processed` (a
//!   warning with `recreated = true`, counter `idemq_records_recreated_total`); acking without a
//!   stored outcome would break "ack only once the outcome is durable" and let a later copy run
//!   the handler again. Held, completed or bound to another payload by someone else: `Superseded`
//!   (warning, decision `superseded` of `idemq_messages_total`), the owner records the outcome.
//! - **A store outage longer than the lease can let a duplicate run.** A lease is renewed only
//!   while the store answers. If the store is unreachable after the handler ran and stays so
//!   until the lease has expired, a duplicate that reaches the store first may take the claim
//!   over and run the handler again (the owner then finds its claim lost and acks as
//!   `Superseded`). This is the limit of any lease-based claim: choose a lease that outlasts
//!   the store outages you want to ride through plus one store timeout (the default 30 s lease
//!   covers outages up to about 20 s with the default 5 s store timeout). The Postgres
//!   transactional engine has no such window: its claim is a row lock held by the open
//!   transaction.
//! - **Unreadable records** met while storing the outcome are read again a bounded number of times
//!   (`corrupt_record_retries`), then dead-lettered with `corrupt-record`, as on the claim path.
//! - **Durations are bounded** so no deadline overflows: [`EngineConfig::validate`] refuses a lease
//!   above [`MAX_LEASE`] (1 day), a retention above [`MAX_RETENTION`] (365 days), any other
//!   duration above [`MAX_DELAY`] (1 day), and a zero lease, store timeout, handler timeout or
//!   first in-flight poll, with [`ConfigError::DurationOutOfRange`] naming the setting.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use idemq::{Disposition, Engine, EngineConfig, HandlerContext, HandlerError, Message, Source};
//! use idemq::store::MemoryStore;
//! use std::sync::Arc;
//! use tokio_util::sync::CancellationToken;
//!
//! let engine = Engine::new(
//!     Arc::new(MemoryStore::new()),
//!     EngineConfig::new("billing"),
//!     |ctx: HandlerContext| async move { Ok::<_, HandlerError>(ctx.message.payload.len()) },
//! ).unwrap();
//! let msg = Arc::new(Message::new("hello", Source::Other("doc".into()))
//!     .with_header("Idempotency-Key", "k1"));
//! let stop = CancellationToken::new();
//! assert!(matches!(engine.process(msg.clone(), &stop).await, Disposition::Processed { .. }));
//! assert!(matches!(engine.process(msg, &stop).await, Disposition::Replayed { .. }));
//! # }
//! ```

mod config;
mod core;
mod disposition;
mod health;
mod process;
mod slots;
mod telemetry;

pub use config::{
    Backoff, ConfigError, EngineConfig, MAX_DELAY, MAX_LEASE, MAX_RETENTION, MIN_POSITIVE,
};
pub use disposition::{DeadLetter, DeadLetterReason, Disposition, RetryCause};
#[cfg_attr(not(any(feature = "kafka", feature = "amqp")), allow(unused_imports))]
pub(crate) use slots::{records_in_process, RECORDS_PER_SLOT};
pub use slots::{HandlerSlot, HandlerSlots};
// Shared with other processors (the Postgres transactional engine), so they behave and report
// like the engine.
pub(crate) use self::core::{EngineCore, Identity};
#[cfg_attr(
    not(all(feature = "postgres", any(feature = "kafka", feature = "amqp"))),
    allow(unused_imports)
)]
pub(crate) use process::{
    call_handler, deadline_after, deadline_from, handler_panicked, handler_timed_out, panic_text,
    permanent_failure, record_recreated, retry_delay, serialize, unkeyed_retry, Failure, Run,
};
#[cfg_attr(not(feature = "postgres"), allow(unused_imports))]
pub(crate) use telemetry::{record_decision, timed};

use crate::handler::Handler;
use crate::message::Message;
use crate::store::Store;
use async_trait::async_trait;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Something that turns a message into a [`Disposition`]: an [`Engine`], or the Postgres store's
/// transactional engine. Broker adapters are written against this trait.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// Processes one message. Never acknowledges; never panics (handler panics are caught).
    ///
    /// `shutdown` cancels waiting; a running handler gets the configured grace period.
    async fn process(&self, message: Arc<Message>, shutdown: &CancellationToken) -> Disposition;

    /// Processes one message, running its handler only while it holds one of `slots` (see
    /// [`HandlerSlots`]). The broker adapters call this, so that store round trips before and
    /// after the handler do not count against the handler concurrency.
    ///
    /// The default takes a slot for the whole of [`process`](Self::process), for processors that
    /// cannot tell the handler run apart (the Postgres transactional engine runs its handler
    /// inside the claim's transaction). Waiting for a slot ends with
    /// [`Disposition::Abandoned`] on shutdown or when the slots are closed.
    async fn process_with_slots(
        &self,
        message: Arc<Message>,
        shutdown: &CancellationToken,
        slots: &HandlerSlots,
    ) -> Disposition {
        let slot = tokio::select! {
            biased;
            slot = slots.acquire() => slot,
            _ = shutdown.cancelled() => None,
        };
        let Some(_slot) = slot else {
            return Disposition::Abandoned;
        };
        self.process(message, shutdown).await
    }

    /// The scope keys are claimed in, or, when it is chosen per message
    /// ([`Scope::PerTopic`](crate::Scope::PerTopic), [`Scope::Custom`](crate::Scope::Custom)),
    /// its label (e.g. `orders-group/{topic}`), as logs and metrics show it.
    fn scope(&self) -> &str;
}

/// Store + configuration + handler. Cheap to clone (shared state behind an `Arc`).
pub struct Engine<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for Engine<H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<H> {
    core: EngineCore<Arc<dyn Store>>,
    handler: H,
}

// The processing code reads `self.config`, `self.store`, … as if they were its own fields.
impl<H> std::ops::Deref for Inner<H> {
    type Target = EngineCore<Arc<dyn Store>>;

    fn deref(&self) -> &Self::Target {
        &self.core
    }
}

impl<H: Handler> Engine<H> {
    /// Builds an engine; fails if the configuration contradicts itself.
    pub fn new(
        store: Arc<dyn Store>,
        config: EngineConfig,
        handler: H,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            inner: Arc::new(Inner {
                core: EngineCore::new(store, config)?,
                handler,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Processes one message; see [`Processor::process`].
    pub async fn process(
        &self,
        message: Arc<Message>,
        shutdown: &CancellationToken,
    ) -> Disposition {
        // Going through the boxed `Processor` future (its `Send` bound is proven once, generically)
        // lets callers `tokio::spawn` this future for any closure handler; awaiting the inner
        // future directly runs into rustc's higher-ranked `Send` inference limits.
        Processor::process(self, message, shutdown).await
    }
}

#[async_trait]
impl<H: Handler> Processor for Engine<H> {
    async fn process(&self, message: Arc<Message>, shutdown: &CancellationToken) -> Disposition {
        self.inner.process(message, shutdown, None).await
    }

    async fn process_with_slots(
        &self,
        message: Arc<Message>,
        shutdown: &CancellationToken,
        slots: &HandlerSlots,
    ) -> Disposition {
        self.inner.process(message, shutdown, Some(slots)).await
    }

    fn scope(&self) -> &str {
        &self.inner.scope
    }
}
