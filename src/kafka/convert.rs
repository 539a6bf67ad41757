//! Conversions between rdkafka records and idemq's broker-neutral [`Message`].

use crate::message::{Header, Message, Source};
use bytes::Bytes;
use rdkafka::message::{
    BorrowedMessage, Header as KafkaHeader, Headers, Message as _, OwnedHeaders,
};

/// Copies a record out of librdkafka's buffer: headers (order and duplicates kept), payload (empty
/// when null) and its topic/partition/offset as the source.
pub(crate) fn to_message(record: &BorrowedMessage<'_>) -> Message {
    let headers = record
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header {
                    name: h.key.to_string(),
                    value: h.value.map(Bytes::copy_from_slice),
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        headers,
        payload: Bytes::copy_from_slice(record.payload().unwrap_or_default()),
        source: Source::Kafka {
            topic: record.topic().to_string(),
            partition: record.partition(),
            offset: record.offset(),
        },
        message_id: None,
        redelivered: false,
    }
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
