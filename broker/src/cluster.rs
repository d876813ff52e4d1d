//! The cluster driver: this broker's replica of the metadata group, the applier that
//! turns its committed log into the [`MetadataImage`] and local replicas, and the
//! controller's proposals when this broker leads the metadata group.
//!
//! The metadata group is a Raft group like any partition's, over the configured
//! `controller_voters`, driven by the same persist loop and transport; its log lives in
//! `<data_dir>/meta/cluster-metadata-0` as Kafka record batches whose record values are
//! encoded [`MetadataRecord`]s. Every broker applies the committed log in order (thread
//! `rill-metadata`), so all of them hold the same image and create the same replicas,
//! each group with the voters its assignment names.
//!
//! The controller is whichever broker leads the metadata group. It registers the
//! brokers it hears from (itself, and each peer's handshake) and serves CreateTopics:
//! it places the replicas, proposes the record, and answers once its own applier has
//! created the topic. Other brokers answer NOT_CONTROLLER, and Metadata names the
//! controller, so clients retry there.
//!
//! Limits of this first cluster: every broker hosts every partition (the replication
//! factor is the number of registered brokers), CreatePartitions is refused, and the
//! in-sync replica list is the replica list.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rill_storage::batch::{encode_uncompressed, RecordSpec};
use rill_storage::{LogConfig, PartitionLog};
use tokio::sync::watch;
use uuid::Uuid;

use crate::controller::image::{MetadataImage, TopicImage};
use crate::controller::placement::assign_replicas;
use crate::controller::record::{MetadataRecord, PartitionAssignment};
use crate::error::BrokerError;
use crate::replica::{BatchCounts, Partition};
use crate::state::PartitionManager;
use crate::transport::{BrokerRegistrationInfo, Transport};

/// Topic id of the metadata group (never a client topic's: those are random v4 ids).
pub const METADATA_TOPIC_ID: Uuid = Uuid::from_u128(1);
/// Name the metadata group's replica carries in logs and metrics.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// Where the metadata log lives, under the data directory (inside `meta/`, so the
/// start-up sweep of partition directories never sees it).
const METADATA_DIR: &str = "meta/cluster-metadata-0";
/// How often the controller checks for brokers to register.
const REGISTER_INTERVAL: Duration = Duration::from_millis(200);
/// How long a controller change waits for its record to be committed and applied.
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// How long CreateTopics waits for the new partitions' leaders before answering.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Bytes the applier reads from the metadata log at a time.
const READ_BYTES_MAX: usize = 1 << 20;

/// What this broker tells the cluster about itself: the registration its handshakes
/// send peers, under its id and inter-broker address.
#[derive(Debug, Clone)]
pub struct SelfRegistration {
    /// `node_id`.
    pub broker_id: i32,
    /// Client address, rack and incarnation (as in the transport's handshake).
    pub registration: BrokerRegistrationInfo,
    /// `inter_broker_listen`.
    pub inter_broker: SocketAddr,
}

/// This broker's part of the cluster (see the module docs).
#[derive(Debug)]
pub struct Cluster {
    me: SelfRegistration,
    voters: Vec<(i32, SocketAddr)>,
    metadata: Arc<Partition>,
    image: RwLock<MetadataImage>,
    /// End offset of the metadata log applied so far.
    applied_end: watch::Sender<u64>,
    manager: Arc<PartitionManager>,
    transport: Arc<Transport>,
}

impl Cluster {
    /// Opens this broker's metadata replica and starts the applier thread and the
    /// controller's registration task. The engine must be connected to `transport`.
    pub fn start(
        manager: Arc<PartitionManager>,
        transport: Arc<Transport>,
        me: SelfRegistration,
    ) -> Result<Arc<Cluster>, BrokerError> {
        let config = manager.config().clone();
        let voters = config.controller_voters.clone();
        let dir = config.data_dir.join(METADATA_DIR);
        let log = PartitionLog::open(&dir, LogConfig::default())
            .map_err(|e| BrokerError::Storage(format!("{}: {e}", dir.display())))?;
        let voter_ids: Vec<i32> = voters.iter().map(|(id, _)| *id).collect();
        let metadata = Partition::open(
            METADATA_TOPIC.to_string(),
            0,
            METADATA_TOPIC_ID,
            log,
            Arc::clone(&manager.engine),
            config.node_id,
            &voter_ids,
            Arc::clone(&manager.metrics),
        )?;
        let cluster = Arc::new(Cluster {
            me,
            voters,
            metadata,
            image: RwLock::new(MetadataImage::default()),
            applied_end: watch::Sender::new(0),
            manager,
            transport,
        });
        let applier = Arc::clone(&cluster);
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("rill-metadata".into())
            .spawn(move || applier.apply_loop(&runtime))
            .map_err(|e| BrokerError::Storage(format!("cannot start the metadata applier: {e}")))?;
        tokio::spawn(Arc::clone(&cluster).register_loop());
        if config.leader_balance_interval_ms > 0 {
            tokio::spawn(crate::balancer::balance_loop(
                Arc::clone(&cluster.manager),
                Arc::clone(&cluster.transport),
                Duration::from_millis(config.leader_balance_interval_ms),
            ));
        }
        Ok(cluster)
    }

    /// Controlled shutdown: hands every group this broker leads (its partitions and
    /// the metadata group) to caught-up replicas on live brokers, waiting at most
    /// `within` (see [`crate::balancer::hand_off`]). Returns how many it still leads.
    pub async fn hand_off_leaderships(&self, within: Duration) -> usize {
        self.manager.engine.set_stopping();
        let mut groups: Vec<Arc<Partition>> = self
            .manager
            .all_partitions()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        groups.push(Arc::clone(&self.metadata));
        crate::balancer::hand_off(&groups, &self.transport, within).await
    }

    /// The broker id of the controller (the metadata group's leader), if known.
    pub fn controller_id(&self) -> Option<i32> {
        self.metadata.status().leader
    }

    /// Whether this broker is the controller and may propose changes.
    fn is_controller(&self) -> bool {
        self.metadata.status().leader_ready
    }

    /// The registered brokers: (id, client host, client port).
    pub fn brokers(&self) -> Vec<(i32, String, u16)> {
        let image = self.image.read().expect("image lock");
        image
            .brokers()
            .map(|b| (b.broker_id, b.client_host.clone(), b.client_port))
            .collect()
    }

    /// The replicas of a partition, as the metadata assigned them.
    pub fn replicas(&self, topic_id: Uuid, partition: i32) -> Option<Vec<i32>> {
        let image = self.image.read().expect("image lock");
        let topic = image.topic_by_id(topic_id)?;
        Some(topic.partitions.get(partition as usize)?.replicas.clone())
    }

    /// CreateTopics at the controller: places the replicas on every registered broker,
    /// proposes the topic and returns once this broker has created it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        if !self.is_controller() {
            return Err(BrokerError::NotController);
        }
        let (record, topic_id) = {
            let image = self.image.read().expect("image lock");
            if image.topic_by_name(name).is_some() {
                return Err(BrokerError::TopicAlreadyExists(name.to_string()));
            }
            let brokers = image.placement_brokers();
            let factor = if replication_factor == -1 {
                brokers.len() as i16
            } else {
                replication_factor
            };
            if factor as usize != brokers.len() {
                return Err(BrokerError::InvalidReplicationFactor(format!(
                    "{factor} with {} brokers: this version hosts every partition on every \
                     broker (replication factor = cluster size, or -1)",
                    brokers.len()
                )));
            }
            let assignments =
                assign_replicas(&brokers, partitions, factor, 0, &image.replica_lists())
                    .map_err(|e| BrokerError::InvalidReplicationFactor(e.to_string()))?;
            let topic_id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            let record = MetadataRecord::CreateTopic {
                name: name.to_string(),
                topic_id,
                configs,
                partitions: assignments
                    .into_iter()
                    .map(|replicas| PartitionAssignment { replicas })
                    .collect(),
            };
            (record, topic_id)
        };
        if validate_only {
            return Ok(());
        }
        self.propose(&record).await?;
        match self.manager.topic(name) {
            Some(topic) if topic.id == topic_id => {
                // Answer once every partition has elected a leader, on any broker, so
                // the client's next Metadata finds them.
                let deadline = tokio::time::Instant::now() + LEADER_WAIT;
                for partition in &topic.partitions {
                    if !partition.wait_leader_known(deadline).await {
                        tracing::warn!(
                            topic = name,
                            partition = partition.index,
                            "no leader yet; clients retry"
                        );
                    }
                }
                Ok(())
            }
            // The applier skipped it (another creation of the name got in first).
            _ => Err(BrokerError::TopicAlreadyExists(name.to_string())),
        }
    }

    /// Appends `record` to the metadata log and waits until this broker applied it.
    async fn propose(&self, record: &MetadataRecord) -> Result<(), BrokerError> {
        let value = record
            .encode()
            .map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
        let batch = metadata_batch(&value);
        let appended = self.metadata.append(
            &batch,
            BatchCounts {
                batches: 1,
                offsets: 1,
            },
        )?;
        self.metadata.wait_acknowledgeable(&appended).await?;
        let end = (appended.last_offset + 1) as u64;
        let mut applied = self.applied_end.subscribe();
        tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= end))
            .await
            .map_err(|_| BrokerError::RequestTimedOut)?
            .map_err(|_| BrokerError::RequestTimedOut)?;
        Ok(())
    }

    /// The controller's loop: registers itself and every peer whose handshake it has
    /// seen, when the image lacks them or holds another incarnation.
    async fn register_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REGISTER_INTERVAL);
        loop {
            tick.tick().await;
            if self.metadata.is_closed() {
                return;
            }
            if !self.is_controller() {
                continue;
            }
            for record in self.missing_registrations() {
                if let Err(e) = self.propose(&record).await {
                    tracing::debug!(error = %e, "broker registration not committed");
                    break;
                }
            }
        }
    }

    /// Registrations the image lacks or holds for another incarnation: this broker's
    /// own, and each peer's as its handshake announced it (at the address
    /// `controller_voters` gives it).
    fn missing_registrations(&self) -> Vec<MetadataRecord> {
        let image = self.image.read().expect("image lock");
        let mut out = Vec::new();
        let me = &self.me;
        let mut known: Vec<(i32, BrokerRegistrationInfo, SocketAddr)> =
            vec![(me.broker_id, me.registration.clone(), me.inter_broker)];
        for (id, info) in self.transport.peer_registrations() {
            if let Some((_, addr)) = self.voters.iter().find(|(v, _)| *v == id) {
                known.push((id, info, *addr));
            }
        }
        for (broker_id, info, inter_broker) in known {
            if image
                .broker(broker_id)
                .is_some_and(|b| b.incarnation_id == info.incarnation_id)
            {
                continue;
            }
            out.push(MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id: info.incarnation_id,
                client_host: info.client_host,
                client_port: info.client_port,
                inter_broker_host: inter_broker.ip().to_string(),
                inter_broker_port: inter_broker.port(),
                rack: info.rack,
            });
        }
        out
    }

    /// The applier thread: applies every newly committed metadata record, then makes
    /// the local replicas match the image.
    fn apply_loop(self: Arc<Self>, runtime: &tokio::runtime::Handle) {
        let mut status = self.metadata.watch_status();
        let mut next_offset: i64 = 0;
        loop {
            let commit = status.borrow_and_update().commit_offset;
            if commit > next_offset {
                match self.apply_committed(next_offset, commit) {
                    Ok(end) => {
                        next_offset = end;
                        self.applied_end.send_replace(end as u64);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "metadata log unreadable: applier stops");
                        return;
                    }
                }
                continue;
            }
            if self.metadata.is_closed() || runtime.block_on(status.changed()).is_err() {
                return;
            }
        }
    }

    /// Applies the records of `[from, to)`; returns the end reached.
    fn apply_committed(&self, from: i64, to: i64) -> Result<i64, BrokerError> {
        let mut offset = from;
        while offset < to {
            let read = self.metadata.read(offset, READ_BYTES_MAX)?;
            if read.records.is_empty() {
                break;
            }
            let mut changed = false;
            for view in rill_record::batches(&read.records) {
                let view = view.map_err(|e| BrokerError::Storage(e.to_string()))?;
                let next = view.next_offset();
                if next <= offset {
                    continue;
                }
                if !view.is_control() {
                    let records = view
                        .records()
                        .map_err(|e| BrokerError::Storage(e.to_string()))?;
                    for record in records {
                        let record = record.map_err(|e| BrokerError::Storage(e.to_string()))?;
                        let Some(value) = record.value else { continue };
                        let value = read.records.slice_ref(value);
                        match MetadataRecord::decode(value) {
                            Ok(decoded) => {
                                let mut image = self.image.write().expect("image lock");
                                if let Err(e) = image.apply(record.offset as u64, &decoded) {
                                    tracing::warn!(offset = record.offset, error = %e, "metadata record skipped");
                                }
                                changed = true;
                            }
                            Err(e) => {
                                tracing::error!(offset = record.offset, error = %e, "undecodable metadata record skipped");
                            }
                        }
                    }
                }
                offset = next;
            }
            if changed {
                self.reconcile();
            }
        }
        Ok(offset)
    }

    /// Creates the replicas the image assigns to this broker and removes those of
    /// deleted topics.
    fn reconcile(&self) {
        let topics: Vec<TopicImage> = {
            let image = self.image.read().expect("image lock");
            image.topics().cloned().collect()
        };
        for topic in topics {
            let TopicImage {
                name,
                topic_id,
                configs,
                partitions,
            } = topic;
            let replicas: Vec<Vec<i32>> = partitions.into_iter().map(|p| p.replicas).collect();
            if !replicas.iter().all(|r| r.contains(&self.me.broker_id)) {
                tracing::warn!(topic = %name, "topic not hosted here: this version hosts every partition on every broker");
                continue;
            }
            if let Err(e) = self
                .manager
                .ensure_replicated_topic(&name, topic_id, configs, &replicas)
            {
                tracing::error!(topic = %name, error = %e, "cannot create the topic's replicas");
            }
        }
    }

    /// Stops the metadata replica (the applier thread ends with it).
    pub async fn close(&self) {
        self.metadata.close().await;
        self.transport.shutdown().await;
    }
}

/// One uncompressed batch holding one record whose value is `value`.
fn metadata_batch(value: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(value.len() + 128);
    let record = RecordSpec {
        timestamp_ms: crate::clock::now_ms(),
        key: None,
        value: Some(value),
    };
    encode_uncompressed(&mut out, 0, -1, &[record]);
    Bytes::from(out)
}
