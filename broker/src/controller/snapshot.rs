//! Snapshots of the [`MetadataImage`]: the whole image as bytes and back, so the metadata
//! log can be truncated below the snapshot's offset
//! ([`MetadataImage::last_applied_offset`]).
//!
//! # Layout (all integers big-endian; field codecs as in [`super::record`])
//!
//! ```text
//! snapshot      = magic:"RLMS" version:u8 (= SNAPSHOT_VERSION) body crc:u32
//! body          = has_offset:bool last_applied_offset:u64 (only when has_offset)
//!                 next_producer_id:i64 skipped_records_total:u64
//!                 count:i32 broker*count            (broker ids strictly ascending)
//!                 count:i32 topic*count             (topic ids strictly ascending)
//!                 count:i32 hint*count              ((topic id, partition) strictly ascending)
//!                 count:i32 skipped*count           (oldest first)
//!                 count:i32 uuid*count              (deleted topic ids, oldest first)
//! broker        = the fields of RegisterBroker
//! topic         = name:string topic_id:uuid configs assignments
//! hint          = topic_id:uuid partition:i32 leader:i32 leader_epoch:i32
//! skipped       = offset:u64 reason:string
//! bool          = 0 | 1
//! crc           = CRC-32 (IEEE, `crc32fast`) of every byte before it
//! ```
//!
//! The checksum is checked before anything else is read, so a torn or bit-flipped file
//! is refused as such. Past the checksum the decoder trusts nothing either: lengths and
//! counts are bounded as for records, maps must come in strictly ascending key order (one
//! image, one byte string), and the decoded image must pass
//! [`MetadataImage::check_invariants`].

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rill_protocol::decode::source::prealloc_capacity;
use rill_protocol::decode::{DecodeError, Source, WireReader};

use super::image::{
    AdvisoryLeader, BrokerRegistration, MetadataImage, SkippedRecord, TopicImage,
    DELETED_TOPICS_KEPT, SKIPPED_RECORDS_KEPT, SKIP_REASON_BYTES_MAX,
};
use super::record::{
    get_assignments, get_broker, get_configs, get_count, get_string, put_assignments, put_broker,
    put_configs, put_count, put_string, u8_, BrokerFields, RecordError, BROKER_BYTES_MIN,
};
use super::{BROKERS_MAX, TOPICS_MAX};
use crate::state::{PARTITIONS_MAX, TOPIC_NAME_BYTES_MAX};

/// The first bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"RLMS";
/// The snapshot layout version.
pub const SNAPSHOT_VERSION: u8 = 2;
/// Bytes of a snapshot besides its body: magic, version, checksum.
const FRAME_BYTES: usize = SNAPSHOT_MAGIC.len() + 1 + 4;
/// Bytes a topic takes at least: empty name, id, no configs, no partitions.
const TOPIC_BYTES_MIN: usize = 2 + 16 + 4 + 4;
/// Bytes a leader hint takes.
const HINT_BYTES: usize = 16 + 4 + 4 + 4;
/// Bytes a skipped record takes at least: offset and an empty reason.
const SKIPPED_BYTES_MIN: usize = 8 + 2;
/// Most leader hints: one per partition of the largest image.
const LEADER_HINTS_MAX: usize = TOPICS_MAX * PARTITIONS_MAX as usize;

/// Why bytes are not a metadata snapshot (or an image cannot be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A field failed to encode or decode (truncated, too long, too many, bad UTF-8).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Fewer bytes than magic, version and checksum take.
    #[error("snapshot of {bytes} bytes is too short")]
    TooShort {
        /// Its length.
        bytes: usize,
    },
    /// The bytes do not start with [`SNAPSHOT_MAGIC`].
    #[error("snapshot magic {found:?} is not {SNAPSHOT_MAGIC:?}")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A layout version this build does not know.
    #[error("unknown snapshot version {version} (this build knows {SNAPSHOT_VERSION})")]
    UnknownVersion {
        /// The version read.
        version: u8,
    },
    /// The checksum does not match the bytes: a torn write or corruption.
    #[error("snapshot checksum {stored:#010x} does not match its bytes ({computed:#010x})")]
    ChecksumMismatch {
        /// The checksum stored at the end.
        stored: u32,
        /// The checksum of the bytes before it.
        computed: u32,
    },
    /// A boolean byte other than 0 or 1.
    #[error("invalid boolean byte {value}")]
    InvalidBool {
        /// The byte read.
        value: u8,
    },
    /// Map entries not in strictly ascending key order (a duplicate, or not written by
    /// Rill).
    #[error("{what} not strictly ascending")]
    NotAscending {
        /// Which map.
        what: &'static str,
    },
    /// The decoded image breaks an invariant of [`MetadataImage`].
    #[error("inconsistent snapshot: {reason}")]
    Inconsistent {
        /// The broken invariant.
        reason: String,
    },
}

impl From<DecodeError> for SnapshotError {
    fn from(error: DecodeError) -> SnapshotError {
        SnapshotError::Record(RecordError::Wire(error))
    }
}

/// Encodes the whole image. Fails only for an image over the limits of the encoding, which
/// an image built from decoded records never is ([`MetadataImage::apply`] does not check
/// string lengths itself: a record that did not fit the encoding never reached the log).
pub fn encode_snapshot(image: &MetadataImage) -> Result<Bytes, SnapshotError> {
    let mut out = BytesMut::with_capacity(1024);
    out.put_slice(&SNAPSHOT_MAGIC);
    out.put_u8(SNAPSHOT_VERSION);
    match image.last_applied_offset {
        None => out.put_u8(0),
        Some(offset) => {
            out.put_u8(1);
            out.put_u64(offset);
        }
    }
    out.put_i64(image.next_producer_id);
    out.put_u64(image.skipped_records_total);

    put_count(&mut out, "brokers", image.brokers.len(), BROKERS_MAX)?;
    for b in image.brokers.values() {
        put_broker(
            &mut out,
            &BrokerFields {
                broker_id: b.broker_id,
                incarnation_id: b.incarnation_id,
                client_host: &b.client_host,
                client_port: b.client_port,
                inter_broker_host: &b.inter_broker_host,
                inter_broker_port: b.inter_broker_port,
                rack: b.rack.as_deref(),
            },
        )?;
    }

    put_count(&mut out, "topics", image.topics.len(), TOPICS_MAX)?;
    for topic in image.topics.values() {
        put_string(&mut out, "topic name", &topic.name, TOPIC_NAME_BYTES_MAX)?;
        out.put_u128(topic.topic_id.as_u128());
        put_configs(&mut out, &topic.configs)?;
        put_assignments(&mut out, &topic.partitions)?;
    }

    put_count(
        &mut out,
        "leader hints",
        image.leader_hints.len(),
        LEADER_HINTS_MAX,
    )?;
    for ((topic_id, partition), hint) in &image.leader_hints {
        out.put_u128(topic_id.as_u128());
        out.put_i32(*partition);
        out.put_i32(hint.leader);
        out.put_i32(hint.leader_epoch);
    }

    put_count(
        &mut out,
        "skipped records",
        image.recent_skipped.len(),
        SKIPPED_RECORDS_KEPT,
    )?;
    for skipped in &image.recent_skipped {
        out.put_u64(skipped.offset);
        put_string(
            &mut out,
            "skip reason",
            &skipped.reason,
            SKIP_REASON_BYTES_MAX,
        )?;
    }

    put_count(
        &mut out,
        "deleted topics",
        image.recent_deleted_topics.len(),
        DELETED_TOPICS_KEPT,
    )?;
    for topic_id in &image.recent_deleted_topics {
        out.put_u128(topic_id.as_u128());
    }

    let crc = crc32fast::hash(&out);
    out.put_u32(crc);
    Ok(out.freeze())
}

/// Decodes a snapshot from untrusted bytes into the image it was taken of.
pub fn decode_snapshot(bytes: Bytes) -> Result<MetadataImage, SnapshotError> {
    if bytes.len() < FRAME_BYTES {
        return Err(SnapshotError::TooShort { bytes: bytes.len() });
    }
    let (covered, mut stored) = bytes.split_at(bytes.len() - 4);
    let stored = stored.get_u32();
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(SnapshotError::ChecksumMismatch { stored, computed });
    }
    let mut r = WireReader::new(bytes.slice(..bytes.len() - 4));
    let mut found = [0u8; 4];
    for byte in &mut found {
        *byte = u8_(&mut r)?;
    }
    if found != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic { found });
    }
    let version = u8_(&mut r)?;
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnknownVersion { version });
    }
    let last_applied_offset = match u8_(&mut r)? {
        0 => None,
        1 => Some(r.int64()? as u64),
        value => return Err(SnapshotError::InvalidBool { value }),
    };
    let next_producer_id = r.int64()?;
    let skipped_records_total = r.int64()? as u64;

    let count = get_count(&mut r, "brokers", BROKER_BYTES_MIN, BROKERS_MAX)?;
    let mut brokers = BTreeMap::new();
    for _ in 0..count {
        let b = get_broker(&mut r)?;
        ascending(&brokers, &b.broker_id, "broker ids")?;
        brokers.insert(
            b.broker_id,
            BrokerRegistration {
                broker_id: b.broker_id,
                incarnation_id: b.incarnation_id,
                client_host: b.client_host,
                client_port: b.client_port,
                inter_broker_host: b.inter_broker_host,
                inter_broker_port: b.inter_broker_port,
                rack: b.rack,
            },
        );
    }

    let count = get_count(&mut r, "topics", TOPIC_BYTES_MIN, TOPICS_MAX)?;
    let mut topics = BTreeMap::new();
    let mut topic_ids_by_name = BTreeMap::new();
    for _ in 0..count {
        let name = get_string(&mut r, "topic name", TOPIC_NAME_BYTES_MAX)?;
        let topic_id = r.uuid()?;
        let configs = get_configs(&mut r)?;
        let partitions = get_assignments(&mut r)?;
        ascending(&topics, &topic_id, "topic ids")?;
        // A duplicate name leaves the index smaller than `topics`: check_invariants
        // refuses it below.
        topic_ids_by_name.insert(name.clone(), topic_id);
        topics.insert(
            topic_id,
            TopicImage {
                name,
                topic_id,
                configs,
                partitions,
            },
        );
    }

    let count = get_count(&mut r, "leader hints", HINT_BYTES, LEADER_HINTS_MAX)?;
    let mut leader_hints = BTreeMap::new();
    for _ in 0..count {
        let key = (r.uuid()?, r.int32()?);
        let hint = AdvisoryLeader {
            leader: r.int32()?,
            leader_epoch: r.int32()?,
        };
        ascending(&leader_hints, &key, "leader hints")?;
        leader_hints.insert(key, hint);
    }

    let count = get_count(
        &mut r,
        "skipped records",
        SKIPPED_BYTES_MIN,
        SKIPPED_RECORDS_KEPT,
    )?;
    let mut recent_skipped = VecDeque::with_capacity(prealloc_capacity::<SkippedRecord>(count));
    for _ in 0..count {
        recent_skipped.push_back(SkippedRecord {
            offset: r.int64()? as u64,
            reason: get_string(&mut r, "skip reason", SKIP_REASON_BYTES_MAX)?,
        });
    }

    let count = get_count(&mut r, "deleted topics", 16, DELETED_TOPICS_KEPT)?;
    let mut recent_deleted_topics = VecDeque::with_capacity(prealloc_capacity::<uuid::Uuid>(count));
    for _ in 0..count {
        recent_deleted_topics.push_back(r.uuid()?);
    }
    r.finish()?;

    let image = MetadataImage {
        last_applied_offset,
        brokers,
        topic_ids_by_name,
        topics,
        next_producer_id,
        leader_hints,
        skipped_records_total,
        recent_skipped,
        recent_deleted_topics,
    };
    image
        .check_invariants()
        .map_err(|reason| SnapshotError::Inconsistent { reason })?;
    Ok(image)
}

/// Refuses a key not above every key already in `map`.
fn ascending<K: Ord, V>(
    map: &BTreeMap<K, V>,
    key: &K,
    what: &'static str,
) -> Result<(), SnapshotError> {
    match map.last_key_value() {
        Some((last, _)) if last >= key => Err(SnapshotError::NotAscending { what }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::controller::record::{MetadataRecord, PartitionAssignment};
    use crate::controller::testing::{arb_log, image_of};

    /// Re-seals `body` (everything before the checksum) with a valid checksum, so a test
    /// reaches the decoder behind it.
    fn seal(mut body: Vec<u8>) -> Bytes {
        let crc = crc32fast::hash(&body);
        body.extend(crc.to_be_bytes());
        Bytes::from(body)
    }

    fn sample_image() -> MetadataImage {
        image_of(&[
            MetadataRecord::RegisterBroker {
                broker_id: 1,
                incarnation_id: Uuid::from_u128(5),
                client_host: "h".into(),
                client_port: 1,
                inter_broker_host: "i".into(),
                inter_broker_port: 2,
                rack: Some("r".into()),
            },
            MetadataRecord::CreateTopic {
                name: "t".into(),
                topic_id: Uuid::from_u128(9),
                configs: BTreeMap::from([("k".into(), "v".into())]),
                partitions: vec![PartitionAssignment { replicas: vec![1] }],
            },
            MetadataRecord::DeleteTopic {
                topic_id: Uuid::from_u128(3),
            },
        ])
    }

    #[test]
    fn the_empty_image_round_trips() {
        let image = MetadataImage::default();
        assert_eq!(decode_snapshot(encode_snapshot(&image).unwrap()), Ok(image));
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_mismatch() {
        let mut bytes = encode_snapshot(&sample_image()).unwrap().to_vec();
        bytes[10] ^= 0x01;
        assert!(matches!(
            decode_snapshot(Bytes::from(bytes)),
            Err(SnapshotError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn unknown_version_and_magic_are_refused() {
        let bytes = encode_snapshot(&sample_image()).unwrap();
        let mut body = bytes[..bytes.len() - 4].to_vec();
        body[4] = SNAPSHOT_VERSION + 1;
        assert_eq!(
            decode_snapshot(seal(body.clone())),
            Err(SnapshotError::UnknownVersion {
                version: SNAPSHOT_VERSION + 1
            })
        );
        body[0] = b'X';
        assert!(matches!(
            decode_snapshot(seal(body)),
            Err(SnapshotError::BadMagic { .. })
        ));
    }

    #[test]
    fn a_duplicate_topic_name_is_inconsistent() {
        let mut image = sample_image();
        let mut twin = image.topic_by_name("t").unwrap().clone();
        twin.topic_id = Uuid::from_u128(10);
        image.topics.insert(twin.topic_id, twin);
        assert!(matches!(
            decode_snapshot(encode_snapshot(&image).unwrap()),
            Err(SnapshotError::Inconsistent { .. })
        ));
    }

    #[test]
    fn a_huge_broker_count_is_refused_before_allocating() {
        let mut body = SNAPSHOT_MAGIC.to_vec();
        body.push(SNAPSHOT_VERSION);
        body.push(0);
        body.extend([0u8; 16]);
        body.extend(i32::MAX.to_be_bytes());
        assert!(matches!(
            decode_snapshot(seal(body)),
            Err(SnapshotError::Record(RecordError::Wire(
                DecodeError::CountTooLarge { .. }
            )))
        ));
    }

    proptest! {
        #[test]
        fn an_image_round_trips_through_its_snapshot(log in arb_log()) {
            let image = image_of(&log);
            let bytes = encode_snapshot(&image).unwrap();
            prop_assert_eq!(decode_snapshot(bytes.clone()), Ok(image.clone()));
            // Canonical: the decoded image encodes to the same bytes.
            prop_assert_eq!(encode_snapshot(&image).unwrap(), bytes);
        }

        #[test]
        fn applying_after_a_snapshot_equals_applying_straight_through(
            log in arb_log(),
            split in any::<prop::sample::Index>(),
        ) {
            let split = split.index(log.len() + 1);
            let straight = image_of(&log);
            let mut resumed = decode_snapshot(encode_snapshot(&image_of(&log[..split])).unwrap()).unwrap();
            for (i, record) in log.iter().enumerate().skip(split) {
                let _ = resumed.apply(2 * i as u64, record);
            }
            prop_assert_eq!(resumed, straight);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_snapshot(Bytes::from(bytes));
        }

        #[test]
        fn random_sealed_bodies_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut body = SNAPSHOT_MAGIC.to_vec();
            body.push(SNAPSHOT_VERSION);
            body.extend(tail);
            let _ = decode_snapshot(seal(body));
        }

        #[test]
        fn corrupted_sealed_snapshots_never_panic(
            log in arb_log(),
            at in any::<prop::sample::Index>(),
            xor in 1u8..,
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode_snapshot(&image_of(&log)).unwrap();
            let mut body = bytes[..bytes.len() - 4].to_vec();
            let at = at.index(body.len());
            body[at] ^= xor;
            let _ = decode_snapshot(seal(body.clone()));
            body.truncate(cut.index(body.len() + 1));
            let _ = decode_snapshot(seal(body));
        }
    }
}
