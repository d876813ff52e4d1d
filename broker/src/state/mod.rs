//! Broker state: the live topics and their partition replicas, behind the
//! [`PartitionManager`].
//!
//! What is on disk about topics (metadata files, cluster id, their crash rules) is
//! [`topic_meta`]'s; the manager decides when to write it: a topic's metadata file
//! is written before its partition directories are created and removed before they
//! are deleted.

pub mod topic_config;
pub mod topic_meta;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use rill_storage::{LogConfig, PartitionLog, StorageError};
use uuid::Uuid;

use crate::config::Config;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::replica::engine::{Engine, EngineConfig};
use crate::replica::Partition;
use topic_config::TopicConfig;
use topic_meta::TopicMeta;

/// Longest legal topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most partitions one topic may have.
pub const PARTITIONS_MAX: i32 = 10_000;
/// How long topic creation and start-up wait for a partition's group to elect its
/// leader before answering anyway.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most threads that open one topic's partition logs at once (see
/// [`PartitionManager::open_logs`]).
const LOG_OPEN_THREADS: usize = 8;

/// A topic and its partitions. Immutable: CreatePartitions replaces the `Arc<Topic>`.
#[derive(Debug)]
pub struct Topic {
    /// Topic name.
    pub name: String,
    /// Topic id (Metadata v10+, Fetch v13+).
    pub id: Uuid,
    /// Effective configs.
    pub config: TopicConfig,
    /// Partitions, index = partition number: the replica this broker hosts, `None` for
    /// a partition of a cluster topic whose replicas are on other brokers.
    pub partitions: Vec<Option<Arc<Partition>>>,
}

impl Topic {
    /// The partitions this broker hosts a replica of.
    pub fn hosted(&self) -> impl Iterator<Item = &Arc<Partition>> {
        self.partitions.iter().flatten()
    }
}

/// Owns every topic and partition of this broker.
#[derive(Debug)]
pub struct PartitionManager {
    /// Held (flock) for the manager's life: one broker per data directory.
    _data_dir_lock: std::fs::File,
    config: Arc<Config>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes topic creation, deletion and partition changes (rare; they do file
    /// I/O, so an async mutex).
    admin: tokio::sync::Mutex<()>,
    /// The cluster id, created on first start and kept in the data directory.
    pub cluster_id: String,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The persist loop and timer of the data directory's Raft groups.
    pub engine: Arc<Engine>,
    /// In a cluster (`controller_voters` set): the metadata group and controller, which
    /// own topic creation; unset on a single node.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Producer ids this broker hands out (InitProducerId).
    pub producer_ids: crate::producer_ids::ProducerIds,
}

/// Checks a topic name the way Kafka does.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(BrokerError::InvalidTopic(format!(
            "`{name}` is not a topic name"
        )));
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(BrokerError::InvalidTopic(format!(
            "name longer than {TOPIC_NAME_BYTES_MAX} bytes"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(BrokerError::InvalidTopic(format!(
            "`{name}` has characters other than [a-zA-Z0-9._-]"
        )));
    }
    Ok(())
}

/// CreatePartitions' rule: the new count must be above the current one and at most
/// [`PARTITIONS_MAX`].
pub fn check_partition_growth(name: &str, current: i32, count: i32) -> Result<(), BrokerError> {
    if count <= current {
        return Err(BrokerError::InvalidPartitions(format!(
            "topic {name} has {current} partitions; the new count {count} must be larger"
        )));
    }
    if count > PARTITIONS_MAX {
        return Err(BrokerError::InvalidPartitions(format!(
            "{count} is more than {PARTITIONS_MAX}"
        )));
    }
    Ok(())
}

/// Maps a storage append error to the Kafka error a producer gets.
pub fn append_error(e: StorageError) -> BrokerError {
    match e {
        StorageError::CorruptBatch { .. } => BrokerError::CorruptMessage(e.to_string()),
        StorageError::BatchTooLarge {
            batch_bytes,
            segment_bytes,
        } => BrokerError::MessageTooLarge {
            size_bytes: batch_bytes,
            max_bytes: segment_bytes as i64,
        },
        other => BrokerError::Storage(other.to_string()),
    }
}

fn storage_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(e.to_string())
}

/// A random (v4) UUID: topic ids and the cluster id.
fn new_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

impl PartitionManager {
    /// Opens the data directory: loads every topic and opens its partition logs,
    /// removing partition directories of topics that no longer exist.
    pub fn open(config: Arc<Config>) -> Result<PartitionManager, BrokerError> {
        let metrics = Arc::new(Metrics::default());
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        let meta_dir = config.topics_dir();
        if !meta_dir.exists() {
            std::fs::create_dir_all(&meta_dir).map_err(|e| {
                BrokerError::Storage(format!("cannot create {}: {e}", meta_dir.display()))
            })?;
            // Durable before any topic file in it is (a power loss must not take
            // `meta/` and every topic with it).
            rill_storage::atomic_file::sync_dir(&config.data_dir)
                .map_err(|e| BrokerError::Storage(e.to_string()))?;
        }
        let fresh_data_dir = topic_meta::check_node_id(&meta_dir, config.node_id)?;
        let cluster_id = match config.configured_cluster_id() {
            Some(id) => id,
            None => topic_meta::load_cluster_id(&meta_dir)?,
        };
        let engine = Engine::start(
            &meta_dir,
            EngineConfig {
                durability: config.durability,
                flush_interval: std::time::Duration::from_millis(config.flush_interval_ms),
                debug_flush_delay: std::time::Duration::from_millis(config.debug_flush_delay_ms),
                debug_deferred_sync_delay: std::time::Duration::from_millis(
                    config.debug_deferred_sync_delay_ms,
                ),
                data_dir: config.data_dir.clone(),
                journal_bytes: config.journal_bytes,
                producer_snapshot_interval: std::time::Duration::from_millis(
                    config.producer_snapshot_interval_ms,
                ),
            },
            Arc::clone(&metrics),
        )?;
        if fresh_data_dir {
            engine.mark_fresh_data_dir();
        }
        let producer_ids = crate::producer_ids::ProducerIds::new(&config.data_dir);
        let manager = PartitionManager {
            engine,
            _data_dir_lock: data_dir_lock,
            config,
            topics: RwLock::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
            cluster_id,
            metrics,
            cluster: std::sync::OnceLock::new(),
            producer_ids,
        };
        let mut topics = HashMap::new();
        for meta in topic_meta::load_all(&meta_dir)? {
            let topic = manager.open_topic(&meta)?;
            topics.insert(meta.name.clone(), Arc::new(topic));
        }
        if manager.config.controller_voters.is_empty() {
            // In a cluster, topics come from the metadata log, replayed after start-up:
            // a directory without a topic file is not an orphan there.
            manager.remove_orphans(&topics)?;
        }
        tracing::info!(topics = topics.len(), "loaded topics");
        if let Err(e) = manager.check_free_space() {
            // Not fatal: existing partitions are served; only new ones are refused.
            tracing::warn!(error = %e, "low disk space at start-up");
        }
        *manager.topics.write().expect("topics lock") = topics;
        Ok(manager)
    }

    fn open_topic(&self, meta: &TopicMeta) -> Result<Topic, BrokerError> {
        let config = TopicConfig::new(&self.config.topic_defaults, meta.configs.clone())
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        let id = Uuid::parse_str(&meta.id)
            .map_err(|e| BrokerError::Storage(format!("topic {}: bad id: {e}", meta.name)))?;
        let logs = self.open_logs(&meta.name, meta.partitions, &config)?;
        let mut partitions = Vec::with_capacity(logs.len());
        for (index, log) in (0..).zip(logs) {
            let dir = self.config.partition_dir(&meta.name, index);
            let opened = log
                .map_err(|e| BrokerError::Storage(format!("{}: {e}", dir.display())))
                .and_then(|log| {
                    self.start_replica(&meta.name, id, index, log, &[self.config.node_id])
                });
            match opened {
                Ok(partition) => partitions.push(Some(partition)),
                Err(e) => {
                    // Stop the replicas already started before anyone removes their
                    // directories.
                    for partition in partitions.iter().flatten() {
                        partition.close_blocking();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Topic {
            name: meta.name.clone(),
            id,
            config,
            partitions,
        })
    }

    fn log_config(&self, config: &TopicConfig) -> LogConfig {
        LogConfig {
            segment_bytes: config.segment_bytes as u64,
            segment_ms: Some(config.segment_ms as u64),
            // A compact-only topic keeps its (compacted) history: retention applies
            // with `delete` in the policy, as in Kafka.
            retention_ms: (config.retention_ms >= 0 && config.is_deleted_by_retention())
                .then_some(config.retention_ms),
            retention_bytes: (config.retention_bytes >= 0 && config.is_deleted_by_retention())
                .then_some(config.retention_bytes as u64),
            // Checked against 1..=i32::MAX by the topic config.
            index_interval_bytes: config.index_interval_bytes.clamp(1, i64::from(u32::MAX)) as u32,
            ..LogConfig::default()
        }
    }

    /// Opens (or creates) the logs of partitions `0..partitions` of `topic`, on up to
    /// [`LOG_OPEN_THREADS`] threads at once: a new partition's directory, first segment and
    /// checkpoints cost several fsyncs, and one after another the 50 partitions of
    /// `__consumer_offsets` took 1.2 s (a group's first request waits for them), while
    /// fsyncs of different files overlap. Results are in partition order.
    fn open_logs(
        &self,
        topic: &str,
        partitions: i32,
        config: &TopicConfig,
    ) -> Result<Vec<Result<PartitionLog, StorageError>>, BrokerError> {
        let dirs: Vec<std::path::PathBuf> = (0..partitions.max(0))
            .map(|index| self.config.partition_dir(topic, index))
            .collect();
        let log_config = self.log_config(config);
        if dirs.len() <= 1 {
            return Ok(dirs
                .iter()
                .map(|dir| PartitionLog::open(dir, log_config.clone()))
                .collect());
        }
        let chunk = dirs.len().div_ceil(LOG_OPEN_THREADS);
        std::thread::scope(|scope| {
            let workers: Vec<_> = dirs
                .chunks(chunk)
                .map(|dirs| {
                    let log_config = log_config.clone();
                    scope.spawn(move || {
                        dirs.iter()
                            .map(|dir| PartitionLog::open(dir, log_config.clone()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut logs = Vec::with_capacity(dirs.len());
            for worker in workers {
                logs.extend(worker.join().map_err(|_| {
                    BrokerError::Storage(format!("opening the logs of {topic} panicked"))
                })?);
            }
            Ok(logs)
        })
    }

    fn open_partition(
        &self,
        topic: &str,
        topic_id: Uuid,
        index: i32,
        config: &TopicConfig,
    ) -> Result<Arc<Partition>, BrokerError> {
        let dir = self.config.partition_dir(topic, index);
        self.open_partition_with(topic, topic_id, index, config, &[self.config.node_id], &dir)
    }

    /// Starts the replica of `topic`-`index` over its opened `log`.
    fn start_replica(
        &self,
        topic: &str,
        topic_id: Uuid,
        index: i32,
        log: PartitionLog,
        voters: &[i32],
    ) -> Result<Arc<Partition>, BrokerError> {
        Partition::open(
            topic.to_string(),
            index,
            topic_id,
            log,
            Arc::clone(&self.engine),
            self.config.node_id,
            voters,
            Arc::clone(&self.metrics),
        )
    }

    fn open_partition_with(
        &self,
        topic: &str,
        topic_id: Uuid,
        index: i32,
        config: &TopicConfig,
        voters: &[i32],
        dir: &Path,
    ) -> Result<Arc<Partition>, BrokerError> {
        let log = PartitionLog::open(dir, self.log_config(config))
            .map_err(|e| BrokerError::Storage(format!("{}: {e}", dir.display())))?;
        self.start_replica(topic, topic_id, index, log, voters)
    }

    /// Waits until every given replica leads with a current high watermark (a group
    /// of one elects itself within two sync rounds), so a client's first produce after
    /// CreateTopics or a restart finds a leader.
    pub async fn wait_leaders(&self, partitions: &[Arc<Partition>]) {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut waiting = 0;
        for partition in partitions {
            // A directory out of space or offline elects nobody until that changes.
            if self.engine.is_short_of_space() || self.engine.is_offline() {
                waiting += 1;
                continue;
            }
            if !partition.wait_leader_ready(deadline).await {
                waiting += 1;
            }
        }
        if waiting > 0 {
            tracing::warn!(
                partitions = waiting,
                "partitions without a leader yet; clients retry"
            );
        }
    }

    /// Removes `<topic>-<n>` directories that belong to no loaded topic.
    fn remove_orphans(&self, topics: &HashMap<String, Arc<Topic>>) -> Result<(), BrokerError> {
        for entry in std::fs::read_dir(&self.config.data_dir).map_err(storage_error)? {
            let entry = entry.map_err(storage_error)?;
            if !entry.file_type().map_err(storage_error)?.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((topic, index)) = name.rsplit_once('-') else {
                continue;
            };
            let Ok(index) = index.parse::<i32>() else {
                continue;
            };
            let live = topics
                .get(topic)
                .is_some_and(|t| (index as usize) < t.partitions.len());
            if !live && validate_topic_name(topic).is_ok() {
                tracing::warn!(dir = %entry.path().display(), "removing partition directory of a deleted topic");
                std::fs::remove_dir_all(entry.path()).map_err(storage_error)?;
            }
        }
        Ok(())
    }

    /// The broker configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    /// A topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self
            .topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A partition by topic name and index.
    pub fn partition(&self, topic: &str, index: i32) -> Option<(Arc<Topic>, Arc<Partition>)> {
        let topic = self.topic(topic)?;
        let partition = usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .cloned()
            .flatten()?;
        Some((topic, partition))
    }

    /// A partition this broker hosts, by topic name and index: UNKNOWN_TOPIC_OR_PARTITION
    /// for a topic or partition that does not exist, NOT_LEADER_OR_FOLLOWER for a
    /// partition of a cluster topic whose replicas are on other brokers (the client
    /// refreshes its metadata and goes to the leader).
    pub fn hosted_partition(
        &self,
        topic: &str,
        index: i32,
    ) -> Result<(Arc<Topic>, Arc<Partition>), BrokerError> {
        let topic = self
            .topic(topic)
            .ok_or(BrokerError::UnknownTopicOrPartition)?;
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .ok_or(BrokerError::UnknownTopicOrPartition)?;
        match slot {
            Some(partition) => {
                let partition = Arc::clone(partition);
                Ok((topic, partition))
            }
            None => Err(BrokerError::NotLeaderOrFollower),
        }
    }

    /// Creates a topic (or, with `validate_only`, checks that it could be created).
    /// `partitions` -1 means `default_partitions`.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        self.create_topic_assigned(
            name,
            partitions,
            replication_factor,
            None,
            configs,
            validate_only,
        )
        .await
    }

    /// [`PartitionManager::create_topic`] with the replica assignment given in the
    /// request, if any (then `partitions` is its length). Only a cluster takes one;
    /// the API handler checks a single node's.
    pub async fn create_topic_assigned(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        assignments: Option<Vec<Vec<i32>>>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        validate_topic_name(name)?;
        let partitions = if partitions == -1 {
            self.config.default_partitions
        } else {
            partitions
        };
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(BrokerError::InvalidPartitions(format!(
                "{partitions} is outside 1..={PARTITIONS_MAX}"
            )));
        }
        if let Some(cluster) = self.cluster.get() {
            TopicConfig::new(&self.config.topic_defaults, configs.clone())
                .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
            let _admin = self.admin.lock().await;
            self.check_free_space()?;
            cluster
                .create_topic(
                    name,
                    partitions,
                    replication_factor,
                    assignments,
                    configs,
                    validate_only,
                )
                .await?;
            return match self.topic(name) {
                Some(topic) => Ok(topic),
                // validate_only: nothing was created.
                None => Ok(Arc::new(Topic {
                    name: name.to_string(),
                    id: Uuid::nil(),
                    config: TopicConfig::new(&self.config.topic_defaults, BTreeMap::new())
                        .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?,
                    partitions: Vec::new(),
                })),
            };
        }
        if replication_factor != -1 && replication_factor != 1 {
            return Err(BrokerError::InvalidReplicationFactor(format!(
                "replication factor {replication_factor} > 1 available broker"
            )));
        }
        let config = TopicConfig::new(&self.config.topic_defaults, configs.clone())
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        let _admin = self.admin.lock().await;
        self.check_free_space()?;
        if let Some(existing) = self.topic(name) {
            if validate_only {
                return Err(BrokerError::TopicAlreadyExists(name.to_string()));
            }
            return Err(BrokerError::TopicAlreadyExists(existing.name.clone()));
        }
        let id = new_uuid();
        if validate_only {
            return Ok(Arc::new(Topic {
                name: name.to_string(),
                id,
                config,
                partitions: Vec::new(),
            }));
        }
        let meta = TopicMeta {
            name: name.to_string(),
            id: id.to_string(),
            partitions,
            configs,
        };
        // File work (metadata file, partition directories, first segments) steps off
        // the runtime.
        let started = std::time::Instant::now();
        let opened = crate::runtime::off_runtime(|| {
            topic_meta::write(&self.config.topics_dir(), &meta)?;
            Ok::<_, BrokerError>(self.open_topic(&meta))
        })?;
        let topic = match opened {
            Ok(topic) => Arc::new(topic),
            Err(e) => {
                // All or nothing: a topic whose partitions cannot all be created leaves
                // nothing behind (a full disk on the fifth of ten partitions must not leave
                // a topic file and four half-made partitions).
                topic_meta::undo_create(&self.config, &meta);
                return Err(e);
            }
        };
        let open_ms = started.elapsed().as_millis() as u64;
        let hosted: Vec<Arc<Partition>> = topic.hosted().cloned().collect();
        self.wait_leaders(&hosted).await;
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), Arc::clone(&topic));
        // The two phases' times: a topic of many partitions (`__consumer_offsets`, made on
        // a group's first request) delays that group by both.
        tracing::info!(
            topic = name,
            partitions,
            open_ms,
            leaders_ms = started.elapsed().as_millis() as u64 - open_ms,
            "created topic"
        );
        Ok(topic)
    }

    /// Joins the cluster: topic creation goes through `cluster` from now on.
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster this broker belongs to, if it is not a cluster of one.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// A topic of the metadata image: opens the replicas the image assigns to this
    /// broker (each partition's group over `replicas[i]`) that are not open yet —
    /// all of a new topic's, or those of partitions added since. Every topic gets an
    /// entry, hosting a replica or not, so requests for it are told where to go.
    /// Blocking (file work); the metadata applier calls it.
    pub fn ensure_replicated_topic(
        &self,
        name: &str,
        id: Uuid,
        configs: BTreeMap<String, String>,
        replicas: &[Vec<i32>],
    ) -> Result<(), BrokerError> {
        let existing = self.topic(name);
        if let Some(existing) = &existing {
            if existing.id != id {
                // The name now belongs to another topic: the old one's deletion was
                // applied in the same read as this creation.
                self.remove_replicated_topic(name, existing.id);
            } else {
                if existing.config.overrides != configs {
                    self.replace_topic_config(existing, configs.clone())?;
                }
                if existing.partitions.len() >= replicas.len() {
                    return Ok(());
                }
            }
        }
        let existing = self.topic(name).filter(|t| t.id == id);
        let config = match &existing {
            Some(topic) => topic.config.clone(),
            None => TopicConfig::new(&self.config.topic_defaults, configs)
                .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?,
        };
        let mut partitions: Vec<Option<Arc<Partition>>> = existing
            .as_ref()
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        let first_new = partitions.len();
        let me = self.config.node_id;
        for (index, voters) in replicas.iter().enumerate().skip(first_new) {
            if !voters.contains(&me) {
                partitions.push(None);
                continue;
            }
            let dir = crate::config::replica_dir(&self.config.data_dir, name, index as i32, id);
            match self.open_partition_with(name, id, index as i32, &config, voters, &dir) {
                Ok(partition) => partitions.push(Some(partition)),
                Err(e) => {
                    for partition in partitions[first_new..].iter().flatten() {
                        partition.close_blocking();
                    }
                    return Err(e);
                }
            }
        }
        let hosted = partitions[first_new..].iter().flatten().count();
        let topic = Arc::new(Topic {
            name: name.to_string(),
            id,
            config,
            partitions,
        });
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), topic);
        tracing::info!(
            topic = name,
            partitions = replicas.len(),
            new_partitions = replicas.len() - first_new,
            hosted_here = hosted,
            "opened the replicas of a cluster topic"
        );
        Ok(())
    }

    /// Alters a topic's config overrides: `change` computes the new set from the current
    /// config (under the admin lock, so two alterations never lose one another's keys).
    /// In a cluster the controller proposes the new set through the metadata log and
    /// every broker applies it ([`PartitionManager::ensure_replicated_topic`]); on a single
    /// node the topic's metadata file is rewritten. Either way every hosted replica's log
    /// takes the new values at once. With `validate_only` nothing changes.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        change: impl FnOnce(&TopicConfig) -> Result<BTreeMap<String, String>, BrokerError>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or(BrokerError::UnknownTopicOrPartition)?;
        let overrides = change(&topic.config)?;
        let config = TopicConfig::new(&self.config.topic_defaults, overrides.clone())
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        // What the storage layer would refuse is refused here, before anything is stored.
        self.log_config(&config)
            .validate()
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        if let Some(cluster) = self.cluster.get() {
            return cluster
                .alter_topic_configs(name, overrides, validate_only)
                .await;
        }
        if validate_only || overrides == topic.config.overrides {
            return Ok(());
        }
        let meta = TopicMeta {
            name: name.to_string(),
            id: topic.id.to_string(),
            partitions: topic.partitions.len() as i32,
            configs: overrides.clone(),
        };
        crate::runtime::off_runtime(|| topic_meta::write(&self.config.topics_dir(), &meta))?;
        self.replace_topic_config(&topic, overrides)?;
        tracing::info!(topic = name, "altered topic configs");
        Ok(())
    }

    /// Gives `topic` the config built from `overrides`: every hosted replica's log takes
    /// the new values, and the topic entry is replaced.
    fn replace_topic_config(
        &self,
        topic: &Topic,
        overrides: BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let config = TopicConfig::new(&self.config.topic_defaults, overrides)
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
        let log_config = self.log_config(&config);
        for partition in topic.hosted() {
            partition.set_log_config(log_config.clone())?;
        }
        let updated = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            config,
            partitions: topic.partitions.clone(),
        });
        let mut topics = self.topics.write().expect("topics lock");
        // Only if the topic is still the one changed (not deleted or re-created meanwhile).
        if topics.get(&topic.name).is_some_and(|t| t.id == topic.id) {
            topics.insert(topic.name.clone(), updated);
        }
        Ok(())
    }

    /// A topic the metadata log deleted: closes its replicas here and removes their
    /// directories. Blocking (file work); the metadata applier calls it.
    pub fn remove_replicated_topic(&self, name: &str, id: Uuid) {
        let removed = {
            let mut topics = self.topics.write().expect("topics lock");
            match topics.get(name) {
                Some(topic) if topic.id == id => topics.remove(name),
                _ => None,
            }
        };
        let Some(topic) = removed else { return };
        for partition in topic.hosted() {
            partition.close_blocking();
        }
        // Mapped segments still referenced by in-flight fetches stay valid after unlink.
        for partition in topic.hosted() {
            let dir = crate::config::replica_dir(&self.config.data_dir, name, partition.index, id);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted topic's replica");
            }
        }
        tracing::info!(
            topic = name,
            "removed the replicas of a deleted cluster topic"
        );
    }

    /// Removes replica directories (`<topic>-<n>.<topic id>`) of the topics in
    /// `deleted`: replicas of topics deleted while this broker was down, whose deletion
    /// the metadata applier met while replaying the log. Blocking.
    pub fn remove_stale_replicas(&self, deleted: &std::collections::HashSet<Uuid>) {
        let Ok(entries) = std::fs::read_dir(&self.config.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((partition, id)) = name.rsplit_once('.') else {
                continue;
            };
            let Ok(id) = Uuid::try_parse(id) else {
                continue;
            };
            let Some((topic, index)) = partition.rsplit_once('-') else {
                continue;
            };
            if index.parse::<i32>().is_err() || validate_topic_name(topic).is_err() {
                continue;
            }
            if deleted.contains(&id) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::warn!(dir = %entry.path().display(), "removing the replica of a deleted topic");
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove it");
                }
            }
        }
    }

    /// Returns the topic, creating it with the default partition count when
    /// auto-creation is on.
    pub async fn get_or_auto_create(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if !self.config.auto_create_topics {
            return Err(BrokerError::UnknownTopicOrPartition);
        }
        match self
            .create_topic(name, -1, -1, BTreeMap::new(), false)
            .await
        {
            Ok(topic) => Ok(topic),
            // Lost a race with another creator: use theirs.
            Err(BrokerError::TopicAlreadyExists(_)) => {
                self.topic(name).ok_or(BrokerError::UnknownTopicOrPartition)
            }
            // In a cluster only the controller creates; a client asking another broker
            // sees the topic once it exists (Kafka answers the same while it is made).
            Err(BrokerError::NotController) => Err(BrokerError::UnknownTopicOrPartition),
            Err(e) => Err(e),
        }
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<Uuid, BrokerError> {
        if let Some(cluster) = self.cluster.get() {
            let _admin = self.admin.lock().await;
            return cluster.delete_topic(name).await;
        }
        let _admin = self.admin.lock().await;
        let topic = self
            .topics
            .write()
            .expect("topics lock")
            .remove(name)
            .ok_or(BrokerError::UnknownTopicOrPartition)?;
        crate::runtime::off_runtime(|| topic_meta::remove(&self.config.topics_dir(), name))?;
        // No append or flush may touch the directories from here on.
        for partition in topic.hosted() {
            partition.close().await;
        }
        // Partition directories go after the metadata file is durably gone; mapped
        // segments still referenced by in-flight fetches stay valid after unlink.
        crate::runtime::off_runtime(|| {
            for partition in topic.hosted() {
                let dir = self.config.partition_dir(name, partition.index);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove partition directory; removed at next start");
                }
            }
        });
        tracing::info!(topic = name, "deleted topic");
        Ok(topic.id)
    }

    /// Raises a topic's partition count to `count`.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        self.create_partitions_assigned(name, count, None, validate_only)
            .await
    }

    /// [`PartitionManager::create_partitions`] with the new partitions' replica
    /// assignment given in the request, if any. Only a cluster takes one; the API
    /// handler checks a single node's.
    pub async fn create_partitions_assigned(
        &self,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        if let Some(cluster) = self.cluster.get() {
            let _admin = self.admin.lock().await;
            self.check_free_space()?;
            return cluster
                .create_partitions(name, count, assignments, validate_only)
                .await;
        }
        let _admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or(BrokerError::UnknownTopicOrPartition)?;
        let current = topic.partitions.len() as i32;
        check_partition_growth(name, current, count)?;
        self.check_free_space()?;
        if validate_only {
            return Ok(());
        }
        let meta = TopicMeta {
            name: name.to_string(),
            id: topic.id.to_string(),
            partitions: count,
            configs: topic.config.overrides.clone(),
        };
        let mut partitions = topic.partitions.clone();
        crate::runtime::off_runtime(|| {
            topic_meta::write(&self.config.topics_dir(), &meta)?;
            for index in current..count {
                partitions.push(Some(self.open_partition(
                    name,
                    topic.id,
                    index,
                    &topic.config,
                )?));
            }
            Ok::<_, BrokerError>(())
        })?;
        let added: Vec<Arc<Partition>> = partitions[current as usize..]
            .iter()
            .flatten()
            .cloned()
            .collect();
        self.wait_leaders(&added).await;
        let updated = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            config: topic.config.clone(),
            partitions,
        });
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), updated);
        Ok(())
    }

    /// Refuses new partitions while the data directory's file system has less than
    /// `log_dir_free_bytes_min` available, so that a client creating hundreds of
    /// topics runs into a clear error long before a full disk fails every produce.
    ///
    /// KAFKA_STORAGE_ERROR rather than POLICY_VIOLATION: the cause is the state of
    /// the log directory, not the request (the same request succeeds once space is
    /// freed), and Kafka clients treat it as retriable, which is what it is.
    /// Checked before anything is written, so a refused creation leaves no trace.
    fn check_free_space(&self) -> Result<(), BrokerError> {
        let free_min_bytes = self.config.log_dir_free_bytes_min;
        if free_min_bytes == 0 {
            return Ok(());
        }
        let dir = &self.config.data_dir;
        let stat = rustix::fs::statvfs(dir).map_err(|e| {
            BrokerError::Storage(format!("cannot stat file system of {}: {e}", dir.display()))
        })?;
        // f_bavail: blocks available to an unprivileged process (ext4 keeps a reserve
        // for root that rilld should not count on).
        let free_bytes = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free_bytes < free_min_bytes {
            return Err(BrokerError::Storage(format!(
                "data directory {} has {free_bytes} bytes free, below \
                 log_dir_free_bytes_min ({free_min_bytes}): new partitions are refused \
                 until space is freed",
                dir.display()
            )));
        }
        Ok(())
    }

    /// Every partition of every topic.
    pub fn all_partitions(&self) -> Vec<(Arc<Topic>, Arc<Partition>)> {
        self.topics()
            .into_iter()
            .flat_map(|t| {
                t.hosted()
                    .map(|p| (Arc::clone(&t), Arc::clone(p)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Shutdown: stops the persist loop, syncs every partition and records the
    /// commit hints.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        let engine = Arc::clone(&self.engine);
        let result = tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .map_err(|e| BrokerError::Storage(format!("shutdown task: {e}")))?;
        // After the last sync: peers stop hearing from this broker.
        if let Some(cluster) = self.cluster.get() {
            cluster.close().await;
        }
        result
    }

    /// Applies retention to every partition.
    pub fn apply_retention(&self, now_ms: i64) {
        let expiration_ms = self.config().producer_id_expiration_ms as i64;
        for (_, partition) in self.all_partitions() {
            partition.apply_retention(now_ms);
            partition.expire_producers(now_ms, expiration_ms);
        }
    }
}

/// Takes an exclusive `flock` on `<data_dir>/.lock`, so a second broker on the same
/// data directory fails at start-up instead of corrupting it. The kernel drops the
/// lock when the process dies, SIGKILL included, so a restart never finds it stale.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, BrokerError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| BrokerError::Storage(format!("cannot create {}: {e}", data_dir.display())))?;
    let path = data_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BrokerError::Storage(format!("{}: {e}", path.display())))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| {
            BrokerError::Storage(format!(
                "data_dir {} is in use by another rilld ({}: {e})",
                data_dir.display(),
                path.display()
            ))
        },
    )?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(data_dir: &Path, log_dir_free_bytes_min: u64) -> PartitionManager {
        let config = Config {
            data_dir: data_dir.to_path_buf(),
            log_dir_free_bytes_min,
            ..Config::default()
        };
        PartitionManager::open(Arc::new(config)).unwrap()
    }

    #[tokio::test]
    async fn a_topic_whose_partitions_cannot_all_be_created_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let manager = manager(&data_dir, 0);
        // The fourth of six partition directories cannot be made: a plain file holds its name.
        let blocker = manager.config().partition_dir("half", 3);
        std::fs::write(&blocker, b"in the way").unwrap();
        let err = manager
            .create_topic("half", 6, 1, BTreeMap::new(), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 56, "KAFKA_STORAGE_ERROR: {err}");
        assert!(manager.topic("half").is_none());
        assert!(!manager.config().topics_dir().join("half.topic").exists());
        for index in [0, 1, 2, 4, 5] {
            let partition = manager.config().partition_dir("half", index);
            assert!(!partition.exists(), "{} left behind", partition.display());
        }
        // A restart finds a consistent directory, and the name can be used once the
        // obstacle is gone.
        drop(manager);
        std::fs::remove_file(&blocker).unwrap();
        let manager = self::manager(&data_dir, 0);
        assert!(manager.topic("half").is_none());
        manager
            .create_topic("half", 6, 1, BTreeMap::new(), false)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn below_log_dir_free_bytes_min_new_partitions_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        {
            let manager = manager(&data_dir, 0);
            manager
                .create_topic("kept", 1, 1, BTreeMap::new(), false)
                .await
                .unwrap();
        }
        // More than any file system has available.
        let manager = manager(&data_dir, u64::MAX);
        let refused = manager
            .create_partitions("kept", 3, false)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), 56, "KAFKA_STORAGE_ERROR: {refused}");
        assert!(refused.to_string().contains("log_dir_free_bytes_min"));
        assert_eq!(manager.topic("kept").unwrap().partitions.len(), 1);
        assert!(!data_dir.join("kept-1").exists());

        for validate_only in [true, false] {
            let refused = manager
                .create_topic("new", 2, 1, BTreeMap::new(), validate_only)
                .await
                .unwrap_err();
            assert_eq!(refused.code(), 56, "{refused}");
        }
        assert!(manager.topic("new").is_none());
        assert!(!data_dir.join("new-0").exists());
        assert!(!data_dir.join("meta").join("new.topic").exists());
        // Existing partitions keep working.
        assert!(manager.partition("kept", 0).is_some());
    }
}
