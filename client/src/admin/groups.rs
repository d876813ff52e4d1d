//! Consumer-group administration on [`Admin`]: list, describe and delete groups, read,
//! alter and delete their committed offsets, and compute their lag.
//!
//! Group requests go to the group's coordinator (FindCoordinator), retried while the
//! coordinator moves or loads (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE,
//! COORDINATOR_LOAD_IN_PROGRESS, a lost connection) until `request_timeout_ms` has passed.
//! ListGroups asks every broker, since each lists only the groups it coordinates.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest,
    ListOffsetsRequest, OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::admin::{topic_name, Admin};
use crate::conn::Connection;
use crate::error::{Error, ResponseError, Result};
use crate::record::TopicPartition;

/// The protocol type of consumer groups (their member metadata and assignments are
/// Kafka's ConsumerProtocol).
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// Kafka's ListOffsets sentinel timestamps.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

/// FindCoordinator's key type for groups.
const KEY_TYPE_GROUP: i8 = 0;

/// One group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group_id: String,
    /// Its protocol type ("consumer" for consumer groups, "" for groups that only have
    /// committed offsets).
    pub protocol_type: String,
    /// Its state ("Stable", "Empty", …); empty when the broker's ListGroups is older
    /// than v4 and does not report states.
    pub state: String,
}

/// What [`Admin::list_groups`] gathered: the groups of every broker that answered, and
/// the brokers that did not (their groups are missing from the list).
#[derive(Debug, Default)]
pub struct GroupList {
    /// The groups, sorted by id.
    pub groups: Vec<GroupListing>,
    /// Brokers that could not be asked, with why.
    pub unreachable: Vec<(i32, Error)>,
}

/// One member of a group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// Its static instance id (`group.instance.id`).
    pub group_instance_id: Option<String>,
    /// Its client id.
    pub client_id: String,
    /// The address it connects from.
    pub client_host: String,
    /// Its assigned partitions, decoded from the ConsumerProtocol assignment (empty for a
    /// group of another protocol type, or before the member's first assignment).
    pub assignment: Vec<TopicPartition>,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// The broker that coordinates it.
    pub coordinator_id: i32,
    /// Its state; "Dead" for a group that does not exist.
    pub state: String,
    /// Its protocol type ("consumer").
    pub protocol_type: String,
    /// The chosen protocol (the assignor: "range", "cooperative-sticky", …).
    pub protocol: String,
    /// Its members.
    pub members: Vec<MemberDescription>,
}

/// Where a partition's log starts or ends, for [`Admin::list_offsets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (the high watermark).
    Latest,
}

/// A group's position in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub partition: TopicPartition,
    /// The committed offset (the next record the group reads), if any.
    pub committed_offset: Option<i64>,
    /// The partition's log end offset, if it could be read.
    pub log_end_offset: Option<i64>,
    /// `log_end_offset - committed_offset`, when both are known.
    pub lag: Option<i64>,
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// Errors after which the same group request may succeed at the (possibly new)
/// coordinator.
fn coordinator_retriable(e: &Error) -> bool {
    match e {
        Error::Broker { code, .. } => matches!(
            code,
            ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
        ),
        other => other.is_retriable(),
    }
}

/// Groups `partitions` by topic, sorted.
fn by_topic(partitions: impl IntoIterator<Item = TopicPartition>) -> BTreeMap<String, Vec<i32>> {
    let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        topics.entry(tp.topic).or_default().push(tp.partition);
    }
    for partitions in topics.values_mut() {
        partitions.sort_unstable();
        partitions.dedup();
    }
    topics
}

impl Admin {
    /// The connection to `group`'s coordinator and its broker id (one FindCoordinator).
    async fn coordinator_once(&self, group: &str) -> Result<(Arc<Connection>, i32)> {
        // Asked of the controller: on a group's first request a broker creates
        // __consumer_offsets, and in a Rill cluster only the controller can (another
        // broker answers COORDINATOR_NOT_AVAILABLE until the topic exists).
        let conn = self.controller().await?;
        let version = conn.version_of::<FindCoordinatorRequest>()?;
        let mut request = FindCoordinatorRequest::default().with_key_type(KEY_TYPE_GROUP);
        // v4+ batch their keys; older versions carry one.
        if version >= 4 {
            request.coordinator_keys = vec![str_bytes(group)];
        } else {
            request.key = str_bytes(group);
        }
        let response = conn.request_at(&request, version).await?;
        let (node_id, code, message) = if version >= 4 {
            let c = response
                .coordinators
                .into_iter()
                .next()
                .ok_or_else(|| Error::Protocol("FindCoordinator answered no key".into()))?;
            (c.node_id.0, c.error_code, c.error_message)
        } else {
            (
                response.node_id.0,
                response.error_code,
                response.error_message,
            )
        };
        if let Some(e) = Error::from_code(code, message.as_deref()) {
            return Err(e);
        }
        // The coordinator may be a broker the cached metadata does not know yet.
        let metadata = self.cluster.metadata().await?;
        if !metadata.brokers.contains_key(&node_id) {
            self.cluster.invalidate();
        }
        let conn = self.cluster.broker_connection(node_id).await?;
        Ok((conn, node_id))
    }

    /// Runs `op` at `group`'s coordinator, finding it again and retrying while the
    /// coordinator moves or loads, until `request_timeout_ms` has passed.
    async fn at_coordinator<T, F, Fut>(&self, group: &str, op: F) -> Result<T>
    where
        F: Fn(Arc<Connection>, i32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let config = &self.cluster.config;
        let deadline = Instant::now() + Duration::from_millis(config.request_timeout_ms);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.coordinator_once(group).await {
                Ok((conn, node_id)) => op(conn, node_id).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if coordinator_retriable(&e) && Instant::now() < deadline => {
                    tracing::debug!(group, error = %e, attempt, "group request retried");
                    self.cluster.observe_error(&e);
                    tokio::time::sleep(config.backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Groups of every broker, sorted by id; only those in one of `states` (Kafka's
    /// names, case-insensitive) unless `states` is empty. Each broker lists only the
    /// groups it coordinates, so a broker that cannot be asked leaves a gap: it is
    /// named in [`GroupList::unreachable`] (as Kafka's admin client separates valid
    /// listings from errors), and only when no broker answered is the whole call an error.
    pub async fn list_groups(&self, states: &[&str]) -> Result<GroupList> {
        // The cached metadata: broker connections are looked up in it.
        let metadata = self.cluster.metadata().await?;
        let mut brokers: Vec<i32> = metadata.brokers.keys().copied().collect();
        brokers.sort_unstable();
        let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
        let mut unreachable = Vec::new();
        let mut answered = false;
        if brokers.is_empty() {
            let conn = self.cluster.any_connection().await?;
            self.list_groups_of(&conn, states, &mut groups).await?;
            answered = true;
        }
        for id in brokers {
            let listed = match self.cluster.broker_connection(id).await {
                Ok(conn) => self.list_groups_of(&conn, states, &mut groups).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(()) => answered = true,
                Err(e) => unreachable.push((id, e)),
            }
        }
        if !answered {
            if let Some((_, e)) = unreachable.pop() {
                return Err(e);
            }
        }
        Ok(GroupList {
            groups: groups.into_values().collect(),
            unreachable,
        })
    }

    /// Adds the groups `conn`'s broker coordinates (in `states`, see
    /// [`Admin::list_groups`]) to `groups`.
    async fn list_groups_of(
        &self,
        conn: &Connection,
        states: &[&str],
        groups: &mut BTreeMap<String, GroupListing>,
    ) -> Result<()> {
        let version = conn.version_of::<ListGroupsRequest>()?;
        let mut request = ListGroupsRequest::default();
        if version >= 4 {
            request.states_filter = states.iter().map(|s| str_bytes(s)).collect();
        }
        let response = conn.request_at(&request, version).await?;
        if let Some(e) = Error::from_code(response.error_code, None) {
            return Err(e);
        }
        for g in response.groups {
            let listing = GroupListing {
                group_id: g.group_id.to_string(),
                protocol_type: g.protocol_type.to_string(),
                state: g.group_state.to_string(),
            };
            // The broker filters (v4+), as Kafka's admin client relies on; one too old
            // to filter (v0–v3) reports no states: its groups are kept only when no
            // filter was asked for.
            if version >= 4 || states.is_empty() {
                groups.insert(listing.group_id.clone(), listing);
            }
        }
        Ok(())
    }

    /// State, protocol and members (with their decoded assignments) of each group, in
    /// the order asked. A group that does not exist is described with state "Dead".
    pub async fn describe_groups(&self, groups: &[&str]) -> Result<Vec<GroupDescription>> {
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let request =
                DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group))]);
            let request = &request;
            let (described, coordinator_id) = self
                .at_coordinator(group, |conn, node_id| async move {
                    let response = conn.request(request).await?;
                    let described = response.groups.into_iter().next().ok_or_else(|| {
                        Error::Protocol("DescribeGroups answered no group".into())
                    })?;
                    // Kafka 4 answers GROUP_ID_NOT_FOUND (DescribeGroups v6) where older
                    // brokers and Rill describe a "Dead" group: both read as Dead here.
                    if described.error_code == ResponseError::GroupIdNotFound.code() {
                        let dead = described
                            .with_error_code(0)
                            .with_group_state(StrBytes::from_static_str("Dead"))
                            .with_members(Vec::new());
                        return Ok((dead, node_id));
                    }
                    if let Some(e) =
                        Error::from_code(described.error_code, described.error_message.as_deref())
                    {
                        return Err(e);
                    }
                    Ok((described, node_id))
                })
                .await?;
            let consumer = described.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
            let mut members = Vec::with_capacity(described.members.len());
            for m in described.members {
                let assignment = if consumer {
                    crate::wire::decode_consumer_assignment(m.member_assignment)?
                } else {
                    Vec::new()
                };
                members.push(MemberDescription {
                    member_id: m.member_id.to_string(),
                    group_instance_id: m.group_instance_id.map(|i| i.to_string()),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                    assignment,
                });
            }
            members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
            out.push(GroupDescription {
                group_id: described.group_id.to_string(),
                coordinator_id,
                state: described.group_state.to_string(),
                protocol_type: described.protocol_type.to_string(),
                protocol: described.protocol_data.to_string(),
                members,
            });
        }
        Ok(out)
    }

    /// Deletes groups that have no members, with their committed offsets. One result per
    /// group, in the order asked (NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND, …).
    pub async fn delete_groups(&self, groups: &[&str]) -> Result<Vec<(String, Result<()>)>> {
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let request =
                DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str_bytes(group))]);
            let request = &request;
            let result = self
                .at_coordinator(group, |conn, _| async move {
                    let response = conn.request(request).await?;
                    let code = response.results.first().map_or(0, |r| r.error_code);
                    match Error::from_code(code, None) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    }
                })
                .await;
            out.push(((*group).to_owned(), result));
        }
        Ok(out)
    }

    /// The committed offset of every partition `group` has one for.
    pub async fn list_consumer_group_offsets(
        &self,
        group: &str,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        self.at_coordinator(group, |conn, _| async move {
            let version = conn.version_of::<OffsetFetchRequest>()?;
            let mut request = OffsetFetchRequest::default();
            // v8+ name groups in a batch; v2–v7 one group (null topics: all of them).
            if version >= 8 {
                request.groups = vec![OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(str_bytes(group)))
                    .with_topics(None)];
            } else if version >= 2 {
                request.group_id = GroupId(str_bytes(group));
                request.topics = None;
            } else {
                return Err(Error::UnsupportedVersion {
                    api: "OffsetFetch (all partitions needs v2+)",
                    addr: String::new(),
                });
            }
            let response = conn.request_at(&request, version).await?;
            // (topic, partition, error code, committed offset) of every answered
            // partition: v8+ answers per group, older versions at the top level.
            let answered: Vec<(String, i32, i16, i64)> = if version >= 8 {
                let g = response
                    .groups
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::Protocol("OffsetFetch answered no group".into()))?;
                if let Some(e) = Error::from_code(g.error_code, None) {
                    return Err(e);
                }
                g.topics
                    .into_iter()
                    .flat_map(|t| {
                        let name = t.name.to_string();
                        t.partitions.into_iter().map(move |p| {
                            (
                                name.clone(),
                                p.partition_index,
                                p.error_code,
                                p.committed_offset,
                            )
                        })
                    })
                    .collect()
            } else {
                if let Some(e) = Error::from_code(response.error_code, None) {
                    return Err(e);
                }
                response
                    .topics
                    .into_iter()
                    .flat_map(|t| {
                        let name = t.name.to_string();
                        t.partitions.into_iter().map(move |p| {
                            (
                                name.clone(),
                                p.partition_index,
                                p.error_code,
                                p.committed_offset,
                            )
                        })
                    })
                    .collect()
            };
            let mut offsets = BTreeMap::new();
            for (topic, partition, error_code, committed_offset) in answered {
                if let Some(e) = Error::from_code(error_code, None) {
                    return Err(e);
                }
                if committed_offset >= 0 {
                    offsets.insert(TopicPartition::new(topic, partition), committed_offset);
                }
            }
            Ok(offsets)
        })
        .await
    }

    /// Commits `offsets` for `group` as an administrator: generation -1 and no member id,
    /// which the coordinator accepts only while the group has no members (it answers
    /// UNKNOWN_MEMBER_ID otherwise), as Kafka's `kafka-consumer-groups.sh --reset-offsets`.
    pub async fn alter_consumer_group_offsets(
        &self,
        group: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (tp, offset) in offsets {
            topics.entry(&tp.topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(*offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(StrBytes::from_static_str(""))),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(topic_name(name))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let request = &request;
        self.at_coordinator(group, |conn, _| async move {
            let response = conn.request(request).await?;
            for t in &response.topics {
                for p in &t.partitions {
                    if let Some(e) = Error::from_code(p.error_code, None) {
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Deletes `group`'s committed offsets of `partitions` (OffsetDelete). A group-wide
    /// refusal (GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP) is the error; otherwise one result per
    /// partition, e.g. GROUP_SUBSCRIBED_TO_TOPIC for a topic a live member consumes.
    pub async fn delete_consumer_group_offsets(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, Result<()>)>> {
        let request = OffsetDeleteRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_topics(
                by_topic(partitions.iter().cloned())
                    .into_iter()
                    .map(|(name, indexes)| {
                        OffsetDeleteRequestTopic::default()
                            .with_name(topic_name(&name))
                            .with_partitions(
                                indexes
                                    .into_iter()
                                    .map(|i| {
                                        OffsetDeleteRequestPartition::default()
                                            .with_partition_index(i)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let request = &request;
        self.at_coordinator(group, |conn, _| async move {
            let response = conn.request(request).await?;
            if let Some(e) = Error::from_code(response.error_code, None) {
                return Err(e);
            }
            let mut out = Vec::new();
            for t in response.topics {
                for p in t.partitions {
                    let result = match Error::from_code(p.error_code, None) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                    out.push((
                        TopicPartition::new(t.name.to_string(), p.partition_index),
                        result,
                    ));
                }
            }
            Ok(out)
        })
        .await
    }

    /// The earliest or latest offset of each partition, asked of each partition's leader
    /// in one ListOffsets per leader.
    pub async fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        spec: OffsetSpec,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let timestamp = match spec {
            OffsetSpec::Earliest => EARLIEST_TIMESTAMP,
            OffsetSpec::Latest => LATEST_TIMESTAMP,
        };
        let config = &self.cluster.config;
        let deadline = Instant::now() + Duration::from_millis(config.request_timeout_ms);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.list_offsets_once(partitions, timestamp).await {
                Err(e) if e.is_retriable() && Instant::now() < deadline => {
                    self.cluster.observe_error(&e);
                    self.cluster.invalidate();
                    tokio::time::sleep(config.backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn list_offsets_once(
        &self,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let metadata = self.cluster.all_topics().await?;
        // Leaders' connections are looked up in the cached metadata's brokers.
        self.cluster.metadata().await?;
        let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        for tp in partitions {
            let info = metadata
                .topics
                .get(&tp.topic)
                .ok_or_else(|| Error::UnknownTopic(tp.topic.clone()))?;
            let p = info
                .partitions
                .get(tp.partition as usize)
                .filter(|_| tp.partition >= 0)
                .ok_or_else(|| Error::UnknownPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                })?;
            if p.leader < 0 {
                return Err(Error::Broker {
                    code: ResponseError::LeaderNotAvailable,
                    message: Some(format!("{}/{} has no leader", tp.topic, tp.partition)),
                });
            }
            by_leader.entry(p.leader).or_default().push(tp.clone());
        }
        let mut out = BTreeMap::new();
        for (leader, tps) in by_leader {
            let request = ListOffsetsRequest::default()
                .with_replica_id((-1).into())
                .with_topics(
                    by_topic(tps)
                        .into_iter()
                        .map(|(name, indexes)| {
                            ListOffsetsTopic::default()
                                .with_name(topic_name(&name))
                                .with_partitions(
                                    indexes
                                        .into_iter()
                                        .map(|i| {
                                            ListOffsetsPartition::default()
                                                .with_partition_index(i)
                                                .with_timestamp(timestamp)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            let conn = self.cluster.broker_connection(leader).await?;
            let response = conn.request(&request).await?;
            for t in response.topics {
                for p in t.partitions {
                    if let Some(e) = Error::from_code(p.error_code, None) {
                        return Err(e);
                    }
                    out.insert(
                        TopicPartition::new(t.name.to_string(), p.partition_index),
                        p.offset,
                    );
                }
            }
        }
        Ok(out)
    }

    /// `group`'s committed offset, log end offset and lag for every partition it has an
    /// offset for, plus `also` (e.g. the partitions assigned to its members), sorted.
    pub async fn consumer_group_lag(
        &self,
        group: &str,
        also: &[TopicPartition],
    ) -> Result<Vec<PartitionLag>> {
        let committed = self.list_consumer_group_offsets(group).await?;
        let partitions: BTreeSet<TopicPartition> = committed
            .keys()
            .cloned()
            .chain(also.iter().cloned())
            .collect();
        let partitions: Vec<TopicPartition> = partitions.into_iter().collect();
        // A committed offset of a deleted topic has no log end: shown without one rather
        // than failing the whole description.
        let metadata = self.cluster.all_topics().await?;
        let existing: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| {
                metadata.topics.get(&tp.topic).is_some_and(|t| {
                    tp.partition >= 0 && (tp.partition as usize) < t.partitions.len()
                })
            })
            .cloned()
            .collect();
        let ends = self.list_offsets(&existing, OffsetSpec::Latest).await?;
        Ok(partitions
            .into_iter()
            .map(|tp| {
                let committed_offset = committed.get(&tp).copied();
                let log_end_offset = ends.get(&tp).copied();
                let lag = match (committed_offset, log_end_offset) {
                    // Negative when the committed offset is past the log end (Kafka shows it too).
                    (Some(c), Some(e)) => Some(e - c),
                    _ => None,
                };
                PartitionLag {
                    partition: tp,
                    committed_offset,
                    log_end_offset,
                    lag,
                }
            })
            .collect())
    }
}
