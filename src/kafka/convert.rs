//! Conversions between rdkafka records and idemq's broker-neutral [`Message`].

use crate::message::{Header, KafkaMetadata, KafkaTimestamp, Message};
use bytes::Bytes;
use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, Header as KafkaHeader, Message as _, OwnedHeaders};
use rdkafka::Timestamp;

/// Copies a record out of librdkafka's buffer: headers (order and duplicates kept), payload (empty
/// when null), and its key, timestamp and topic/partition/offset as metadata and source.
pub(crate) fn to_message(record: &BorrowedMessage<'_>) -> Message {
    let mut meta = KafkaMetadata::new(record.topic(), record.partition(), record.offset());
    meta.key = record.key().map(Bytes::copy_from_slice);
    meta.timestamp = timestamp_of(record.timestamp());
    let mut message = Message::from_kafka(
        Bytes::copy_from_slice(record.payload().unwrap_or_default()),
        meta,
    );
    message.headers = headers_of(record);
    message
}

fn timestamp_of(ts: Timestamp) -> Option<KafkaTimestamp> {
    match ts {
        Timestamp::NotAvailable => None,
        Timestamp::CreateTime(ms) => Some(KafkaTimestamp::CreateTime(ms)),
        Timestamp::LogAppendTime(ms) => Some(KafkaTimestamp::LogAppendTime(ms)),
    }
}

/// A record's headers, read through librdkafka's C API.
///
/// Kafka header names are bytes; rdkafka's own header accessors panic on a name that is not
/// UTF-8 (legal in Kafka, and any producer can send one), which would take the consumer down on
/// every restart. Names are converted lossily instead (invalid bytes become U+FFFD), so such a
/// header never matches a configured key header and the record goes through the normal
/// missing/invalid-key policy.
fn headers_of(record: &BorrowedMessage<'_>) -> Vec<Header> {
    let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `record.ptr()` is a live message owned by `record` for the duration of this call;
    // the headers it hands out are owned by the message and only read here.
    let err = unsafe { rdsys::rd_kafka_message_headers(record.ptr(), &mut hdrs) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return Vec::new();
    }
    // SAFETY: `hdrs` is valid (checked above) while `record` lives.
    let count = unsafe { rdsys::rd_kafka_header_cnt(hdrs) };
    let mut out = Vec::with_capacity(count);
    for idx in 0..count {
        let mut name: *const std::os::raw::c_char = std::ptr::null();
        let mut value: *const std::os::raw::c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `idx < count`; the out-pointers are valid locals.
        let err =
            unsafe { rdsys::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka stores header names NUL-terminated; `value` points at `size` bytes
        // (or is null for a null value). Both live as long as the message.
        let (name, value) = unsafe {
            (
                std::ffi::CStr::from_ptr(name).to_bytes(),
                (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size)),
            )
        };
        out.push(Header {
            name: String::from_utf8_lossy(name).into_owned(),
            value: value.map(Bytes::copy_from_slice),
        });
    }
    out
}

/// rdkafka headers for an outgoing record, in order; a header with no value stays null.
pub(crate) fn to_kafka_headers<'a>(headers: impl IntoIterator<Item = &'a Header>) -> OwnedHeaders {
    let iter = headers.into_iter();
    let mut out = OwnedHeaders::new_with_capacity(iter.size_hint().0);
    for h in iter {
        out = out.insert(KafkaHeader {
            key: &h.name,
            value: h.value.as_deref(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn timestamps_keep_their_type() {
        assert_eq!(timestamp_of(Timestamp::NotAvailable), None);
        assert_eq!(
            timestamp_of(Timestamp::CreateTime(5)),
            Some(KafkaTimestamp::CreateTime(5))
        );
        assert_eq!(
            timestamp_of(Timestamp::LogAppendTime(6)),
            Some(KafkaTimestamp::LogAppendTime(6))
        );
    }

    #[test]
    fn kafka_headers_keep_order_duplicates_and_null_values() {
        let hs = [
            Header::new("a", "1"),
            Header {
                name: "null".into(),
                value: None,
            },
            Header::new("a", "2"),
        ];
        let out = to_kafka_headers(&hs);
        let got: Vec<(&str, Option<&[u8]>)> = out.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(
            got,
            [
                ("a", Some(&b"1"[..])),
                ("null", None),
                ("a", Some(&b"2"[..]))
            ]
        );
    }
}
