//! [`MetadataRecord`]: one change to the cluster metadata, as stored in the metadata log.
//!
//! # Encoding (all integers big-endian, as everywhere on Rill's wires)
//!
//! One record is the value of one Kafka record in the metadata partition's log:
//!
//! ```text
//! record          = version:u8 (= RECORD_VERSION) tag:u8 body
//! body            = RegisterBroker   (tag 0) broker_id:i32 incarnation_id:uuid
//!                                            client_host:string client_port:u16
//!                                            inter_broker_host:string inter_broker_port:u16
//!                                            rack:nullable_string
//!                 | UnregisterBroker (tag 1) broker_id:i32 incarnation_id:uuid
//!                 | CreateTopic      (tag 2) name:string topic_id:uuid configs assignments
//!                 | CreatePartitions (tag 3) topic_id:uuid assignments
//!                 | DeleteTopic      (tag 4) topic_id:uuid
//!                 | ProducerIdBlock  (tag 8) broker_id:i32 incarnation_id:uuid
//!                                            first_producer_id:i64 size:i32
//!                 | LeaderHint       (tag 6) topic_id:uuid partition:i32 leader:i32
//!                                            leader_epoch:i32
//!                 | Checkpoint       (tag 7) snapshot:bytes   (a `super::snapshot` encoding)
//!                 | AlterTopicConfigs (tag 9) topic_id:uuid configs
//! configs         = count:i32 (key:string value:string)*count   (keys strictly ascending)
//! assignments     = count:i32 (replica_count:i32 broker_id:i32*replica_count)*count
//! string          = length:i16 utf8                (Kafka STRING)
//! nullable_string = length:i16 utf8, -1 for null   (Kafka NULLABLE_STRING)
//! bytes           = length:i32 bytes               (Kafka BYTES)
//! uuid            = 16 bytes, most significant first
//! ```
//!
//! A field is never removed or reordered within a version: a change of layout is a new
//! [`RECORD_VERSION`], and a build meets a version it does not know with
//! [`RecordError::UnknownVersion`] rather than a guess.
//!
//! Decoding reads through `rill-protocol`'s [`WireReader`]: every length and count is
//! checked against the bytes left before anything is allocated, preallocation is capped,
//! and every string and count has a maximum (see [`super`]'s limits). The encoder refuses
//! the same records ([`MetadataRecord::encode`]), so whatever encodes decodes. Values are
//! only checked for shape here; whether a record makes sense against the current metadata
//! (a known broker, a free topic name) is [`super::image`]'s call.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use rill_protocol::decode::source::prealloc_capacity;
use rill_protocol::decode::{DecodeError, Source, WireReader};
use uuid::Uuid;

use super::{
    CONFIG_KEY_BYTES_MAX, CONFIG_VALUE_BYTES_MAX, HOST_BYTES_MAX, RACK_BYTES_MAX,
    REPLICAS_PER_PARTITION_MAX, TOPIC_CONFIGS_MAX,
};
use crate::state::{PARTITIONS_MAX, TOPIC_NAME_BYTES_MAX};

/// The version byte every record starts with.
pub const RECORD_VERSION: u8 = 1;

/// Tags of the [`MetadataRecord`] variants on the wire. Never reuse a retired tag.
mod tag {
    pub const REGISTER_BROKER: u8 = 0;
    pub const UNREGISTER_BROKER: u8 = 1;
    pub const CREATE_TOPIC: u8 = 2;
    pub const CREATE_PARTITIONS: u8 = 3;
    pub const DELETE_TOPIC: u8 = 4;
    // Tag 5 was a ProducerIdBlock without the incarnation; nothing ever proposed it.
    pub const PRODUCER_ID_BLOCK: u8 = 8;
    pub const LEADER_HINT: u8 = 6;
    pub const CHECKPOINT: u8 = 7;
    pub const ALTER_TOPIC_CONFIGS: u8 = 9;
}

/// Largest snapshot a [`MetadataRecord::Checkpoint`] carries: one Raft entry goes out
/// in one inter-broker frame (16 MiB by default), so this stays well below it. An
/// image larger than this is not checkpointed (its log is not trimmed).
pub const CHECKPOINT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Bytes an encoded string takes at least: its INT16 length.
const STRING_BYTES_MIN: usize = 2;
/// Bytes one config entry takes at least: two empty strings.
const CONFIG_ENTRY_BYTES_MIN: usize = 2 * STRING_BYTES_MIN;
/// Bytes one partition assignment takes at least: its replica count.
const ASSIGNMENT_BYTES_MIN: usize = 4;
/// Bytes one replica takes: its broker id.
const REPLICA_BYTES: usize = 4;

/// One change to the cluster metadata: the value of one record of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRecord {
    /// A broker started and announces where it listens. A registration of a broker id
    /// already registered replaces the old one (a restart has a new incarnation).
    RegisterBroker {
        /// The broker's id (`node_id`).
        broker_id: i32,
        /// Chosen anew at every start of the broker process, so a record of an earlier
        /// run (a late [`MetadataRecord::UnregisterBroker`]) cannot fence this one.
        incarnation_id: Uuid,
        /// Host clients connect to (Metadata answers name it).
        client_host: String,
        /// Port clients connect to.
        client_port: u16,
        /// Host other brokers connect to for Raft traffic.
        inter_broker_host: String,
        /// Port other brokers connect to for Raft traffic.
        inter_broker_port: u16,
        /// The broker's rack, for rack-aware placement; `None` when not configured.
        rack: Option<String>,
    },
    /// A broker shut down gracefully or was fenced: it no longer counts for placement
    /// and Metadata answers no longer list it. Its replica assignments stay.
    UnregisterBroker {
        /// The broker's id.
        broker_id: i32,
        /// The incarnation this applies to; any other incarnation is left registered.
        incarnation_id: Uuid,
    },
    /// A topic was created with these partitions (partition `i` is `partitions[i]`).
    CreateTopic {
        /// The topic's name, unique among live topics.
        name: String,
        /// The topic's id, unique among live topics; never nil.
        topic_id: Uuid,
        /// Topic-level configs that differ from the broker defaults.
        configs: BTreeMap<String, String>,
        /// One assignment per partition, partition 0 first.
        partitions: Vec<PartitionAssignment>,
    },
    /// Partitions were added to a topic, numbered after its existing ones.
    CreatePartitions {
        /// The topic.
        topic_id: Uuid,
        /// The assignments of the new partitions, lowest partition first.
        new_partitions: Vec<PartitionAssignment>,
    },
    /// A topic was deleted; every broker deletes its replicas of it.
    DeleteTopic {
        /// The topic.
        topic_id: Uuid,
    },
    /// A block of producer ids was handed to a broker for idempotent producers: ids
    /// `first_producer_id .. first_producer_id + size` are that broker's to give out.
    ///
    /// Only the incarnation that asked for it uses it: a restarted broker (or one whose
    /// applier replays the log) never takes a block of an earlier process, whose ids may
    /// have been handed out already, so no id is given out twice.
    ProducerIdBlock {
        /// The broker the block belongs to.
        broker_id: i32,
        /// The process (incarnation) of that broker that asked for it.
        incarnation_id: Uuid,
        /// First id of the block; must be where the previous block ended.
        first_producer_id: i64,
        /// Ids in the block; positive.
        size: i32,
    },
    /// A partition's leader as its own Raft group last reported it, spread so that
    /// brokers hosting no replica of it can answer Metadata requests.
    ///
    /// Advisory only: the partition's Raft group decides leadership, and nothing that must
    /// be correct (acks, fencing, which replica accepts writes) reads this hint. A stale
    /// hint costs a client one NOT_LEADER_OR_FOLLOWER and a refresh.
    LeaderHint {
        /// The topic.
        topic_id: Uuid,
        /// The partition.
        partition: i32,
        /// The broker id of the leader.
        leader: i32,
        /// The leader's epoch (its Raft term); a hint never replaces a newer one.
        leader_epoch: i32,
    },
    /// The whole image as it stands after every record before this one (a
    /// [`super::snapshot`] encoding): applying it replaces the image. It lets every
    /// broker delete the metadata log below it, and a replica whose log starts at or
    /// below it (a trimmed log, a follower reset to the leader's log start) rebuild the
    /// image from it without the records before.
    Checkpoint {
        /// The encoded image, at most [`CHECKPOINT_BYTES_MAX`] bytes.
        snapshot: Bytes,
    },
    /// A topic's configs were altered (AlterConfigs, IncrementalAlterConfigs): `configs`
    /// is the topic's whole new set of overrides, replacing the old one, so applying the
    /// record twice or after a checkpoint gives the same image.
    AlterTopicConfigs {
        /// The topic.
        topic_id: Uuid,
        /// Topic-level configs that differ from the broker defaults, after the change.
        configs: BTreeMap<String, String>,
    },
}

/// Where one partition's replicas live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionAssignment {
    /// Broker ids of the replicas; the first is the preferred leader.
    pub replicas: Vec<i32>,
}

/// Why bytes are not a metadata record (or a record cannot be encoded). Decoding errors
/// are raised before anything sized by the offending number is allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A length or count ran past the end of the input, a string was not UTF-8, or bytes
    /// followed the record.
    #[error("malformed metadata record: {0}")]
    Wire(#[from] DecodeError),
    /// A version byte this build does not know (a newer build wrote it).
    #[error("unknown metadata record version {version} (this build knows {RECORD_VERSION})")]
    UnknownVersion {
        /// The version read.
        version: u8,
    },
    /// A record tag this build does not know (a newer build wrote it).
    #[error("unknown metadata record tag {tag}")]
    UnknownTag {
        /// The tag read.
        tag: u8,
    },
    /// A string longer than its field allows.
    #[error("{field} of {bytes} bytes, at most {bytes_max} allowed")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        bytes: usize,
        /// The field's limit.
        bytes_max: usize,
    },
    /// More elements than a list allows.
    #[error("{count} {field}, at most {count_max} allowed")]
    TooMany {
        /// Which list.
        field: &'static str,
        /// Its length.
        count: usize,
        /// The list's limit.
        count_max: usize,
    },
    /// Topic config keys not strictly ascending: the encoder writes a map in key order,
    /// so a duplicate or out-of-order key was not written by Rill.
    #[error("topic config keys not strictly ascending")]
    ConfigKeysNotAscending,
}

impl MetadataRecord {
    /// The variant's name, for logs and skip reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            MetadataRecord::RegisterBroker { .. } => "RegisterBroker",
            MetadataRecord::UnregisterBroker { .. } => "UnregisterBroker",
            MetadataRecord::CreateTopic { .. } => "CreateTopic",
            MetadataRecord::CreatePartitions { .. } => "CreatePartitions",
            MetadataRecord::DeleteTopic { .. } => "DeleteTopic",
            MetadataRecord::ProducerIdBlock { .. } => "ProducerIdBlock",
            MetadataRecord::LeaderHint { .. } => "LeaderHint",
            MetadataRecord::Checkpoint { .. } => "Checkpoint",
            MetadataRecord::AlterTopicConfigs { .. } => "AlterTopicConfigs",
        }
    }

    /// Encodes the record, or refuses one over a limit of the encoding (which the decoder
    /// would refuse too).
    pub fn encode(&self) -> Result<Bytes, RecordError> {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(RECORD_VERSION);
        match self {
            MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id,
                client_host,
                client_port,
                inter_broker_host,
                inter_broker_port,
                rack,
            } => {
                out.put_u8(tag::REGISTER_BROKER);
                put_broker(
                    &mut out,
                    &BrokerFields {
                        broker_id: *broker_id,
                        incarnation_id: *incarnation_id,
                        client_host,
                        client_port: *client_port,
                        inter_broker_host,
                        inter_broker_port: *inter_broker_port,
                        rack: rack.as_deref(),
                    },
                )?;
            }
            MetadataRecord::UnregisterBroker {
                broker_id,
                incarnation_id,
            } => {
                out.put_u8(tag::UNREGISTER_BROKER);
                out.put_i32(*broker_id);
                out.put_u128(incarnation_id.as_u128());
            }
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                configs,
                partitions,
            } => {
                out.put_u8(tag::CREATE_TOPIC);
                put_string(&mut out, "topic name", name, TOPIC_NAME_BYTES_MAX)?;
                out.put_u128(topic_id.as_u128());
                put_configs(&mut out, configs)?;
                put_assignments(&mut out, partitions)?;
            }
            MetadataRecord::CreatePartitions {
                topic_id,
                new_partitions,
            } => {
                out.put_u8(tag::CREATE_PARTITIONS);
                out.put_u128(topic_id.as_u128());
                put_assignments(&mut out, new_partitions)?;
            }
            MetadataRecord::DeleteTopic { topic_id } => {
                out.put_u8(tag::DELETE_TOPIC);
                out.put_u128(topic_id.as_u128());
            }
            MetadataRecord::ProducerIdBlock {
                broker_id,
                incarnation_id,
                first_producer_id,
                size,
            } => {
                out.put_u8(tag::PRODUCER_ID_BLOCK);
                out.put_i32(*broker_id);
                out.put_u128(incarnation_id.as_u128());
                out.put_i64(*first_producer_id);
                out.put_i32(*size);
            }
            MetadataRecord::LeaderHint {
                topic_id,
                partition,
                leader,
                leader_epoch,
            } => {
                out.put_u8(tag::LEADER_HINT);
                out.put_u128(topic_id.as_u128());
                out.put_i32(*partition);
                out.put_i32(*leader);
                out.put_i32(*leader_epoch);
            }
            MetadataRecord::Checkpoint { snapshot } => {
                if snapshot.len() > CHECKPOINT_BYTES_MAX {
                    return Err(RecordError::TooLong {
                        field: "checkpoint snapshot",
                        bytes: snapshot.len(),
                        bytes_max: CHECKPOINT_BYTES_MAX,
                    });
                }
                out.put_u8(tag::CHECKPOINT);
                out.put_u32(snapshot.len() as u32);
                out.put_slice(snapshot);
            }
            MetadataRecord::AlterTopicConfigs { topic_id, configs } => {
                out.put_u8(tag::ALTER_TOPIC_CONFIGS);
                out.put_u128(topic_id.as_u128());
                put_configs(&mut out, configs)?;
            }
        }
        Ok(out.freeze())
    }

    /// Decodes one record from untrusted bytes (a record value of the metadata log); bytes
    /// after the record are an error.
    pub fn decode(bytes: Bytes) -> Result<MetadataRecord, RecordError> {
        let mut r = WireReader::new(bytes);
        let version = u8_(&mut r)?;
        if version != RECORD_VERSION {
            return Err(RecordError::UnknownVersion { version });
        }
        let record = match u8_(&mut r)? {
            tag::REGISTER_BROKER => {
                let b = get_broker(&mut r)?;
                MetadataRecord::RegisterBroker {
                    broker_id: b.broker_id,
                    incarnation_id: b.incarnation_id,
                    client_host: b.client_host,
                    client_port: b.client_port,
                    inter_broker_host: b.inter_broker_host,
                    inter_broker_port: b.inter_broker_port,
                    rack: b.rack,
                }
            }
            tag::UNREGISTER_BROKER => MetadataRecord::UnregisterBroker {
                broker_id: r.int32()?,
                incarnation_id: r.uuid()?,
            },
            tag::CREATE_TOPIC => MetadataRecord::CreateTopic {
                name: get_string(&mut r, "topic name", TOPIC_NAME_BYTES_MAX)?,
                topic_id: r.uuid()?,
                configs: get_configs(&mut r)?,
                partitions: get_assignments(&mut r)?,
            },
            tag::CREATE_PARTITIONS => MetadataRecord::CreatePartitions {
                topic_id: r.uuid()?,
                new_partitions: get_assignments(&mut r)?,
            },
            tag::DELETE_TOPIC => MetadataRecord::DeleteTopic {
                topic_id: r.uuid()?,
            },
            tag::PRODUCER_ID_BLOCK => MetadataRecord::ProducerIdBlock {
                broker_id: r.int32()?,
                incarnation_id: r.uuid()?,
                first_producer_id: r.int64()?,
                size: r.int32()?,
            },
            tag::LEADER_HINT => MetadataRecord::LeaderHint {
                topic_id: r.uuid()?,
                partition: r.int32()?,
                leader: r.int32()?,
                leader_epoch: r.int32()?,
            },
            tag::CHECKPOINT => {
                // A slice of the input (no copy); its length was checked against the
                // bytes left before anything was taken.
                let snapshot = r.bytes(false)?;
                if snapshot.len() > CHECKPOINT_BYTES_MAX {
                    return Err(RecordError::TooLong {
                        field: "checkpoint snapshot",
                        bytes: snapshot.len(),
                        bytes_max: CHECKPOINT_BYTES_MAX,
                    });
                }
                MetadataRecord::Checkpoint { snapshot }
            }
            tag::ALTER_TOPIC_CONFIGS => MetadataRecord::AlterTopicConfigs {
                topic_id: r.uuid()?,
                configs: get_configs(&mut r)?,
            },
            tag => return Err(RecordError::UnknownTag { tag }),
        };
        r.finish()?;
        Ok(record)
    }
}

// ---- Field codecs, shared with the snapshot encoding ----

/// The fields of a broker registration, borrowed for encoding.
pub(super) struct BrokerFields<'a> {
    pub(super) broker_id: i32,
    pub(super) incarnation_id: Uuid,
    pub(super) client_host: &'a str,
    pub(super) client_port: u16,
    pub(super) inter_broker_host: &'a str,
    pub(super) inter_broker_port: u16,
    pub(super) rack: Option<&'a str>,
}

/// The fields of a broker registration, decoded.
pub(super) struct DecodedBroker {
    pub(super) broker_id: i32,
    pub(super) incarnation_id: Uuid,
    pub(super) client_host: String,
    pub(super) client_port: u16,
    pub(super) inter_broker_host: String,
    pub(super) inter_broker_port: u16,
    pub(super) rack: Option<String>,
}

/// Bytes an encoded broker takes at least (two empty strings and a null rack).
pub(super) const BROKER_BYTES_MIN: usize = 4 + 16 + STRING_BYTES_MIN + 2 + STRING_BYTES_MIN + 2 + 2;

pub(super) fn put_broker(out: &mut BytesMut, b: &BrokerFields<'_>) -> Result<(), RecordError> {
    out.put_i32(b.broker_id);
    out.put_u128(b.incarnation_id.as_u128());
    put_string(out, "client host", b.client_host, HOST_BYTES_MAX)?;
    out.put_u16(b.client_port);
    put_string(
        out,
        "inter-broker host",
        b.inter_broker_host,
        HOST_BYTES_MAX,
    )?;
    out.put_u16(b.inter_broker_port);
    match b.rack {
        None => out.put_i16(-1),
        Some(rack) => put_string(out, "rack", rack, RACK_BYTES_MAX)?,
    }
    Ok(())
}

pub(super) fn get_broker(r: &mut WireReader) -> Result<DecodedBroker, RecordError> {
    Ok(DecodedBroker {
        broker_id: r.int32()?,
        incarnation_id: r.uuid()?,
        client_host: get_string(r, "client host", HOST_BYTES_MAX)?,
        client_port: r.uint16()?,
        inter_broker_host: get_string(r, "inter-broker host", HOST_BYTES_MAX)?,
        inter_broker_port: r.uint16()?,
        rack: match r.nullable_string(false)? {
            None => None,
            Some(rack) => Some(checked_len("rack", rack.to_string(), RACK_BYTES_MAX)?),
        },
    })
}

/// Writes a Kafka STRING after checking it against `bytes_max` (which must fit an INT16).
pub(super) fn put_string(
    out: &mut BytesMut,
    field: &'static str,
    value: &str,
    bytes_max: usize,
) -> Result<(), RecordError> {
    debug_assert!(bytes_max <= i16::MAX as usize);
    if value.len() > bytes_max {
        return Err(RecordError::TooLong {
            field,
            bytes: value.len(),
            bytes_max,
        });
    }
    out.put_i16(value.len() as i16);
    out.put_slice(value.as_bytes());
    Ok(())
}

/// Reads a Kafka STRING and checks it against `bytes_max`.
pub(super) fn get_string(
    r: &mut WireReader,
    field: &'static str,
    bytes_max: usize,
) -> Result<String, RecordError> {
    let value = r.string(false)?;
    checked_len(field, value.to_string(), bytes_max)
}

fn checked_len(
    field: &'static str,
    value: String,
    bytes_max: usize,
) -> Result<String, RecordError> {
    if value.len() > bytes_max {
        return Err(RecordError::TooLong {
            field,
            bytes: value.len(),
            bytes_max,
        });
    }
    Ok(value)
}

/// Reads an INT32 count of elements of at least `element_bytes_min` bytes each, checked
/// against the bytes left and against `count_max`.
pub(super) fn get_count(
    r: &mut WireReader,
    field: &'static str,
    element_bytes_min: usize,
    count_max: usize,
) -> Result<usize, RecordError> {
    let count = r.array_len(false, element_bytes_min)?;
    check_count(field, count, count_max)?;
    Ok(count)
}

pub(super) fn check_count(
    field: &'static str,
    count: usize,
    count_max: usize,
) -> Result<(), RecordError> {
    if count > count_max {
        return Err(RecordError::TooMany {
            field,
            count,
            count_max,
        });
    }
    Ok(())
}

/// Writes a count checked against `count_max` (which must fit an INT32).
pub(super) fn put_count(
    out: &mut BytesMut,
    field: &'static str,
    count: usize,
    count_max: usize,
) -> Result<(), RecordError> {
    debug_assert!(count_max <= i32::MAX as usize);
    check_count(field, count, count_max)?;
    out.put_i32(count as i32);
    Ok(())
}

pub(super) fn put_configs(
    out: &mut BytesMut,
    configs: &BTreeMap<String, String>,
) -> Result<(), RecordError> {
    put_count(out, "topic configs", configs.len(), TOPIC_CONFIGS_MAX)?;
    for (key, value) in configs {
        put_string(out, "config key", key, CONFIG_KEY_BYTES_MAX)?;
        put_string(out, "config value", value, CONFIG_VALUE_BYTES_MAX)?;
    }
    Ok(())
}

pub(super) fn get_configs(r: &mut WireReader) -> Result<BTreeMap<String, String>, RecordError> {
    let count = get_count(
        r,
        "topic configs",
        CONFIG_ENTRY_BYTES_MIN,
        TOPIC_CONFIGS_MAX,
    )?;
    let mut configs = BTreeMap::new();
    for _ in 0..count {
        let key = get_string(r, "config key", CONFIG_KEY_BYTES_MAX)?;
        let value = get_string(r, "config value", CONFIG_VALUE_BYTES_MAX)?;
        // Strictly ascending keys make the encoding canonical: one map, one byte string.
        if configs
            .last_key_value()
            .is_some_and(|(last, _)| *last >= key)
        {
            return Err(RecordError::ConfigKeysNotAscending);
        }
        configs.insert(key, value);
    }
    Ok(configs)
}

pub(super) fn put_assignments(
    out: &mut BytesMut,
    assignments: &[PartitionAssignment],
) -> Result<(), RecordError> {
    put_count(
        out,
        "partitions",
        assignments.len(),
        PARTITIONS_MAX as usize,
    )?;
    for assignment in assignments {
        put_replicas(out, &assignment.replicas)?;
    }
    Ok(())
}

pub(super) fn get_assignments(r: &mut WireReader) -> Result<Vec<PartitionAssignment>, RecordError> {
    let count = get_count(
        r,
        "partitions",
        ASSIGNMENT_BYTES_MIN,
        PARTITIONS_MAX as usize,
    )?;
    let mut assignments = Vec::with_capacity(prealloc_capacity::<PartitionAssignment>(count));
    for _ in 0..count {
        assignments.push(PartitionAssignment {
            replicas: get_replicas(r)?,
        });
    }
    Ok(assignments)
}

pub(super) fn put_replicas(out: &mut BytesMut, replicas: &[i32]) -> Result<(), RecordError> {
    put_count(out, "replicas", replicas.len(), REPLICAS_PER_PARTITION_MAX)?;
    for replica in replicas {
        out.put_i32(*replica);
    }
    Ok(())
}

pub(super) fn get_replicas(r: &mut WireReader) -> Result<Vec<i32>, RecordError> {
    let count = get_count(r, "replicas", REPLICA_BYTES, REPLICAS_PER_PARTITION_MAX)?;
    // The count is at most REPLICAS_PER_PARTITION_MAX and backed by bytes: no cap needed.
    let mut replicas = Vec::with_capacity(count);
    for _ in 0..count {
        replicas.push(r.int32()?);
    }
    Ok(replicas)
}

// The reader's primitives are Kafka's signed types; this reinterprets the same bits.
pub(super) fn u8_(r: &mut WireReader) -> Result<u8, RecordError> {
    Ok(r.int8()? as u8)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::controller::testing::arb_record;

    fn register(rack: Option<&str>) -> MetadataRecord {
        MetadataRecord::RegisterBroker {
            broker_id: 7,
            incarnation_id: Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            client_host: "b7".into(),
            client_port: 9092,
            inter_broker_host: "b7i".into(),
            inter_broker_port: 9093,
            rack: rack.map(str::to_string),
        }
    }

    #[test]
    fn register_broker_layout_is_the_documented_one() {
        let bytes = register(Some("r1")).encode().unwrap();
        let mut expected = vec![RECORD_VERSION, tag::REGISTER_BROKER, 0, 0, 0, 7];
        expected.extend(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.to_be_bytes());
        expected.extend([0, 2, b'b', b'7', 0x23, 0x84]);
        expected.extend([0, 3, b'b', b'7', b'i', 0x23, 0x85]);
        expected.extend([0, 2, b'r', b'1']);
        assert_eq!(bytes.as_ref(), expected.as_slice());

        let no_rack = register(None).encode().unwrap();
        assert_eq!(&no_rack[no_rack.len() - 2..], &[0xff, 0xff]);
    }

    #[test]
    fn unknown_version_and_tag_are_typed_errors() {
        let mut bytes = register(None).encode().unwrap().to_vec();
        bytes[0] = RECORD_VERSION + 1;
        assert_eq!(
            MetadataRecord::decode(Bytes::from(bytes.clone())),
            Err(RecordError::UnknownVersion {
                version: RECORD_VERSION + 1
            })
        );
        bytes[0] = RECORD_VERSION;
        bytes[1] = 200;
        assert_eq!(
            MetadataRecord::decode(Bytes::from(bytes)),
            Err(RecordError::UnknownTag { tag: 200 })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = MetadataRecord::DeleteTopic {
            topic_id: Uuid::from_u128(1),
        }
        .encode()
        .unwrap()
        .to_vec();
        bytes.push(0);
        assert!(matches!(
            MetadataRecord::decode(Bytes::from(bytes)),
            Err(RecordError::Wire(DecodeError::TrailingBytes { left: 1 }))
        ));
    }

    #[test]
    fn huge_partition_count_is_refused_before_allocating() {
        // CreatePartitions claiming i32::MAX partitions in a 22-byte record.
        let mut bytes = vec![RECORD_VERSION, tag::CREATE_PARTITIONS];
        bytes.extend([0u8; 16]);
        bytes.extend(i32::MAX.to_be_bytes());
        assert!(matches!(
            MetadataRecord::decode(Bytes::from(bytes)),
            Err(RecordError::Wire(DecodeError::CountTooLarge { .. }))
        ));
    }

    #[test]
    fn partition_count_over_the_limit_is_refused_even_when_backed_by_bytes() {
        let too_many = PARTITIONS_MAX as usize + 1;
        let record = MetadataRecord::CreatePartitions {
            topic_id: Uuid::from_u128(1),
            new_partitions: vec![PartitionAssignment::default(); too_many],
        };
        assert!(matches!(
            record.encode(),
            Err(RecordError::TooMany {
                field: "partitions",
                ..
            })
        ));
        let mut bytes = vec![RECORD_VERSION, tag::CREATE_PARTITIONS];
        bytes.extend([0u8; 16]);
        bytes.extend((too_many as i32).to_be_bytes());
        bytes.resize(bytes.len() + too_many * 4, 0);
        assert!(matches!(
            MetadataRecord::decode(Bytes::from(bytes)),
            Err(RecordError::TooMany {
                field: "partitions",
                ..
            })
        ));
    }

    #[test]
    fn long_topic_name_is_refused_both_ways() {
        let name = "t".repeat(TOPIC_NAME_BYTES_MAX + 1);
        let record = MetadataRecord::CreateTopic {
            name: name.clone(),
            topic_id: Uuid::from_u128(1),
            configs: BTreeMap::new(),
            partitions: vec![],
        };
        assert!(matches!(record.encode(), Err(RecordError::TooLong { .. })));
        let mut bytes = vec![RECORD_VERSION, tag::CREATE_TOPIC];
        bytes.extend((name.len() as i16).to_be_bytes());
        bytes.extend(name.as_bytes());
        assert!(matches!(
            MetadataRecord::decode(Bytes::from(bytes)),
            Err(RecordError::TooLong {
                field: "topic name",
                ..
            })
        ));
    }

    #[test]
    fn duplicate_config_keys_are_refused() {
        let mut bytes = vec![RECORD_VERSION, tag::CREATE_TOPIC, 0, 1, b't'];
        bytes.extend([0u8; 16]);
        bytes.extend(2i32.to_be_bytes());
        for _ in 0..2 {
            bytes.extend([0, 1, b'k', 0, 1, b'v']);
        }
        bytes.extend(0i32.to_be_bytes());
        assert_eq!(
            MetadataRecord::decode(Bytes::from(bytes)),
            Err(RecordError::ConfigKeysNotAscending)
        );
    }

    proptest! {
        #[test]
        fn every_record_round_trips(record in arb_record()) {
            let bytes = record.encode().unwrap();
            prop_assert_eq!(MetadataRecord::decode(bytes), Ok(record));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = MetadataRecord::decode(Bytes::from(bytes));
        }

        #[test]
        fn random_bodies_after_a_valid_header_never_panic(
            tag in 0u8..10,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = vec![RECORD_VERSION, tag];
            bytes.extend(body);
            let _ = MetadataRecord::decode(Bytes::from(bytes));
        }

        #[test]
        fn every_prefix_of_a_record_is_an_error_not_a_panic(record in arb_record()) {
            let bytes = record.encode().unwrap();
            for len in 0..bytes.len() {
                prop_assert!(MetadataRecord::decode(bytes.slice(..len)).is_err());
            }
        }

        #[test]
        fn flipped_bytes_never_panic(record in arb_record(), at in any::<usize>(), xor in 1u8..) {
            let mut bytes = record.encode().unwrap().to_vec();
            let at = at % bytes.len();
            bytes[at] ^= xor;
            let _ = MetadataRecord::decode(Bytes::from(bytes));
        }
    }
}
