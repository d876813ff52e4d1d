//! The records of `__consumer_offsets`, in Kafka's schemas (so the topic reads the same as
//! Kafka's to a tool that decodes it):
//!
//! * OffsetCommitKey v1 `{version: i16 = 1, group: string, topic: string, partition: i32}`
//!   with OffsetCommitValue v3 `{version: i16 = 3, offset: i64, leader_epoch: i32,
//!   metadata: string, commit_timestamp: i64}`; values v0–v2 are read too.
//! * GroupMetadataKey v2 `{version: i16 = 2, group: string}` with GroupMetadataValue v3
//!   `{version: i16 = 3, protocol_type: string, generation: i32, protocol: nullable string,
//!   leader: nullable string, current_state_timestamp: i64, members: [member_id: string,
//!   group_instance_id: nullable string, client_id: string, client_host: string,
//!   rebalance_timeout: i32, session_timeout: i32, subscription: bytes, assignment: bytes]}`.
//!
//! A null value is a tombstone (the offset or the group was deleted). Decoding goes through
//! `rill-protocol`'s bounded [`WireReader`]: a record someone else produced into the topic
//! cannot make the coordinator allocate more than its bytes.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use rill_protocol::decode::{source, DecodeError, Source, WireReader};

/// An offset committed for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    /// The next offset the group will consume.
    pub offset: i64,
    /// The leader epoch of the record before `offset` (-1: unknown).
    pub leader_epoch: i32,
    /// The client's metadata string.
    pub metadata: String,
    /// When it was committed (ms since the epoch).
    pub commit_timestamp_ms: i64,
}

/// One member as the group metadata record keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// Its static instance id (`group.instance.id`), if any.
    pub group_instance_id: Option<String>,
    /// The client id of its JoinGroup.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Its rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Its session timeout.
    pub session_timeout_ms: i32,
    /// Its metadata for the group's chosen protocol.
    pub subscription: Bytes,
    /// What the leader assigned it.
    pub assignment: Bytes,
}

/// A group's state as of its last completed rebalance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    /// "consumer", usually.
    pub protocol_type: String,
    /// The generation.
    pub generation: i32,
    /// The chosen protocol (assignor), none for an empty group.
    pub protocol: Option<String>,
    /// The leader's member id.
    pub leader: Option<String>,
    /// When the group entered its state (ms since the epoch).
    pub current_state_timestamp_ms: i64,
    /// The members.
    pub members: Vec<MemberValue>,
}

/// A decoded record of `__consumer_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// An offset commit (`None`: the offset was deleted).
    Offset {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The committed offset.
        value: Option<OffsetValue>,
    },
    /// A group's metadata (`None`: the group was deleted).
    Group {
        /// The group.
        group: String,
        /// The metadata.
        value: Option<GroupValue>,
    },
}

const OFFSET_KEY_VERSION: i16 = 1;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_KEY_VERSION: i16 = 2;
const GROUP_VALUE_VERSION: i16 = 3;

fn put_string(buf: &mut BytesMut, s: &str) {
    // Every string written here is bounded far below i16::MAX by the request checks
    // (group ids, topic names, metadata); longer ones are cut rather than mis-encoded.
    let bytes = &s.as_bytes()[..s.len().min(i16::MAX as usize)];
    buf.put_i16(bytes.len() as i16);
    buf.put_slice(bytes);
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        None => buf.put_i16(-1),
        Some(s) => put_string(buf, s),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

/// The key of an offset commit.
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut buf = BytesMut::with_capacity(10 + group.len() + topic.len());
    buf.put_i16(OFFSET_KEY_VERSION);
    put_string(&mut buf, group);
    put_string(&mut buf, topic);
    buf.put_i32(partition);
    buf.freeze()
}

/// The value of an offset commit.
pub fn offset_value(value: &OffsetValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(26 + value.metadata.len());
    buf.put_i16(OFFSET_VALUE_VERSION);
    buf.put_i64(value.offset);
    buf.put_i32(value.leader_epoch);
    put_string(&mut buf, &value.metadata);
    buf.put_i64(value.commit_timestamp_ms);
    buf.freeze()
}

/// The key of a group's metadata.
pub fn group_key(group: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + group.len());
    buf.put_i16(GROUP_KEY_VERSION);
    put_string(&mut buf, group);
    buf.freeze()
}

/// The value of a group's metadata.
pub fn group_value(value: &GroupValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut buf, &value.protocol_type);
    buf.put_i32(value.generation);
    put_nullable_string(&mut buf, value.protocol.as_deref());
    put_nullable_string(&mut buf, value.leader.as_deref());
    buf.put_i64(value.current_state_timestamp_ms);
    buf.put_i32(value.members.len() as i32);
    for m in &value.members {
        put_string(&mut buf, &m.member_id);
        put_nullable_string(&mut buf, m.group_instance_id.as_deref());
        put_string(&mut buf, &m.client_id);
        put_string(&mut buf, &m.client_host);
        buf.put_i32(m.rebalance_timeout_ms);
        buf.put_i32(m.session_timeout_ms);
        put_bytes(&mut buf, &m.subscription);
        put_bytes(&mut buf, &m.assignment);
    }
    buf.freeze()
}

/// Why a record of `__consumer_offsets` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordFormatError {
    /// A record without a key.
    #[error("record without a key")]
    NoKey,
    /// A key or value version this broker does not know.
    #[error("unknown {what} version {version}")]
    UnknownVersion {
        /// Which schema.
        what: &'static str,
        /// The version read.
        version: i16,
    },
    /// The bytes do not follow the schema.
    #[error("malformed record: {0}")]
    Malformed(#[from] DecodeError),
}

fn string(r: &mut WireReader) -> Result<String, DecodeError> {
    r.string(false).map(|s: StrBytes| s.to_string())
}

fn nullable_string(r: &mut WireReader) -> Result<Option<String>, DecodeError> {
    Ok(r.nullable_string(false)?.map(|s| s.to_string()))
}

/// Decodes one record of `__consumer_offsets` from its key and value.
pub fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<OffsetsRecord, RecordFormatError> {
    let key = key.ok_or(RecordFormatError::NoKey)?;
    let mut k = WireReader::new(Bytes::copy_from_slice(key));
    let key_version = k.int16()?;
    match key_version {
        0 | 1 => {
            let group = string(&mut k)?;
            let topic = string(&mut k)?;
            let partition = k.int32()?;
            let value = value.map(decode_offset_value).transpose()?;
            Ok(OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            })
        }
        2 => {
            let group = string(&mut k)?;
            let value = value.map(decode_group_value).transpose()?;
            Ok(OffsetsRecord::Group { group, value })
        }
        version => Err(RecordFormatError::UnknownVersion {
            what: "key",
            version,
        }),
    }
}

fn decode_offset_value(value: &[u8]) -> Result<OffsetValue, RecordFormatError> {
    let mut v = WireReader::new(Bytes::copy_from_slice(value));
    let version = v.int16()?;
    let offset = v.int64()?;
    let leader_epoch = if version >= 3 { v.int32()? } else { -1 };
    let metadata = string(&mut v)?;
    let commit_timestamp_ms = v.int64()?;
    match version {
        0..=3 => Ok(OffsetValue {
            offset,
            leader_epoch,
            metadata,
            commit_timestamp_ms,
        }),
        version => Err(RecordFormatError::UnknownVersion {
            what: "offset value",
            version,
        }),
    }
}

fn decode_group_value(value: &[u8]) -> Result<GroupValue, RecordFormatError> {
    let mut v = WireReader::new(Bytes::copy_from_slice(value));
    let version = v.int16()?;
    if version != GROUP_VALUE_VERSION {
        return Err(RecordFormatError::UnknownVersion {
            what: "group value",
            version,
        });
    }
    let protocol_type = string(&mut v)?;
    let generation = v.int32()?;
    let protocol = nullable_string(&mut v)?;
    let leader = nullable_string(&mut v)?;
    let current_state_timestamp_ms = v.int64()?;
    // A member takes at least 2+2+2+2+4+4+4+4 bytes.
    let members = source::array(&mut v, false, 24, |v| {
        Ok(MemberValue {
            member_id: string(v)?,
            group_instance_id: nullable_string(v)?,
            client_id: string(v)?,
            client_host: string(v)?,
            rebalance_timeout_ms: v.int32()?,
            session_timeout_ms: v.int32()?,
            subscription: v.bytes(false)?,
            assignment: v.bytes(false)?,
        })
    })?;
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp_ms,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip_in_kafkas_layout() {
        let value = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp_ms: 1_700_000_000_000,
        };
        let key = offset_key("g", "t", 7);
        // Kafka's OffsetCommitKey v1: version, group, topic, partition.
        assert_eq!(&key[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        let decoded = decode(Some(&key), Some(&offset_value(&value))).unwrap();
        assert_eq!(
            decoded,
            OffsetsRecord::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
                value: Some(value),
            }
        );
        // A tombstone.
        assert!(matches!(
            decode(Some(&key), None).unwrap(),
            OffsetsRecord::Offset { value: None, .. }
        ));
    }

    #[test]
    fn group_records_round_trip() {
        let value = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            current_state_timestamp_ms: 9,
            members: vec![MemberValue {
                member_id: "m-1".into(),
                group_instance_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 10_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        let decoded = decode(Some(&group_key("g")), Some(&group_value(&value))).unwrap();
        assert_eq!(
            decoded,
            OffsetsRecord::Group {
                group: "g".into(),
                value: Some(value),
            }
        );
    }

    #[test]
    fn garbage_is_an_error_not_an_allocation() {
        assert!(decode(None, None).is_err());
        assert!(decode(Some(&[0, 9]), None).is_err());
        // A group value claiming i32::MAX members.
        let mut v = BytesMut::new();
        v.put_i16(3);
        put_string(&mut v, "consumer");
        v.put_i32(1);
        v.put_i16(-1);
        v.put_i16(-1);
        v.put_i64(0);
        v.put_i32(i32::MAX);
        assert!(matches!(
            decode(Some(&group_key("g")), Some(&v)),
            Err(RecordFormatError::Malformed(
                DecodeError::CountTooLarge { .. }
            ))
        ));
    }
}
