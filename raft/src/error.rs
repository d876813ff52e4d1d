//! The crate's errors: one variant per cause.

use crate::types::{MembershipChange, NodeId};

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `election_timeout_ticks` must exceed `heartbeat_interval_ticks`.
    #[error("election_timeout_ticks ({election}) must be greater than heartbeat_interval_ticks ({heartbeat})")]
    ElectionTimeoutNotAboveHeartbeat {
        /// Configured election timeout.
        election: u32,
        /// Configured heartbeat interval.
        heartbeat: u32,
    },
    /// `heartbeat_interval_ticks` must be at least 1.
    #[error("heartbeat_interval_ticks must be at least 1")]
    ZeroHeartbeatInterval,
    /// `append_bytes_max` must be at least one entry's overhead.
    #[error("append_bytes_max must be at least {min} bytes")]
    AppendBytesTooSmall {
        /// Smallest allowed value.
        min: usize,
    },
    /// `inflight_bytes_max` must be at least `append_bytes_max`.
    #[error("inflight_bytes_max ({inflight}) must be at least append_bytes_max ({append})")]
    InflightBelowAppend {
        /// Configured in-flight limit.
        inflight: usize,
        /// Configured per-message limit.
        append: usize,
    },
    /// The node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ZeroNodeId,
}

/// Why a proposal (entry, membership change or leadership transfer) was refused.
/// Nothing was appended when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is the last known leader.
    #[error("not the leader (known leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way; proposals wait until it ends.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// An entry must cover at least one offset.
    #[error("an entry must cover at least one offset")]
    EmptyEntry,
    /// Too many bytes are proposed but not yet committed (back-pressure).
    #[error("uncommitted bytes would exceed {limit_bytes}")]
    UncommittedBytesExceeded {
        /// The configured `uncommitted_bytes_max`.
        limit_bytes: usize,
    },
    /// The previous membership change (or the leader's first entry) is not
    /// committed yet; single-server changes must be strictly sequential.
    #[error("a membership change is still pending")]
    MembershipChangePending,
    /// The change does not apply to the current membership.
    #[error("membership change {0:?} does not apply to the current membership")]
    InvalidMembershipChange(MembershipChange),
    /// A learner may be promoted only once it has caught up with the leader.
    #[error("learner {0} has not caught up")]
    LearnerNotCaughtUp(NodeId),
    /// Leadership can only be handed to a voter other than the leader.
    #[error("cannot transfer leadership to {0}")]
    InvalidTransferTarget(NodeId),
}

/// Why a message from a peer was rejected without changing any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The message was addressed to another node.
    #[error("message for node {to} delivered to node {me}")]
    WrongRecipient {
        /// Addressee of the message.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The entries of an append are not contiguous, empty, or have terms that
    /// go backwards or exceed the sender's term.
    #[error("malformed entries in append from {from}")]
    MalformedEntries {
        /// Sender.
        from: NodeId,
    },
    /// The leader asked to overwrite an entry this node knows to be committed:
    /// a protocol violation by the sender (or a corrupted log).
    #[error("append from {from} conflicts with committed offset {commit_offset}")]
    CommittedConflict {
        /// Sender.
        from: NodeId,
        /// This node's commit offset.
        commit_offset: u64,
    },
    /// The term is the largest representable one; adopting it would make
    /// every later election overflow.
    #[error("message from {from} carries the maximum term")]
    TermOutOfRange {
        /// Sender.
        from: NodeId,
    },
    /// An append response claims a match beyond the leader's log.
    #[error("append response from {from} acknowledges offset {end_offset} beyond the log end")]
    AckBeyondLogEnd {
        /// Sender.
        from: NodeId,
        /// The claimed end offset.
        end_offset: u64,
    },
}
