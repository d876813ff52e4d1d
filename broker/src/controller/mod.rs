//! The cluster metadata model (ARCHITECTURE §5), sans-I/O: the records of the metadata
//! Raft group's log, the image every broker builds by applying them, the placement of new
//! replicas, and snapshots of the image. No files, sockets, tasks or clocks: the driver
//! that runs the metadata group on the replica engine moves bytes in and results out.
//!
//! # Layout
//!
//! * [`record`] — [`MetadataRecord`]: one change to the cluster metadata, its binary
//!   encoding (one record per Kafka record value in the metadata partition's log) and a
//!   bounded decoder for untrusted bytes.
//! * [`image`] — [`MetadataImage`]: the state after applying a prefix of the committed
//!   metadata log; validation that skips a bad record whole, never half-applied; the
//!   queries a broker needs (which replicas to host, topics, brokers).
//! * [`placement`] — [`assign_replicas`]: where the replicas of new partitions go, evenly,
//!   rack-aware, deterministic, aware of the existing load.
//! * [`snapshot`] — the whole image as bytes and back, so the metadata log can be
//!   truncated below a snapshot.
//!
//! # Determinism
//!
//! Every broker applies the same committed log and must end in the same image, so
//! nothing here iterates a hash map, reads a clock or draws a random number; every map
//! is a `BTreeMap`. A record the image refuses (a duplicate topic, an assignment naming
//! an unregistered broker, …) is skipped whole on every broker alike and counted.
//!
//! A record that does not *decode* is different: it was written by a newer build (an
//! unknown version or tag) or the log is corrupt. A driver must stop applying there rather
//! than skip it, because a newer broker that understands the record would apply it and
//! the images would diverge.
//!
//! # Limits
//!
//! Every bound of the encodings is a constant of this module (strings, counts per record),
//! except the two the broker already has: [`crate::state::TOPIC_NAME_BYTES_MAX`] and
//! [`crate::state::PARTITIONS_MAX`] (partitions of one topic). The encoders refuse what the
//! decoders would refuse, so every record that encodes decodes.

pub mod image;
pub mod placement;
pub mod record;
pub mod snapshot;

#[cfg(test)]
mod testing;

pub use image::{ApplyError, CheckpointApplied, MetadataImage};
pub use placement::{assign_replicas, BrokerInfo, PlacementError};
pub use record::{MetadataRecord, PartitionAssignment, RecordError};
pub use snapshot::{decode_snapshot, encode_snapshot, SnapshotError};

/// Longest host name of a broker listener, in bytes (DNS names are at most 253).
pub const HOST_BYTES_MAX: usize = 255;
/// Longest rack id, in bytes.
pub const RACK_BYTES_MAX: usize = 255;
/// Most configs one topic may carry.
pub const TOPIC_CONFIGS_MAX: usize = 1_024;
/// Longest topic config key, in bytes (Kafka's keys are under 64).
pub const CONFIG_KEY_BYTES_MAX: usize = 255;
/// Longest topic config value, in bytes: the most a Kafka `STRING` (INT16 length) holds,
/// which is how values are encoded.
pub const CONFIG_VALUE_BYTES_MAX: usize = i16::MAX as usize;
/// Most brokers registered at once.
pub const BROKERS_MAX: usize = 10_000;
/// Most live topics.
pub const TOPICS_MAX: usize = 100_000;
/// Most replicas one partition may list.
pub const REPLICAS_PER_PARTITION_MAX: usize = 64;
