//! The consumer loop: sessions, intake with bounded concurrency, reconnects, graceful shutdown.

use super::acks::Acks;
use super::config::{AmqpConfig, AmqpConsumerBuilder};
use super::connection::{ConnectOptions, Session};
use super::delivery::{handle, sleep_or_cancel, Shared};
use super::error::AmqpError;
use super::gate::Gate;
use super::health::Probe;
use super::stats::Live;
use crate::engine::{records_in_process, HandlerSlots, Processor};
use crate::health::{heartbeat, HealthHandle, HealthState};
use crate::stats::{ConsumerStats, StatsHandle};
use futures::StreamExt;
use lapin::options::BasicCancelOptions;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// An idempotent RabbitMQ queue consumer. Build one with [`AmqpConsumer::builder`], then
/// [`run`](Self::run) it until a cancellation token fires, or
/// [`run_until_signal`](Self::run_until_signal).
pub struct AmqpConsumer {
    config: AmqpConfig,
    connect: ConnectOptions,
    processor: Arc<dyn Processor>,
    stats: Live,
    health: Arc<Probe>,
}

impl std::fmt::Debug for AmqpConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConsumer")
            .field("queue", &self.config.queue)
            .field("scope", &self.processor.scope())
            .finish_non_exhaustive()
    }
}

/// Why a session ended.
enum End {
    Shutdown,
    Lost(String),
}

impl AmqpConsumer {
    /// Starts a builder; give it at least a [`url`](AmqpConsumerBuilder::url) and a
    /// [`queue`](AmqpConsumerBuilder::queue). See [`AmqpConsumerBuilder`] for the settings and an
    /// example.
    pub fn builder() -> AmqpConsumerBuilder {
        AmqpConsumerBuilder::new()
    }

    pub(crate) fn new(
        config: AmqpConfig,
        connect: ConnectOptions,
        processor: Arc<dyn Processor>,
    ) -> Self {
        let stats = Live::default();
        let health = Arc::new(Probe {
            state: HealthState::default(),
            stats: stats.clone(),
            // Deliveries in process (claimed, running or storing the outcome); handlers are
            // bounded by `concurrency` apart from this (see `HandlerSlots`).
            permits: Arc::new(Semaphore::new(
                records_in_process(config.concurrency).min(usize::from(config.prefetch).max(1)),
            )),
        });
        Self {
            config,
            connect,
            processor,
            stats,
            health,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// The scope keys are claimed in.
    pub fn scope(&self) -> &str {
        self.processor.scope()
    }

    /// The scope keys are claimed in.
    #[deprecated(note = "renamed to scope(), like the Kafka consumer's")]
    pub fn processor_scope(&self) -> &str {
        self.scope()
    }

    /// Live counters, readable while [`run`](Self::run) is going (take the handle before).
    pub fn stats(&self) -> StatsHandle {
        self.stats.handle()
    }

    /// Health for liveness and readiness probes: running, store reachable, channel open, intake
    /// paused and why; see [`crate::health`] for the rules. Take it before [`run`](Self::run);
    /// it stays valid (reporting `stopped`) after the consumer is gone.
    pub fn health(&self) -> HealthHandle {
        HealthHandle::new(self.health.clone())
    }

    /// [`run`](Self::run) until the process receives SIGINT (Ctrl-C) or SIGTERM (Kubernetes,
    /// systemd, `docker stop`); see [`crate::signal::shutdown_signal`]. The shutdown is the same
    /// graceful one as after a cancelled token. To stop on a token as well, call
    /// [`crate::signal::cancel_on_signal`] with it and [`run`](Self::run).
    pub async fn run_until_signal(self) -> Result<ConsumerStats, AmqpError> {
        let stop = CancellationToken::new();
        let watcher = crate::signal::cancel_on_signal(stop.clone());
        let stats = self.run(stop).await;
        watcher.abort();
        stats
    }

    /// Consumes until `shutdown` is cancelled, reconnecting with backoff after connection losses;
    /// returns the counts per decision.
    ///
    /// On shutdown: the consumer is cancelled at the broker, in-flight deliveries get
    /// [`AmqpConfig::shutdown_timeout`] to finish (running handlers get the engine's
    /// `shutdown_grace`, then their claims are released and the deliveries requeued), then the
    /// channels and the connection are closed; whatever is still unacknowledged is redelivered by
    /// the broker.
    ///
    /// Fails only if the very first session cannot be set up for a reason that retrying cannot fix
    /// (access refused, queue missing); later losses are retried forever.
    pub async fn run(self, shutdown: CancellationToken) -> Result<ConsumerStats, AmqpError> {
        let connect = self.connect;
        let health = self.health;
        crate::metrics::describe();
        let shared = Arc::new(Shared {
            handler_slots: HandlerSlots::new(self.config.concurrency),
            config: self.config,
            processor: self.processor,
            stats: self.stats,
            gate: Gate::new(),
            shutdown,
            health: health.clone(),
        });
        let _running = health.state.running();
        let state = &health.state;
        let permits = health.permits.clone();
        // Liveness: the loop records that it turns while it waits (for a connection, a backoff,
        // the store, a free slot or a delivery).
        let mut beat = heartbeat();
        let mut tasks = JoinSet::new();
        let (mut failures, mut connected_once) = (0u32, false);
        crate::metrics::amqp_connection(shared.processor.scope(), false);
        let result = loop {
            if shared.shutdown.is_cancelled() {
                break Ok(());
            }
            let opening = async {
                tokio::select! {
                    s = Session::open(&shared.config, &connect) => Some(s),
                    _ = shared.shutdown.cancelled() => None,
                }
            };
            let Some(opened) = state.beating(&mut beat, opening).await else {
                break Ok(());
            };
            let mut session = match opened {
                Ok(session) => session,
                Err(err) => {
                    if !connected_once && is_permanent(&err) {
                        break Err(err);
                    }
                    failures += 1;
                    let delay = shared.config.reconnect_backoff.delay(failures);
                    warn!(%err, failures, ?delay, "AMQP connection failed; retrying");
                    if state
                        .beating(&mut beat, sleep_or_cancel(delay, &shared.shutdown))
                        .await
                    {
                        break Ok(());
                    }
                    continue;
                }
            };
            crate::metrics::amqp_connection(shared.processor.scope(), true);
            if connected_once {
                crate::metrics::amqp_reconnected(shared.processor.scope());
                shared.stats.bump(|c| &c.reconnects);
                info!(queue = %shared.config.queue, "reconnected; unacked deliveries come back as redeliveries");
            }
            connected_once = true;
            state.channel(true);
            // Acks are coalesced per channel: delivery tags are only meaningful within one.
            let acks = Acks::new(
                shared.stats.clone(),
                shared.config.settle_timeout,
                shared.config.ack_linger,
            );
            let ended = intake(
                &shared,
                &mut session,
                &acks,
                &permits,
                &mut tasks,
                &mut beat,
            )
            .await;
            match ended {
                End::Shutdown => {
                    state.stopping();
                    finish(&shared, &session, &mut tasks).await;
                    state.channel(false);
                    crate::metrics::amqp_connection(shared.processor.scope(), false);
                    return Ok(shared.stats.snapshot());
                }
                End::Lost(why) => {
                    state.channel(false);
                    crate::metrics::amqp_connection(shared.processor.scope(), false);
                    warn!(queue = %shared.config.queue, why, "AMQP session lost; reconnecting");
                    session.close().await;
                    failures = 1;
                    let delay = shared.config.reconnect_backoff.delay(failures);
                    if state
                        .beating(&mut beat, sleep_or_cancel(delay, &shared.shutdown))
                        .await
                    {
                        break Ok(());
                    }
                }
            }
        };
        // Shut down (or failed) while disconnected: in-flight work still gets its deadline.
        state.stopping();
        drain(&shared, &mut tasks).await;
        result.map(|()| shared.stats.snapshot())
    }
}

/// Takes deliveries while the store answers and a concurrency permit is free.
async fn intake(
    shared: &Arc<Shared>,
    session: &mut Session,
    acks: &Arc<Acks>,
    permits: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    beat: &mut Interval,
) -> End {
    let shutdown = &shared.shutdown;
    let state = &shared.health.state;
    loop {
        // Liveness while deliveries flow: the waits below may never be pending then, so their
        // heartbeat ticks would never be polled.
        state.beat();
        while let Some(done) = tasks.try_join_next() {
            if let Err(err) = done {
                error!(%err, "delivery task failed; its delivery is redelivered");
            }
        }
        if !shared.gate.is_open() {
            let opened = async {
                tokio::select! {
                    _ = shared.gate.opened() => true,
                    _ = shutdown.cancelled() => false,
                }
            };
            if !state.beating(beat, opened).await {
                return End::Shutdown;
            }
        }
        let acquire = async {
            tokio::select! {
                p = permits.clone().acquire_owned() => p.ok(),
                _ = shutdown.cancelled() => None,
            }
        };
        // `None`: shutdown (the semaphore is never closed).
        let Some(permit) = state.beating(beat, acquire).await else {
            return End::Shutdown;
        };
        let receive = async {
            tokio::select! {
                d = session.consumer.next() => Some(d),
                _ = shutdown.cancelled() => None,
            }
        };
        let Some(next) = state.beating(beat, receive).await else {
            return End::Shutdown;
        };
        match next {
            Some(Ok(delivery)) => {
                shared.stats.bump(|c| &c.received);
                // Recorded before any later delivery can be acked (see `acks.rs`).
                acks.received(delivery.delivery_tag);
                tasks.spawn(handle(
                    shared.clone(),
                    session.publisher.clone(),
                    acks.clone(),
                    delivery,
                    permit,
                ));
            }
            Some(Err(err)) => return End::Lost(err.to_string()),
            None => return End::Lost("consumer cancelled by the broker".into()),
        }
    }
}

/// Graceful end of a live session: stop deliveries, let in-flight work finish, close cleanly.
async fn finish(shared: &Shared, session: &Session, tasks: &mut JoinSet<()>) {
    let tag = session.consumer.tag();
    if let Err(err) = session
        .channel
        .basic_cancel(tag, BasicCancelOptions::default())
        .await
    {
        warn!(%err, "basic.cancel failed");
    }
    drain(shared, tasks).await;
    // Deliveries prefetched but never started are requeued by the broker when the channel closes.
    session.close().await;
    info!(queue = %shared.config.queue, stats = ?shared.stats.snapshot(), "AMQP consumer stopped");
}

/// Waits for in-flight deliveries up to the shutdown deadline, then aborts the rest (their
/// deliveries stay unacknowledged and are redelivered; their claims expire with the lease).
async fn drain(shared: &Shared, tasks: &mut JoinSet<()>) {
    let deadline = tokio::time::sleep(shared.config.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                None => return,
                Some(Err(err)) if err.is_panic() => error!(%err, "delivery task panicked"),
                Some(_) => {}
            },
            _ = &mut deadline => {
                warn!(left = tasks.len(), "shutdown deadline reached; aborting in-flight deliveries");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// Errors that reconnecting cannot fix when they happen before the first session.
fn is_permanent(err: &AmqpError) -> bool {
    match err {
        AmqpError::Broker { source, .. } => {
            matches!(source.kind(), lapin::ErrorKind::ProtocolError(_))
                || !source.can_be_recovered()
        }
        AmqpError::Config(_) => true,
        _ => false,
    }
}
