//! The group task of a subscribed consumer: finds the coordinator, joins (JoinGroup,
//! SyncGroup; the leader runs the assignor), heartbeats every `heartbeat_interval_ms`,
//! rejoins when the coordinator says the group rebalances, re-finds a coordinator that
//! moved, auto-commits, re-checks the subscription against metadata, and on close commits
//! and leaves.
//!
//! Changes to the assignment go through the consumer's [`Shared`]: revoking a partition
//! stops the stream from returning its records (atomically with the position to commit),
//! adding one starts it at the committed offset.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::assignor::{AssignmentStrategy, MemberSubscription};
use super::commit::{lock, GroupCtx};
use super::{RebalanceListener, Subscription};
use crate::config::OffsetReset;
use crate::consumer::{Chunk, Offset, Shared};
use crate::error::{Error, ResponseError, Result};
use crate::record::TopicPartition;
use crate::wire;

/// The `protocol_type` of consumer groups.
const PROTOCOL_TYPE: &str = "consumer";
/// JoinGroup carries the group instance id from this version (static membership).
const JOIN_STATIC_VERSION: i16 = 5;
/// LeaveGroup names a batch of members from this version.
const LEAVE_BATCHED_VERSION: i16 = 3;
/// A JoinGroup may wait the whole rebalance timeout on the coordinator; its deadline is
/// that plus this (Kafka's `JOIN_GROUP_TIMEOUT_LAPSE`).
const JOIN_TIMEOUT_LAPSE_MS: u64 = 5_000;
/// Longest a close waits for a join that was in flight to finish.
const CLOSE_JOIN_WAIT_MS_MAX: u64 = 5_000;

enum Command {
    Close(oneshot::Sender<Result<()>>),
}

/// The consumer's handle on its group task.
pub(crate) struct MembershipHandle {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl MembershipHandle {
    /// Commits (with auto commit), revokes, leaves, and waits for the task to end.
    pub(crate) async fn close(self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).await.is_err() {
            return Ok(()); // the task already ended (a fatal error was reported)
        }
        let result = rx.await.unwrap_or(Ok(()));
        let _ = self.task.await;
        result
    }

    /// Stops the task without leaving (the consumer was dropped without `close`).
    pub(crate) fn abort(&self) {
        self.task.abort();
    }
}

/// Starts the group task of a consumer that subscribed.
pub(crate) fn spawn(
    ctx: Arc<GroupCtx>,
    consumer: Arc<Shared>,
    subscription: Subscription,
    listener: Option<Arc<dyn RebalanceListener>>,
    errors: mpsc::Sender<Result<Vec<Chunk>>>,
) -> MembershipHandle {
    let strategies = consumer.config.assignment_strategies.clone();
    // Kafka's rule: the cooperative protocol only if every configured assignor supports it.
    let cooperative = strategies.iter().all(|s| s.is_cooperative());
    let (commands_tx, commands) = mpsc::channel(1);
    let membership = Membership {
        ctx,
        consumer,
        subscription,
        listener,
        errors,
        strategies,
        cooperative,
        owned: BTreeSet::new(),
        subscribed: BTreeMap::new(),
    };
    let task = tokio::spawn(membership.run(commands));
    MembershipHandle {
        commands: commands_tx,
        task,
    }
}

/// What a failed group request asks the member to do next.
enum Next {
    /// Join again (the group rebalances, or this member's generation is gone).
    Rejoin,
    /// Try the same step again after a backoff (coordinator moved or loading, network).
    Retry,
    /// Give up: the application must see this (fenced static member, bad config).
    Fatal(Error),
}

/// How a member reacts to a failed group request (Kafka's consumer coordinator rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaction {
    /// The group is rebalancing: join again, keeping the member id and (cooperative)
    /// the owned partitions.
    Rejoin,
    /// The coordinator no longer knows the member (session expired, removed): its
    /// partitions are lost; join again as a new member.
    ForgetMember,
    /// The member's generation is gone: its partitions are lost; join again with the
    /// same member id.
    ForgetGeneration,
    /// Transient (coordinator moved, loading or unreachable): back off and retry.
    Retry,
    /// Needs the application (fenced static member, authorization, bad configuration).
    Fatal,
}

fn reaction(error: &Error) -> Reaction {
    let Error::Broker { code, .. } = error else {
        return if error.is_retriable() {
            Reaction::Retry
        } else {
            Reaction::Fatal
        };
    };
    match code {
        ResponseError::RebalanceInProgress => Reaction::Rejoin,
        ResponseError::UnknownMemberId => Reaction::ForgetMember,
        ResponseError::IllegalGeneration => Reaction::ForgetGeneration,
        c if c.is_retriable() => Reaction::Retry,
        _ => Reaction::Fatal,
    }
}

struct Membership {
    ctx: Arc<GroupCtx>,
    consumer: Arc<Shared>,
    subscription: Subscription,
    listener: Option<Arc<dyn RebalanceListener>>,
    errors: mpsc::Sender<Result<Vec<Chunk>>>,
    strategies: Vec<AssignmentStrategy>,
    cooperative: bool,
    /// The partitions this member holds now.
    owned: BTreeSet<TopicPartition>,
    /// Subscribed topics and their partition counts when this member last joined: a
    /// change (a new topic matches, partitions were added) calls for a rejoin.
    subscribed: BTreeMap<String, i32>,
}

impl Membership {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let config = self.consumer.config.clone();
        let heartbeat_every = Duration::from_millis(config.heartbeat_interval_ms);
        let auto_commit_every = Duration::from_millis(config.auto_commit_interval_ms);
        let metadata_every = Duration::from_millis(config.client.metadata_max_age_ms);
        let mut rejoin = true;
        let mut attempt: u32 = 0;
        let mut next_heartbeat = Instant::now();
        let mut next_auto_commit = Instant::now() + auto_commit_every;
        let mut next_metadata_check = Instant::now() + metadata_every;
        let poll_interval_max = Duration::from_millis(config.rebalance_timeout_ms.max(0) as u64);
        let mut left_for_poll_timeout = false;
        loop {
            if left_for_poll_timeout {
                // Out of the group until the application polls again.
                tokio::select! {
                    cmd = commands.recv() => {
                        self.close(cmd).await;
                        return;
                    }
                    _ = tokio::time::sleep(heartbeat_every) => {
                        if self.consumer.poll_timer.overdue(poll_interval_max).is_none() {
                            tracing::info!(group = %self.ctx.group_id, "the application polls again; rejoining the group");
                            left_for_poll_timeout = false;
                            rejoin = true;
                        }
                    }
                }
                continue;
            }
            if rejoin {
                let (joined, close) = {
                    let join = self.join_and_sync();
                    tokio::pin!(join);
                    tokio::select! {
                        r = &mut join => (r, None),
                        cmd = commands.recv() => {
                            // A join in flight may already have moved the group to a new
                            // generation: finish it (bounded) so the commit at close
                            // carries the generation the coordinator expects.
                            let wait = Duration::from_millis(CLOSE_JOIN_WAIT_MS_MAX)
                                .min(Duration::from_millis(config.rebalance_timeout_ms.max(0) as u64));
                            let r = tokio::time::timeout(wait, &mut join)
                                .await
                                .unwrap_or(Err(Next::Retry));
                            (r, Some(cmd))
                        }
                    }
                };
                if let Some(cmd) = close {
                    if let Err(Next::Fatal(e)) = joined {
                        tracing::debug!(group = %self.ctx.group_id, error = %e, "join at close failed");
                    }
                    self.close(cmd).await;
                    return;
                }
                match joined {
                    Ok(again) => {
                        rejoin = again;
                        attempt = 0;
                        next_heartbeat = Instant::now() + heartbeat_every;
                        next_metadata_check = Instant::now() + metadata_every;
                    }
                    Err(Next::Fatal(e)) => {
                        tracing::warn!(group = %self.ctx.group_id, error = %e, "group membership failed");
                        self.lose_all();
                        let _ = self.errors.send(Err(e)).await;
                        let cmd = commands.recv().await;
                        self.close(cmd).await;
                        return;
                    }
                    Err(Next::Rejoin) => attempt = 0,
                    Err(Next::Retry) => {
                        attempt += 1;
                        let backoff = self.ctx.cluster.config.backoff(attempt);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            cmd = commands.recv() => {
                                self.close(cmd).await;
                                return;
                            }
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                cmd = commands.recv() => {
                    self.close(cmd).await;
                    return;
                }
                _ = tokio::time::sleep_until(next_heartbeat) => {
                    next_heartbeat = Instant::now() + heartbeat_every;
                    if let Some(since) = self.consumer.poll_timer.overdue(poll_interval_max) {
                        self.leave_for_poll_timeout(since).await;
                        left_for_poll_timeout = true;
                        continue;
                    }
                    match self.heartbeat().await {
                        Ok(()) => {}
                        Err(Next::Rejoin) => rejoin = true,
                        Err(Next::Retry) => {
                            // Coordinator lost: look again soon, not a full interval later.
                            next_heartbeat = Instant::now()
                                + self.ctx.cluster.config.backoff(1).min(heartbeat_every);
                        }
                        Err(Next::Fatal(e)) => {
                            self.lose_all();
                            let _ = self.errors.send(Err(e)).await;
                            let cmd = commands.recv().await;
                            self.close(cmd).await;
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_auto_commit), if config.enable_auto_commit => {
                    next_auto_commit = Instant::now() + auto_commit_every;
                    let offsets = self.consumer.delivered_positions();
                    if let Err(e) = self.ctx.commit(&offsets).await {
                        tracing::debug!(group = %self.ctx.group_id, error = %e, "auto commit failed");
                    }
                }
                _ = tokio::time::sleep_until(next_metadata_check) => {
                    next_metadata_check = Instant::now() + metadata_every;
                    match self.resolve_subscription().await {
                        Ok(now) if now != self.subscribed => {
                            tracing::info!(group = %self.ctx.group_id, "subscribed topics or partition counts changed; rejoining");
                            rejoin = true;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "subscription metadata refresh failed"),
                    }
                }
            }
        }
    }

    /// One join round: JoinGroup (until a member id and generation are granted), the
    /// leader's assignment, SyncGroup, and the resulting assignment change. Returns whether
    /// to rejoin at once (a cooperative member that revoked partitions does, so they can
    /// be given to their new owners).
    async fn join_and_sync(&mut self) -> Result<bool, Next> {
        if !self.cooperative && !self.owned.is_empty() {
            // Eager: give everything up before joining.
            let all: Vec<TopicPartition> = self.owned.iter().cloned().collect();
            self.revoke(&all).await;
        }
        let subscribed = self
            .resolve_subscription()
            .await
            .map_err(|e| self.classify(e))?;
        let topics: BTreeSet<String> = subscribed.keys().cloned().collect();
        let metadata = wire::encode_subscription(&topics, &self.owned).map_err(Next::Fatal)?;
        let conn = self.ctx.coordinator().await.map_err(|e| self.classify(e))?;
        let config = self.consumer.config.clone();
        let protocols: Vec<JoinGroupRequestProtocol> = self
            .strategies
            .iter()
            .map(|s| {
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(s.protocol_name()))
                    .with_metadata(metadata.clone())
            })
            .collect();
        let version = conn.version_of::<JoinGroupRequest>().map_err(Next::Fatal)?;
        if self.ctx.group_instance_id.is_some() && version < JOIN_STATIC_VERSION {
            return Err(Next::Fatal(Error::Config(
                "group_instance_id: the coordinator does not support static membership".into(),
            )));
        }
        let response: JoinGroupResponse = loop {
            let session = self.ctx.session();
            let mut request = JoinGroupRequest::default()
                .with_group_id(self.ctx.group_id_name())
                .with_session_timeout_ms(config.session_timeout_ms)
                .with_member_id(StrBytes::from_string(session.member_id))
                .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
                .with_protocols(protocols.clone());
            if version >= 1 {
                request = request.with_rebalance_timeout_ms(config.rebalance_timeout_ms);
            }
            if version >= JOIN_STATIC_VERSION {
                request = request.with_group_instance_id(self.ctx.instance_id());
            }
            let join_timeout = Duration::from_millis(
                (config.rebalance_timeout_ms.max(0) as u64 + JOIN_TIMEOUT_LAPSE_MS)
                    .max(self.ctx.cluster.config.request_timeout_ms),
            );
            let response = conn
                .request_at_with_timeout(&request, version, join_timeout)
                .await
                .map_err(|e| self.classify(e))?;
            match ResponseError::try_from_code(response.error_code) {
                None => break response,
                // v4+: the first join only hands out a member id; join again with it.
                Some(ResponseError::MemberIdRequired) => {
                    lock(&self.ctx.session).member_id = response.member_id.to_string();
                }
                Some(_) => {
                    let e = Error::from_code(response.error_code, None)
                        .unwrap_or(Error::Protocol("JoinGroup error".into()));
                    return Err(self.classify(e));
                }
            }
        };
        let member_id = response.member_id.to_string();
        {
            let mut session = lock(&self.ctx.session);
            session.member_id = member_id.clone();
            session.generation = response.generation_id;
        }
        let protocol = response
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let Some(strategy) = AssignmentStrategy::from_protocol_name(&protocol) else {
            return Err(Next::Fatal(Error::Protocol(format!(
                "the group chose assignment protocol {protocol:?}, which this consumer did not offer"
            ))));
        };
        tracing::debug!(group = %self.ctx.group_id, member = %member_id, generation = response.generation_id, leader = %response.leader, %protocol, "joined");
        let assignments = if response.leader == response.member_id {
            self.assign_as_leader(strategy, &response).await?
        } else {
            Vec::new()
        };
        let mut sync = SyncGroupRequest::default()
            .with_group_id(self.ctx.group_id_name())
            .with_generation_id(response.generation_id)
            .with_member_id(response.member_id.clone())
            .with_assignments(assignments);
        let sync_version = conn.version_of::<SyncGroupRequest>().map_err(Next::Fatal)?;
        if sync_version >= 3 {
            sync = sync.with_group_instance_id(self.ctx.instance_id());
        }
        if sync_version >= 5 {
            sync = sync
                .with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
                .with_protocol_name(Some(StrBytes::from_string(protocol)));
        }
        let synced = conn
            .request_at(&sync, sync_version)
            .await
            .map_err(|e| self.classify(e))?;
        if let Some(e) = Error::from_code(synced.error_code, None) {
            return Err(self.classify(e));
        }
        let assigned = wire::decode_assignment(synced.assignment).map_err(Next::Fatal)?;
        self.subscribed = subscribed;
        self.apply_assignment(assigned.into_iter().collect()).await
    }

    /// The leader's part: decode every member's subscription, look up the partition
    /// counts of all their topics, run the assignor, encode the assignments.
    async fn assign_as_leader(
        &mut self,
        strategy: AssignmentStrategy,
        response: &JoinGroupResponse,
    ) -> Result<Vec<SyncGroupRequestAssignment>, Next> {
        let mut members = Vec::with_capacity(response.members.len());
        for m in &response.members {
            match wire::decode_subscription(
                m.member_id.as_str(),
                m.group_instance_id.as_deref(),
                m.metadata.clone(),
            ) {
                Ok(s) => members.push(s),
                Err(e) => {
                    // Still a member: it gets an empty assignment rather than failing
                    // the whole group.
                    tracing::warn!(member = %m.member_id, error = %e, "undecodable subscription");
                    members.push(MemberSubscription {
                        member_id: m.member_id.to_string(),
                        group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
                        topics: BTreeSet::new(),
                        owned: Vec::new(),
                        generation: -1,
                    });
                }
            }
        }
        let wanted: BTreeSet<&String> = members.iter().flat_map(|m| m.topics.iter()).collect();
        let mut counts: BTreeMap<String, i32> = BTreeMap::new();
        for topic in wanted {
            match self.ctx.cluster.topic(topic, Duration::ZERO).await {
                Ok(m) => {
                    if let Some(t) = m.topics.get(topic.as_str()) {
                        counts.insert(topic.clone(), t.partitions.len() as i32);
                    }
                }
                Err(Error::UnknownTopic(_)) => {} // nothing to assign
                Err(e) => return Err(self.classify(e)),
            }
        }
        let assignment = strategy.assign(&members, &counts);
        tracing::debug!(group = %self.ctx.group_id, ?assignment, "leader assigned");
        assignment
            .into_iter()
            .map(|(member, partitions)| {
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member))
                    .with_assignment(wire::encode_assignment(&partitions).map_err(Next::Fatal)?))
            })
            .collect()
    }

    /// Moves from the owned partitions to `assigned`: revokes what left (committing its
    /// positions), starts what arrived at its committed offsets, and tells the listener.
    async fn apply_assignment(&mut self, assigned: BTreeSet<TopicPartition>) -> Result<bool, Next> {
        let revoked: Vec<TopicPartition> = self.owned.difference(&assigned).cloned().collect();
        let added: Vec<TopicPartition> = assigned.difference(&self.owned).cloned().collect();
        if !revoked.is_empty() {
            self.revoke(&revoked).await;
        }
        let committed = match self.ctx.committed(&added).await {
            Ok(c) => c,
            Err(e) => return Err(self.classify(e)),
        };
        let reset = match self.consumer.config.auto_offset_reset {
            OffsetReset::Earliest => Some(Offset::Beginning),
            OffsetReset::Latest => Some(Offset::End),
            OffsetReset::None => None,
        };
        let mut starts = Vec::with_capacity(added.len());
        for tp in &added {
            match (committed.get(tp), reset) {
                (Some(o), _) => starts.push((tp.clone(), Offset::At(*o))),
                (None, Some(r)) => starts.push((tp.clone(), r)),
                (None, None) => {
                    let e = Error::NoCommittedOffset {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                    };
                    let _ = self.errors.send(Err(e)).await;
                }
            }
        }
        self.consumer.add_partitions(starts);
        self.owned = assigned;
        tracing::info!(group = %self.ctx.group_id, added = ?added, revoked = ?revoked, "assignment changed");
        if let Some(l) = &self.listener {
            // Kafka calls the eager listener on every rebalance; the cooperative one only
            // when something changed hands.
            if !self.cooperative || !added.is_empty() {
                l.on_assigned(&added);
            }
        }
        Ok(self.cooperative && !revoked.is_empty())
    }

    /// Stops delivering `partitions`, commits their positions (with auto commit), and
    /// tells the listener.
    async fn revoke(&mut self, partitions: &[TopicPartition]) {
        let positions = self.consumer.revoke_partitions(partitions);
        if self.consumer.config.enable_auto_commit {
            if let Err(e) = self.ctx.commit(&positions).await {
                tracing::warn!(group = %self.ctx.group_id, error = %e, "commit on revoke failed");
            }
        }
        for tp in partitions {
            self.owned.remove(tp);
        }
        if let Some(l) = &self.listener {
            l.on_revoked(partitions);
        }
    }

    /// Kafka's poll timeout: the application held its records longer than
    /// `max.poll.interval.ms`, so it is presumed stuck. Its partitions are lost (nothing
    /// is committed for them: the others may already read them), and a dynamic member
    /// leaves at once so the group rebalances now rather than after its session timeout;
    /// a static member only stops heartbeating (its session timeout decides, KIP-345).
    async fn leave_for_poll_timeout(&mut self, since: Duration) {
        tracing::warn!(
            group = %self.ctx.group_id,
            since_ms = since.as_millis() as u64,
            limit_ms = self.consumer.config.rebalance_timeout_ms,
            "the application has not polled within max.poll.interval.ms (rebalance_timeout_ms); leaving the group until it polls again"
        );
        self.lose_all();
        if self.ctx.group_instance_id.is_none() {
            if let Err(e) = self.leave().await {
                tracing::debug!(group = %self.ctx.group_id, error = %e, "LeaveGroup failed");
            }
        }
        let mut s = lock(&self.ctx.session);
        s.generation = -1;
    }

    /// The member was fenced: its partitions may already be someone else's, so nothing is
    /// committed.
    fn lose_all(&mut self) {
        if self.owned.is_empty() {
            return;
        }
        let lost: Vec<TopicPartition> = std::mem::take(&mut self.owned).into_iter().collect();
        self.consumer.revoke_partitions(&lost);
        if let Some(l) = &self.listener {
            l.on_lost(&lost);
        }
    }

    async fn heartbeat(&mut self) -> Result<(), Next> {
        let conn = self.ctx.coordinator().await.map_err(|e| self.classify(e))?;
        let session = self.ctx.session();
        let version = conn.version_of::<HeartbeatRequest>().map_err(Next::Fatal)?;
        let mut request = HeartbeatRequest::default()
            .with_group_id(self.ctx.group_id_name())
            .with_generation_id(session.generation)
            .with_member_id(StrBytes::from_string(session.member_id));
        if version >= 3 {
            request = request.with_group_instance_id(self.ctx.instance_id());
        }
        let response = conn
            .request_at(&request, version)
            .await
            .map_err(|e| self.classify(e))?;
        match Error::from_code(response.error_code, None) {
            None => Ok(()),
            Some(e) => Err(self.classify(e)),
        }
    }

    /// Sorts a group error into what to do, resetting the member's identity (and losing
    /// its partitions) when the coordinator no longer knows it.
    fn classify(&mut self, error: Error) -> Next {
        self.ctx.observe(&error);
        let reaction = reaction(&error);
        tracing::debug!(group = %self.ctx.group_id, error = %error, ?reaction, "group request failed");
        match reaction {
            Reaction::Rejoin => Next::Rejoin,
            Reaction::Retry => Next::Retry,
            Reaction::Fatal => Next::Fatal(error),
            Reaction::ForgetMember => {
                {
                    let mut s = lock(&self.ctx.session);
                    s.member_id.clear();
                    s.generation = -1;
                }
                self.lose_all();
                Next::Rejoin
            }
            Reaction::ForgetGeneration => {
                lock(&self.ctx.session).generation = -1;
                self.lose_all();
                Next::Rejoin
            }
        }
    }

    /// The subscribed topics that exist now, with their partition counts.
    async fn resolve_subscription(&self) -> Result<BTreeMap<String, i32>> {
        let mut out = BTreeMap::new();
        match &self.subscription {
            Subscription::Topics(topics) => {
                for topic in topics {
                    match self.ctx.cluster.topic(topic, Duration::ZERO).await {
                        Ok(m) => {
                            if let Some(t) = m.topics.get(topic.as_str()) {
                                out.insert(topic.clone(), t.partitions.len() as i32);
                            }
                        }
                        // Subscribed before it exists: picked up on a later check.
                        Err(Error::UnknownTopic(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Subscription::Pattern(regex) => {
                let all = self.ctx.cluster.all_topics().await?;
                for (name, t) in &all.topics {
                    if !t.is_internal && regex.is_match(name) {
                        out.insert(name.clone(), t.partitions.len() as i32);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Close: commit (auto commit), revoke everything, leave (unless static).
    async fn close(&mut self, command: Option<Command>) {
        let positions = self.consumer.delivered_positions();
        if self.consumer.config.enable_auto_commit && !self.owned.is_empty() {
            // As in Kafka, a failed auto commit at close is logged, not returned (the
            // group may be rebalancing without this member): `commit_sync` before
            // `close` reports it.
            if let Err(e) = self.ctx.commit(&positions).await {
                tracing::warn!(group = %self.ctx.group_id, error = %e, "auto commit at close failed");
            }
        }
        let all: Vec<TopicPartition> = std::mem::take(&mut self.owned).into_iter().collect();
        self.consumer.revoke_partitions(&all);
        if let Some(l) = &self.listener {
            if !all.is_empty() {
                l.on_revoked(&all);
            }
        }
        if self.ctx.group_instance_id.is_none() {
            if let Err(e) = self.leave().await {
                tracing::debug!(group = %self.ctx.group_id, error = %e, "LeaveGroup failed");
            }
        }
        if let Some(Command::Close(reply)) = command {
            let _ = reply.send(Ok(()));
        }
    }

    async fn leave(&self) -> Result<()> {
        let session = self.ctx.session();
        if session.member_id.is_empty() {
            return Ok(());
        }
        let conn = self.ctx.coordinator().await?;
        let version = conn.version_of::<LeaveGroupRequest>()?;
        let member_id = StrBytes::from_string(session.member_id);
        let request = if version >= LEAVE_BATCHED_VERSION {
            LeaveGroupRequest::default()
                .with_group_id(self.ctx.group_id_name())
                .with_members(vec![MemberIdentity::default()
                    .with_member_id(member_id)
                    .with_group_instance_id(self.ctx.instance_id())])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(self.ctx.group_id_name())
                .with_member_id(member_id)
        };
        let response = conn.request_at(&request, version).await?;
        if let Some(e) = Error::from_code(response.error_code, None) {
            return Err(e);
        }
        let mut s = lock(&self.ctx.session);
        s.member_id.clear();
        s.generation = -1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(code: ResponseError) -> Error {
        Error::Broker {
            code,
            message: None,
        }
    }

    #[test]
    fn group_errors_map_to_kafkas_reactions() {
        let table = [
            (ResponseError::RebalanceInProgress, Reaction::Rejoin),
            (ResponseError::UnknownMemberId, Reaction::ForgetMember),
            (ResponseError::IllegalGeneration, Reaction::ForgetGeneration),
            (ResponseError::NotCoordinator, Reaction::Retry),
            (ResponseError::CoordinatorNotAvailable, Reaction::Retry),
            (ResponseError::CoordinatorLoadInProgress, Reaction::Retry),
            (ResponseError::FencedInstanceId, Reaction::Fatal),
            (ResponseError::InconsistentGroupProtocol, Reaction::Fatal),
            (ResponseError::GroupAuthorizationFailed, Reaction::Fatal),
        ];
        for (code, want) in table {
            assert_eq!(reaction(&broker(code)), want, "{code:?}");
        }
        let lost = Error::Disconnected { addr: "x:1".into() };
        assert_eq!(reaction(&lost), Reaction::Retry);
        assert_eq!(reaction(&Error::Protocol("bad".into())), Reaction::Fatal);
    }
}
