//! Plain data of the protocol: node ids, terms, entries, memberships, persistent state.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;

use crate::error::ProposeError;

/// Identifies one replica of a group (for Rill: the broker id).
pub type NodeId = u64;

/// A Raft term. For Kafka batches this is the batch's `partitionLeaderEpoch`.
pub type Term = u64;

/// Bytes the flow control charges per entry on top of its payload, so that
/// empty control entries still count against `inflight_bytes_max`.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// What an entry means to the consensus core. Everything the broker stores is
/// [`EntryKind::Data`]; the other kinds are created by the core itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An opaque batch of records (a Kafka RecordBatch for Rill).
    Data,
    /// The empty entry a new leader appends in its own term before it can commit
    /// anything (Raft §5.4.2, §8). A Kafka driver writes it as a control batch.
    LeaderChange,
    /// A new configuration; takes effect as soon as it is in a log, committed or
    /// not (Raft dissertation §4.1). A Kafka driver writes it as a control batch.
    Membership(Membership),
}

/// One log entry: a contiguous range of offsets `[base_offset, end_offset)`
/// written in one batch. Its Raft "index" is its end; see the crate docs on
/// offsets.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// First offset the entry covers (Kafka: the batch's baseOffset).
    pub base_offset: u64,
    /// One past the last offset the entry covers (Kafka: lastOffset + 1).
    pub end_offset: u64,
    /// What the entry means to the core.
    pub kind: EntryKind,
    /// Payload, opaque to the core.
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry is charged for by flow control and proposal limits.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD_BYTES
    }

    /// The last offset the entry covers (Kafka's `lastOffset`).
    pub fn last_offset(&self) -> u64 {
        self.end_offset - 1
    }

    /// Number of offsets (records) the entry covers.
    pub fn offset_count(&self) -> u64 {
        self.end_offset - self.base_offset
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t{}[{}..{})",
            self.term, self.base_offset, self.end_offset
        )?;
        match &self.kind {
            EntryKind::Data => write!(f, " {}B", self.data.len()),
            EntryKind::LeaderChange => write!(f, " leader-change"),
            EntryKind::Membership(m) => write!(f, " membership {m}"),
        }
    }
}

/// The replicas of a group: voters decide elections and commits, learners only
/// receive the log (they catch up before they are promoted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Replicas that vote and count towards the commit quorum.
    pub voters: BTreeSet<NodeId>,
    /// Replicas that replicate the log but do not vote.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A membership of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Votes (or acknowledgements) needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Every replica (voters then learners).
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The membership after a single-server change, or why it is not allowed.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, ProposeError> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if self.contains(id) {
                    return Err(ProposeError::InvalidMembershipChange(change));
                }
                next.learners.insert(id);
            }
            MembershipChange::PromoteLearner(id) => {
                if !self.learners.contains(&id) {
                    return Err(ProposeError::InvalidMembershipChange(change));
                }
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            MembershipChange::Remove(id) => {
                if !self.contains(id) || (self.is_voter(id) && self.voters.len() == 1) {
                    return Err(ProposeError::InvalidMembershipChange(change));
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
            }
        }
        Ok(next)
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters=(")?;
        for (i, v) in self.voters.iter().enumerate() {
            write!(f, "{}{v}", if i > 0 { " " } else { "" })?;
        }
        write!(f, ")")?;
        if !self.learners.is_empty() {
            write!(f, " learners=(")?;
            for (i, v) in self.learners.iter().enumerate() {
                write!(f, "{}{v}", if i > 0 { " " } else { "" })?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// A single-server membership change (Raft dissertation §4.1): each change adds
/// or removes at most one voter, so old and new majorities always overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a non-voting replica that starts catching up.
    AddLearner(NodeId),
    /// Turn a caught-up learner into a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or learner.
    Remove(NodeId),
}

/// State that must be durable before messages depending on it are sent
/// (Raft Figure 2 "persistent state", plus the commit offset as a hint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate this node voted for in `term`.
    pub voted_for: Option<NodeId>,
    /// Commit offset known to this node. Persisting it is optional and may lag:
    /// it only lets a restarted node expose its high watermark sooner.
    pub commit_offset: u64,
}

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks whether it could win an election before disrupting anyone (pre-vote,
    /// Raft dissertation §9.6).
    PreCandidate,
    /// Campaigns for the current term.
    Candidate,
    /// Leads the current term.
    Leader,
}

/// The volatile role state reported in a `Ready` when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleState {
    /// The role.
    pub role: Role,
    /// The term the role is held in.
    pub term: Term,
    /// The known leader of `term`, if any.
    pub leader: Option<NodeId>,
}

/// Where a log starts when the entries before it are gone (retention, or a
/// reset of a follower that fell behind the leader's log start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStart {
    /// First offset of the log (every offset below is gone and committed).
    pub offset: u64,
    /// Term of the entry that ended at `offset` (0 for an empty prefix).
    pub term: Term,
}

/// The range a proposal will occupy once committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Term of the entry; the proposal is committed when the commit offset
    /// reaches `end_offset` while the entry ending there still has this term.
    pub term: Term,
    /// First offset assigned to the entry.
    pub base_offset: u64,
    /// One past the last offset assigned to the entry.
    pub end_offset: u64,
}
