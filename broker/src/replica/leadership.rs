//! Moving a partition's leadership on purpose: back to its preferred replica (the
//! leader balancer) and away from a broker that is shutting down (controlled
//! shutdown). Both use Raft's leadership transfer: the leader stops taking proposals,
//! catches the target up and tells it to campaign at once (`TimeoutNow`), so the
//! partition is leaderless for one round trip instead of an election timeout.

use rill_raft::Role;

use super::store::{broker_id, raft_node_id};
use super::Partition;
use crate::error::BrokerError;

impl Partition {
    /// The broker placement prefers as this partition's leader: the first replica of
    /// its assignment (placement spreads first replicas evenly over the brokers).
    pub fn preferred_leader(&self) -> i32 {
        self.preferred_leader
    }

    /// Whether this replica leads its group and has other voters to hand it to.
    pub fn leads_a_group(&self) -> bool {
        let st = self.state();
        st.raft.role() == Role::Leader && st.raft.membership().voters.len() > 1
    }

    /// The brokers of the group's other voters.
    pub fn other_voters(&self) -> Vec<i32> {
        let st = self.state();
        let me = st.raft.id();
        st.raft
            .membership()
            .voters
            .iter()
            .filter(|&&node| node != me)
            .map(|&node| broker_id(node))
            .collect()
    }

    /// Leader only: the brokers of the other voters whose logs match the leader's
    /// whole log (a transfer to them completes at once); empty on a follower.
    pub fn caught_up_followers(&self) -> Vec<i32> {
        let st = self.state();
        let raft = &st.raft;
        if raft.role() != Role::Leader {
            return Vec::new();
        }
        let last_end = raft.last_end_offset();
        raft.membership()
            .voters
            .iter()
            .filter(|&&node| node != raft.id())
            .filter(|&&node| {
                raft.progress(node)
                    .is_some_and(|p| p.match_end_offset == last_end)
            })
            .map(|&node| broker_id(node))
            .collect()
    }

    /// The group's members as broker ids: (voters, learners).
    pub fn members(&self) -> (Vec<i32>, Vec<i32>) {
        let st = self.state();
        let membership = st.raft.membership();
        let ids = |set: &std::collections::BTreeSet<rill_raft::NodeId>| {
            set.iter().map(|&node| broker_id(node)).collect()
        };
        (ids(&membership.voters), ids(&membership.learners))
    }

    /// Leader: proposes a single-server membership change of the group (one at a
    /// time, after the leader committed an entry of its term: the core refuses
    /// others). It takes effect once appended; the caller learns of the commit from
    /// the replica's status. `Busy` while the persist loop holds the group, or while
    /// another change is pending: try again later.
    pub fn propose_membership_change(
        &self,
        change: rill_raft::MembershipChange,
    ) -> Result<(), BrokerError> {
        let mut st = self.state();
        if self.is_closed() {
            return Err(BrokerError::UnknownTopicOrPartition);
        }
        if st.ready_out {
            return Err(BrokerError::Busy(
                "the group's Ready is being persisted".into(),
            ));
        }
        let proposed = st.raft.propose_membership_change(change);
        // The membership entry, if any, is written and scheduled like a proposal's.
        self.after_input(&mut st);
        match proposed {
            Ok(_) => {
                tracing::info!(topic = %self.topic, partition = self.index, ?change, "membership change proposed");
                Ok(())
            }
            Err(rill_raft::ProposeError::NotLeader { .. }) => Err(BrokerError::NotLeaderOrFollower),
            Err(
                e @ (rill_raft::ProposeError::MembershipChangePending
                | rill_raft::ProposeError::LearnerNotCaughtUp(_)
                | rill_raft::ProposeError::TransferInProgress),
            ) => Err(BrokerError::Busy(e.to_string())),
            Err(e) => Err(BrokerError::InvalidRequest(e.to_string())),
        }
    }

    /// Leader: hands leadership to the replica on broker `to`. Proposals are refused
    /// (NOT_LEADER_OR_FOLLOWER) until it took over or the transfer was abandoned
    /// after an election timeout. Refused while the persist loop holds the group
    /// (try again later) and on a replica that does not lead.
    pub fn transfer_leadership(&self, to: i32) -> Result<(), BrokerError> {
        if to == self.broker_id {
            return Ok(());
        }
        let mut st = self.state();
        if st.ready_out || self.is_closed() {
            return Err(BrokerError::NotLeaderOrFollower);
        }
        st.raft
            .transfer_leadership(raft_node_id(to))
            .map_err(|_| BrokerError::NotLeaderOrFollower)?;
        tracing::info!(topic = %self.topic, partition = self.index, to, "transferring leadership");
        self.after_input(&mut st);
        Ok(())
    }
}
