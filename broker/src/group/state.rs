//! [`Group`]: the classic group state machine, sans-I/O.
//!
//! Kafka's states and transitions (`GroupMetadata` / `GroupCoordinator` in Kafka):
//!
//! * Empty — no members (offsets may still be committed by generation -1 clients).
//! * PreparingRebalance — waiting for every member to (re)join, until the rebalance
//!   deadline (the largest rebalance timeout of the members); a new group first waits
//!   `group_initial_rebalance_delay_ms` so members that start together land in one
//!   generation. Members that have not rejoined by the deadline are removed.
//!   Unlike Kafka, the initial delay is one window from the group's first JoinGroup: Kafka
//!   (`InitialDelayedJoin`) opens another window of the same length whenever a member joined
//!   during the last one, up to the rebalance timeout, so three members starting together
//!   wait 6 s there and 3 s here (issue 11: Stable within 3.5 s of their start).
//! * CompletingRebalance — the generation is chosen; waiting for the leader's SyncGroup
//!   with the assignment.
//! * Stable — every member has its assignment and heartbeats.
//!
//! Time arrives as `now_ms` (a monotonic coordinator clock); nothing here sleeps, spawns or
//! does I/O. Parked JoinGroup / SyncGroup requests are answered through the members'
//! channels; when the group's durable state changes, [`Group::take_dirty`] returns the
//! record value to write.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

use super::member::{JoinAnswer, JoinedMember, Member, SyncAnswer};
use super::records::{GroupValue, MemberValue, OffsetValue};
use super::{
    CONSUMER_PROTOCOL_TYPE, GROUP_MEMBERS_MAX, SESSION_TIMEOUT_MS_MAX, SESSION_TIMEOUT_MS_MIN,
};

/// Where a group is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Members have their assignments.
    Stable,
}

impl GroupState {
    /// Kafka's name for the state (DescribeGroups, ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A committed offset and where in `__consumer_offsets` it was written (a later write
/// wins, whatever order the writes' acknowledgements arrive in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The offset.
    pub value: OffsetValue,
    /// Offset of its record in `__consumer_offsets`.
    pub log_offset: i64,
}

/// A JoinGroup as the state machine sees it.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Empty for a member's first join.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// The client id (the prefix of a new member id).
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout (v0: the session timeout).
    pub rebalance_timeout_ms: i32,
    /// "consumer", usually.
    pub protocol_type: String,
    /// (assignor, metadata) in preference order.
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a first join without a member id is answered MEMBER_ID_REQUIRED with one.
    pub require_known_member_id: bool,
}

/// How a JoinGroup is answered: now, or when the rebalance completes.
#[derive(Debug)]
pub enum JoinOutcome {
    /// Answer now.
    Now(JoinAnswer),
    /// Answer when this resolves.
    Wait(oneshot::Receiver<JoinAnswer>),
}

/// How a SyncGroup is answered.
#[derive(Debug)]
pub enum SyncOutcome {
    /// Answer now.
    Now(SyncAnswer),
    /// Answer when this resolves (the leader's assignment).
    Wait(oneshot::Receiver<SyncAnswer>),
}

/// Group-wide settings from the broker config.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// `group_initial_rebalance_delay_ms`.
    pub initial_rebalance_delay_ms: u64,
}

/// One consumer group.
#[derive(Debug)]
pub struct Group {
    /// The group id.
    pub id: String,
    /// Its state.
    pub state: GroupState,
    /// Current generation (0 before the first rebalance).
    pub generation: i32,
    /// Protocol type of its members (set by the first member).
    pub protocol_type: Option<String>,
    /// The protocol chosen at the last rebalance.
    pub protocol: Option<String>,
    /// The leader's member id.
    pub leader: Option<String>,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until (session deadline) they join.
    pub pending_members: HashMap<String, u64>,
    /// Static instance id → member id.
    pub static_members: HashMap<String, String>,
    /// Committed offsets by (topic, partition).
    pub offsets: HashMap<(String, i32), Committed>,
    /// PreparingRebalance: members not rejoined by then are removed.
    rebalance_deadline_ms: u64,
    /// PreparingRebalance of a new group: no completion before this.
    initial_delay_until_ms: u64,
    next_join_seq: u64,
    next_member_seq: u64,
    /// The durable state changed since the last [`Group::take_dirty`].
    dirty: bool,
    /// Wall-clock ms when the group last became empty (offset retention counts from here).
    empty_since_wall_ms: i64,
    /// The group became empty since the last [`Group::take_dirty`] (which stamps the time:
    /// the state machine itself only sees the monotonic clock).
    emptied: bool,
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

impl Group {
    /// A new, empty group.
    pub fn new(id: String) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending_members: HashMap::new(),
            static_members: HashMap::new(),
            offsets: HashMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay_until_ms: 0,
            next_join_seq: 0,
            next_member_seq: 0,
            dirty: false,
            empty_since_wall_ms: 0,
            emptied: false,
        }
    }

    /// A group as its metadata record left it (replay): Stable with its members if it had
    /// any (their sessions start now; members that do not come back expire), else Empty.
    pub fn restore(&mut self, value: GroupValue, now_ms: u64) {
        for (_, mut member) in std::mem::take(&mut self.members) {
            member.answer_join(JoinAnswer::error(code(ResponseError::NotCoordinator), ""));
        }
        self.static_members.clear();
        self.pending_members.clear();
        self.generation = value.generation;
        self.protocol_type = Some(value.protocol_type).filter(|t| !t.is_empty());
        self.protocol = value.protocol;
        self.leader = value.leader;
        for m in value.members {
            let seq = self.next_join_seq;
            self.next_join_seq += 1;
            if let Some(instance) = &m.group_instance_id {
                self.static_members
                    .insert(instance.clone(), m.member_id.clone());
            }
            let protocols = match &self.protocol {
                Some(p) => vec![(p.clone(), m.subscription.clone())],
                None => Vec::new(),
            };
            self.members.insert(
                m.member_id.clone(),
                Member {
                    member_id: m.member_id,
                    group_instance_id: m.group_instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout_ms: m.session_timeout_ms,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    protocols,
                    assignment: m.assignment,
                    session_deadline_ms: now_ms + m.session_timeout_ms.max(0) as u64,
                    joined_seq: seq,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        self.empty_since_wall_ms = value.current_state_timestamp_ms;
        self.state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
    }

    /// While a new group waits out its initial rebalance delay: when that wait ends
    /// (coordinator clock), so the driver can complete the join then rather than at its
    /// next periodic tick.
    pub fn initial_delay_until_ms(&self) -> Option<u64> {
        (self.state == GroupState::PreparingRebalance && self.initial_delay_until_ms > 0)
            .then_some(self.initial_delay_until_ms)
    }

    /// Whether the group has neither members nor committed offsets (it can be forgotten).
    pub fn is_forgettable(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending_members.is_empty()
            && self.offsets.is_empty()
    }

    /// The group's record value, if its durable state changed since the last call.
    pub fn take_dirty(&mut self, now_wall_ms: i64) -> Option<GroupValue> {
        if std::mem::take(&mut self.emptied) {
            self.empty_since_wall_ms = now_wall_ms;
        }
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        let protocol = self.protocol.clone();
        let members = self
            .members
            .values()
            .map(|m| MemberValue {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                subscription: protocol
                    .as_deref()
                    .and_then(|p| m.metadata_for(p).cloned())
                    .unwrap_or_default(),
                assignment: m.assignment.clone(),
            })
            .collect();
        Some(GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol,
            leader: self.leader.clone(),
            current_state_timestamp_ms: now_wall_ms,
            members,
        })
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Option<Vec<String>> {
        let mut members = self.members.values();
        let first = members.next()?;
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            candidates.retain(|c| m.supports(c));
        }
        Some(candidates)
    }

    /// Whether a member with `protocol_type` and `protocols` may join.
    fn accepts(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocols.is_empty() || protocol_type.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        match self.candidate_protocols() {
            Some(candidates) => protocols.iter().any(|(n, _)| candidates.contains(n)),
            None => true,
        }
    }

    /// Handles a JoinGroup.
    pub fn join(&mut self, req: JoinRequest, settings: GroupSettings, now_ms: u64) -> JoinOutcome {
        let error = |e: ResponseError, member_id: &str| {
            JoinOutcome::Now(JoinAnswer::error(code(e), member_id))
        };
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&req.session_timeout_ms) {
            return error(ResponseError::InvalidSessionTimeout, &req.member_id);
        }
        let known = self.members.contains_key(&req.member_id);
        // A member already in the group may keep its protocols while others change.
        let compatible = if known && self.members.len() == 1 {
            !req.protocols.is_empty()
        } else {
            self.accepts(&req.protocol_type, &req.protocols)
        };
        if !compatible {
            return error(ResponseError::InconsistentGroupProtocol, &req.member_id);
        }
        if req.member_id.is_empty() {
            return self.join_new_member(req, settings, now_ms);
        }
        if let Some(deadline) = self.pending_members.remove(&req.member_id) {
            let _ = deadline;
            return self.add_member_and_rebalance(req.member_id.clone(), req, settings, now_ms);
        }
        let Some(member) = self.members.get(&req.member_id) else {
            return error(ResponseError::UnknownMemberId, &req.member_id);
        };
        if let Some(instance) = &req.group_instance_id {
            if self.static_members.get(instance) != Some(&req.member_id) {
                return error(ResponseError::FencedInstanceId, &req.member_id);
            }
        }
        let unchanged = member.same_protocols(&req.protocols);
        let is_leader = self.leader.as_deref() == Some(req.member_id.as_str());
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_wait(req, now_ms),
            GroupState::CompletingRebalance | GroupState::Stable
                if unchanged && !(is_leader && self.state == GroupState::Stable) =>
            {
                // Nothing changed: the current generation stands (a follower that lost
                // the answer, or a member rejoining with the same subscription).
                let member_id = req.member_id.clone();
                if let Some(m) = self.members.get_mut(&member_id) {
                    m.session_deadline_ms = now_ms + m.session_timeout_ms as u64;
                }
                JoinOutcome::Now(self.join_answer_for(&member_id))
            }
            _ => {
                let outcome = self.update_member_and_wait(req, now_ms);
                self.prepare_rebalance(now_ms, settings);
                outcome
            }
        }
    }

    fn join_new_member(
        &mut self,
        req: JoinRequest,
        settings: GroupSettings,
        now_ms: u64,
    ) -> JoinOutcome {
        if self.members.len() + self.pending_members.len() >= GROUP_MEMBERS_MAX {
            return JoinOutcome::Now(JoinAnswer::error(
                code(ResponseError::GroupMaxSizeReached),
                "",
            ));
        }
        self.next_member_seq += 1;
        let member_id = format!(
            "{}-{}-{}",
            if req.client_id.is_empty() {
                "member"
            } else {
                &req.client_id
            },
            self.generation,
            uuid::Builder::from_random_bytes(rand::random()).into_uuid()
        );
        if let Some(instance) = req.group_instance_id.clone() {
            // A static member that restarted: it replaces its old incarnation, which is
            // fenced from now on.
            if let Some(old) = self.static_members.remove(&instance) {
                if let Some(mut old_member) = self.members.remove(&old) {
                    old_member.answer_join(JoinAnswer::error(
                        code(ResponseError::FencedInstanceId),
                        &old,
                    ));
                    old_member
                        .answer_sync(SyncAnswer::error(code(ResponseError::FencedInstanceId)));
                    if self.leader.as_deref() == Some(old.as_str()) {
                        self.leader = None;
                    }
                }
            }
            self.static_members.insert(instance, member_id.clone());
            return self.add_member_and_rebalance(member_id, req, settings, now_ms);
        }
        if req.require_known_member_id {
            // KIP-394: the member must come back with this id; until then it holds a
            // place for one session timeout.
            self.pending_members
                .insert(member_id.clone(), now_ms + req.session_timeout_ms as u64);
            return JoinOutcome::Now(JoinAnswer::error(
                code(ResponseError::MemberIdRequired),
                &member_id,
            ));
        }
        self.add_member_and_rebalance(member_id, req, settings, now_ms)
    }

    fn add_member_and_rebalance(
        &mut self,
        member_id: String,
        req: JoinRequest,
        settings: GroupSettings,
        now_ms: u64,
    ) -> JoinOutcome {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        let seq = self.next_join_seq;
        self.next_join_seq += 1;
        let (tx, rx) = oneshot::channel();
        self.members.insert(
            member_id.clone(),
            Member {
                member_id,
                group_instance_id: req.group_instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                protocols: req.protocols,
                assignment: Bytes::new(),
                session_deadline_ms: now_ms + req.session_timeout_ms as u64,
                joined_seq: seq,
                join_waiter: Some(tx),
                sync_waiter: None,
            },
        );
        if self.state == GroupState::PreparingRebalance {
            // The deadline covers the newcomer's rebalance timeout too.
            self.rebalance_deadline_ms = self
                .rebalance_deadline_ms
                .max(now_ms + req.rebalance_timeout_ms.max(0) as u64);
        } else {
            self.prepare_rebalance(now_ms, settings);
        }
        self.maybe_complete_join(now_ms);
        JoinOutcome::Wait(rx)
    }

    fn update_member_and_wait(&mut self, req: JoinRequest, now_ms: u64) -> JoinOutcome {
        let (tx, rx) = oneshot::channel();
        let Some(m) = self.members.get_mut(&req.member_id) else {
            return JoinOutcome::Now(JoinAnswer::error(
                code(ResponseError::UnknownMemberId),
                &req.member_id,
            ));
        };
        // A second JoinGroup replaces the first, which is told to rejoin.
        m.answer_join(JoinAnswer::error(
            code(ResponseError::RebalanceInProgress),
            &req.member_id,
        ));
        m.protocols = req.protocols;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.client_id = req.client_id;
        m.client_host = req.client_host;
        m.session_deadline_ms = now_ms + req.session_timeout_ms as u64;
        m.join_waiter = Some(tx);
        self.rebalance_deadline_ms = self
            .rebalance_deadline_ms
            .max(now_ms + req.rebalance_timeout_ms.max(0) as u64);
        self.maybe_complete_join(now_ms);
        JoinOutcome::Wait(rx)
    }

    /// Starts a rebalance: every member must rejoin by the deadline.
    fn prepare_rebalance(&mut self, now_ms: u64, settings: GroupSettings) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        for m in self.members.values_mut() {
            m.answer_sync(SyncAnswer::error(code(ResponseError::RebalanceInProgress)));
        }
        let rebalance_timeout_ms = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0);
        self.initial_delay_until_ms = if self.state == GroupState::Empty {
            now_ms
                + settings
                    .initial_rebalance_delay_ms
                    .min(rebalance_timeout_ms)
        } else {
            0
        };
        self.rebalance_deadline_ms = now_ms + rebalance_timeout_ms;
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            initial_delay_ms = self.initial_delay_until_ms.saturating_sub(now_ms),
            "preparing rebalance"
        );
        self.state = GroupState::PreparingRebalance;
    }

    /// Completes the join phase once every member has rejoined (after a new group's
    /// initial delay) or the deadline has passed.
    fn maybe_complete_join(&mut self, now_ms: u64) {
        if self.state != GroupState::PreparingRebalance || now_ms < self.initial_delay_until_ms {
            return;
        }
        let all_joined = self.pending_members.is_empty()
            && self.members.values().all(|m| m.join_waiter.is_some());
        if !all_joined && now_ms < self.rebalance_deadline_ms {
            return;
        }
        // Members that did not rejoin in time leave the group.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.pending_members.clear();
        self.generation = self.generation.wrapping_add(1).max(1);
        self.dirty = true;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.emptied = true;
            self.protocol = None;
            self.leader = None;
            return;
        }
        let Some(protocol) = self.select_protocol() else {
            for m in self.members.values_mut() {
                let id = m.member_id.clone();
                m.answer_join(JoinAnswer::error(
                    code(ResponseError::InconsistentGroupProtocol),
                    &id,
                ));
            }
            let ids: Vec<String> = self.members.keys().cloned().collect();
            for id in ids {
                self.remove_member(&id);
            }
            self.state = GroupState::Empty;
            self.emptied = true;
            return;
        };
        self.protocol = Some(protocol);
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.joined_seq)
                .map(|m| m.member_id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            "rebalance joined; awaiting the leader's assignment"
        );
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let answer = self.join_answer_for(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.assignment = Bytes::new();
                m.session_deadline_ms = now_ms + m.session_timeout_ms as u64;
                m.answer_join(answer);
            }
        }
    }

    /// The protocol most members prefer among those all support (Kafka's vote).
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols()?;
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, c)).collect();
        for m in self.members.values() {
            if let Some((first, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(_, c)| *c == first) {
                    v.0 += 1;
                }
            }
        }
        // Most votes; ties go to the candidate listed first by the members.
        let best = votes.iter().map(|(n, _)| *n).max()?;
        votes
            .into_iter()
            .find(|(n, _)| *n == best)
            .map(|(_, c)| c.clone())
    }

    /// The JoinGroup answer for `member_id` in the current generation.
    fn join_answer_for(&self, member_id: &str) -> JoinAnswer {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata_for(&protocol).cloned().unwrap_or_default(),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinAnswer {
            error_code: 0,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: Some(protocol),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn remove_member(&mut self, member_id: &str) {
        if let Some(mut m) = self.members.remove(member_id) {
            if let Some(instance) = &m.group_instance_id {
                if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(instance);
                }
            }
            m.answer_join(JoinAnswer::error(
                code(ResponseError::UnknownMemberId),
                member_id,
            ));
            m.answer_sync(SyncAnswer::error(code(ResponseError::UnknownMemberId)));
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
    }

    /// Checks that `member_id` (with `instance`) is a member of `generation`.
    fn check_member(
        &self,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(instance) = instance {
            match self.static_members.get(instance) {
                Some(id) if id == member_id => {}
                Some(_) => return Err(ResponseError::FencedInstanceId),
                None => return Err(ResponseError::UnknownMemberId),
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// Handles a SyncGroup.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now_ms: u64,
    ) -> SyncOutcome {
        let error = |e: ResponseError| SyncOutcome::Now(SyncAnswer::error(code(e)));
        if let Err(e) = self.check_member(generation, member_id, instance) {
            return error(e);
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol.as_deref())
        {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        let answer = |group: &Group, id: &str| SyncAnswer {
            error_code: 0,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol.clone(),
            assignment: group
                .members
                .get(id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        };
        match self.state {
            GroupState::Empty => error(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => error(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.session_deadline_ms = now_ms + m.session_timeout_ms as u64;
                }
                SyncOutcome::Now(answer(self, member_id))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.session_deadline_ms = now_ms + m.session_timeout_ms as u64;
                    m.answer_sync(SyncAnswer::error(code(ResponseError::RebalanceInProgress)));
                    m.sync_waiter = Some(tx);
                }
                if self.leader.as_deref() == Some(member_id) {
                    for (id, assignment) in assignments {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.assignment = assignment;
                        }
                    }
                    self.state = GroupState::Stable;
                    self.dirty = true;
                    tracing::info!(
                        group = %self.id,
                        generation = self.generation,
                        members = self.members.len(),
                        "group stable"
                    );
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let a = answer(self, &id);
                        if let Some(m) = self.members.get_mut(&id) {
                            m.answer_sync(a);
                        }
                    }
                }
                SyncOutcome::Wait(rx)
            }
        }
    }

    /// Handles a Heartbeat: Ok (NONE), or the error that tells the member what to do.
    pub fn heartbeat(
        &mut self,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        now_ms: u64,
    ) -> Result<(), ResponseError> {
        if let Some(instance) = instance {
            if self
                .static_members
                .get(instance)
                .is_some_and(|id| id != member_id)
            {
                return Err(ResponseError::FencedInstanceId);
            }
        }
        let Some(m) = self.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        // A live member keeps its session even while it is told to rejoin.
        m.session_deadline_ms = now_ms + m.session_timeout_ms as u64;
        match self.state {
            GroupState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            _ if generation != self.generation => Err(ResponseError::IllegalGeneration),
            GroupState::Empty => Err(ResponseError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
        }
    }

    /// Handles one member of a LeaveGroup.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        settings: GroupSettings,
        now_ms: u64,
    ) -> Result<(), ResponseError> {
        // A static member may leave by instance id alone (v3+ with an empty member id).
        let member_id = match instance {
            Some(instance) => match self.static_members.get(instance) {
                Some(id) if member_id.is_empty() || id == member_id => id.clone(),
                Some(_) => return Err(ResponseError::FencedInstanceId),
                None => return Err(ResponseError::UnknownMemberId),
            },
            None => member_id.to_string(),
        };
        if self.pending_members.remove(&member_id).is_some() {
            self.maybe_complete_join(now_ms);
            return Ok(());
        }
        if !self.members.contains_key(&member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        self.remove_member(&member_id);
        self.member_left(settings, now_ms);
        Ok(())
    }

    /// After a member left or expired: rebalance the rest (or finish the one under way).
    fn member_left(&mut self, settings: GroupSettings, now_ms: u64) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now_ms, settings);
                self.maybe_complete_join(now_ms);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now_ms),
            GroupState::Empty => {}
        }
    }

    /// Checks an OffsetCommit's member fields (Kafka's rules): a commit with generation
    /// -1 and no member id is a "simple" commit, allowed while the group has no members.
    pub fn check_commit(
        &mut self,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        now_ms: u64,
    ) -> Result<(), ResponseError> {
        if generation < 0 && member_id.is_empty() && instance.is_none() {
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        self.check_member(generation, member_id, instance)?;
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.session_deadline_ms = now_ms + m.session_timeout_ms as u64;
        }
        Ok(())
    }

    /// Applies an acknowledged offset commit (a later write in the log wins).
    pub fn apply_offset(&mut self, topic: &str, partition: i32, committed: Committed) {
        let key = (topic.to_string(), partition);
        match self.offsets.get(&key) {
            Some(existing) if existing.log_offset > committed.log_offset => {}
            _ => {
                self.offsets.insert(key, committed);
            }
        }
    }

    /// The topics the group's live members subscribe to, from their ConsumerProtocol
    /// metadata for the chosen protocol (a member that has not got one yet: its first
    /// protocol). `None` when that cannot be known: a group that is not of protocol type
    /// "consumer", or a member whose metadata does not decode. Kafka's
    /// `GroupMetadata.subscribedTopics`, where unknown means "subscribed to everything".
    pub fn subscribed_topics(&self) -> Option<std::collections::BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return None;
        }
        let mut topics = std::collections::BTreeSet::new();
        for member in self.members.values() {
            let metadata = match &self.protocol {
                Some(protocol) => member.metadata_for(protocol),
                None => member.protocols.first().map(|(_, metadata)| metadata),
            }?;
            let (_, subscription) =
                rill_protocol::decode::consumer_protocol::decode_subscription(metadata.clone())
                    .ok()?;
            topics.extend(subscription.topics.iter().map(|t| t.to_string()));
        }
        Some(topics)
    }

    /// Which of `partitions` OffsetDelete may delete (Kafka's rules): all of them in an
    /// Empty group; in a consumer group with members, those of topics no member subscribes
    /// to, the others answered GROUP_SUBSCRIBED_TO_TOPIC; a group with members of another
    /// protocol type refuses as a whole with NON_EMPTY_GROUP.
    pub fn offset_delete_eligibility(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        if self.state == GroupState::Empty && self.members.is_empty() {
            return Ok(partitions.iter().map(|_| Ok(())).collect());
        }
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return Err(ResponseError::NonEmptyGroup);
        }
        let subscribed = self.subscribed_topics();
        Ok(partitions
            .iter()
            .map(|(topic, _)| match &subscribed {
                Some(topics) if !topics.contains(topic) => Ok(()),
                _ => Err(ResponseError::GroupSubscribedToTopic),
            })
            .collect())
    }

    /// Removes the offset of (`topic`, `partition`) if it was written before
    /// `tombstone_log_offset`, where its tombstone went (a commit acknowledged after the
    /// tombstone was appended, but written after it, survives).
    pub fn remove_offset(&mut self, topic: &str, partition: i32, tombstone_log_offset: i64) {
        let key = (topic.to_string(), partition);
        if self
            .offsets
            .get(&key)
            .is_some_and(|c| c.log_offset < tombstone_log_offset)
        {
            self.offsets.remove(&key);
        }
    }

    /// Expires sessions and completes rebalances whose time has come.
    pub fn tick(&mut self, settings: GroupSettings, now_ms: u64) {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.is_waiting() && now_ms >= m.session_deadline_ms)
            .map(|m| m.member_id.clone())
            .collect();
        let before = self.pending_members.len();
        self.pending_members
            .retain(|_, deadline| now_ms < *deadline);
        let pending_expired = before != self.pending_members.len();
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(id);
        }
        if !expired.is_empty() {
            self.member_left(settings, now_ms);
        } else if pending_expired || self.state == GroupState::PreparingRebalance {
            self.maybe_complete_join(now_ms);
        }
    }

    /// Offset retention (Kafka's KIP-211): while the group has no members, an offset
    /// expires `retention_ms` after the later of its commit and the moment the group became
    /// empty. Removes the expired offsets and returns them (the caller writes tombstones).
    pub fn expire_offsets(&mut self, now_wall_ms: i64, retention_ms: i64) -> Vec<(String, i32)> {
        if self.state != GroupState::Empty || !self.members.is_empty() {
            return Vec::new();
        }
        let empty_since = self.empty_since_wall_ms;
        let expired: Vec<(String, i32)> = self
            .offsets
            .iter()
            .filter(|(_, c)| {
                c.value
                    .commit_timestamp_ms
                    .max(empty_since)
                    .saturating_add(retention_ms)
                    <= now_wall_ms
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            self.offsets.remove(key);
        }
        expired
    }

    /// Ends the group's life on this coordinator (leadership moved): every parked request
    /// is answered NOT_COORDINATOR so its client looks for the new one.
    pub fn unload(&mut self) {
        for m in self.members.values_mut() {
            let id = m.member_id.clone();
            m.answer_join(JoinAnswer::error(code(ResponseError::NotCoordinator), &id));
            m.answer_sync(SyncAnswer::error(code(ResponseError::NotCoordinator)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: GroupSettings = GroupSettings {
        initial_rebalance_delay_ms: 3000,
    };

    fn request(member_id: &str) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: String::new(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: true,
        }
    }

    /// A first join: MEMBER_ID_REQUIRED, then the join with the id, parked.
    fn join_new(group: &mut Group, now_ms: u64) -> (String, oneshot::Receiver<JoinAnswer>) {
        let JoinOutcome::Now(answer) = group.join(request(""), SETTINGS, now_ms) else {
            panic!("a first join is answered at once");
        };
        assert_eq!(answer.error_code, ResponseError::MemberIdRequired.code());
        // The coordinator forgets groups with nothing in them on its timer: one whose only
        // member was just given its id must stay.
        group.tick(SETTINGS, now_ms);
        assert!(!group.is_forgettable());
        let JoinOutcome::Wait(rx) = group.join(request(&answer.member_id), SETTINGS, now_ms) else {
            panic!("a join with the id waits for the rebalance");
        };
        (answer.member_id, rx)
    }

    #[test]
    fn a_new_group_waits_the_initial_delay_then_answers_everyone() {
        let mut group = Group::new("g".into());
        let (a, mut rx_a) = join_new(&mut group, 0);
        let (b, mut rx_b) = join_new(&mut group, 1000);
        group.tick(SETTINGS, 2999);
        assert!(
            rx_a.try_recv().is_err(),
            "answered before the initial delay"
        );
        group.tick(SETTINGS, 3000);
        let (answer_a, answer_b) = (rx_a.try_recv().unwrap(), rx_b.try_recv().unwrap());
        assert_eq!(answer_a.generation_id, 1);
        assert_eq!(answer_a.leader, a);
        assert_eq!(answer_a.members.len(), 2, "the leader sees every member");
        assert!(answer_b.members.is_empty());
        assert_eq!(answer_b.member_id, b);
        assert_eq!(group.state, GroupState::CompletingRebalance);
    }

    #[test]
    fn a_silent_member_expires_and_the_rest_rebalance_without_it() {
        let mut group = Group::new("g".into());
        let (a, _rx_a) = join_new(&mut group, 0);
        let (b, _rx_b) = join_new(&mut group, 0);
        group.tick(SETTINGS, 3000);
        let SyncOutcome::Wait(_) = group.sync(1, &a, None, None, None, Vec::new(), 3000) else {
            panic!("the leader's sync completes through the channel");
        };
        assert_eq!(group.state, GroupState::Stable);
        // b heartbeats, a goes silent.
        for now in (3000..13_000).step_by(1000) {
            assert_eq!(group.heartbeat(1, &b, None, now), Ok(()));
            group.tick(SETTINGS, now);
        }
        group.tick(SETTINGS, 13_001);
        assert!(!group.members.contains_key(&a), "a's session expired");
        assert_eq!(
            group.heartbeat(1, &b, None, 13_100),
            Err(ResponseError::RebalanceInProgress)
        );
        let JoinOutcome::Wait(mut rx) = group.join(request(&b), SETTINGS, 13_200) else {
            panic!("rejoin waits");
        };
        let answer = rx
            .try_recv()
            .expect("b alone completes the rebalance at once");
        assert_eq!(answer.generation_id, 2);
        assert_eq!(answer.leader, b);
        // The old generation and the expired member are fenced.
        assert_eq!(
            group.heartbeat(1, &b, None, 13_300),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            group.heartbeat(2, &a, None, 13_300),
            Err(ResponseError::UnknownMemberId)
        );
        let mut c = Group::new("other".into());
        assert_eq!(
            c.check_commit(2, &a, None, 0),
            Err(ResponseError::UnknownMemberId)
        );
    }

    #[test]
    fn a_member_that_never_rejoins_is_dropped_at_the_rebalance_deadline() {
        let mut group = Group::new("g".into());
        let (a, _rx_a) = join_new(&mut group, 0);
        group.tick(SETTINGS, 3000);
        let _ = group.sync(1, &a, None, None, None, Vec::new(), 3000);
        let (_b, mut rx_b) = join_new(&mut group, 4000);
        // a keeps heartbeating (REBALANCE_IN_PROGRESS) but never rejoins.
        for now in (4000..64_000).step_by(1000) {
            let _ = group.heartbeat(1, &a, None, now);
            group.tick(SETTINGS, now);
        }
        assert!(rx_b.try_recv().is_err(), "answered before the deadline");
        group.tick(SETTINGS, 64_000);
        let answer = rx_b.try_recv().expect("answered at the rebalance deadline");
        assert_eq!(answer.error_code, 0);
        assert!(!group.members.contains_key(&a));
    }

    #[test]
    fn a_restarted_static_member_replaces_and_fences_its_old_incarnation() {
        let mut group = Group::new("g".into());
        let mut first = request("");
        first.group_instance_id = Some("instance-1".into());
        // Static members get their id at once (no MEMBER_ID_REQUIRED round trip).
        let JoinOutcome::Wait(mut rx) = group.join(first.clone(), SETTINGS, 0) else {
            panic!("a static member's first join waits for the rebalance");
        };
        group.tick(SETTINGS, 3000);
        let old = rx.try_recv().expect("joined").member_id;
        let _ = group.sync(1, &old, Some("instance-1"), None, None, Vec::new(), 3000);
        assert_eq!(group.heartbeat(1, &old, Some("instance-1"), 3100), Ok(()));
        // The same instance comes back without its member id (a restarted process).
        let JoinOutcome::Wait(mut rx) = group.join(first, SETTINGS, 4000) else {
            panic!("the new incarnation waits for the rebalance");
        };
        group.tick(SETTINGS, 4000);
        let new = rx.try_recv().expect("rejoined").member_id;
        assert_ne!(new, old);
        assert_eq!(group.members.len(), 1);
        assert_eq!(
            group.heartbeat(2, &old, Some("instance-1"), 4100),
            Err(ResponseError::FencedInstanceId)
        );
        assert_eq!(
            group.check_commit(2, &old, Some("instance-1"), 4100),
            Err(ResponseError::FencedInstanceId)
        );
    }

    #[test]
    fn offsets_of_an_empty_group_expire_after_retention_counted_from_when_it_emptied() {
        let mut group = Group::new("g".into());
        let committed = |offset, at| Committed {
            value: OffsetValue {
                offset,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: at,
            },
            log_offset: offset,
        };
        let (a, _rx) = join_new(&mut group, 0);
        group.tick(SETTINGS, 3000);
        group.apply_offset("t", 0, committed(5, 1_000));
        group.apply_offset("t", 1, committed(6, 50_000));
        // With a member, nothing expires however old.
        assert!(group.expire_offsets(1_000_000, 10_000).is_empty());
        // The member leaves at wall time 100,000: retention counts from there.
        group.leave(&a, None, SETTINGS, 4000).unwrap();
        assert_eq!(group.state, GroupState::Empty);
        assert!(group.take_dirty(100_000).is_some());
        assert!(group.expire_offsets(109_999, 10_000).is_empty());
        let mut expired = group.expire_offsets(110_000, 10_000);
        expired.sort();
        assert_eq!(expired, vec![("t".to_string(), 0), ("t".to_string(), 1)]);
        assert!(group.offsets.is_empty());
        // A commit to the empty group later counts from its own time.
        group.apply_offset("t", 0, committed(7, 200_000));
        assert!(group.expire_offsets(209_999, 10_000).is_empty());
        assert_eq!(group.expire_offsets(210_000, 10_000).len(), 1);
    }

    #[test]
    fn protocols_are_chosen_by_vote_among_those_all_members_support() {
        let mut group = Group::new("g".into());
        let mut first = request("");
        first.require_known_member_id = false;
        first.protocols = vec![
            ("roundrobin".into(), Bytes::new()),
            ("range".into(), Bytes::new()),
        ];
        let mut second = first.clone();
        second.protocols = vec![
            ("range".into(), Bytes::new()),
            ("sticky".into(), Bytes::new()),
        ];
        let _ = group.join(first, SETTINGS, 0);
        let _ = group.join(second, SETTINGS, 0);
        group.tick(SETTINGS, 3000);
        assert_eq!(group.protocol.as_deref(), Some("range"));
        // A member with nothing in common is refused.
        let mut odd = request("");
        odd.protocols = vec![("sticky".into(), Bytes::new())];
        let JoinOutcome::Now(answer) = group.join(odd, SETTINGS, 3001) else {
            panic!("refused at once");
        };
        assert_eq!(
            answer.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
    }

    /// Kafka's ConsumerProtocol subscription (v1, with its version prefix) to `topics`.
    fn subscription(topics: &[&str]) -> Bytes {
        use bytes::BufMut;
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let mut buf = bytes::BytesMut::new();
        buf.put_i16(1);
        kafka_protocol::messages::ConsumerProtocolSubscription::default()
            .with_topics(
                topics
                    .iter()
                    .map(|t| StrBytes::from_string(t.to_string()))
                    .collect(),
            )
            .encode(&mut buf, 1)
            .expect("encodable");
        buf.freeze()
    }

    fn join_with(group: &mut Group, protocol_type: &str, metadata: Bytes, now_ms: u64) {
        let mut first = request("");
        first.protocol_type = protocol_type.into();
        first.protocols = vec![("range".into(), metadata)];
        let JoinOutcome::Now(answer) = group.join(first.clone(), SETTINGS, now_ms) else {
            panic!("a first join is answered at once");
        };
        first.member_id = answer.member_id;
        let _ = group.join(first, SETTINGS, now_ms);
    }

    #[test]
    fn offset_delete_spares_topics_live_members_subscribe_to() {
        let wanted = vec![("a".to_string(), 0), ("b".to_string(), 0)];
        let empty = Group::new("g".into());
        assert_eq!(
            empty.offset_delete_eligibility(&wanted),
            Ok(vec![Ok(()), Ok(())]),
            "an empty group may lose any offset"
        );

        let mut group = Group::new("g".into());
        join_with(&mut group, "consumer", subscription(&["a"]), 0);
        group.tick(SETTINGS, 3000);
        assert_eq!(
            group.offset_delete_eligibility(&wanted),
            Ok(vec![Err(ResponseError::GroupSubscribedToTopic), Ok(())])
        );

        // A subscription that does not decode: every topic counts as subscribed.
        let mut garbled = Group::new("g".into());
        join_with(&mut garbled, "consumer", Bytes::from_static(b"\x00"), 0);
        assert_eq!(
            garbled.offset_delete_eligibility(&wanted),
            Ok(vec![
                Err(ResponseError::GroupSubscribedToTopic),
                Err(ResponseError::GroupSubscribedToTopic)
            ])
        );

        // Members of another protocol type: nothing can be deleted.
        let mut connect = Group::new("g".into());
        join_with(&mut connect, "connect", Bytes::from_static(b"m"), 0);
        assert_eq!(
            connect.offset_delete_eligibility(&wanted),
            Err(ResponseError::NonEmptyGroup)
        );
    }
}
