//! `idemq dlq replay`.

use crate::args::{Output, ReplayArgs};
use crate::keys::open;
use crate::{output, Failure};
use idemq::replay::{Classifier, ReplayClass, ReplayReport};
use idemq::KeyConfig;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;

/// `idemq dlq replay`
pub async fn replay(a: &ReplayArgs, out: Output) -> Result<(), Failure> {
    let store = open(&a.at).await?;
    let key = KeyConfig {
        headers: a.key_headers.clone(),
        use_message_id: a.message_id_fallback,
        missing: a.missing_key.into(),
        ..KeyConfig::default()
    };
    let classifier = Classifier::new(store, a.at.scope.clone(), key)
        .fingerprint_headers(a.fingerprint_headers.clone());
    let bar = progress_bar(a, out);
    let tick = |r: &ReplayReport| {
        bar.set_position(r.examined);
        bar.set_message(format!(
            "republished {} removed {} kept {}",
            r.republished, r.removed, r.kept
        ));
    };
    let report = if let Some(url) = &a.amqp_url {
        amqp(a, url, classifier, tick).await?
    } else if let Some(bootstrap) = &a.bootstrap {
        kafka(a, bootstrap, classifier, tick).await?
    } else {
        return Err(Failure::Usage(
            "one of --amqp-url or --bootstrap is required".into(),
        ));
    };
    bar.finish_and_clear();
    print_report(out, &report);
    Ok(())
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

fn print_report(out: Output, r: &ReplayReport) {
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
        "examined": r.examined,
        "classes": counts,
        "samples": samples,
        "republished": r.republished,
        "removed": r.removed,
        "kept": r.kept,
    });
    output::value(out, &v, || {
        let mut s = format!(
            "{} {} message(s)\n",
            if r.dry_run {
                "dry run: examined"
            } else {
                "examined"
            },
            r.examined
        );
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
        s
    });
}
