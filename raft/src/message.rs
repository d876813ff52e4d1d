//! Messages between the nodes of one group. The driver adds the group id and
//! encodes them; the core never sees bytes on a wire.

use std::fmt;

use crate::types::{Entry, Membership, NodeId, Term};

/// One message from `from` to `to`, sent in the sender's term `term`
/// (for a granted pre-vote: the term the pre-candidate would campaign in).
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// Term of the sender (see the type docs for pre-votes).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The message kinds (Raft Figure 2, plus pre-vote, heartbeats, log reset and
/// leadership transfer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// "Would you vote for me in `term`?" — changes no state anywhere.
    PreVote {
        /// Term of the sender's last entry.
        last_term: Term,
        /// End offset of the sender's last entry.
        last_end_offset: u64,
    },
    /// Answer to a pre-vote.
    PreVoteResponse {
        /// Whether the vote would be granted.
        granted: bool,
    },
    /// RequestVote (Raft §5.2).
    Vote {
        /// Term of the sender's last entry.
        last_term: Term,
        /// End offset of the sender's last entry.
        last_end_offset: u64,
        /// Set when the leader asked for this election: voters must not refuse
        /// it because they heard from that leader recently.
        leadership_transfer: bool,
    },
    /// Answer to a vote request.
    VoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (Raft §5.3): entries after the entry that ends at
    /// `prev_end_offset` and has term `prev_term`.
    Append {
        /// End offset of the entry preceding `entries` (Kafka: its lastOffset + 1).
        prev_end_offset: u64,
        /// Term of that entry.
        prev_term: Term,
        /// Contiguous entries starting at `prev_end_offset`; may be empty (probe).
        entries: Vec<Entry>,
        /// Leader's commit offset.
        commit_offset: u64,
    },
    /// Answer to `Append` or `ResetLog`.
    AppendResponse(AppendResult),
    /// Leader liveness plus commit offset. Carries nothing else so a driver can
    /// coalesce the heartbeats of all its groups to one peer into one frame.
    Heartbeat {
        /// `min(leader commit, follower's acknowledged match)`.
        commit_offset: u64,
        /// The leader's last heartbeat before it goes quiet: every member matches
        /// its log and `commit_offset` is its end (see [`crate::Config::quiesce`]).
        quiesce: bool,
    },
    /// Answer to a heartbeat.
    HeartbeatResponse,
    /// The follower needs entries the leader no longer has: discard the whole
    /// log and start empty at `start_offset` (the "snapshot" of a log is its suffix).
    ResetLog {
        /// The leader's log start offset.
        start_offset: u64,
        /// Term of the entry that ended at `start_offset`.
        start_term: Term,
        /// Membership in effect at `start_offset`.
        membership: Membership,
    },
    /// "Campaign now": sent by a leader transferring leadership to a caught-up
    /// voter (dissertation §3.10).
    TimeoutNow,
}

/// The outcome of an append (or a log reset) at the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `match_end_offset`.
    Accepted {
        /// End of the last entry known to match the leader's log.
        match_end_offset: u64,
    },
    /// The follower has no entry `(prev_end_offset, prev_term)`. The hint is the
    /// follower's last entry whose term is at most the probed term, so the
    /// leader skips whole terms at once (like Kafka's OffsetForLeaderEpoch).
    Rejected {
        /// `prev_end_offset` of the rejected append.
        prev_end_offset: u64,
        /// Term of the follower's last entry with term ≤ the probed term (0: none).
        hint_term: Term,
        /// End offset of that entry.
        hint_end_offset: u64,
    },
}

impl Message {
    /// Whether this is a heartbeat or heartbeat response, which a driver may
    /// coalesce per peer across groups and may drop under pressure.
    pub fn is_heartbeat(&self) -> bool {
        matches!(
            self.body,
            MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse
        )
    }

    /// Payload bytes carried (entries), for the driver's own accounting.
    pub fn entry_bytes(&self) -> usize {
        match &self.body {
            MessageBody::Append { entries, .. } => entries.iter().map(|e| e.data.len()).sum(),
            _ => 0,
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{} term={} ", self.from, self.to, self.term)?;
        match &self.body {
            MessageBody::PreVote {
                last_term,
                last_end_offset,
            } => write!(f, "PreVote last=(t{last_term} @{last_end_offset})"),
            MessageBody::PreVoteResponse { granted } => {
                write!(f, "PreVoteResponse {}", grant(*granted))
            }
            MessageBody::Vote {
                last_term,
                last_end_offset,
                leadership_transfer,
            } => {
                write!(f, "Vote last=(t{last_term} @{last_end_offset})")?;
                if *leadership_transfer {
                    write!(f, " transfer")?;
                }
                Ok(())
            }
            MessageBody::VoteResponse { granted } => write!(f, "VoteResponse {}", grant(*granted)),
            MessageBody::Append {
                prev_end_offset,
                prev_term,
                entries,
                commit_offset,
            } => write!(
                f,
                "Append prev=(t{prev_term} @{prev_end_offset}) commit={commit_offset} entries={entries:?}"
            ),
            MessageBody::AppendResponse(AppendResult::Accepted { match_end_offset }) => {
                write!(f, "AppendResponse accepted match={match_end_offset}")
            }
            MessageBody::AppendResponse(AppendResult::Rejected {
                prev_end_offset,
                hint_term,
                hint_end_offset,
            }) => write!(
                f,
                "AppendResponse rejected prev={prev_end_offset} hint=(t{hint_term} @{hint_end_offset})"
            ),
            MessageBody::Heartbeat {
                commit_offset,
                quiesce,
            } => {
                write!(f, "Heartbeat commit={commit_offset}")?;
                if *quiesce {
                    write!(f, " quiesce")?;
                }
                Ok(())
            }
            MessageBody::HeartbeatResponse => write!(f, "HeartbeatResponse"),
            MessageBody::ResetLog {
                start_offset,
                start_term,
                membership,
            } => write!(
                f,
                "ResetLog start=(t{start_term} @{start_offset}) {membership}"
            ),
            MessageBody::TimeoutNow => write!(f, "TimeoutNow"),
        }
    }
}

fn grant(granted: bool) -> &'static str {
    if granted {
        "granted"
    } else {
        "rejected"
    }
}
