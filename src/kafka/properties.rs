//! librdkafka properties given to the builder: which ones idemq fixes, and refusing overrides of
//! them with a typed error instead of silently dropping or applying them.

use super::error::KafkaConsumerError;
use std::fmt;
use std::time::Duration;

/// Which librdkafka client of a [`KafkaConsumer`](super::KafkaConsumer) a property was given for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KafkaClient {
    /// The group consumer ([`set`](super::KafkaConsumerBuilder::set)).
    Consumer,
    /// The dead-letter producer ([`producer_set`](super::KafkaConsumerBuilder::producer_set)).
    DeadLetterProducer,
}

impl fmt::Display for KafkaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KafkaClient::Consumer => "consumer",
            KafkaClient::DeadLetterProducer => "dead-letter producer",
        })
    }
}

/// Values that mean the fixed one (librdkafka accepts several spellings).
enum Accepted {
    /// One of these, compared ignoring ASCII case.
    OneOf(&'static [&'static str]),
    /// The dead-letter timeout in milliseconds.
    DeadLetterTimeoutMs,
}

/// A property idemq sets itself on one client.
struct Fixed {
    client: KafkaClient,
    /// The property and its librdkafka aliases.
    keys: &'static [&'static str],
    /// Shown in the error.
    fixed: &'static str,
    accepted: Accepted,
    why: &'static str,
}

const FALSE: &[&str] = &["false", "f", "0"];
const TRUE: &[&str] = &["true", "t", "1"];

const FIXED: [Fixed; 5] = [
    Fixed {
        client: KafkaClient::Consumer,
        keys: &["enable.auto.commit"],
        fixed: "false",
        accepted: Accepted::OneOf(FALSE),
        why: "idemq commits an offset only once every earlier record of its partition is finished",
    },
    Fixed {
        client: KafkaClient::Consumer,
        keys: &["enable.auto.offset.store"],
        fixed: "false",
        accepted: Accepted::OneOf(FALSE),
        why: "idemq stores an offset only once every earlier record of its partition is finished",
    },
    Fixed {
        client: KafkaClient::DeadLetterProducer,
        keys: &["enable.idempotence"],
        fixed: "true",
        accepted: Accepted::OneOf(TRUE),
        why: "a retried dead-letter publish must not write the record twice",
    },
    Fixed {
        client: KafkaClient::DeadLetterProducer,
        keys: &["acks", "request.required.acks"],
        fixed: "all",
        accepted: Accepted::OneOf(&["all", "-1"]),
        why:
            "the original is committed once the dead letter is confirmed, so the confirmation must \
              mean every in-sync replica has it",
    },
    Fixed {
        client: KafkaClient::DeadLetterProducer,
        keys: &["message.timeout.ms", "delivery.timeout.ms"],
        fixed: "the dead-letter timeout",
        accepted: Accepted::DeadLetterTimeoutMs,
        why: "it is set from dead_letter_timeout(), which also bounds the wait for the \
              confirmation; set that instead",
    },
];

/// Properties the builder takes as its own settings, whichever method they come through.
pub(crate) enum Routed {
    /// `bootstrap.servers` (or its alias `metadata.broker.list`).
    Bootstrap,
    /// `group.id`.
    GroupId,
}

/// Whether `key` is one of the builder's own settings.
pub(crate) fn route(key: &str) -> Option<Routed> {
    match key {
        "bootstrap.servers" | "metadata.broker.list" => Some(Routed::Bootstrap),
        "group.id" => Some(Routed::GroupId),
        _ => None,
    }
}

/// Refuses any property of `settings` that overrides one idemq fixes on `client` with another
/// value, then drops the fixed ones (they are set by idemq anyway).
pub(crate) fn check_fixed(
    client: KafkaClient,
    settings: Vec<(String, String)>,
    dead_letter_timeout: Duration,
) -> Result<Vec<(String, String)>, KafkaConsumerError> {
    let mut kept = Vec::with_capacity(settings.len());
    for (key, value) in settings {
        let Some(f) = FIXED
            .iter()
            .find(|f| f.client == client && f.keys.contains(&key.as_str()))
        else {
            kept.push((key, value));
            continue;
        };
        let v = value.trim();
        let same = match f.accepted {
            Accepted::OneOf(ok) => ok.iter().any(|a| a.eq_ignore_ascii_case(v)),
            Accepted::DeadLetterTimeoutMs => {
                v.parse::<u128>().ok() == Some(dead_letter_timeout.as_millis())
            }
        };
        if !same {
            return Err(KafkaConsumerError::FixedProperty {
                client,
                key,
                value,
                fixed: f.fixed,
                why: f.why,
            });
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, value: &str) -> Vec<(String, String)> {
        vec![(key.to_string(), value.to_string())]
    }

    const DLT: Duration = Duration::from_secs(30);

    #[test]
    fn overriding_a_fixed_property_is_refused_with_the_key_and_the_reason() {
        for (client, key, value) in [
            (KafkaClient::Consumer, "enable.auto.commit", "true"),
            (KafkaClient::Consumer, "enable.auto.offset.store", "1"),
            (
                KafkaClient::DeadLetterProducer,
                "enable.idempotence",
                "false",
            ),
            (KafkaClient::DeadLetterProducer, "acks", "1"),
            (
                KafkaClient::DeadLetterProducer,
                "request.required.acks",
                "0",
            ),
            (KafkaClient::DeadLetterProducer, "message.timeout.ms", "0"),
            (
                KafkaClient::DeadLetterProducer,
                "delivery.timeout.ms",
                "5000",
            ),
        ] {
            let err = check_fixed(client, one(key, value), DLT).unwrap_err();
            match &err {
                KafkaConsumerError::FixedProperty {
                    client: c,
                    key: k,
                    value: v,
                    ..
                } => assert_eq!((*c, k.as_str(), v.as_str()), (client, key, value)),
                other => panic!("{key}: {other:?}"),
            }
            let text = err.to_string();
            assert!(
                text.contains(key) && text.contains(&client.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn the_fixed_value_itself_is_accepted_and_dropped_and_other_properties_pass() {
        let settings = vec![
            ("enable.auto.commit".to_string(), "FALSE".to_string()),
            ("enable.auto.offset.store".to_string(), "0".to_string()),
            ("session.timeout.ms".to_string(), "6000".to_string()),
        ];
        let kept = check_fixed(KafkaClient::Consumer, settings, DLT).unwrap();
        assert_eq!(kept, one("session.timeout.ms", "6000"));
        let settings = vec![
            ("acks".to_string(), "-1".to_string()),
            ("enable.idempotence".to_string(), "true".to_string()),
            ("delivery.timeout.ms".to_string(), "30000".to_string()),
            ("compression.type".to_string(), "zstd".to_string()),
        ];
        let kept = check_fixed(KafkaClient::DeadLetterProducer, settings, DLT).unwrap();
        assert_eq!(kept, one("compression.type", "zstd"));
    }

    #[test]
    fn a_property_is_only_fixed_on_its_own_client() {
        // `acks` means nothing to a consumer; the consumer's auto-commit nothing to a producer.
        let kept = check_fixed(KafkaClient::Consumer, one("acks", "1"), DLT).unwrap();
        assert_eq!(kept, one("acks", "1"));
        let kept = check_fixed(
            KafkaClient::DeadLetterProducer,
            one("enable.auto.commit", "true"),
            DLT,
        )
        .unwrap();
        assert_eq!(kept, one("enable.auto.commit", "true"));
    }
}
