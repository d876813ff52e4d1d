//! Kafka's ConsumerProtocol: the subscription a consumer puts in its JoinGroup protocol
//! metadata and the assignment its group leader hands out through SyncGroup, both opaque
//! bytes to the group protocol. Each is an `int16` version followed by the struct at that
//! version (v0–v3, never flexible). Versions newer than 3 only append fields, so they are
//! read as v3 and the rest is ignored, as Kafka's `ConsumerProtocol` does.
//!
//! The broker reads subscriptions (OffsetDelete refuses topics a live member subscribes
//! to); admin tools read assignments (`rill group describe`). Both come from peers, so
//! they go through the bounded reader like every request.

use bytes::Bytes;
use kafka_protocol::messages::{
    consumer_protocol_assignment, consumer_protocol_subscription, ConsumerProtocolAssignment,
    ConsumerProtocolSubscription, TopicName,
};

use super::source::array;
use super::{Decode, DecodeError, Source, WireReader};

/// The newest ConsumerProtocol version these decoders know.
pub const CONSUMER_PROTOCOL_VERSION_MAX: i16 = 3;

fn topic_partitions<S: Source>(s: &mut S) -> Result<(TopicName, Vec<i32>), DecodeError> {
    let topic = TopicName(s.string(false)?);
    let partitions = array(s, false, 4, |s| s.int32())?;
    Ok((topic, partitions))
}

impl Decode for ConsumerProtocolSubscription {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, 0..=CONSUMER_PROTOCOL_VERSION_MAX)?;
        let mut m = ConsumerProtocolSubscription::default();
        m.topics = array(s, false, 2, |s| s.string(false))?;
        m.user_data = s.nullable_bytes(false)?;
        if v >= 1 {
            m.owned_partitions = array(s, false, 6, |s| {
                let (topic, partitions) = topic_partitions(s)?;
                let mut tp = consumer_protocol_subscription::TopicPartition::default();
                tp.topic = topic;
                tp.partitions = partitions;
                Ok(tp)
            })?;
        }
        if v >= 2 {
            m.generation_id = s.int32()?;
        }
        if v >= 3 {
            m.rack_id = s.nullable_string(false)?;
        }
        Ok(m)
    }
}

impl Decode for ConsumerProtocolAssignment {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, 0..=CONSUMER_PROTOCOL_VERSION_MAX)?;
        let mut m = ConsumerProtocolAssignment::default();
        m.assigned_partitions = array(s, false, 6, |s| {
            let (topic, partitions) = topic_partitions(s)?;
            let mut tp = consumer_protocol_assignment::TopicPartition::default();
            tp.topic = topic;
            tp.partitions = partitions;
            Ok(tp)
        })?;
        m.user_data = s.nullable_bytes(false)?;
        Ok(m)
    }
}

/// Reads the version prefix and decodes `T` at it (capped at v3); bytes after the struct
/// are ignored (newer versions append fields).
fn versioned<T: Decode>(bytes: Bytes) -> Result<T, DecodeError> {
    let mut reader = WireReader::new(bytes);
    let version = reader.int16()?;
    if version < 0 {
        return Err(DecodeError::UnknownVersion { version });
    }
    T::decode(&mut reader, version.min(CONSUMER_PROTOCOL_VERSION_MAX))
}

/// Decodes a consumer's subscription (JoinGroup protocol metadata of a "consumer" group).
pub fn decode_subscription(bytes: Bytes) -> Result<ConsumerProtocolSubscription, DecodeError> {
    versioned(bytes)
}

/// Decodes a member's assignment (SyncGroup / DescribeGroups of a "consumer" group). An
/// empty byte string is an empty assignment (what a member has before its first sync).
pub fn decode_assignment(bytes: Bytes) -> Result<ConsumerProtocolAssignment, DecodeError> {
    if bytes.is_empty() {
        return Ok(ConsumerProtocolAssignment::default());
    }
    versioned(bytes)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    #[test]
    fn every_version_round_trips_through_kafka_protocols_encoder() {
        crate::decode::oracle::assert_round_trips::<ConsumerProtocolSubscription>(0..=3);
        crate::decode::oracle::assert_round_trips::<ConsumerProtocolAssignment>(0..=3);
    }

    #[test]
    fn a_versioned_subscription_decodes_and_newer_versions_read_as_v3() {
        let subscription = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("orders")])
            .with_generation_id(7);
        for (written, extra) in [(1i16, &b""[..]), (3, &b""[..]), (9, &b"future"[..])] {
            let mut buf = BytesMut::new();
            buf.put_i16(written);
            subscription
                .encode(&mut buf, written.min(3))
                .expect("encodable");
            buf.put_slice(extra);
            let decoded = decode_subscription(buf.freeze()).expect("decodes");
            assert_eq!(decoded.topics, subscription.topics, "v{written}");
        }
    }

    #[test]
    fn a_huge_topic_count_is_refused_before_allocating() {
        let bytes = Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 1, b't']);
        assert!(matches!(
            decode_subscription(bytes.clone()),
            Err(DecodeError::CountTooLarge { .. })
        ));
        assert!(matches!(
            decode_assignment(bytes),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn an_empty_assignment_is_no_partitions() {
        let assignment = decode_assignment(Bytes::new()).expect("empty is valid");
        assert!(assignment.assigned_partitions.is_empty());
    }
}
