//! Consumer groups, the client side of Kafka's classic group protocol: a subscribed
//! [`Consumer`](crate::Consumer) joins a group through its coordinator, the leader member
//! assigns partitions with an [`AssignmentStrategy`], and every member heartbeats, rejoins
//! when the group rebalances, and commits offsets with its generation.
//!
//! # Layout
//!
//! * [`assignor`] — `range`, `roundrobin`, `cooperative-sticky` (sans-I/O).
//! * `commit` — the coordinator connection and the member's identity shared with the
//!   application's commits; FindCoordinator, OffsetCommit, OffsetFetch.
//! * `membership` — the group task: JoinGroup/SyncGroup, heartbeats, rejoins, auto
//!   commit, LeaveGroup, and the changes to the consumer's assignment.
//!
//! The embedded subscription and assignment bytes are Kafka's `ConsumerProtocol`
//! encoding (written with `kafka-protocol`, read with `rill-protocol`'s bounded decoder),
//! so librdkafka and Java members can share a group with this client.

pub mod assignor;
pub(crate) mod commit;
pub(crate) mod membership;

pub use assignor::AssignmentStrategy;
pub(crate) use membership::MembershipHandle;

use crate::error::{Error, Result};
use crate::record::TopicPartition;

/// What a subscribed consumer consumes.
#[derive(Debug, Clone)]
pub enum Subscription {
    /// These topics.
    Topics(Vec<String>),
    /// Every non-internal topic whose whole name matches; re-checked on every metadata
    /// refresh (`metadata_max_age_ms`).
    Pattern(regex::Regex),
}

impl Subscription {
    /// A pattern subscription: `pattern` must match a topic's whole name (as in Kafka).
    pub fn pattern(pattern: &str) -> Result<Subscription> {
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .map(Subscription::Pattern)
            .map_err(|e| Error::Config(format!("subscription pattern {pattern:?}: {e}")))
    }
}

/// Told when the group changes this consumer's assignment. Called on the consumer's group
/// task (not inside the stream's `poll`), before the group continues: a slow callback
/// delays the rebalance. Under the eager protocols (`range`, `roundrobin`) a rebalance
/// revokes the whole assignment and then assigns the new one; under `cooperative-sticky`
/// only the partitions that move are revoked.
pub trait RebalanceListener: Send + Sync {
    /// `partitions` were added to the assignment (committed offsets already looked up).
    fn on_assigned(&self, partitions: &[TopicPartition]);
    /// `partitions` were taken away after their positions were committed (with auto
    /// commit); no record of them is returned from now on.
    fn on_revoked(&self, partitions: &[TopicPartition]);
    /// `partitions` were lost: the member was fenced out of the group (session timed out,
    /// generation gone), so another member may already own them and nothing was
    /// committed. By default the same as [`RebalanceListener::on_revoked`], as in Kafka.
    fn on_lost(&self, partitions: &[TopicPartition]) {
        self.on_revoked(partitions);
    }
}
