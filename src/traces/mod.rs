//! Spans of message processing and, with the `otel` feature, W3C trace context across the broker.
//!
//! Every message is processed in an `idemq.process` span carrying OpenTelemetry's messaging
//! attributes (as plain `tracing` fields, so they cost nothing without a subscriber), and every
//! store call in an `idemq.store` child span. With `otel`, the message's `traceparent` /
//! `tracestate` headers become the parent of `idemq.process`, and what idemq publishes for the
//! message (dead-letter copies, RPC replies) carries the process span's context onward.
// Propagation onward is the broker adapters' business.
#![cfg_attr(not(any(feature = "kafka", feature = "amqp")), allow(dead_code))]

#[cfg(feature = "otel")]
mod propagation;
mod spans;

#[cfg(feature = "otel")]
#[cfg_attr(not(feature = "amqp"), allow(unused_imports))]
pub(crate) use propagation::{outgoing, remember, scope, set_remote_parent, TraceHeaders};
pub(crate) use spans::{process_span, store_span};

/// W3C trace context header naming the parent span.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// W3C trace context header with vendor-specific trace state.
pub(crate) const TRACESTATE: &str = "tracestate";

#[cfg(not(feature = "otel"))]
mod disabled {
    //! Without `otel`: nothing to propagate, and headers stay as they are.
    use std::future::Future;

    /// The trace context headers of an outgoing message.
    pub(crate) struct TraceHeaders {
        pub(crate) traceparent: String,
        pub(crate) tracestate: Option<String>,
    }

    /// Runs `fut` (one message, processed and settled); a no-op without `otel`.
    pub(crate) fn scope<F: Future>(fut: F) -> F {
        fut
    }

    /// A no-op without `otel`.
    pub(crate) fn remember(_span: &tracing::Span) {}

    /// A no-op without `otel`.
    pub(crate) fn set_remote_parent(_span: &tracing::Span, _message: &crate::message::Message) {}

    /// Nothing to inject without `otel`.
    pub(crate) fn outgoing() -> Option<TraceHeaders> {
        None
    }
}
#[cfg(not(feature = "otel"))]
#[cfg_attr(not(feature = "amqp"), allow(unused_imports))]
pub(crate) use disabled::{outgoing, remember, scope, set_remote_parent, TraceHeaders};

/// Puts `trace` into an AMQP header table, replacing any trace context headers it had (in any
/// letter case).
#[cfg(feature = "amqp")]
pub(crate) fn inject_amqp(table: &mut lapin::types::FieldTable, trace: TraceHeaders) {
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    let mut entries = table.inner().clone();
    entries.retain(|name, _| {
        !(name.as_str().eq_ignore_ascii_case(TRACEPARENT)
            || name.as_str().eq_ignore_ascii_case(TRACESTATE))
    });
    let mut out = FieldTable::from(entries);
    let mut put = |name: &str, value: String| {
        out.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    };
    put(TRACEPARENT, trace.traceparent);
    if let Some(state) = trace.tracestate {
        put(TRACESTATE, state);
    }
    *table = out;
}

#[cfg(all(test, feature = "amqp"))]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable};

    #[test]
    fn amqp_trace_headers_are_replaced_whatever_their_case() {
        let mut table = FieldTable::default();
        table.insert("TraceParent".into(), AMQPValue::LongString("old".into()));
        table.insert("tracestate".into(), AMQPValue::LongString("old=1".into()));
        table.insert("Idempotency-Key".into(), AMQPValue::LongString("k".into()));
        let trace = TraceHeaders {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        };
        inject_amqp(&mut table, trace);
        let names: Vec<&str> = table.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["Idempotency-Key", "traceparent"]);
    }
}
