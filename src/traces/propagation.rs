//! W3C trace context (`traceparent` / `tracestate`) in and out of messages (feature `otel`).
//!
//! Parsed and written here rather than with the SDK's propagator, so the library depends on the
//! OpenTelemetry API only and the application keeps its choice of SDK.

use super::{TRACEPARENT, TRACESTATE};
use crate::message::Message;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use std::cell::RefCell;
use std::future::Future;
use std::str::FromStr;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

tokio::task_local! {
    /// The context of the last `idemq.process` span of the message this task settles, for what
    /// the broker adapter publishes after processing (dead letters, replies).
    static PROCESSED: RefCell<Option<SpanContext>>;
}

/// The trace context headers of an outgoing message.
pub(crate) struct TraceHeaders {
    pub(crate) traceparent: String,
    pub(crate) tracestate: Option<String>,
}

/// Runs `fut`, one message processed and settled, so that what it publishes after processing can
/// carry the process span's context ([`outgoing`]).
pub(crate) fn scope<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    PROCESSED.scope(RefCell::new(None), fut)
}

/// Remembers `span` (an `idemq.process` span) as the one whose context [`outgoing`] injects;
/// nothing outside a [`scope`].
pub(crate) fn remember(span: &Span) {
    let _ = PROCESSED.try_with(|slot| {
        let cx = span.context().span().span_context().clone();
        *slot.borrow_mut() = cx.is_valid().then_some(cx);
    });
}

/// The headers that carry the process span's context onward: that of the span [`remember`]ed
/// in this [`scope`], else of the current span; `None` without a valid context (no OpenTelemetry
/// layer installed).
pub(crate) fn outgoing() -> Option<TraceHeaders> {
    let cx = PROCESSED
        .try_with(|slot| slot.borrow().clone())
        .ok()
        .flatten()
        .unwrap_or_else(|| Span::current().context().span().span_context().clone());
    if !cx.is_valid() {
        return None;
    }
    let state = cx.trace_state().header();
    Some(TraceHeaders {
        traceparent: format_traceparent(&cx),
        tracestate: (!state.is_empty()).then_some(state),
    })
}

/// Makes the remote span named by `message`'s `traceparent` (with its `tracestate`) the parent of
/// `span`. An absent or malformed header leaves `span` a root, as the W3C spec asks.
pub(crate) fn set_remote_parent(span: &Span, message: &Message) {
    let Some(parent) = extract(message) else {
        return;
    };
    // Fails only when no OpenTelemetry layer is installed: then there is no trace to join.
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
}

/// The remote span context `message`'s headers name, if they name a valid one.
fn extract(message: &Message) -> Option<SpanContext> {
    let text = |name| {
        message
            .header(name)
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let (trace_id, span_id, flags) = parse_traceparent(text(TRACEPARENT)?)?;
    // An unparsable `tracestate` is dropped; the parent stays (W3C trace context, section 3.3).
    let state = text(TRACESTATE)
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// `version-traceid-parentid-flags`; version `00` is exactly that, later versions may append
/// fields, `ff` is invalid. All-zero ids are invalid.
pub(crate) fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = value.trim();
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some((
        trace_id,
        span_id,
        flags & TraceFlags::SAMPLED,
    ))
}

/// The `traceparent` value naming `cx` as the parent.
fn format_traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_back_a_traceparent() {
        let (t, s, f) = parse_traceparent(VALID).unwrap();
        let cx = SpanContext::new(t, s, f, true, TraceState::default());
        assert_eq!(format_traceparent(&cx), VALID);
    }

    #[test]
    fn refuses_malformed_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} accepted");
        }
        // A later version may append fields.
        assert!(parse_traceparent(&format!("01{}-later", &VALID[2..])).is_some());
    }

    #[test]
    fn extracts_the_parent_and_its_state_from_headers() {
        let msg = Message::new("x", crate::Source::Other("t".into()))
            .with_header("TraceParent", VALID)
            .with_header("tracestate", "vendor=abc");
        let cx = extract(&msg).unwrap();
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.trace_state().header(), "vendor=abc");
    }
}
