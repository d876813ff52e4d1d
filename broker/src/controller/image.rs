//! [`MetadataImage`]: the cluster metadata after applying a prefix of the committed
//! metadata log.
//!
//! Every broker applies the same log, so [`MetadataImage::apply`] is deterministic and
//! all-or-nothing: a record is first checked against the image (`check`), and only a record
//! that passes is applied (`commit`, which cannot fail). A record that fails the check is
//! *skipped* — on every broker alike, since they all hold the same image at that offset —
//! and the image counts it and keeps the reason of the last few
//! ([`MetadataImage::recent_skipped`]). The controller that proposed it learns why from
//! the [`ApplyError`] `apply` returns.

use std::collections::{BTreeMap, VecDeque};

use uuid::Uuid;

use super::placement::BrokerInfo;
use super::record::{MetadataRecord, PartitionAssignment};
use super::{BROKERS_MAX, TOPICS_MAX};
use crate::state::PARTITIONS_MAX;

/// How many skipped records the image remembers (their count is kept without limit).
pub const SKIPPED_RECORDS_KEPT: usize = 32;
/// Longest reason kept for a skipped record, in bytes; longer ones are cut.
pub const SKIP_REASON_BYTES_MAX: usize = 1_024;
/// How many deleted topics' ids the image remembers (16 bytes each in a snapshot): a
/// broker that rebuilds its image from a checkpoint removes its replica directories
/// of those topics, whose deletion records may be gone from the trimmed log.
pub const DELETED_TOPICS_KEPT: usize = 10_000;

/// A registered broker, as its latest [`MetadataRecord::RegisterBroker`] announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRegistration {
    /// The broker's id.
    pub broker_id: i32,
    /// The incarnation (process start) that registered.
    pub incarnation_id: Uuid,
    /// Host clients connect to.
    pub client_host: String,
    /// Port clients connect to.
    pub client_port: u16,
    /// Host other brokers connect to.
    pub inter_broker_host: String,
    /// Port other brokers connect to.
    pub inter_broker_port: u16,
    /// The broker's rack, if configured.
    pub rack: Option<String>,
}

/// A live topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    /// Its name.
    pub name: String,
    /// Its id.
    pub topic_id: Uuid,
    /// Topic-level configs that differ from the broker defaults.
    pub configs: BTreeMap<String, String>,
    /// Partition `i`'s replicas are `partitions[i]`; never empty, no replica twice, and
    /// every partition has the same number of replicas.
    pub partitions: Vec<PartitionAssignment>,
}

/// A partition's leader as last hinted ([`MetadataRecord::LeaderHint`]). Advisory: for
/// Metadata answers only, never for correctness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvisoryLeader {
    /// The leader's broker id.
    pub leader: i32,
    /// Its leader epoch.
    pub leader_epoch: i32,
}

/// A partition replica a broker must host ([`MetadataImage::replicas_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReplica {
    /// The topic's id.
    pub topic_id: Uuid,
    /// The topic's name.
    pub name: String,
    /// The partition.
    pub partition: i32,
    /// All replicas of the partition (the peers of its Raft group), preferred leader first.
    pub replicas: Vec<i32>,
}

/// A record the image refused, remembered for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    /// Its offset in the metadata log.
    pub offset: u64,
    /// The record's kind and why it was skipped, at most [`SKIP_REASON_BYTES_MAX`] bytes.
    pub reason: String,
}

/// Why [`MetadataImage::apply`] did not apply a record. Every variant but
/// [`ApplyError::OffsetNotAfterLastApplied`] means the record was skipped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A [`MetadataRecord::Checkpoint`] whose snapshot does not decode (or breaks the
    /// image's invariants): skipped, the image stays as it was.
    #[error("checkpoint snapshot refused: {reason}")]
    BadCheckpoint {
        /// Why.
        reason: String,
    },
    /// The offset is not after the last applied one (a driver replaying the log): the
    /// image is unchanged and nothing is counted.
    #[error("offset {offset} is not after the last applied offset {last_applied_offset}")]
    OffsetNotAfterLastApplied {
        /// The offset given.
        offset: u64,
        /// The image's last applied offset.
        last_applied_offset: u64,
    },
    /// A broker id below zero.
    #[error("negative broker id {broker_id}")]
    NegativeBrokerId {
        /// The id.
        broker_id: i32,
    },
    /// A registration of a new broker id while [`BROKERS_MAX`] are registered.
    #[error("{BROKERS_MAX} brokers are registered already")]
    TooManyBrokers,
    /// A new topic while [`TOPICS_MAX`] are live.
    #[error("{TOPICS_MAX} topics exist already")]
    TooManyTopics,
    /// The record names a broker that is not registered.
    #[error("broker {broker_id} is not registered")]
    UnknownBroker {
        /// The id.
        broker_id: i32,
    },
    /// An unregistration for an incarnation other than the registered one (a late record
    /// of an earlier run must not fence the broker's current run).
    #[error("broker {broker_id} is registered as incarnation {registered}, not {incarnation_id}")]
    StaleIncarnation {
        /// The broker.
        broker_id: i32,
        /// The incarnation named by the record.
        incarnation_id: Uuid,
        /// The incarnation registered.
        registered: Uuid,
    },
    /// A topic with an empty name.
    #[error("empty topic name")]
    EmptyTopicName,
    /// A topic with the nil id.
    #[error("nil topic id")]
    NilTopicId,
    /// CreateTopic of a name a live topic has.
    #[error("topic {name} already exists")]
    TopicNameExists {
        /// The name.
        name: String,
    },
    /// CreateTopic with an id a live topic has.
    #[error("topic id {topic_id} already exists")]
    TopicIdExists {
        /// The id.
        topic_id: Uuid,
    },
    /// A record naming a topic id no live topic has.
    #[error("unknown topic id {topic_id}")]
    UnknownTopicId {
        /// The id.
        topic_id: Uuid,
    },
    /// CreateTopic or CreatePartitions without any partition.
    #[error("no partitions")]
    NoPartitions,
    /// The topic would have more than [`PARTITIONS_MAX`] partitions.
    #[error("{partitions} partitions, at most {PARTITIONS_MAX} allowed")]
    TooManyPartitions {
        /// The topic's partition count had the record applied.
        partitions: usize,
    },
    /// A partition without replicas.
    #[error("partition {partition} has no replicas")]
    EmptyReplicaList {
        /// The partition.
        partition: i32,
    },
    /// A broker listed twice in one partition.
    #[error("partition {partition} lists broker {broker_id} twice")]
    DuplicateReplica {
        /// The partition.
        partition: i32,
        /// The broker.
        broker_id: i32,
    },
    /// An assignment naming a broker that is not registered.
    #[error("partition {partition} names unregistered broker {broker_id}")]
    UnregisteredReplica {
        /// The partition.
        partition: i32,
        /// The broker.
        broker_id: i32,
    },
    /// Partitions of one topic with different replica counts (Kafka refuses them too).
    #[error("partition {partition} has {replicas} replicas, the topic's others {expected}")]
    InconsistentReplicationFactor {
        /// The partition.
        partition: i32,
        /// Its replica count.
        replicas: usize,
        /// The replica count of the topic's other partitions.
        expected: usize,
    },
    /// A partition the topic does not have.
    #[error("topic {topic_id} has no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic_id: Uuid,
        /// The partition.
        partition: i32,
    },
    /// A leader hint naming a broker that is not a replica of the partition.
    #[error("broker {leader} is not a replica of {topic_id}-{partition}")]
    LeaderNotAReplica {
        /// The topic.
        topic_id: Uuid,
        /// The partition.
        partition: i32,
        /// The broker named as leader.
        leader: i32,
    },
    /// A leader hint with a negative epoch.
    #[error("negative leader epoch {leader_epoch}")]
    NegativeLeaderEpoch {
        /// The epoch.
        leader_epoch: i32,
    },
    /// A leader hint not newer than the one the image has.
    #[error("leader epoch {leader_epoch} is not after the hinted epoch {hinted_epoch}")]
    StaleLeaderHint {
        /// The record's epoch.
        leader_epoch: i32,
        /// The epoch of the image's hint.
        hinted_epoch: i32,
    },
    /// A producer-id block that does not start where the previous one ended.
    #[error(
        "producer id block starts at {first_producer_id}, the next free id is {next_producer_id}"
    )]
    ProducerIdBlockNotNext {
        /// The block's first id.
        first_producer_id: i64,
        /// The image's next free id.
        next_producer_id: i64,
    },
    /// A producer-id block of no ids, or one running past `i64::MAX`.
    #[error("producer id block of {size} ids from {first_producer_id} is empty or overflows")]
    InvalidProducerIdBlock {
        /// The block's first id.
        first_producer_id: i64,
        /// Its size.
        size: i32,
    },
}

/// The cluster metadata after applying a prefix of the committed metadata log.
///
/// Equal logs give equal images: fields are ordered maps, and [`MetadataImage::apply`] reads
/// nothing but the image and the record. Build one with `Default` (the empty log) or from
/// a snapshot ([`super::snapshot::decode_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataImage {
    pub(super) last_applied_offset: Option<u64>,
    pub(super) brokers: BTreeMap<i32, BrokerRegistration>,
    /// Derived from `topics` (name → id); kept in step by `commit`, rebuilt by snapshot
    /// decoding.
    pub(super) topic_ids_by_name: BTreeMap<String, Uuid>,
    pub(super) topics: BTreeMap<Uuid, TopicImage>,
    pub(super) next_producer_id: i64,
    pub(super) leader_hints: BTreeMap<(Uuid, i32), AdvisoryLeader>,
    pub(super) skipped_records_total: u64,
    pub(super) recent_skipped: VecDeque<SkippedRecord>,
    /// The last [`DELETED_TOPICS_KEPT`] deleted topics' ids, oldest first.
    pub(super) recent_deleted_topics: VecDeque<Uuid>,
}

impl MetadataImage {
    /// Applies the record at `offset` of the committed metadata log. Offsets must rise
    /// (gaps are fine: other batches take offsets too).
    ///
    /// On `Err` the record changed nothing but the last applied offset and the skip count
    /// (and with [`ApplyError::OffsetNotAfterLastApplied`] not even those).
    pub fn apply(&mut self, offset: u64, record: &MetadataRecord) -> Result<(), ApplyError> {
        if let Some(last_applied_offset) = self.last_applied_offset {
            if offset <= last_applied_offset {
                return Err(ApplyError::OffsetNotAfterLastApplied {
                    offset,
                    last_applied_offset,
                });
            }
        }
        if let MetadataRecord::Checkpoint { snapshot } = record {
            return self.apply_checkpoint(offset, snapshot).map(|_| ());
        }
        self.last_applied_offset = Some(offset);
        match self.check(record) {
            Ok(()) => {
                self.commit(record);
                Ok(())
            }
            Err(error) => {
                self.skip(offset, record, &error);
                Err(error)
            }
        }
    }

    /// Applies a [`MetadataRecord::Checkpoint`] at `offset`: the image becomes the
    /// snapshot's (then `offset` is its last applied offset). A snapshot that does not
    /// decode is skipped like any refused record. [`CheckpointApplied::diverged`] says
    /// whether this image had applied exactly the records the snapshot covers yet
    /// differed from it — two brokers' images went apart, which determinism rules out;
    /// the snapshot wins (the log is the truth), and the driver reports it.
    pub fn apply_checkpoint(
        &mut self,
        offset: u64,
        snapshot: &bytes::Bytes,
    ) -> Result<CheckpointApplied, ApplyError> {
        if let Some(last_applied_offset) = self.last_applied_offset {
            if offset <= last_applied_offset {
                return Err(ApplyError::OffsetNotAfterLastApplied {
                    offset,
                    last_applied_offset,
                });
            }
        }
        let decoded = match super::snapshot::decode_snapshot(snapshot.clone()) {
            Ok(image) => image,
            Err(e) => {
                let error = ApplyError::BadCheckpoint {
                    reason: e.to_string(),
                };
                self.last_applied_offset = Some(offset);
                self.skip(
                    offset,
                    &MetadataRecord::Checkpoint {
                        snapshot: bytes::Bytes::new(),
                    },
                    &error,
                );
                return Err(error);
            }
        };
        let covers_the_same_records = self.last_applied_offset.is_some()
            && self.last_applied_offset == decoded.last_applied_offset;
        let diverged = covers_the_same_records
            && super::snapshot::encode_snapshot(self).ok().as_ref() != Some(snapshot);
        *self = decoded;
        self.last_applied_offset = Some(offset);
        Ok(CheckpointApplied { diverged })
    }

    /// Offset of the last record applied or skipped; `None` for the empty log.
    pub fn last_applied_offset(&self) -> Option<u64> {
        self.last_applied_offset
    }

    /// Registered brokers, by id.
    pub fn brokers(&self) -> impl Iterator<Item = &BrokerRegistration> {
        self.brokers.values()
    }

    /// A registered broker.
    pub fn broker(&self, broker_id: i32) -> Option<&BrokerRegistration> {
        self.brokers.get(&broker_id)
    }

    /// The registered brokers as placement sees them ([`super::assign_replicas`]).
    pub fn placement_brokers(&self) -> Vec<BrokerInfo> {
        self.brokers
            .values()
            .map(|b| BrokerInfo {
                id: b.broker_id,
                rack: b.rack.clone(),
            })
            .collect()
    }

    /// Live topics, by id.
    pub fn topics(&self) -> impl Iterator<Item = &TopicImage> {
        self.topics.values()
    }

    /// The live topic of that name.
    pub fn topic_by_name(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids_by_name
            .get(name)
            .and_then(|topic_id| self.topics.get(topic_id))
    }

    /// The live topic of that id.
    pub fn topic_by_id(&self, topic_id: Uuid) -> Option<&TopicImage> {
        self.topics.get(&topic_id)
    }

    /// The replica lists of every partition of every live topic: the existing load that
    /// placement balances against.
    pub fn replica_lists(&self) -> Vec<Vec<i32>> {
        self.topics
            .values()
            .flat_map(|topic| topic.partitions.iter().map(|p| p.replicas.clone()))
            .collect()
    }

    /// The partition replicas `broker_id` must host, by topic id and partition. A broker
    /// creates the replicas listed here that it lacks and deletes the ones it has that are
    /// not listed.
    pub fn replicas_of(&self, broker_id: i32) -> Vec<LocalReplica> {
        let mut hosted = Vec::new();
        for topic in self.topics.values() {
            for (partition, assignment) in topic.partitions.iter().enumerate() {
                if assignment.replicas.contains(&broker_id) {
                    hosted.push(LocalReplica {
                        topic_id: topic.topic_id,
                        name: topic.name.clone(),
                        // A topic has at most PARTITIONS_MAX (an i32) partitions.
                        partition: partition as i32,
                        replicas: assignment.replicas.clone(),
                    });
                }
            }
        }
        hosted
    }

    /// The advisory leader of a partition, if one was hinted.
    pub fn leader_hint(&self, topic_id: Uuid, partition: i32) -> Option<AdvisoryLeader> {
        self.leader_hints.get(&(topic_id, partition)).copied()
    }

    /// The first producer id no block has taken: where the next
    /// [`MetadataRecord::ProducerIdBlock`] must start.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// Records skipped since the empty log.
    pub fn skipped_records_total(&self) -> u64 {
        self.skipped_records_total
    }

    /// The last [`SKIPPED_RECORDS_KEPT`] skipped records, oldest first.
    pub fn recent_skipped(&self) -> impl Iterator<Item = &SkippedRecord> {
        self.recent_skipped.iter()
    }

    /// The ids of the last [`DELETED_TOPICS_KEPT`] deleted topics, oldest first.
    pub fn recent_deleted_topics(&self) -> impl Iterator<Item = &Uuid> {
        self.recent_deleted_topics.iter()
    }

    /// Whether `record` may be applied to this image. Reads only; `commit` relies on
    /// every condition checked here.
    fn check(&self, record: &MetadataRecord) -> Result<(), ApplyError> {
        match record {
            // Applied by `apply_checkpoint`, never checked here.
            MetadataRecord::Checkpoint { .. } => Ok(()),
            MetadataRecord::RegisterBroker { broker_id, .. } => {
                if *broker_id < 0 {
                    return Err(ApplyError::NegativeBrokerId {
                        broker_id: *broker_id,
                    });
                }
                if self.brokers.len() >= BROKERS_MAX && !self.brokers.contains_key(broker_id) {
                    return Err(ApplyError::TooManyBrokers);
                }
                Ok(())
            }
            MetadataRecord::UnregisterBroker {
                broker_id,
                incarnation_id,
            } => {
                let registered = self.registered(*broker_id)?;
                if registered.incarnation_id != *incarnation_id {
                    return Err(ApplyError::StaleIncarnation {
                        broker_id: *broker_id,
                        incarnation_id: *incarnation_id,
                        registered: registered.incarnation_id,
                    });
                }
                Ok(())
            }
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                configs: _,
                partitions,
            } => {
                if name.is_empty() {
                    return Err(ApplyError::EmptyTopicName);
                }
                if topic_id.is_nil() {
                    return Err(ApplyError::NilTopicId);
                }
                if self.topic_ids_by_name.contains_key(name) {
                    return Err(ApplyError::TopicNameExists { name: name.clone() });
                }
                if self.topics.contains_key(topic_id) {
                    return Err(ApplyError::TopicIdExists {
                        topic_id: *topic_id,
                    });
                }
                if self.topics.len() >= TOPICS_MAX {
                    return Err(ApplyError::TooManyTopics);
                }
                self.check_new_partitions(&[], partitions)
            }
            MetadataRecord::CreatePartitions {
                topic_id,
                new_partitions,
            } => {
                let topic = self.topic(*topic_id)?;
                self.check_new_partitions(&topic.partitions, new_partitions)
            }
            MetadataRecord::DeleteTopic { topic_id } => self.topic(*topic_id).map(|_| ()),
            // Values were checked by the controller that proposed them; a broker that
            // cannot use one keeps the topic's previous effective config and says so.
            MetadataRecord::AlterTopicConfigs { topic_id, .. } => self.topic(*topic_id).map(|_| ()),
            MetadataRecord::ProducerIdBlock {
                broker_id,
                first_producer_id,
                size,
                ..
            } => {
                self.registered(*broker_id)?;
                if *first_producer_id != self.next_producer_id {
                    return Err(ApplyError::ProducerIdBlockNotNext {
                        first_producer_id: *first_producer_id,
                        next_producer_id: self.next_producer_id,
                    });
                }
                if *size <= 0 || first_producer_id.checked_add(i64::from(*size)).is_none() {
                    return Err(ApplyError::InvalidProducerIdBlock {
                        first_producer_id: *first_producer_id,
                        size: *size,
                    });
                }
                Ok(())
            }
            MetadataRecord::LeaderHint {
                topic_id,
                partition,
                leader,
                leader_epoch,
            } => {
                let topic = self.topic(*topic_id)?;
                let assignment = usize::try_from(*partition)
                    .ok()
                    .and_then(|p| topic.partitions.get(p))
                    .ok_or(ApplyError::UnknownPartition {
                        topic_id: *topic_id,
                        partition: *partition,
                    })?;
                if !assignment.replicas.contains(leader) {
                    return Err(ApplyError::LeaderNotAReplica {
                        topic_id: *topic_id,
                        partition: *partition,
                        leader: *leader,
                    });
                }
                if *leader_epoch < 0 {
                    return Err(ApplyError::NegativeLeaderEpoch {
                        leader_epoch: *leader_epoch,
                    });
                }
                if let Some(hinted) = self.leader_hints.get(&(*topic_id, *partition)) {
                    if *leader_epoch <= hinted.leader_epoch {
                        return Err(ApplyError::StaleLeaderHint {
                            leader_epoch: *leader_epoch,
                            hinted_epoch: hinted.leader_epoch,
                        });
                    }
                }
                Ok(())
            }
        }
    }

    fn registered(&self, broker_id: i32) -> Result<&BrokerRegistration, ApplyError> {
        self.brokers
            .get(&broker_id)
            .ok_or(ApplyError::UnknownBroker { broker_id })
    }

    fn topic(&self, topic_id: Uuid) -> Result<&TopicImage, ApplyError> {
        self.topics
            .get(&topic_id)
            .ok_or(ApplyError::UnknownTopicId { topic_id })
    }

    /// New partitions numbered after `existing`: at least one, the topic within
    /// [`PARTITIONS_MAX`], each replica list non-empty, without duplicates, of registered
    /// brokers, and as long as every other list of the topic.
    fn check_new_partitions(
        &self,
        existing: &[PartitionAssignment],
        new: &[PartitionAssignment],
    ) -> Result<(), ApplyError> {
        if new.is_empty() {
            return Err(ApplyError::NoPartitions);
        }
        let partitions = existing.len() + new.len();
        if partitions > PARTITIONS_MAX as usize {
            return Err(ApplyError::TooManyPartitions { partitions });
        }
        let expected = existing
            .first()
            .or(new.first())
            .map_or(0, |a| a.replicas.len());
        for (i, assignment) in new.iter().enumerate() {
            // Below PARTITIONS_MAX, checked above.
            let partition = (existing.len() + i) as i32;
            let replicas = &assignment.replicas;
            if replicas.is_empty() {
                return Err(ApplyError::EmptyReplicaList { partition });
            }
            if replicas.len() != expected {
                return Err(ApplyError::InconsistentReplicationFactor {
                    partition,
                    replicas: replicas.len(),
                    expected,
                });
            }
            for (j, &broker_id) in replicas.iter().enumerate() {
                // Lists are at most REPLICAS_PER_PARTITION_MAX long: quadratic is fine.
                if replicas[..j].contains(&broker_id) {
                    return Err(ApplyError::DuplicateReplica {
                        partition,
                        broker_id,
                    });
                }
                if !self.brokers.contains_key(&broker_id) {
                    return Err(ApplyError::UnregisteredReplica {
                        partition,
                        broker_id,
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies a record `check` accepted. Cannot fail: every lookup here was checked.
    fn commit(&mut self, record: &MetadataRecord) {
        match record {
            // Applied by `apply_checkpoint`, never committed here.
            MetadataRecord::Checkpoint { .. } => {}
            MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id,
                client_host,
                client_port,
                inter_broker_host,
                inter_broker_port,
                rack,
            } => {
                self.brokers.insert(
                    *broker_id,
                    BrokerRegistration {
                        broker_id: *broker_id,
                        incarnation_id: *incarnation_id,
                        client_host: client_host.clone(),
                        client_port: *client_port,
                        inter_broker_host: inter_broker_host.clone(),
                        inter_broker_port: *inter_broker_port,
                        rack: rack.clone(),
                    },
                );
            }
            MetadataRecord::UnregisterBroker { broker_id, .. } => {
                self.brokers.remove(broker_id);
            }
            MetadataRecord::CreateTopic {
                name,
                topic_id,
                configs,
                partitions,
            } => {
                self.topic_ids_by_name.insert(name.clone(), *topic_id);
                self.topics.insert(
                    *topic_id,
                    TopicImage {
                        name: name.clone(),
                        topic_id: *topic_id,
                        configs: configs.clone(),
                        partitions: partitions.clone(),
                    },
                );
            }
            MetadataRecord::CreatePartitions {
                topic_id,
                new_partitions,
            } => {
                let Some(topic) = self.topics.get_mut(topic_id) else {
                    unreachable!("check accepted CreatePartitions of unknown topic {topic_id}");
                };
                topic.partitions.extend(new_partitions.iter().cloned());
            }
            MetadataRecord::DeleteTopic { topic_id } => {
                let Some(topic) = self.topics.remove(topic_id) else {
                    unreachable!("check accepted DeleteTopic of unknown topic {topic_id}");
                };
                self.topic_ids_by_name.remove(&topic.name);
                self.leader_hints
                    .retain(|(hinted_topic_id, _), _| hinted_topic_id != topic_id);
                if self.recent_deleted_topics.len() == DELETED_TOPICS_KEPT {
                    self.recent_deleted_topics.pop_front();
                }
                self.recent_deleted_topics.push_back(*topic_id);
            }
            MetadataRecord::AlterTopicConfigs { topic_id, configs } => {
                let Some(topic) = self.topics.get_mut(topic_id) else {
                    unreachable!("check accepted AlterTopicConfigs of unknown topic {topic_id}");
                };
                topic.configs = configs.clone();
            }
            MetadataRecord::ProducerIdBlock {
                first_producer_id,
                size,
                ..
            } => {
                // check refused a block that overflows.
                self.next_producer_id = first_producer_id + i64::from(*size);
            }
            MetadataRecord::LeaderHint {
                topic_id,
                partition,
                leader,
                leader_epoch,
            } => {
                self.leader_hints.insert(
                    (*topic_id, *partition),
                    AdvisoryLeader {
                        leader: *leader,
                        leader_epoch: *leader_epoch,
                    },
                );
            }
        }
    }

    fn skip(&mut self, offset: u64, record: &MetadataRecord, error: &ApplyError) {
        self.skipped_records_total += 1;
        let mut reason = format!("{}: {error}", record.kind());
        truncate_at_char_boundary(&mut reason, SKIP_REASON_BYTES_MAX);
        if self.recent_skipped.len() == SKIPPED_RECORDS_KEPT {
            self.recent_skipped.pop_front();
        }
        self.recent_skipped
            .push_back(SkippedRecord { offset, reason });
    }

    /// Checks the image's invariants (for tests and for a decoded snapshot's caller):
    /// the name index matches the topics, replica lists are valid, hints name live
    /// partitions and their replicas, the skip memory is bounded.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.topic_ids_by_name.len() != self.topics.len() {
            return Err("name index and topics differ in size".into());
        }
        for (topic_id, topic) in &self.topics {
            if topic.topic_id != *topic_id || topic_id.is_nil() {
                return Err(format!("topic {topic_id} is filed under another id"));
            }
            if self.topic_ids_by_name.get(&topic.name) != Some(topic_id) {
                return Err(format!("topic {} missing from the name index", topic.name));
            }
            if topic.partitions.is_empty() || topic.partitions.len() > PARTITIONS_MAX as usize {
                return Err(format!(
                    "topic {} has {} partitions",
                    topic.name,
                    topic.partitions.len()
                ));
            }
            let expected = topic.partitions[0].replicas.len();
            for (partition, assignment) in topic.partitions.iter().enumerate() {
                let replicas = &assignment.replicas;
                let mut sorted = replicas.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if replicas.is_empty()
                    || sorted.len() != replicas.len()
                    || replicas.len() != expected
                {
                    return Err(format!(
                        "{}-{partition} has replicas {replicas:?}",
                        topic.name
                    ));
                }
            }
        }
        for ((topic_id, partition), hint) in &self.leader_hints {
            let assignment = self.topics.get(topic_id).and_then(|t| {
                usize::try_from(*partition)
                    .ok()
                    .and_then(|p| t.partitions.get(p))
            });
            match assignment {
                Some(a) if a.replicas.contains(&hint.leader) && hint.leader_epoch >= 0 => {}
                _ => return Err(format!("leader hint for {topic_id}-{partition} is invalid")),
            }
        }
        if self.brokers.len() > BROKERS_MAX || self.topics.len() > TOPICS_MAX {
            return Err("too many brokers or topics".into());
        }
        for (broker_id, broker) in &self.brokers {
            if broker.broker_id != *broker_id || *broker_id < 0 {
                return Err(format!("broker {broker_id} is filed under another id"));
            }
        }
        if self.next_producer_id < 0 {
            return Err("negative next producer id".into());
        }
        if self.recent_deleted_topics.len() > DELETED_TOPICS_KEPT {
            return Err("too many deleted topics remembered".into());
        }
        if self.recent_skipped.len() > SKIPPED_RECORDS_KEPT
            || self.recent_skipped.len() as u64 > self.skipped_records_total
        {
            return Err("skip memory out of bounds".into());
        }
        Ok(())
    }
}

/// Cuts `s` to at most `bytes_max` bytes without splitting a character.
pub(super) fn truncate_at_char_boundary(s: &mut String, bytes_max: usize) {
    if s.len() > bytes_max {
        let mut end = bytes_max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// What applying a [`MetadataRecord::Checkpoint`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointApplied {
    /// This image covered exactly the snapshot's records and still differed from it.
    pub diverged: bool,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::controller::testing::{arb_log, image_of};

    fn register(broker_id: i32, incarnation: u128) -> MetadataRecord {
        MetadataRecord::RegisterBroker {
            broker_id,
            incarnation_id: Uuid::from_u128(incarnation),
            client_host: format!("b{broker_id}"),
            client_port: 9092,
            inter_broker_host: format!("b{broker_id}"),
            inter_broker_port: 9093,
            rack: None,
        }
    }

    fn create(name: &str, topic_id: u128, partitions: &[&[i32]]) -> MetadataRecord {
        MetadataRecord::CreateTopic {
            name: name.into(),
            topic_id: Uuid::from_u128(topic_id),
            configs: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            partitions: partitions
                .iter()
                .map(|r| PartitionAssignment {
                    replicas: r.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn altered_topic_configs_replace_the_set_and_are_in_the_snapshot() {
        let altered = MetadataRecord::AlterTopicConfigs {
            topic_id: Uuid::from_u128(7),
            configs: BTreeMap::from([("compression.type".into(), "lz4".into())]),
        };
        let (image, results) = apply_all(&[register(1, 1), create("t", 7, &[&[1]]), altered]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let topic = image.topic_by_name("t").unwrap();
        // The whole set: retention.ms from the creation is gone.
        assert_eq!(
            topic.configs,
            BTreeMap::from([("compression.type".to_string(), "lz4".to_string())])
        );
        let snapshot = crate::controller::encode_snapshot(&image).unwrap();
        let decoded = crate::controller::decode_snapshot(snapshot).unwrap();
        assert_eq!(decoded.topic_by_name("t").unwrap().configs, topic.configs);
        // A topic that does not exist: skipped.
        let unknown = MetadataRecord::AlterTopicConfigs {
            topic_id: Uuid::from_u128(99),
            configs: BTreeMap::new(),
        };
        let (_, results) = apply_all(&[register(1, 1), unknown]);
        assert!(matches!(results[1], Err(ApplyError::UnknownTopicId { .. })));
    }

    /// Applies `log` at offsets 0, 1, 2, … and returns the image and every result.
    fn apply_all(log: &[MetadataRecord]) -> (MetadataImage, Vec<Result<(), ApplyError>>) {
        let mut image = MetadataImage::default();
        let results = log
            .iter()
            .enumerate()
            .map(|(offset, record)| image.apply(offset as u64, record))
            .collect();
        (image, results)
    }

    #[test]
    fn a_checkpoint_rebuilds_an_empty_image_and_reports_a_diverged_one() {
        let log = [
            register(1, 1),
            register(2, 1),
            create("orders", 10, &[&[1, 2], &[2, 1]]),
        ];
        let (image, _) = apply_all(&log);
        let snapshot = crate::controller::encode_snapshot(&image).unwrap();
        let at = log.len() as u64;

        // A broker that applied the same records: same image, nothing diverged.
        let (mut same, _) = apply_all(&log);
        let applied = same.apply_checkpoint(at, &snapshot).unwrap();
        assert!(!applied.diverged);
        assert_eq!(same.topic_by_name("orders"), image.topic_by_name("orders"));
        assert_eq!(same.last_applied_offset(), Some(at));

        // A broker whose log starts at the checkpoint: the image is rebuilt from it.
        let mut fresh = MetadataImage::default();
        assert!(!fresh.apply_checkpoint(at, &snapshot).unwrap().diverged);
        assert_eq!(fresh.replicas_of(2).len(), 2);
        assert_eq!(
            fresh.brokers().map(|b| b.broker_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        fresh.apply(at + 1, &create("later", 11, &[&[1]])).unwrap();
        assert!(fresh.topic_by_name("later").is_some());

        // A broker that covered the same offsets but holds another image diverged; the
        // checkpoint wins.
        let (mut other, _) = apply_all(&[
            register(1, 1),
            register(2, 2),
            create("orders", 10, &[&[1, 2], &[2, 1]]),
        ]);
        assert!(other.apply_checkpoint(at, &snapshot).unwrap().diverged);
        assert_eq!(other.broker(2).unwrap().incarnation_id, Uuid::from_u128(1));

        // Bytes that are no snapshot are skipped; the image stays.
        let (mut kept, _) = apply_all(&log);
        let garbage = bytes::Bytes::from_static(b"not a snapshot at all");
        assert!(matches!(
            kept.apply_checkpoint(at, &garbage),
            Err(ApplyError::BadCheckpoint { .. })
        ));
        assert!(kept.topic_by_name("orders").is_some());
        assert_eq!(kept.last_applied_offset(), Some(at));
    }

    #[test]
    fn brokers_learn_their_replicas_from_the_log() {
        let (image, results) = apply_all(&[
            register(1, 1),
            register(2, 1),
            register(3, 1),
            create("orders", 10, &[&[1, 2], &[2, 3], &[3, 1]]),
        ]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let hosted = image.replicas_of(2);
        assert_eq!(
            hosted
                .iter()
                .map(|r| (r.name.as_str(), r.partition, r.replicas.clone()))
                .collect::<Vec<_>>(),
            vec![("orders", 0, vec![1, 2]), ("orders", 1, vec![2, 3])]
        );
        assert_eq!(hosted[0].topic_id, Uuid::from_u128(10));
        let topic = image.topic_by_name("orders").unwrap();
        assert_eq!(topic.configs["retention.ms"], "1000");
        assert_eq!(image.topic_by_id(Uuid::from_u128(10)), Some(topic));
        assert_eq!(image.last_applied_offset(), Some(3));
        assert_eq!(
            image.brokers().map(|b| b.broker_id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn create_topic_of_an_existing_name_is_skipped_whole() {
        let (image, results) = apply_all(&[
            register(1, 1),
            create("orders", 10, &[&[1]]),
            create("orders", 11, &[&[1], &[1]]),
        ]);
        assert_eq!(
            results[2],
            Err(ApplyError::TopicNameExists {
                name: "orders".into()
            })
        );
        assert!(image.topic_by_id(Uuid::from_u128(11)).is_none());
        assert_eq!(image.topic_by_name("orders").unwrap().partitions.len(), 1);
        assert_eq!(image.skipped_records_total(), 1);
        let skipped: Vec<_> = image.recent_skipped().collect();
        assert_eq!(skipped[0].offset, 2);
        assert!(skipped[0]
            .reason
            .starts_with("CreateTopic: topic orders already exists"));
    }

    #[test]
    fn invalid_assignments_are_skipped_with_their_reason() {
        let cases = [
            (
                create("t", 10, &[&[1], &[9]]),
                ApplyError::UnregisteredReplica {
                    partition: 1,
                    broker_id: 9,
                },
            ),
            (
                create("t", 10, &[&[]]),
                ApplyError::EmptyReplicaList { partition: 0 },
            ),
            (
                create("t", 10, &[&[1, 1]]),
                ApplyError::DuplicateReplica {
                    partition: 0,
                    broker_id: 1,
                },
            ),
            (
                create("t", 10, &[&[1], &[1, 2]]),
                ApplyError::InconsistentReplicationFactor {
                    partition: 1,
                    replicas: 2,
                    expected: 1,
                },
            ),
            (create("t", 10, &[]), ApplyError::NoPartitions),
            (create("", 10, &[&[1]]), ApplyError::EmptyTopicName),
            (create("t", 0, &[&[1]]), ApplyError::NilTopicId),
        ];
        for (record, expected) in cases {
            let (image, results) = apply_all(&[register(1, 1), register(2, 1), record]);
            assert_eq!(results[2], Err(expected));
            assert_eq!(image.topics().count(), 0);
        }
    }

    #[test]
    fn create_partitions_keeps_the_replication_factor_and_numbers_after_the_existing() {
        let grow = |replicas: &[&[i32]]| MetadataRecord::CreatePartitions {
            topic_id: Uuid::from_u128(10),
            new_partitions: replicas
                .iter()
                .map(|r| PartitionAssignment {
                    replicas: r.to_vec(),
                })
                .collect(),
        };
        let (image, results) = apply_all(&[
            register(1, 1),
            register(2, 1),
            create("t", 10, &[&[1, 2]]),
            grow(&[&[2]]),
            grow(&[&[2, 1], &[1, 2]]),
        ]);
        assert_eq!(
            results[3],
            Err(ApplyError::InconsistentReplicationFactor {
                partition: 1,
                replicas: 1,
                expected: 2
            })
        );
        assert_eq!(results[4], Ok(()));
        let partitions: Vec<_> = image
            .topic_by_name("t")
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect();
        assert_eq!(partitions, vec![vec![1, 2], vec![2, 1], vec![1, 2]]);
    }

    #[test]
    fn a_late_unregistration_of_an_earlier_incarnation_does_not_fence_the_restarted_broker() {
        let unregister = |incarnation| MetadataRecord::UnregisterBroker {
            broker_id: 1,
            incarnation_id: Uuid::from_u128(incarnation),
        };
        let (image, results) = apply_all(&[register(1, 1), register(1, 2), unregister(1)]);
        assert!(matches!(
            results[2],
            Err(ApplyError::StaleIncarnation { .. })
        ));
        assert_eq!(image.broker(1).unwrap().incarnation_id, Uuid::from_u128(2));

        let (image, results) = apply_all(&[register(1, 1), register(1, 2), unregister(2)]);
        assert_eq!(results[2], Ok(()));
        assert!(image.broker(1).is_none());
    }

    #[test]
    fn delete_topic_frees_its_name_and_drops_its_leader_hints() {
        let (image, results) = apply_all(&[
            register(1, 1),
            create("t", 10, &[&[1]]),
            MetadataRecord::LeaderHint {
                topic_id: Uuid::from_u128(10),
                partition: 0,
                leader: 1,
                leader_epoch: 3,
            },
            MetadataRecord::DeleteTopic {
                topic_id: Uuid::from_u128(10),
            },
            MetadataRecord::DeleteTopic {
                topic_id: Uuid::from_u128(10),
            },
            create("t", 11, &[&[1]]),
        ]);
        assert_eq!(
            results[4],
            Err(ApplyError::UnknownTopicId {
                topic_id: Uuid::from_u128(10)
            })
        );
        assert_eq!(results[5], Ok(()));
        assert_eq!(
            image.topic_by_name("t").unwrap().topic_id,
            Uuid::from_u128(11)
        );
        assert_eq!(image.leader_hint(Uuid::from_u128(10), 0), None);
    }

    #[test]
    fn leader_hints_only_move_forward_in_epoch() {
        let hint = |leader, leader_epoch| MetadataRecord::LeaderHint {
            topic_id: Uuid::from_u128(10),
            partition: 0,
            leader,
            leader_epoch,
        };
        let (image, results) = apply_all(&[
            register(1, 1),
            register(2, 1),
            create("t", 10, &[&[1, 2]]),
            hint(2, 5),
            hint(1, 4),
            hint(1, 5),
            hint(3, 6),
        ]);
        assert_eq!(results[3], Ok(()));
        assert_eq!(
            results[4],
            Err(ApplyError::StaleLeaderHint {
                leader_epoch: 4,
                hinted_epoch: 5
            })
        );
        assert_eq!(
            results[5],
            Err(ApplyError::StaleLeaderHint {
                leader_epoch: 5,
                hinted_epoch: 5
            })
        );
        assert!(matches!(
            results[6],
            Err(ApplyError::LeaderNotAReplica { leader: 3, .. })
        ));
        assert_eq!(
            image.leader_hint(Uuid::from_u128(10), 0),
            Some(AdvisoryLeader {
                leader: 2,
                leader_epoch: 5
            })
        );
    }

    #[test]
    fn producer_id_blocks_are_consecutive() {
        let block = |first_producer_id, size| MetadataRecord::ProducerIdBlock {
            broker_id: 1,
            incarnation_id: Uuid::from_u128(9),
            first_producer_id,
            size,
        };
        let (image, results) = apply_all(&[
            register(1, 1),
            block(0, 1000),
            block(0, 1000),
            block(1000, 0),
            block(1000, 1000),
        ]);
        assert_eq!(
            results[2],
            Err(ApplyError::ProducerIdBlockNotNext {
                first_producer_id: 0,
                next_producer_id: 1000
            })
        );
        assert!(matches!(
            results[3],
            Err(ApplyError::InvalidProducerIdBlock { .. })
        ));
        assert_eq!(results[4], Ok(()));
        assert_eq!(image.next_producer_id(), 2000);
    }

    #[test]
    fn replayed_offsets_change_nothing() {
        let (mut image, _) = apply_all(&[register(1, 1), register(2, 1)]);
        let before = image.clone();
        assert_eq!(
            image.apply(1, &register(3, 1)),
            Err(ApplyError::OffsetNotAfterLastApplied {
                offset: 1,
                last_applied_offset: 1
            })
        );
        assert_eq!(image, before);
    }

    #[test]
    fn the_skip_memory_is_bounded() {
        let mut image = MetadataImage::default();
        for offset in 0..100 {
            let _ = image.apply(
                offset,
                &MetadataRecord::DeleteTopic {
                    topic_id: Uuid::from_u128(1),
                },
            );
        }
        assert_eq!(image.skipped_records_total(), 100);
        assert_eq!(image.recent_skipped().count(), SKIPPED_RECORDS_KEPT);
        assert_eq!(
            image.recent_skipped().next().unwrap().offset,
            100 - SKIPPED_RECORDS_KEPT as u64
        );
    }

    #[test]
    fn long_skip_reasons_are_cut_on_a_character_boundary() {
        let mut reason = "é".repeat(SKIP_REASON_BYTES_MAX);
        truncate_at_char_boundary(&mut reason, SKIP_REASON_BYTES_MAX - 1);
        assert_eq!(reason.len(), SKIP_REASON_BYTES_MAX - 2);
    }

    proptest! {
        #[test]
        fn brokers_applying_the_same_log_end_in_the_same_image(log in arb_log()) {
            let a = image_of(&log);
            let b = image_of(&log);
            prop_assert_eq!(&a, &b);
            // Record by record, compared after every step: `a` applies the records the
            // controller built, `b` what a broker reads back from the log's bytes.
            let mut a = MetadataImage::default();
            let mut b = MetadataImage::default();
            for (offset, record) in log.iter().enumerate() {
                let read_back = MetadataRecord::decode(record.encode().unwrap()).unwrap();
                prop_assert_eq!(a.apply(offset as u64, record), b.apply(offset as u64, &read_back));
                prop_assert_eq!(&a, &b);
            }
        }

        #[test]
        fn a_skipped_record_changes_nothing_but_the_offset_and_the_skip_count(log in arb_log()) {
            let mut image = MetadataImage::default();
            for (offset, record) in log.iter().enumerate() {
                let before = image.clone();
                let result = image.apply(offset as u64, record);
                prop_assert_eq!(image.check_invariants(), Ok(()));
                if result.is_err() {
                    let mut normalized = image.clone();
                    normalized.last_applied_offset = before.last_applied_offset;
                    normalized.skipped_records_total = before.skipped_records_total;
                    normalized.recent_skipped = before.recent_skipped.clone();
                    prop_assert_eq!(&normalized, &before, "{:?} half-applied", record);
                    prop_assert_eq!(image.skipped_records_total(), before.skipped_records_total() + 1);
                }
            }
        }

        #[test]
        fn replicas_of_lists_exactly_the_partitions_naming_the_broker(log in arb_log(), broker_id in 0..5i32) {
            let image = image_of(&log);
            let hosted = image.replicas_of(broker_id);
            let expected = image
                .topics()
                .flat_map(|t| t.partitions.iter().filter(|p| p.replicas.contains(&broker_id)))
                .count();
            prop_assert_eq!(hosted.len(), expected);
            for replica in hosted {
                let topic = image.topic_by_id(replica.topic_id).unwrap();
                prop_assert_eq!(&topic.name, &replica.name);
                prop_assert_eq!(&topic.partitions[replica.partition as usize].replicas, &replica.replicas);
            }
        }
    }
}
