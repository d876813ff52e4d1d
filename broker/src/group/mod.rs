//! The group coordinator: Kafka's classic consumer-group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup) and committed offsets (OffsetCommit, OffsetFetch).
//!
//! Groups live in the internal topic `__consumer_offsets` (`offsets_topic_partitions`
//! partitions, created on the first group request as Kafka does). Each partition is an
//! ordinary replicated partition: the coordinator of a group is the leader of partition
//! [`partition_for`]`(group)`, which is Kafka's own formula (`Utils.abs(groupId.hashCode) %
//! partitions`, Java's `String.hashCode`), so a group maps to the same partition number as
//! on a Kafka cluster with the same partition count. Committed offsets and group metadata
//! are records in that partition, in Kafka's key and value schemas ([`records`]); a replica
//! that becomes leader replays its partition before it answers (COORDINATOR_LOAD_IN_PROGRESS
//! meanwhile), one that is not the leader answers NOT_COORDINATOR.
//!
//! # Layout
//!
//! * [`member`] — one member of a group: identity, timeouts, protocols, assignment, and the
//!   JoinGroup / SyncGroup answers it waits for.
//! * [`state`] — [`state::Group`], the group state machine (Empty → PreparingRebalance →
//!   CompletingRebalance → Stable), sans-I/O: time arrives as `now_ms`, answers leave
//!   through the channels its members wait on, and writes it wants are returned.
//! * [`records`] — the `__consumer_offsets` record formats (OffsetCommitKey/Value,
//!   GroupMetadataKey/Value) with bounded decoders.
//! * [`coordinator`] — [`GroupCoordinator`]: which partition owns a group, loading a
//!   partition's groups, appending records through the replica, the timer that enforces
//!   session and rebalance timeouts.

pub mod coordinator;
pub mod member;
pub mod records;
pub mod state;

pub use coordinator::GroupCoordinator;

/// The internal topic that holds committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// The protocol type of consumer groups, whose member metadata and assignments are
/// Kafka's ConsumerProtocol (Kafka's `ConsumerProtocol.PROTOCOL_TYPE`).
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";
/// Longest group id accepted (Kafka has no limit, but a group id is a key of every record
/// of its group and sits in memory for as long as the group lives).
pub const GROUP_ID_BYTES_MAX: usize = 1024;
/// Most members (plus members that were told MEMBER_ID_REQUIRED and have not rejoined yet)
/// one group holds; more get GROUP_MAX_SIZE_REACHED (Kafka's `group.max.size`).
pub const GROUP_MEMBERS_MAX: usize = 1000;
/// Most groups one broker coordinates; a JoinGroup for another group is refused with
/// COORDINATOR_NOT_AVAILABLE so memory stays bounded.
pub const GROUPS_MAX: usize = 100_000;
/// Largest protocol metadata (subscription) of one member, summed over its protocols, and
/// largest assignment; larger ones are refused (the member would be kept in memory and in
/// every group metadata record).
pub const MEMBER_METADATA_BYTES_MAX: usize = 1 << 20;
/// Largest `committed_metadata` string of one offset (Kafka's `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Session timeouts a member may ask for (Kafka's `group.min.session.timeout.ms` is 6000;
/// lower here so tests and impatient deployments can detect a dead member sooner).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1000;
/// Kafka's `group.max.session.timeout.ms`.
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// How often the coordinator's timer checks sessions and rebalance deadlines.
pub const TICK_MS: u64 = 100;

/// Java's `String.hashCode` of `s`: `s[0]*31^(n-1) + … + s[n-1]` over UTF-16 code units, in
/// wrapping 32-bit arithmetic.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The `__consumer_offsets` partition that owns `group`: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`, where `Utils.abs(i32::MIN)` is 0.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let hash = java_string_hash(group);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// Why a group id is refused, or `None` for a valid one.
pub fn check_group_id(group: &str) -> Option<kafka_protocol::ResponseError> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        Some(kafka_protocol::ResponseError::InvalidGroupId)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_java() {
        // Values from Java's "…".hashCode().
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("my-group"), -1_906_497_762);
        // Non-BMP characters hash as two UTF-16 code units, as in Java.
        assert_eq!(java_string_hash("😀"), 1_772_899);
    }

    #[test]
    fn partition_for_follows_kafka_and_never_goes_negative() {
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        assert_eq!(partition_for("my-group", 50), 1_906_497_762 % 50);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Utils.abs gives 0.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        for g in ["a", "b", "zz", "consumer-1", "😀"] {
            assert!((0..7).contains(&partition_for(g, 7)));
        }
    }
}
