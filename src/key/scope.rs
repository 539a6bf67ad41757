//! [`Scope`]: the namespace a message's key is claimed in.

use crate::message::{Message, Source};
use std::fmt;
use std::sync::Arc;

/// A user function choosing a message's scope, with a label for logs and metrics; see
/// [`Scope::custom`].
#[derive(Clone)]
pub struct ScopeFn {
    label: Arc<str>,
    f: Arc<dyn Fn(&Message) -> String + Send + Sync>,
}

impl ScopeFn {
    /// The label given to [`Scope::custom`].
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl fmt::Debug for ScopeFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeFn({:?})", self.label)
    }
}

/// The namespace keys are claimed in: the same key in two scopes is two records, each processed
/// once.
///
/// | scope | records of a message | Kafka consumer | AMQP consumer |
/// |---|---|---|---|
/// | not set | the consumer's | group id | queue name |
/// | [`Fixed`](Self::Fixed) | the given name | as given | as given |
/// | [`PerTopic`](Self::PerTopic) | one namespace per topic | `{group}/{topic}` | queue name |
/// | [`Custom`](Self::Custom) | what the function returns | as returned | as returned |
///
/// An [`Engine`](crate::Engine) built directly resolves `PerTopic` to the bare topic (Kafka
/// messages) or queue (AMQP); the consumers' builders add the group as above. Two services that
/// must each process every message need different scopes (the defaults do that); two consumers of
/// one service that must share the work need the same one.
///
/// Per-topic scopes matter when one consumer reads several topics whose keys come from
/// independent producers: with one scope, `order-1` on `orders` and `order-1` on `refunds`
/// are the same record, and the second is acked as a replay (or dead-lettered as a conflict).
///
/// ```
/// use idemq::{Message, Scope};
///
/// let by_tenant = Scope::custom("tenant", |m: &Message| {
///     let tenant = m.header("tenant").flatten().unwrap_or(b"none");
///     format!("billing/{}", String::from_utf8_lossy(tenant))
/// });
/// assert_eq!(by_tenant.label(), "tenant");
/// let fixed: Scope = "billing".into();
/// assert_eq!(fixed.label(), "billing");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Scope {
    /// One name for every message.
    Fixed(String),
    /// One scope per Kafka topic (per queue for AMQP).
    PerTopic,
    /// Chosen by a function of the message; it must return a non-empty name (an empty one
    /// dead-letters the message as `invalid-idempotency-key`).
    Custom(ScopeFn),
}

impl Scope {
    /// [`Scope::Custom`]: `label` names the rule in logs, metrics and
    /// [`Processor::scope`](crate::Processor::scope).
    pub fn custom<F>(label: impl Into<String>, f: F) -> Self
    where
        F: Fn(&Message) -> String + Send + Sync + 'static,
    {
        let label: String = label.into();
        Scope::Custom(ScopeFn {
            label: Arc::from(label),
            f: Arc::new(f),
        })
    }

    /// What logs and metrics show: the fixed name, `{topic}`, or the custom function's label.
    pub fn label(&self) -> &str {
        match self {
            Scope::Fixed(s) => s,
            Scope::PerTopic => "{topic}",
            Scope::Custom(f) => &f.label,
        }
    }

    /// The scope of `msg`; `Err` with the reason when a custom function returned an empty name.
    pub fn resolve(&self, msg: &Message) -> Result<String, String> {
        let scope = match self {
            Scope::Fixed(s) => s.clone(),
            Scope::PerTopic => topic_of(msg).to_string(),
            Scope::Custom(f) => (f.f)(msg),
        };
        if scope.is_empty() {
            return Err(format!(
                "scope {:?} is empty for this message",
                self.label()
            ));
        }
        Ok(scope)
    }

    /// `PerTopic` under a Kafka consumer: `{group}/{topic}`; other scopes unchanged.
    #[cfg(feature = "kafka")]
    pub(crate) fn under_group(self, group: &str) -> Self {
        match self {
            Scope::PerTopic => {
                let prefix = group.to_string();
                let label = format!("{group}/{{topic}}");
                Scope::custom(label, move |m| format!("{prefix}/{}", topic_of(m)))
            }
            other => other,
        }
    }

    /// `PerTopic` under an AMQP consumer: the queue; other scopes unchanged.
    #[cfg(feature = "amqp")]
    pub(crate) fn under_queue(self, queue: &str) -> Self {
        match self {
            Scope::PerTopic => Scope::Fixed(queue.to_string()),
            other => other,
        }
    }
}

/// The topic (Kafka) or queue (AMQP) of a message, from its source.
fn topic_of(msg: &Message) -> &str {
    match &msg.source {
        Source::Kafka { topic, .. } => topic,
        Source::Amqp { queue, .. } => queue,
        Source::Other(s) => s,
    }
}

impl From<&str> for Scope {
    fn from(s: &str) -> Self {
        Scope::Fixed(s.to_string())
    }
}

impl From<String> for Scope {
    fn from(s: String) -> Self {
        Scope::Fixed(s)
    }
}

impl From<&String> for Scope {
    fn from(s: &String) -> Self {
        Scope::Fixed(s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(topic: &str) -> Message {
        Message::from_kafka("p", crate::message::KafkaMetadata::new(topic, 0, 0))
    }

    #[test]
    fn scopes_resolve_per_message() {
        assert_eq!(Scope::from("s").resolve(&kafka("a")).unwrap(), "s");
        assert_eq!(Scope::PerTopic.resolve(&kafka("a")).unwrap(), "a");
        let amqp = Message::from_amqp("p", crate::message::AmqpMetadata::new("q", "x", "rk", 1));
        assert_eq!(Scope::PerTopic.resolve(&amqp).unwrap(), "q");
        let empty = Scope::custom("nothing", |_| String::new());
        assert!(empty.resolve(&kafka("a")).unwrap_err().contains("nothing"));
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn per_topic_under_a_group_prefixes_it() {
        let s = Scope::PerTopic.under_group("g");
        assert_eq!(s.resolve(&kafka("orders")).unwrap(), "g/orders");
        assert_eq!(s.label(), "g/{topic}");
        assert_eq!(Scope::from("x").under_group("g").label(), "x");
    }
}
