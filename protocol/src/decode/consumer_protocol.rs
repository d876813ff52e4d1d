//! The consumer protocol embedded in JoinGroup and SyncGroup (`protocol_type`
//! "consumer"): `ConsumerProtocolSubscription` (a member's JoinGroup metadata) and
//! `ConsumerProtocolAssignment` (its SyncGroup assignment). Each is a 2-byte version
//! followed by a non-flexible body in that version. Both come from other group members
//! (through the coordinator), so they are peer input: decoded here, bounded.
//!
//! Versions newer than the ones known are read in the newest known layout, as Kafka's
//! `ConsumerProtocol` does: later versions only append fields, which are ignored.

use bytes::Bytes;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};

use super::source::array;
use super::{Decode, DecodeError, Source, WireReader};

/// The newest subscription layout known (v3 adds the rack id).
const SUBSCRIPTION_VERSION_MAX: i16 = 3;
/// The newest assignment layout known.
const ASSIGNMENT_VERSION_MAX: i16 = 3;

impl Decode for ConsumerProtocolSubscription {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let mut m = ConsumerProtocolSubscription::default();
        // Non-flexible: a string is at least its 2-byte length.
        m.topics = array(s, false, 2, |s| s.string(false))?;
        m.user_data = s.nullable_bytes(false)?;
        if v >= 1 {
            m.owned_partitions = array(s, false, 6, |s| {
                let mut t = OwnedTopic::default();
                t.topic = TopicName(s.string(false)?);
                t.partitions = array(s, false, 4, |s| s.int32())?;
                Ok(t)
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
    fn decode<S: Source>(s: &mut S, _v: i16) -> Result<Self, DecodeError> {
        let mut m = ConsumerProtocolAssignment::default();
        m.assigned_partitions = array(s, false, 6, |s| {
            let mut t = AssignedTopic::default();
            t.topic = TopicName(s.string(false)?);
            t.partitions = array(s, false, 4, |s| s.int32())?;
            Ok(t)
        })?;
        m.user_data = s.nullable_bytes(false)?;
        Ok(m)
    }
}

/// Reads the version prefix of an embedded consumer-protocol message and the message in
/// that version (capped at `newest`). Bytes after it (fields of a newer version) are
/// ignored.
fn decode_versioned<T: Decode>(body: Bytes, newest: i16) -> Result<(i16, T), DecodeError> {
    let mut reader = WireReader::new(body);
    let version = reader.int16()?;
    if version < 0 {
        return Err(DecodeError::UnknownVersion { version });
    }
    let message = T::decode(&mut reader, version.min(newest))?;
    Ok((version, message))
}

/// Decodes a member's subscription (JoinGroup member metadata); returns the version it
/// was written in and the message.
pub fn decode_subscription(
    body: Bytes,
) -> Result<(i16, ConsumerProtocolSubscription), DecodeError> {
    decode_versioned(body, SUBSCRIPTION_VERSION_MAX)
}

/// Decodes a member's assignment (SyncGroup answer). An empty body is an empty
/// assignment (Kafka's coordinator answers a member the leader left out with no bytes).
pub fn decode_assignment(body: Bytes) -> Result<ConsumerProtocolAssignment, DecodeError> {
    if body.is_empty() {
        return Ok(ConsumerProtocolAssignment::default());
    }
    decode_versioned(body, ASSIGNMENT_VERSION_MAX).map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    fn encode<T: Encodable>(message: &T, version: i16) -> Bytes {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&version.to_be_bytes());
        message.encode(&mut buf, version).expect("encode");
        buf.freeze()
    }

    #[test]
    fn subscriptions_round_trip_in_every_version_against_kafka_protocol_encoder() {
        let message = ConsumerProtocolSubscription::default()
            .with_topics(vec![
                StrBytes::from_static_str("a"),
                StrBytes::from_static_str("bb"),
            ])
            .with_user_data(Some(Bytes::from_static(b"ud")))
            .with_owned_partitions(vec![OwnedTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("a")))
                .with_partitions(vec![0, 3])])
            .with_generation_id(7)
            .with_rack_id(Some(StrBytes::from_static_str("r1")));
        for version in 0..=3 {
            let (v, decoded) = decode_subscription(encode(&message, version)).expect("decode");
            assert_eq!(v, version);
            assert_eq!(decoded.topics, message.topics);
            assert_eq!(decoded.user_data, message.user_data);
            let owned = if version >= 1 {
                message.owned_partitions.clone()
            } else {
                vec![]
            };
            assert_eq!(decoded.owned_partitions, owned);
        }
    }

    #[test]
    fn a_newer_subscription_version_is_read_in_the_newest_known_layout() {
        let message = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("t")]);
        let mut body = BytesMut::new();
        body.extend_from_slice(&9i16.to_be_bytes());
        message.encode(&mut body, 3).expect("encode");
        body.extend_from_slice(b"future fields");
        let (v, decoded) = decode_subscription(body.freeze()).expect("decode");
        assert_eq!((v, decoded.topics), (9, message.topics));
    }

    #[test]
    fn assignments_round_trip_and_empty_means_none() {
        let message = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            AssignedTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![1, 2]),
        ]);
        for version in 0..=3 {
            let decoded = decode_assignment(encode(&message, version)).expect("decode");
            assert_eq!(decoded.assigned_partitions, message.assigned_partitions);
        }
        assert!(decode_assignment(Bytes::new())
            .expect("empty")
            .assigned_partitions
            .is_empty());
    }

    #[test]
    fn a_huge_topic_count_is_refused_before_allocating() {
        // version 0, then a topic count of 2^31-1 with nothing behind it.
        let body = Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_subscription(body.clone()),
            Err(DecodeError::CountTooLarge { .. })
        ));
        assert!(matches!(
            decode_assignment(body),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
