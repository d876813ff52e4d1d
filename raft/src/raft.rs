//! The consensus state machine of one node of one group.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::config::Config;
use crate::error::{ConfigError, MessageError, ProposeError};
use crate::log::RaftLog;
use crate::message::{AppendResult, Message, MessageBody};
use crate::progress::{Progress, ProgressView, ReplicationState};
use crate::ready::{AfterPersist, Durable, LogReset, Persist, Ready};
use crate::rng::SplitMix64;
use crate::storage::{LogReadError, LogStore};
use crate::types::{
    Entry, EntryKind, HardState, LogStart, Membership, MembershipChange, NodeId, Proposal, Role,
    RoleState, Term,
};

/// One node of one Raft group, without I/O.
///
/// # Calling rules
///
/// * Inputs: [`step`](Raft::step) (a message from a peer), [`tick`](Raft::tick)
///   (one unit of time; a broker drives every group from one timer),
///   [`propose`](Raft::propose), [`propose_membership_change`](Raft::propose_membership_change),
///   [`transfer_leadership`](Raft::transfer_leadership), [`campaign`](Raft::campaign).
/// * After any input, if [`has_ready`](Raft::has_ready) is true, take
///   [`ready`](Raft::ready), handle it as its type documents, and hand the
///   receipt back with [`advance`](Raft::advance). `advance` may itself
///   produce a new `Ready` (e.g. a candidate that counts its own durable vote
///   and wins), so loop while `has_ready()`.
/// * Between `ready()` and `advance()` no input may be given (the core asserts
///   this): queue incoming messages and proposals in the driver meanwhile. A
///   broker collects the `Ready`s of many groups, writes them, fsyncs once,
///   and advances them all (group commit).
/// * The driver writes the store only as a `Ready` says, and may otherwise only
///   move the log start forward over committed entries (retention).
pub struct Raft<S: LogStore> {
    id: NodeId,
    config: Config,
    log: RaftLog<S>,
    term: Term,
    voted_for: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    /// Membership history: `[0]` is in effect at the log start, the last one is
    /// current (latest in the log, committed or not — dissertation §4.1).
    /// Every element but the last is committed (single-server changes are
    /// proposed only once the previous one committed).
    memberships: Vec<(u64, Membership)>,
    election_elapsed_ticks: u32,
    heartbeat_elapsed_ticks: u32,
    randomized_election_timeout_ticks: u32,
    rng: SplitMix64,
    /// Candidate / pre-candidate: answers received in this election.
    votes: BTreeMap<NodeId, bool>,
    /// Candidate: its own vote counts once the vote is durable (at `advance`).
    self_vote_pending: bool,
    /// Leader: per-member replication state (not for itself).
    progress: BTreeMap<NodeId, Progress>,
    /// Leader: an ongoing leadership transfer (target, ticks elapsed).
    transfer: Option<(NodeId, u32)>,
    /// Leader: end of the entry it appended on election (commit of its term
    /// starts there).
    leader_entry_end: u64,
    /// Leader: (end offset, bytes) of its own uncommitted entries.
    uncommitted: VecDeque<(u64, usize)>,
    uncommitted_bytes: usize,
    /// End of the local log known to be durable (the leader's own match).
    durable_end: u64,
    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    persisted_hard_state: HardState,
    pending_hard_state: Option<HardState>,
    reported_role: RoleState,
    reported_commit: u64,
    ready_seq: u64,
    ready_outstanding: bool,
    /// Reused buffer for the commit computation (no allocation per ack).
    scratch: Vec<u64>,
    /// Quiet until the next input (see [`Raft::is_quiesced`]).
    quiesced: bool,
}

enum ElectionResult {
    Won,
    Lost,
    Pending,
}

impl<S: LogStore> Raft<S> {
    /// Restores a node from its store (term, vote, memberships, log).
    pub fn new(config: Config, store: S) -> Result<Raft<S>, ConfigError> {
        config.validate()?;
        let boot = store.boot_state();
        assert!(
            !boot.memberships.is_empty(),
            "boot state needs the membership at the log start"
        );
        let log = RaftLog::new(store, boot.hard_state.commit_offset);
        let hard_state = HardState {
            commit_offset: log.commit_offset,
            ..boot.hard_state
        };
        let mut raft = Raft {
            id: config.id,
            rng: SplitMix64::new(config.seed ^ config.id.wrapping_mul(0x9E37_79B9)),
            config,
            durable_end: log.last_end(),
            reported_commit: log.commit_offset,
            log,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            role: Role::Follower,
            leader: None,
            memberships: boot.memberships,
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: 0,
            votes: BTreeMap::new(),
            self_vote_pending: false,
            progress: BTreeMap::new(),
            transfer: None,
            leader_entry_end: 0,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            persisted_hard_state: hard_state,
            pending_hard_state: None,
            reported_role: RoleState {
                role: Role::Follower,
                term: hard_state.term,
                leader: None,
            },
            ready_seq: 0,
            ready_outstanding: false,
            scratch: Vec::new(),
            quiesced: false,
        };
        raft.reset_election_timeout();
        Ok(raft)
    }

    // ----------------------------------------------------------------------
    // Introspection.

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Known leader of the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Commit offset (the high watermark).
    pub fn commit_offset(&self) -> u64 {
        self.log.commit_offset
    }

    /// End offset of the last entry in the node's log (durable or not).
    pub fn last_end_offset(&self) -> u64 {
        self.log.last_end()
    }

    /// Term of the last entry in the node's log.
    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// Start of the node's log.
    pub fn log_start(&self) -> LogStart {
        self.log.start()
    }

    /// Term of the entry ending at `end_offset` in the node's log.
    pub fn term_of_entry_ending_at(&self, end_offset: u64) -> Option<Term> {
        self.log.term_at(end_offset)
    }

    /// Reads the node's log (durable and not yet durable parts).
    pub fn read_entries(
        &self,
        from_offset: u64,
        bytes_max: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogReadError> {
        self.log.read_entries(from_offset, bytes_max, out)
    }

    /// The current membership (latest in the log).
    pub fn membership(&self) -> &Membership {
        &self.memberships.last().expect("never empty").1
    }

    /// The current term, vote and commit offset.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            voted_for: self.voted_for,
            commit_offset: self.log.commit_offset,
        }
    }

    /// Leader only: replication progress of a member.
    pub fn progress(&self, id: NodeId) -> Option<ProgressView> {
        self.progress.get(&id).map(ProgressView::from)
    }

    /// Whether the group is quiet ([`Config::quiesce`]): a leader that told every
    /// member so in a last heartbeat, or a follower that received it while matching
    /// the leader's commit. Its [`tick`](Raft::tick) does nothing, so a driver may
    /// stop calling it; the next message or proposal wakes the group, except the
    /// quiet exchange itself (a quiesce heartbeat at a follower, its response at
    /// the leader).
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// Wakes a quiet group because the driver believes a member's node stopped
    /// answering. With `leader_lost` (a follower's leader is the silent one) the
    /// follower no longer defends that leader against votes and campaigns within
    /// the remainder of one randomized election timeout. Otherwise the group just
    /// ticks again: a leader resumes heartbeats and its quorum check (and steps down
    /// if its quorum is gone), a follower keeps its leader. Does nothing to a group
    /// that is not quiet.
    pub fn unquiesce(&mut self, leader_lost: bool) {
        self.assert_no_ready("unquiesce");
        if !std::mem::take(&mut self.quiesced) {
            return;
        }
        self.wake_after_quiet(leader_lost && self.role != Role::Leader);
    }

    /// Any input but the quiet exchange itself wakes a quiet group.
    fn wake(&mut self) {
        if std::mem::take(&mut self.quiesced) {
            self.wake_after_quiet(false);
        }
    }

    /// Leaves the quiet state. A leader starts a fresh quorum window (its members
    /// were active when it went quiet). A follower whose leader is `lost` lets its
    /// lease lapse at once, so peers that also lost the leader can elect a new one
    /// without waiting out a full timeout of ticks that never came.
    fn wake_after_quiet(&mut self, lost: bool) {
        match self.role {
            Role::Leader => {
                self.election_elapsed_ticks = 0;
                self.heartbeat_elapsed_ticks = 0;
                for pr in self.progress.values_mut() {
                    pr.recent_active = true;
                }
            }
            _ if lost => {
                self.election_elapsed_ticks = self.config.election_timeout_ticks;
            }
            _ => {}
        }
    }

    /// Leader only: the target of an ongoing leadership transfer.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|(to, _)| to)
    }

    /// The store, for reads by the driver.
    pub fn store(&self) -> &S {
        &self.log.store
    }

    /// The store, for applying a `Ready`'s persist and for retention (moving
    /// the log start over committed entries only).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.log.store
    }

    /// Gives the store back (e.g. to restart the node from it).
    pub fn into_store(self) -> S {
        self.log.store
    }

    // ----------------------------------------------------------------------
    // Inputs.

    /// Advances time by one tick (Raft §5.2 timers). Followers campaign after a
    /// randomized election timeout; leaders send heartbeats and check quorum.
    pub fn tick(&mut self) {
        self.assert_no_ready("tick");
        if self.quiesced {
            return;
        }
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.election_elapsed_ticks = self.election_elapsed_ticks.saturating_add(1);
                if self.promotable()
                    && self.election_elapsed_ticks >= self.randomized_election_timeout_ticks
                {
                    self.election_elapsed_ticks = 0;
                    self.start_election(false);
                }
            }
        }
    }

    /// Starts an election now, as if the election timeout had passed (with a
    /// pre-vote round first when enabled). Ignored by leaders and non-voters.
    pub fn campaign(&mut self) {
        self.assert_no_ready("campaign");
        self.wake();
        if self.role != Role::Leader && self.promotable() {
            self.start_election(false);
        }
    }

    /// Leader: appends an entry of `offset_count` offsets carrying `data` and
    /// starts replicating it. The entry gets `base_offset =
    /// last_end_offset()` and `term = term()`; a Kafka driver stamps both into
    /// the batch header before calling. The proposal is acknowledged once the
    /// commit offset reaches its end while its entry is still in the log.
    ///
    /// Unlike every other input, a proposal may come while a `Ready` is
    /// outstanding (between [`ready`](Raft::ready) and
    /// [`advance`](Raft::advance)): the entry is sent to followers at once
    /// (take the appends with [`take_messages`](Raft::take_messages)) and goes
    /// into the next `Ready`'s persist; the leader counts it towards a commit
    /// only once that `Ready` is durable. This lets a leader replicate while it
    /// fsyncs (Raft §10.2.1: a leader may write its log in parallel with
    /// replicating it).
    pub fn propose(&mut self, data: Bytes, offset_count: u64) -> Result<Proposal, ProposeError> {
        self.check_can_propose()?;
        self.wake();
        if offset_count == 0 {
            return Err(ProposeError::EmptyEntry);
        }
        if !self.has_room_for(data.len()) {
            return Err(ProposeError::UncommittedBytesExceeded {
                limit_bytes: self.config.uncommitted_bytes_max,
            });
        }
        let size = data.len() + crate::types::ENTRY_OVERHEAD_BYTES;
        let proposal = self.append_own(EntryKind::Data, data, offset_count);
        self.uncommitted.push_back((proposal.end_offset, size));
        self.uncommitted_bytes += size;
        self.broadcast_append();
        Ok(proposal)
    }

    /// Whether a [`propose`](Raft::propose) of `data_bytes` would pass the
    /// `uncommitted_bytes_max` back-pressure check now (one entry always fits when
    /// nothing is uncommitted). A driver that writes an entry's data before proposing
    /// it asks first, so a full backlog costs it a wait rather than undoing a write.
    pub fn has_room_for(&self, data_bytes: usize) -> bool {
        let size = data_bytes + crate::types::ENTRY_OVERHEAD_BYTES;
        self.uncommitted_bytes == 0
            || self.uncommitted_bytes + size <= self.config.uncommitted_bytes_max
    }

    /// Leader: proposes a single-server membership change. Only one change may
    /// be pending at a time, and only after the leader committed an entry of
    /// its own term (the fix to single-server changes in Ongaro's 2015 errata).
    /// It takes effect as soon as it is appended.
    pub fn propose_membership_change(
        &mut self,
        change: MembershipChange,
    ) -> Result<Proposal, ProposeError> {
        self.assert_no_ready("propose_membership_change");
        self.check_can_propose()?;
        self.wake();
        let commit = self.log.commit_offset;
        if commit < self.leader_entry_end || self.membership_end() > commit {
            return Err(ProposeError::MembershipChangePending);
        }
        let next = self.membership().apply(change)?;
        if let MembershipChange::PromoteLearner(id) = change {
            let caught_up = self
                .progress
                .get(&id)
                .is_some_and(|p| p.match_end >= commit && p.recent_active);
            if !caught_up {
                return Err(ProposeError::LearnerNotCaughtUp(id));
            }
        }
        let proposal = self.append_own(EntryKind::Membership(next), Bytes::new(), 1);
        self.sync_progress();
        self.broadcast_append();
        Ok(proposal)
    }

    /// Leader: hands leadership to voter `to` once it has caught up, by telling
    /// it to campaign at once (dissertation §3.10). Proposals are refused while
    /// the transfer runs; it is abandoned after one election timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.assert_no_ready("transfer_leadership");
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id || !self.membership().is_voter(to) {
            return Err(ProposeError::InvalidTransferTarget(to));
        }
        if self.transfer.is_some_and(|(t, _)| t == to) {
            return Ok(());
        }
        self.wake();
        self.transfer = Some((to, 0));
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_end == self.log.last_end());
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            // Catch the target up now rather than waiting for a heartbeat to
            // notice lost appends: resend from its match point.
            if let Some(pr) = self.progress.get_mut(&to) {
                match pr.state {
                    ReplicationState::Replicate => {
                        let match_end = pr.match_end;
                        pr.become_probe(match_end);
                    }
                    ReplicationState::Probe => pr.probe_sent = false,
                }
            }
            self.send_append(to);
        }
        Ok(())
    }

    /// Leader: forgets what follower `node` acknowledged and probes it again from the
    /// log end. For a follower whose process restarted, which may have lost its disk (a
    /// wiped or replaced data directory): its log is then shorter than what it
    /// acknowledged, which Raft's model rules out, and a leader that still counted the
    /// old match would ignore its rejections for good (rejections at or below the match
    /// look stale). Safe for any follower: the commit offset never moves back, and probing
    /// re-learns the match of an intact log within a round trip or two. Ignored by
    /// non-leaders and for nodes that are not followers of this leader.
    ///
    /// Wakes a quiet group: its members no longer all match, and the probe sent here
    /// may be lost (the restarted peer's connection is still being re-established, or
    /// the peer does not host the group yet), so the leader must keep heartbeating
    /// until the follower has caught up — a quiet leader ticks nothing and would
    /// never retry.
    pub fn forget_follower_match(&mut self, node: NodeId) {
        self.assert_no_ready("forget_follower_match");
        if self.role != Role::Leader {
            return;
        }
        let next_end = self.log.last_end();
        if !self.progress.contains_key(&node) {
            return;
        }
        self.wake();
        let Some(pr) = self.progress.get_mut(&node) else {
            return;
        };
        pr.match_end = 0;
        pr.match_at_last_heartbeat = 0;
        pr.become_probe(next_end);
        self.send_append(node);
    }

    /// Handles one message from a peer. A malformed message is rejected with an
    /// error and changes nothing.
    pub fn step(&mut self, m: Message) -> Result<(), MessageError> {
        self.assert_no_ready("step");
        if m.to != self.id {
            return Err(MessageError::WrongRecipient {
                to: m.to,
                me: self.id,
            });
        }
        if m.term == Term::MAX {
            return Err(MessageError::TermOutOfRange { from: m.from });
        }
        let quiet_exchange = match m.body {
            MessageBody::Heartbeat { quiesce, .. } => quiesce && self.role != Role::Leader,
            MessageBody::HeartbeatResponse => self.role == Role::Leader,
            _ => false,
        };
        if !quiet_exchange {
            self.wake();
        }
        if m.term > self.term {
            if let MessageBody::PreVote { .. } | MessageBody::Vote { .. } = m.body {
                let transfer = matches!(
                    m.body,
                    MessageBody::Vote {
                        leadership_transfer: true,
                        ..
                    }
                );
                // Dissertation §4.2.3: a server that heard from a leader within
                // the minimum election timeout ignores vote requests, so a
                // removed or partitioned server cannot depose a live leader.
                let in_lease = self.config.check_quorum
                    && self.leader.is_some()
                    && self.election_elapsed_ticks < self.config.election_timeout_ticks;
                if in_lease && !transfer {
                    return Ok(());
                }
            }
            match m.body {
                // Pre-votes never change terms; a granted pre-vote response
                // carries the term the pre-candidate would campaign in.
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::ResetLog { .. } => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::ResetLog { .. }
                    if self.config.check_quorum || self.config.pre_vote =>
                {
                    // A stale leader would otherwise never learn the new term:
                    // with pre-vote/check-quorum our term may have advanced
                    // without it hearing a vote request.
                    self.respond(m.from, MessageBody::HeartbeatResponse);
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return Ok(());
        }

        match m.body {
            MessageBody::PreVote {
                last_term,
                last_end_offset,
            } => {
                self.handle_vote_request(m.from, m.term, true, last_term, last_end_offset);
                Ok(())
            }
            MessageBody::Vote {
                last_term,
                last_end_offset,
                ..
            } => {
                self.handle_vote_request(m.from, m.term, false, last_term, last_end_offset);
                Ok(())
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    // ----------------------------------------------------------------------
    // Output.

    /// Whether there is anything for the driver to do.
    pub fn has_ready(&self) -> bool {
        !self.ready_outstanding
            && (!self.msgs.is_empty()
                || !self.msgs_after_persist.is_empty()
                || self.log.has_unpersisted()
                || self.hard_state() != self.persisted_hard_state
                || self.role_state() != self.reported_role
                || self.log.commit_offset != self.reported_commit)
    }

    /// Takes the pending output; see [`Ready`] for how to handle it. Must be
    /// followed by [`advance`](Raft::advance) before any other input.
    pub fn ready(&mut self) -> Ready {
        assert!(
            !self.ready_outstanding,
            "ready() called twice without advance()"
        );
        self.ready_outstanding = true;
        self.ready_seq += 1;
        let role_state = self.role_state();
        let role = (role_state != self.reported_role).then_some(role_state);
        self.reported_role = role_state;
        let commit_offset =
            (self.log.commit_offset != self.reported_commit).then_some(self.log.commit_offset);
        self.reported_commit = self.log.commit_offset;
        let hs = self.hard_state();
        let hard_state = (hs != self.persisted_hard_state).then_some(hs);
        self.pending_hard_state = hard_state;
        let sync_required = self.log.has_unpersisted()
            || hs.term != self.persisted_hard_state.term
            || hs.voted_for != self.persisted_hard_state.voted_for;
        let (reset_to, truncate_to, entries) = self.log.pending();
        Ready {
            role,
            commit_offset,
            messages: std::mem::take(&mut self.msgs),
            persist: Persist {
                reset_to,
                truncate_to,
                entries,
                hard_state,
                sync_required,
                ready_seq: self.ready_seq,
            },
            after_persist: AfterPersist {
                messages: std::mem::take(&mut self.msgs_after_persist),
                ready_seq: self.ready_seq,
            },
        }
    }

    /// Takes the messages that depend on nothing unpersisted, at any time: a
    /// leader's appends for proposals made while a `Ready` is outstanding
    /// (otherwise they would wait for that `Ready`'s fsync). Send them at once,
    /// before any later `Ready`'s messages.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.msgs)
    }

    /// Confirms that the last `Ready`'s persist is durable in the store.
    pub fn advance(&mut self, durable: Durable) {
        assert!(self.ready_outstanding, "advance() without ready()");
        assert_eq!(
            durable.ready_seq, self.ready_seq,
            "receipt of another Ready"
        );
        self.ready_outstanding = false;
        // Only what the `Ready` held: proposals made since are not durable yet.
        self.durable_end = self.log.persisted();
        if let Some(hs) = self.pending_hard_state.take() {
            self.persisted_hard_state = hs;
        }
        match self.role {
            Role::Candidate if self.self_vote_pending => {
                // Our vote for ourselves is now durable: count it (Raft §5.2 —
                // counting it earlier could let a crash forget it).
                self.self_vote_pending = false;
                self.record_vote(self.id, true);
            }
            Role::Leader => {
                self.maybe_commit();
            }
            _ => {}
        }
    }

    // ----------------------------------------------------------------------
    // Roles.

    fn role_state(&self) -> RoleState {
        RoleState {
            role: self.role,
            term: self.term,
            leader: self.leader,
        }
    }

    fn promotable(&self) -> bool {
        self.membership().is_voter(self.id)
    }

    fn reset_election_timeout(&mut self) {
        let base = self.config.election_timeout_ticks;
        self.randomized_election_timeout_ticks = base + self.rng.below(u64::from(base)) as u32;
    }

    fn reset_role_state(&mut self) {
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        self.reset_election_timeout();
        self.votes.clear();
        self.self_vote_pending = false;
        self.progress.clear();
        self.transfer = None;
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.quiesced = false;
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        self.reset_role_state();
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn start_election(&mut self, transfer: bool) {
        if self.config.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    fn become_pre_candidate(&mut self) {
        self.reset_role_state();
        self.role = Role::PreCandidate;
        self.leader = None;
        let (last_term, last_end_offset) = (self.log.last_term(), self.log.last_end());
        let voters: Vec<NodeId> = self.membership().voters.iter().copied().collect();
        let me = self.id;
        for v in voters.into_iter().filter(|&v| v != me) {
            self.msgs.push(Message {
                from: self.id,
                to: v,
                term: self.term + 1,
                body: MessageBody::PreVote {
                    last_term,
                    last_end_offset,
                },
            });
        }
        // A pre-vote changes no state, so the own pre-vote counts at once.
        self.record_vote(self.id, true);
    }

    fn become_candidate(&mut self, transfer: bool) {
        self.reset_role_state();
        self.term += 1;
        self.voted_for = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.self_vote_pending = true;
        let (last_term, last_end_offset) = (self.log.last_term(), self.log.last_end());
        let voters: Vec<NodeId> = self.membership().voters.iter().copied().collect();
        let me = self.id;
        for v in voters.into_iter().filter(|&v| v != me) {
            // Requests may go before the vote is durable: our own vote is only
            // counted after advance(), so a crash cannot make us vote twice.
            self.send(
                v,
                MessageBody::Vote {
                    last_term,
                    last_end_offset,
                    leadership_transfer: transfer,
                },
            );
        }
    }

    fn become_leader(&mut self) {
        self.reset_role_state();
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.sync_progress();
        // Raft §5.4.2 / §8: commit entries of earlier terms only through an entry
        // of our own term; append one at once so that happens promptly.
        let p = self.append_own(EntryKind::LeaderChange, Bytes::new(), 1);
        self.leader_entry_end = p.end_offset;
        self.broadcast_append();
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) {
        if !self.membership().is_voter(from) {
            return;
        }
        self.votes.entry(from).or_insert(granted);
        match self.election_result() {
            ElectionResult::Won => {
                if self.role == Role::PreCandidate {
                    self.become_candidate(false);
                } else {
                    self.become_leader();
                }
            }
            ElectionResult::Lost => self.become_follower(self.term, None),
            ElectionResult::Pending => {}
        }
    }

    fn election_result(&self) -> ElectionResult {
        let membership = self.membership();
        let quorum = membership.quorum();
        let (mut granted, mut rejected) = (0, 0);
        for (id, g) in &self.votes {
            if membership.is_voter(*id) {
                if *g {
                    granted += 1;
                } else {
                    rejected += 1;
                }
            }
        }
        if granted >= quorum {
            ElectionResult::Won
        } else if rejected > membership.voters.len() - quorum {
            ElectionResult::Lost
        } else {
            ElectionResult::Pending
        }
    }

    // ----------------------------------------------------------------------
    // Messages by role.

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        msg_term: Term,
        pre_vote: bool,
        last_term: Term,
        last_end_offset: u64,
    ) {
        let can_vote = self.voted_for == Some(from)
            || (self.voted_for.is_none() && self.leader.is_none())
            || (pre_vote && msg_term > self.term);
        // Raft §5.4.1: only vote for a log at least as up to date as ours.
        let up_to_date =
            (last_term, last_end_offset) >= (self.log.last_term(), self.log.last_end());
        let granted = can_vote && up_to_date;
        if pre_vote {
            let term = if granted { msg_term } else { self.term };
            self.msgs.push(Message {
                from: self.id,
                to: from,
                term,
                body: MessageBody::PreVoteResponse { granted },
            });
        } else {
            if granted {
                self.election_elapsed_ticks = 0;
                self.voted_for = Some(from);
            }
            self.respond(from, MessageBody::VoteResponse { granted });
        }
    }

    fn step_candidate(&mut self, m: Message) -> Result<(), MessageError> {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::ResetLog { .. } => {
                // A leader exists for our term (Raft §5.2).
                self.become_follower(m.term, Some(m.from));
                self.step_follower(m)
            }
            MessageBody::PreVoteResponse { granted } if self.role == Role::PreCandidate => {
                // Granted answers carry the term we would campaign in; anything
                // else granted is left over from an earlier round.
                if !granted || m.term == self.term + 1 {
                    self.record_vote(m.from, granted);
                }
                Ok(())
            }
            MessageBody::VoteResponse { granted } if self.role == Role::Candidate => {
                self.record_vote(m.from, granted);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_follower(&mut self, m: Message) -> Result<(), MessageError> {
        match m.body {
            MessageBody::Append {
                prev_end_offset,
                prev_term,
                entries,
                commit_offset,
            } => {
                self.heard_from_leader(m.from);
                self.handle_append(
                    m.from,
                    m.term,
                    prev_end_offset,
                    prev_term,
                    entries,
                    commit_offset,
                )
            }
            MessageBody::Heartbeat {
                commit_offset,
                quiesce,
            } => {
                self.heard_from_leader(m.from);
                let candidate = commit_offset.min(self.log.last_end());
                if candidate > self.log.commit_offset && self.log.term_at(candidate).is_some() {
                    self.log.commit_offset = candidate;
                }
                // Quiet only when nothing is left to learn: our whole log is
                // committed at the leader's word (a longer log waits for appends).
                self.quiesced = quiesce && self.log.commit_offset == self.log.last_end();
                self.respond(m.from, MessageBody::HeartbeatResponse);
                Ok(())
            }
            MessageBody::ResetLog {
                start_offset,
                start_term,
                membership,
            } => {
                self.heard_from_leader(m.from);
                self.handle_reset(m.from, start_offset, start_term, membership);
                Ok(())
            }
            MessageBody::TimeoutNow => {
                if self.promotable() {
                    self.start_election(true);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn heard_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed_ticks = 0;
        self.leader = Some(leader);
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        msg_term: Term,
        prev_end_offset: u64,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: u64,
    ) -> Result<(), MessageError> {
        // Validate before touching anything: a peer's bytes are untrusted.
        let mut expected_base = prev_end_offset;
        let mut last_term = prev_term;
        for e in &entries {
            if e.base_offset != expected_base
                || e.end_offset <= e.base_offset
                || e.term < last_term
                || e.term > msg_term
            {
                return Err(MessageError::MalformedEntries { from });
            }
            expected_base = e.end_offset;
            last_term = e.term;
        }
        let commit = self.log.commit_offset;
        let mut rest: &[Entry] = &entries;
        if prev_end_offset < commit {
            // Everything up to our commit offset matches every leader's log;
            // only what lies beyond needs checking.
            let skip = entries.partition_point(|e| e.end_offset <= commit);
            rest = &entries[skip..];
            if let Some(first) = rest.first() {
                if first.base_offset != commit {
                    return Err(MessageError::CommittedConflict {
                        from,
                        commit_offset: commit,
                    });
                }
            }
        } else if self.log.term_at(prev_end_offset) != Some(prev_term) {
            // Raft §5.3 consistency check failed. Hint with our last entry of a
            // term ≤ prev_term so the leader can skip whole terms.
            let (hint_term, hint_end_offset) = self
                .log
                .last_entry_with_term_at_most(prev_term)
                .unwrap_or((0, 0));
            self.respond(
                from,
                MessageBody::AppendResponse(AppendResult::Rejected {
                    prev_end_offset,
                    hint_term,
                    hint_end_offset,
                }),
            );
            return Ok(());
        }
        // Skip entries we already have; truncate at the first conflict (§5.3).
        let first_new = rest
            .iter()
            .position(|e| self.log.term_at(e.end_offset) != Some(e.term));
        if let Some(i) = first_new {
            if rest[i].base_offset < commit {
                return Err(MessageError::CommittedConflict {
                    from,
                    commit_offset: commit,
                });
            }
            self.append_entries(&rest[i..]);
        }
        let last_new = entries
            .last()
            .map_or(prev_end_offset, |e| e.end_offset)
            .max(commit);
        // Only entries this leader just vouched for may be committed: our log
        // beyond `last_new` may still diverge.
        let new_commit = leader_commit.min(last_new);
        if new_commit > self.log.commit_offset {
            self.log.commit_offset = new_commit;
        }
        self.respond(
            from,
            MessageBody::AppendResponse(AppendResult::Accepted {
                match_end_offset: last_new,
            }),
        );
        Ok(())
    }

    fn handle_reset(
        &mut self,
        from: NodeId,
        start_offset: u64,
        start_term: Term,
        membership: Membership,
    ) {
        let commit = self.log.commit_offset;
        let match_end_offset = if start_offset <= commit {
            commit
        } else if self.log.term_at(start_offset) == Some(start_term) {
            // We have the entry: the log start is committed at the leader.
            self.log.commit_offset = start_offset;
            start_offset
        } else {
            self.log.reset(LogReset {
                start: LogStart {
                    offset: start_offset,
                    term: start_term,
                },
                membership: membership.clone(),
            });
            self.memberships = vec![(start_offset, membership)];
            start_offset
        };
        self.respond(
            from,
            MessageBody::AppendResponse(AppendResult::Accepted { match_end_offset }),
        );
    }

    fn step_leader(&mut self, m: Message) -> Result<(), MessageError> {
        match m.body {
            MessageBody::AppendResponse(result) => self.handle_append_response(m.from, result),
            MessageBody::HeartbeatResponse => {
                let last_end = self.log.last_end();
                let Some(pr) = self.progress.get_mut(&m.from) else {
                    return Ok(());
                };
                pr.recent_active = true;
                if pr.match_end < last_end {
                    match pr.state {
                        ReplicationState::Probe => pr.probe_sent = false,
                        ReplicationState::Replicate => {
                            // No progress over a whole heartbeat interval: an
                            // append was lost. Resend from the match point.
                            if pr.match_end == pr.match_at_last_heartbeat {
                                let match_end = pr.match_end;
                                pr.become_probe(match_end);
                            }
                        }
                    }
                    pr.match_at_last_heartbeat = pr.match_end;
                    self.send_append(m.from);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        result: AppendResult,
    ) -> Result<(), MessageError> {
        let last_end = self.log.last_end();
        let Some(pr) = self.progress.get_mut(&from) else {
            return Ok(());
        };
        pr.recent_active = true;
        match result {
            AppendResult::Accepted { match_end_offset } => {
                if match_end_offset > last_end {
                    return Err(MessageError::AckBeyondLogEnd {
                        from,
                        end_offset: match_end_offset,
                    });
                }
                if match_end_offset > pr.match_end {
                    pr.match_end = match_end_offset;
                }
                match pr.state {
                    ReplicationState::Probe => pr.become_replicate(),
                    ReplicationState::Replicate => {
                        let m = pr.match_end;
                        pr.free_inflight_to(m);
                        if pr.next_end < m {
                            pr.next_end = m;
                        }
                    }
                }
                let match_end = pr.match_end;
                self.maybe_commit();
                if self.role != Role::Leader {
                    return Ok(());
                }
                if self.transfer.is_some_and(|(t, _)| t == from) && match_end == last_end {
                    self.send(from, MessageBody::TimeoutNow);
                }
                while self.send_append(from) {}
            }
            AppendResult::Rejected {
                prev_end_offset,
                hint_term,
                hint_end_offset,
            } => {
                let stale = match pr.state {
                    ReplicationState::Probe => prev_end_offset != pr.next_end,
                    ReplicationState::Replicate => prev_end_offset < pr.match_end,
                };
                if stale || prev_end_offset <= pr.match_end {
                    return Ok(());
                }
                // Fast backtracking by term (Kafka's OffsetForLeaderEpoch): both
                // logs' entries of one term are prefixes of what that term's
                // leader wrote, so the shorter run of `hint_term` is common.
                let (next, reset_needed) = match self.log.last_entry_with_term_at_most(hint_term) {
                    Some((t, end)) if t == hint_term => (end.min(hint_end_offset), false),
                    Some((_, end)) => (end, false),
                    None => (self.log.start().offset, true),
                };
                let pr = self.progress.get_mut(&from).expect("checked above");
                // Must move strictly back, never below what is known to match.
                let next = if next >= prev_end_offset {
                    pr.match_end
                } else {
                    next.max(pr.match_end)
                };
                pr.become_probe(next);
                pr.reset_needed = reset_needed;
                self.send_append(from);
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Leader machinery.

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.config.election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum {
                // Dissertation §6.2: step down without a live majority, so
                // clients can find the real leader.
                if !self.quorum_active() {
                    self.become_follower(self.term, None);
                    return;
                }
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
            }
        }
        if let Some((_, elapsed)) = self.transfer.as_mut() {
            *elapsed += 1;
            if *elapsed >= self.config.election_timeout_ticks {
                // The target did not take over in time: serve proposals again.
                self.transfer = None;
            }
        }
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            let quiesce = self.config.quiesce && self.idle();
            let commit = self.log.commit_offset;
            let targets: Vec<(NodeId, u64)> = self
                .progress
                .iter()
                .map(|(id, p)| (*id, commit.min(p.match_end)))
                .collect();
            for (to, commit_offset) in targets {
                self.send(
                    to,
                    MessageBody::Heartbeat {
                        commit_offset,
                        quiesce,
                    },
                );
            }
            self.quiesced = quiesce;
        }
    }

    /// Leader: nothing to replicate, commit or hand over, and every member heard
    /// from in this quorum window holds the whole log — the group may go quiet.
    fn idle(&self) -> bool {
        let last_end = self.log.last_end();
        self.transfer.is_none()
            && self.uncommitted.is_empty()
            && self.durable_end == last_end
            && self.log.commit_offset == last_end
            && !self.progress.is_empty()
            && self
                .progress
                .values()
                .all(|p| p.recent_active && p.match_end == last_end)
    }

    fn quorum_active(&self) -> bool {
        let membership = self.membership();
        let active = membership
            .voters
            .iter()
            .filter(|&&v| v == self.id || self.progress.get(&v).is_some_and(|p| p.recent_active))
            .count();
        active >= membership.quorum()
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    fn membership_end(&self) -> u64 {
        self.memberships.last().expect("never empty").0
    }

    /// Membership in effect at `offset` (for a log reset at the log start).
    fn membership_at(&self, offset: u64) -> Membership {
        let i = self.memberships.partition_point(|(end, _)| *end <= offset);
        self.memberships[i.saturating_sub(1)].1.clone()
    }

    fn append_own(&mut self, kind: EntryKind, data: Bytes, offset_count: u64) -> Proposal {
        let base_offset = self.log.last_end();
        let entry = Entry {
            term: self.term,
            base_offset,
            end_offset: base_offset + offset_count,
            kind,
            data,
        };
        let proposal = Proposal {
            term: entry.term,
            base_offset,
            end_offset: entry.end_offset,
        };
        self.append_entries(std::slice::from_ref(&entry));
        proposal
    }

    /// Appends to the log (truncating from the first entry's base) and keeps
    /// the membership history in step with it.
    fn append_entries(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let at = first.base_offset;
        // Configurations past the truncation point vanish with their entries.
        while self.memberships.len() > 1 && self.memberships.last().expect("len > 1").0 > at {
            self.memberships.pop();
        }
        self.log.append(entries);
        for e in entries {
            if let EntryKind::Membership(m) = &e.kind {
                self.memberships.push((e.end_offset, m.clone()));
            }
        }
    }

    /// Leader: progress entries for exactly the current members but itself.
    fn sync_progress(&mut self) {
        let members: Vec<NodeId> = self.membership().members().collect();
        let next = self.log.last_end();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            if id != self.id {
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(next));
            }
        }
        if let Some((to, _)) = self.transfer {
            if !self.membership().is_voter(to) {
                self.transfer = None;
            }
        }
    }

    fn broadcast_append(&mut self) {
        let targets: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in targets {
            self.send_append(to);
        }
    }

    /// Sends the next append (or log reset) to `to` if flow control allows;
    /// returns whether something was sent.
    fn send_append(&mut self, to: NodeId) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        let (state, prev, reset_needed) = (pr.state, pr.next_end, pr.reset_needed);
        let budget = match state {
            ReplicationState::Probe if pr.probe_sent => return false,
            ReplicationState::Probe => self.config.append_bytes_max,
            ReplicationState::Replicate => {
                let room = self
                    .config
                    .inflight_bytes_max
                    .saturating_sub(pr.inflight_bytes);
                if room == 0 || prev >= self.log.last_end() {
                    return false;
                }
                room.min(self.config.append_bytes_max)
            }
        };
        let start = self.log.start();
        let prev_term = if reset_needed || prev < start.offset {
            None
        } else {
            self.log.term_at(prev)
        };
        let mut entries = Vec::new();
        let read = match prev_term {
            Some(_) if prev < self.log.last_end() => {
                self.log.read_entries(prev, budget, &mut entries)
            }
            Some(_) => Ok(()),
            None => Err(LogReadError::Compacted { offset: prev }),
        };
        let body = match read {
            Ok(()) => MessageBody::Append {
                prev_end_offset: prev,
                prev_term: prev_term.expect("read succeeded"),
                entries,
                commit_offset: self.log.commit_offset,
            },
            Err(LogReadError::Compacted { .. }) => {
                // The follower needs entries we no longer have: it restarts
                // its log at our log start (the "snapshot" of a log).
                debug_assert!(start.offset <= self.log.commit_offset);
                MessageBody::ResetLog {
                    start_offset: start.offset,
                    start_term: start.term,
                    membership: self.membership_at(start.offset),
                }
            }
            Err(LogReadError::Unavailable(_)) => return false,
        };
        let pr = self.progress.get_mut(&to).expect("checked above");
        match (&body, state) {
            (MessageBody::Append { entries, .. }, ReplicationState::Replicate) => {
                let Some(last) = entries.last() else {
                    return false;
                };
                let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
                // The window is a hard bound: an entry that does not fit waits
                // for acknowledgements (unless nothing is in flight at all).
                if pr.inflight_bytes > 0
                    && pr.inflight_bytes + bytes > self.config.inflight_bytes_max
                {
                    return false;
                }
                pr.next_end = last.end_offset;
                pr.inflight.push_back((last.end_offset, bytes));
                pr.inflight_bytes += bytes;
            }
            (MessageBody::ResetLog { start_offset, .. }, _) => {
                let start_offset = *start_offset;
                pr.become_probe(start_offset);
                pr.reset_needed = true;
                pr.probe_sent = true;
            }
            _ => pr.probe_sent = true,
        }
        self.send(to, body);
        true
    }

    /// Leader: commit the highest end offset a quorum of voters has durably,
    /// but only if it is an entry of the current term (Raft §5.4.2).
    fn maybe_commit(&mut self) -> bool {
        let membership = &self.memberships.last().expect("never empty").1;
        self.scratch.clear();
        for v in &membership.voters {
            let m = if *v == self.id {
                self.durable_end
            } else {
                self.progress.get(v).map_or(0, |p| p.match_end)
            };
            self.scratch.push(m);
        }
        let quorum = membership.quorum();
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = self.scratch[quorum - 1];
        if candidate <= self.log.commit_offset || self.log.term_at(candidate) != Some(self.term) {
            return false;
        }
        self.log.commit_offset = candidate;
        while let Some(&(end, bytes)) = self.uncommitted.front() {
            if end > candidate {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes -= bytes;
        }
        // Dissertation §4.2.2: a leader removed from the voters leads until the
        // change commits, then steps down.
        if self.membership_end() <= candidate && !self.membership().is_voter(self.id) {
            // Hand over to the most caught-up voter instead of leaving the group
            // leaderless for an election timeout (its transfer flag overrides the
            // other voters' leader lease).
            let last_end = self.log.last_end();
            let successor = self.membership().voters.iter().copied().find(|v| {
                self.progress
                    .get(v)
                    .is_some_and(|p| p.match_end == last_end)
            });
            if let Some(to) = successor {
                self.send(to, MessageBody::TimeoutNow);
            }
            self.become_follower(self.term, None);
        }
        true
    }

    // ----------------------------------------------------------------------
    // Sending.

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.msgs.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    /// Responses depend on our term, vote and log being durable, so they wait
    /// for the persist of the same `Ready`.
    fn respond(&mut self, to: NodeId, body: MessageBody) {
        self.msgs_after_persist.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    fn assert_no_ready(&self, what: &str) {
        assert!(
            !self.ready_outstanding,
            "{what}() called between ready() and advance()"
        );
    }
}
