//! Request/reply: the outcome body is published to `reply_to` with the request's correlation id.

use crate::headers;
use crate::outcome::Outcome;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// Header telling the requester whether the stored outcome was a success or a stored failure.
pub const OUTCOME_STATUS: &str = "x-idemq-outcome-status";

/// Properties of the reply to a request. `replayed` adds `Idempotent-Replay: true`: the handler did
/// not run again, this is the stored outcome.
pub(crate) fn reply_properties(
    request: &BasicProperties,
    outcome: &Outcome,
    replayed: bool,
) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(
        ShortString::from(OUTCOME_STATUS),
        AMQPValue::LongString(LongString::from(outcome.status.as_str())),
    );
    if replayed {
        table.insert(
            ShortString::from(headers::IDEMPOTENT_REPLAY),
            AMQPValue::LongString(LongString::from("true")),
        );
    }
    // With `otel`, the reply continues the trace from the process span, as a dead letter does.
    if let Some(trace) = crate::traces::outgoing() {
        crate::traces::inject_amqp(&mut table, trace);
    }
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(table);
    if let Some(id) = request.correlation_id() {
        props = props.with_correlation_id(id.clone());
    }
    props
}
