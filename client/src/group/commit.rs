//! The coordinator and committed offsets: FindCoordinator, OffsetCommit, OffsetFetch.
//!
//! [`GroupCtx`] holds what the membership task and the application's commits share: the
//! coordinator connection and the member's identity (member id, generation), which every
//! commit carries so the coordinator can refuse commits from a member that was fenced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::Cluster;
use crate::conn::Connection;
use crate::error::{Error, ResponseError, Result};
use crate::record::TopicPartition;

/// Attempts of one commit or offset fetch on retriable errors (coordinator moved or
/// loading, connection lost) before the error is returned.
const COORDINATOR_ATTEMPTS_MAX: u32 = 8;
/// FindCoordinator batches keys (and answers in `coordinators`) from this version.
const FIND_COORDINATOR_BATCHED_VERSION: i16 = 4;
/// OffsetFetch asks for several groups (and answers in `groups`) from this version.
const OFFSET_FETCH_GROUPS_VERSION: i16 = 8;

/// The member's identity in its current generation.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Empty until the coordinator assigns one.
    pub(crate) member_id: String,
    /// -1 outside a generation.
    pub(crate) generation: i32,
}

/// What membership and commits share for one group.
pub(crate) struct GroupCtx {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) group_id: String,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) session: Mutex<Session>,
    coordinator: Mutex<Option<Arc<Connection>>>,
    /// FindCoordinator lookups so far: each goes to the next known broker, so one broker
    /// that cannot answer (it does not know the coordinator's partition yet, or it is cut
    /// off) does not hold the member back, as Kafka's clients ask their least loaded node.
    lookups: AtomicUsize,
}

impl GroupCtx {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        group_id: String,
        group_instance_id: Option<String>,
    ) -> GroupCtx {
        GroupCtx {
            cluster,
            group_id,
            group_instance_id,
            session: Mutex::new(Session {
                member_id: String::new(),
                generation: -1,
            }),
            coordinator: Mutex::new(None),
            lookups: AtomicUsize::new(0),
        }
    }

    pub(crate) fn session(&self) -> Session {
        lock(&self.session).clone()
    }

    pub(crate) fn group_id_name(&self) -> GroupId {
        GroupId(StrBytes::from_string(self.group_id.clone()))
    }

    pub(crate) fn instance_id(&self) -> Option<StrBytes> {
        self.group_instance_id
            .as_ref()
            .map(|s| StrBytes::from_string(s.clone()))
    }

    /// The coordinator connection, found first if unknown or broken.
    pub(crate) async fn coordinator(&self) -> Result<Arc<Connection>> {
        if let Some(c) = lock(&self.coordinator).as_ref() {
            if !c.is_broken() {
                return Ok(c.clone());
            }
        }
        let conn = self.find_coordinator().await?;
        *lock(&self.coordinator) = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the coordinator (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, a lost
    /// connection): the next request finds it again.
    pub(crate) fn coordinator_lost(&self) {
        *lock(&self.coordinator) = None;
    }

    /// Forgets the coordinator if `error` says it moved or went away.
    pub(crate) fn observe(&self, error: &Error) {
        if is_coordinator_error(error) {
            self.coordinator_lost();
        }
        self.cluster.observe_error(error);
    }

    async fn find_coordinator(&self) -> Result<Arc<Connection>> {
        let lookup = self.lookups.fetch_add(1, Ordering::Relaxed);
        let mut brokers: Vec<i32> = self.cluster.cached().brokers.keys().copied().collect();
        brokers.sort_unstable();
        let conn = match brokers.get(lookup % brokers.len().max(1)) {
            Some(&node) => match self.cluster.broker_connection(node).await {
                Ok(c) => c,
                Err(_) => self.cluster.any_connection().await?,
            },
            None => self.cluster.any_connection().await?,
        };
        let version = conn.version_of::<FindCoordinatorRequest>()?;
        let key = StrBytes::from_string(self.group_id.clone());
        let request = if version >= FIND_COORDINATOR_BATCHED_VERSION {
            FindCoordinatorRequest::default()
                .with_key_type(0)
                .with_coordinator_keys(vec![key])
        } else {
            FindCoordinatorRequest::default().with_key(key)
        };
        let response = conn.request_at(&request, version).await?;
        let (code, message, host, port) = if version >= FIND_COORDINATOR_BATCHED_VERSION {
            let c =
                response.coordinators.into_iter().next().ok_or_else(|| {
                    Error::Protocol("FindCoordinator answered no coordinator".into())
                })?;
            (c.error_code, c.error_message, c.host, c.port)
        } else {
            (
                response.error_code,
                response.error_message,
                response.host,
                response.port,
            )
        };
        if let Some(e) = Error::from_code(code, message.as_deref()) {
            return Err(e);
        }
        self.cluster.connection_to(&format!("{host}:{port}")).await
    }

    /// Commits `offsets` (the offset of the next record to read, per partition) with
    /// the member's current generation and id, retrying on coordinator moves.
    pub(crate) async fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_once(offsets).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retriable() && attempt < COORDINATOR_ATTEMPTS_MAX => {
                    self.observe(&e);
                    tokio::time::sleep(self.cluster.config.backoff(attempt)).await;
                }
                Err(e) => {
                    self.observe(&e);
                    return Err(e);
                }
            }
        }
    }

    async fn commit_once(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let conn = self.coordinator().await?;
        let session = self.session();
        let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
        let mut sorted = offsets.to_vec();
        sorted.sort();
        for (tp, offset) in &sorted {
            let p = OffsetCommitRequestPartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1);
            match topics.last_mut() {
                Some(t) if *t.name.0 == *tp.topic => t.partitions.push(p),
                _ => topics.push(
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(tp.topic.clone())))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(self.group_id_name())
            .with_generation_id_or_member_epoch(session.generation)
            .with_member_id(StrBytes::from_string(session.member_id))
            .with_group_instance_id(self.instance_id())
            .with_retention_time_ms(-1)
            .with_topics(topics);
        let version = conn.version_of::<OffsetCommitRequest>()?;
        let request = if version < 7 {
            request.with_group_instance_id(None)
        } else {
            request
        };
        let response = conn.request_at(&request, version).await?;
        for t in &response.topics {
            for p in &t.partitions {
                if let Some(e) = Error::from_code(p.error_code, None) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The committed offsets of `partitions` (partitions with none are absent).
    pub(crate) async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, i64>> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.committed_once(partitions).await {
                Ok(m) => return Ok(m),
                Err(e) if e.is_retriable() && attempt < COORDINATOR_ATTEMPTS_MAX => {
                    self.observe(&e);
                    tokio::time::sleep(self.cluster.config.backoff(attempt)).await;
                }
                Err(e) => {
                    self.observe(&e);
                    return Err(e);
                }
            }
        }
    }

    async fn committed_once(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, i64>> {
        let conn = self.coordinator().await?;
        let version = conn.version_of::<OffsetFetchRequest>()?;
        let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
        let mut sorted = partitions.to_vec();
        sorted.sort();
        for tp in sorted {
            match by_topic.last_mut() {
                Some((t, ps)) if *t == tp.topic => ps.push(tp.partition),
                _ => by_topic.push((tp.topic, vec![tp.partition])),
            }
        }
        let name = |t: &str| TopicName(StrBytes::from_string(t.to_owned()));
        let request = if version >= OFFSET_FETCH_GROUPS_VERSION {
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(self.group_id_name())
                .with_topics(Some(
                    by_topic
                        .iter()
                        .map(|(t, ps)| {
                            OffsetFetchRequestTopics::default()
                                .with_name(name(t))
                                .with_partition_indexes(ps.clone())
                        })
                        .collect(),
                ))])
        } else {
            OffsetFetchRequest::default()
                .with_group_id(self.group_id_name())
                .with_topics(Some(
                    by_topic
                        .iter()
                        .map(|(t, ps)| {
                            OffsetFetchRequestTopic::default()
                                .with_name(name(t))
                                .with_partition_indexes(ps.clone())
                        })
                        .collect(),
                ))
        };
        let response = conn.request_at(&request, version).await?;
        let mut out = HashMap::new();
        let mut record = |topic: &TopicName, partition: i32, offset: i64, code: i16| {
            if let Some(e) = Error::from_code(code, None) {
                return Err(e);
            }
            if offset >= 0 {
                out.insert(TopicPartition::new(topic.0.to_string(), partition), offset);
            }
            Ok(())
        };
        if version >= OFFSET_FETCH_GROUPS_VERSION {
            let group = response
                .groups
                .into_iter()
                .next()
                .ok_or_else(|| Error::Protocol("OffsetFetch answered no group".into()))?;
            if let Some(e) = Error::from_code(group.error_code, None) {
                return Err(e);
            }
            for t in &group.topics {
                for p in &t.partitions {
                    record(&t.name, p.partition_index, p.committed_offset, p.error_code)?;
                }
            }
        } else {
            if let Some(e) = Error::from_code(response.error_code, None) {
                return Err(e);
            }
            for t in &response.topics {
                for p in &t.partitions {
                    record(&t.name, p.partition_index, p.committed_offset, p.error_code)?;
                }
            }
        }
        Ok(out)
    }
}

/// Whether `error` means the coordinator moved, is gone, or its connection broke.
pub(crate) fn is_coordinator_error(error: &Error) -> bool {
    match error {
        Error::Io { .. } | Error::Disconnected { .. } | Error::Timeout { .. } => true,
        Error::NoBrokerReachable { .. } => true,
        Error::Broker { code, .. } => matches!(
            code,
            ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable
        ),
        _ => false,
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a plain read or assignment).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
