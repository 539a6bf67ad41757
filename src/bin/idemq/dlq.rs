//! `idemq dlq replay`.

use crate::args::{Output, ReplayArgs};
use crate::keys::open;
use crate::{output, Failure};
use idemq::replay::{Classifier, ReplayClass, ReplayReport};
use idemq::{KeyConfig, KeySource};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::cell::RefCell;
use std::io::IsTerminal;

/// `idemq dlq replay`
pub async fn replay(a: &ReplayArgs, out: Output) -> Result<(), Failure> {
    if a.bootstrap.is_none() && !a.kafka_settings.is_empty() {
        return Err(Failure::Usage(
            "-X sets Kafka client properties: it needs --bootstrap".into(),
        ));
    }
    // Installed first, so a signal while the store connects also ends in a report (of nothing).
    let stop = StopSignal::install();
    let bar = progress_bar(a, out);
    // The drivers hand the report over after every message; the latest copy is what a run that
    // stops midway (signal or error) reports as moved.
    let latest = RefCell::new(ReplayReport {
        dry_run: a.dry_run,
        ..ReplayReport::default()
    });
    let tick = |r: &ReplayReport| {
        bar.set_position(r.examined);
        bar.set_message(format!(
            "republished {} removed {} kept {}",
            r.republished, r.removed, r.kept
        ));
        *latest.borrow_mut() = r.clone();
    };
    let run = async {
        let store = open(&a.at).await?;
        let sources: Vec<KeySource> = if a.key_sources.is_empty() {
            let headers = a.key_headers.iter().map(KeySource::header);
            headers
                .chain(a.message_id_fallback.then_some(KeySource::MessageId))
                .collect()
        } else {
            a.key_sources.clone()
        };
        let key = KeyConfig::new(sources).missing(a.missing_key.into());
        let fingerprint = a
            .fingerprint
            .clone()
            .with_headers(a.fingerprint_headers.clone());
        let classifier = Classifier::new(store, a.at.scope.clone(), key).fingerprint(fingerprint);
        if let Some(url) = &a.amqp_url {
            amqp(a, url, classifier, tick).await
        } else if let Some(bootstrap) = &a.bootstrap {
            kafka(a, bootstrap, classifier, tick).await
        } else {
            Err(Failure::Usage(
                "one of --amqp-url or --bootstrap is required".into(),
            ))
        }
    };
    // A signal drops the run between two awaits: every message counted so far was confirmed and
    // removed (RabbitMQ) or committed (Kafka); one in flight is at worst both republished and
    // still in the DLQ, which the consumer's deduplication makes harmless.
    let result = tokio::select! {
        r = run => r,
        (signal, code) = stop.wait() => Err(Failure::Interrupted { signal, code }),
    };
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            print_report(out, &report, None);
            Ok(())
        }
        // A failure before the first message (bad settings, connect, join) moved nothing: no
        // report.
        Err(failure)
            if latest.borrow().examined == 0 && !matches!(failure, Failure::Interrupted { .. }) =>
        {
            Err(failure)
        }
        Err(failure) => {
            let why = match &failure {
                Failure::Interrupted { signal, .. } => format!("stopped by {signal}"),
                Failure::Unreachable(msg) | Failure::NotFound(msg) => format!("failed: {msg}"),
                other => format!("failed: {other:?}"),
            };
            print_report(out, &latest.borrow(), Some(&why));
            Err(failure)
        }
    }
}

/// SIGINT and SIGTERM (Ctrl-C only outside Unix), listened to from creation on.
struct StopSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignal {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(int), Ok(term)) => Some((int, term)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(%e, "cannot listen for SIGINT / SIGTERM; they stop the replay without a report");
                    None
                }
            };
            Self { signals }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The signal's name and the exit code for it (128 + its number).
    async fn wait(self) -> (&'static str, u8) {
        #[cfg(unix)]
        {
            let Some((mut int, mut term)) = self.signals else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = int.recv() => ("SIGINT", 130),
                _ = term.recv() => ("SIGTERM", 143),
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => ("Ctrl-C", 130),
                Err(_) => std::future::pending().await,
            }
        }
    }
}

fn progress_bar(a: &ReplayArgs, out: Output) -> ProgressBar {
    if out == Output::Json || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = match a.limit {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} examined {wide_bar} {msg}") {
        bar.set_style(style);
    }
    bar
}

#[cfg(feature = "amqp")]
async fn amqp(
    a: &ReplayArgs,
    url: &str,
    classifier: Classifier,
    tick: impl Fn(&ReplayReport),
) -> Result<ReplayReport, Failure> {
    use idemq::amqp::{AmqpError, AmqpReplay};
    let (exchange, routing_key) = match a.to.split_once('/') {
        Some((e, "")) => (e.to_string(), None),
        Some((e, k)) => (e.to_string(), Some(k.to_string())),
        None => (a.to.clone(), None),
    };
    let mut replay =
        AmqpReplay::new(url, &a.from, exchange, routing_key, classifier).dry_run(a.dry_run);
    if let Some(n) = a.limit {
        replay = replay.limit(n);
    }
    replay.run(tick).await.map_err(|e| match e {
        AmqpError::Store(s) => crate::keys::store_failure(s),
        AmqpError::Config(err) => Failure::Usage(err.to_string()),
        other => Failure::Unreachable(other.to_string()),
    })
}

#[cfg(not(feature = "amqp"))]
async fn amqp(
    _: &ReplayArgs,
    _: &str,
    _: Classifier,
    _: impl Fn(&ReplayReport),
) -> Result<ReplayReport, Failure> {
    Err(Failure::Usage("built without the `amqp` feature".into()))
}

#[cfg(feature = "kafka")]
async fn kafka(
    a: &ReplayArgs,
    bootstrap: &str,
    classifier: Classifier,
    tick: impl Fn(&ReplayReport),
) -> Result<ReplayReport, Failure> {
    use idemq::kafka::{KafkaReplay, KafkaReplayError};
    let mut replay = KafkaReplay::new(bootstrap, &a.from, &a.to, classifier)
        .dry_run(a.dry_run)
        .idle_timeout(std::time::Duration::from_millis(a.idle_timeout_ms))
        .join_timeout(std::time::Duration::from_millis(a.join_timeout_ms));
    if let Some(group) = &a.group {
        replay = replay.group(group);
    }
    for (k, v) in &a.kafka_settings {
        replay = replay.set(k, v);
    }
    if let Some(n) = a.limit {
        replay = replay.limit(n);
    }
    replay.run(tick).await.map_err(|e| match e {
        KafkaReplayError::Store(s) => crate::keys::store_failure(s),
        KafkaReplayError::Config(err) => Failure::Usage(err.to_string()),
        KafkaReplayError::Client(err) => Failure::Usage(err.to_string()),
        other => Failure::Unreachable(other.to_string()),
    })
}

#[cfg(not(feature = "kafka"))]
async fn kafka(
    _: &ReplayArgs,
    _: &str,
    _: Classifier,
    _: impl Fn(&ReplayReport),
) -> Result<ReplayReport, Failure> {
    Err(Failure::Usage("built without the `kafka` feature".into()))
}

fn print_report(out: Output, r: &ReplayReport, stopped: Option<&str>) {
    let counts: serde_json::Map<String, serde_json::Value> = ReplayClass::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), json!(r.count(*c))))
        .collect();
    let samples: serde_json::Map<String, serde_json::Value> = r
        .samples
        .iter()
        .map(|(c, s)| (c.as_str().to_string(), json!(s)))
        .collect();
    let v = json!({
        "dry_run": r.dry_run,
        "complete": stopped.is_none(),
        "stopped": stopped,
        "examined": r.examined,
        "classes": counts,
        "samples": samples,
        "republished": r.republished,
        "removed": r.removed,
        "kept": r.kept,
        "last_handled": r.last_handled,
    });
    output::value(out, &v, || {
        let mut s = String::new();
        if let Some(why) = stopped {
            s.push_str(&format!(
                "replay stopped before the end ({why}); up to then:\n"
            ));
        }
        s.push_str(&format!(
            "{} {} message(s)\n",
            if r.dry_run {
                "dry run: examined"
            } else {
                "examined"
            },
            r.examined
        ));
        for c in ReplayClass::ALL {
            s.push_str(&format!("  {:<11} {}\n", c.as_str(), r.count(c)));
            for line in r.samples.get(&c).into_iter().flatten() {
                s.push_str(&format!("      e.g. {line}\n"));
            }
        }
        if !r.dry_run {
            s.push_str(&format!(
                "republished {} (confirmed), removed {} (already completed), kept {} in the DLQ",
                r.republished, r.removed, r.kept
            ));
        } else {
            s.push_str("nothing was moved");
        }
        if let Some(last) = &r.last_handled {
            s.push_str(&format!("\nlast handled: {last}"));
        }
        s
    });
}
