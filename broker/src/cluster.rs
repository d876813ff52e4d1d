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
//! Topics in a cluster behave as in Kafka:
//!
//! * **Replicas on a subset of brokers.** CreateTopics honours `replication_factor`
//!   (-1 = [`DEFAULT_REPLICATION_FACTOR`] capped at the registered brokers; more than
//!   the registered brokers is INVALID_REPLICATION_FACTOR) or the request's explicit
//!   assignment (checked: every broker registered, none twice, all partitions the same
//!   size, else INVALID_REPLICA_ASSIGNMENT). Placement spreads replicas and preferred
//!   leaders ([`assign_replicas`]). Each broker opens only the replicas assigned to it,
//!   in `<topic>-<partition>.<topic id>` directories
//!   ([`crate::config::replica_dir`]), so a topic created again under an old name never
//!   meets a replica of the old one.
//! * **DeleteTopics, CreatePartitions and (Incremental)AlterConfigs** are served by the
//!   controller like CreateTopics (others answer NOT_CONTROLLER): a `DeleteTopic`,
//!   `CreatePartitions` or `AlterTopicConfigs` record, after which every broker's applier
//!   removes or opens its replicas, or gives them the topic's new configs. A
//!   broker that was down during a deletion removes the directories when its applier
//!   replays the deletion.
//! * **Leaders and in-sync replicas known everywhere.** Each partition leader reports
//!   its leader epoch and in-sync replicas to every broker (see [`crate::leadership`]
//!   for the protocol, why it does not go through the metadata log, and the ISR rule
//!   with `replica_lag_time_max_ms`). Metadata answers from the metadata image
//!   (topics, replicas) and the freshest leadership known: this broker's own replica's
//!   Raft state or the latest report, whichever has the higher epoch. A partition with
//!   no known leader, or whose reported leader's broker has been silent on the
//!   inter-broker transport for a second, is answered LEADER_NOT_AVAILABLE. A replica that does not lead
//!   reports the ISR from its leader's latest report, or the whole replica list before
//!   one arrives.
//! * **Requests to the wrong broker.** Produce and Fetch for a partition this broker
//!   does not host, or hosts as a follower, get NOT_LEADER_OR_FOLLOWER with the current
//!   leader and its endpoint (KIP-951: Produce v10, Fetch v16 — the newest versions
//!   advertised) when it is known, so a client recovers with at most one refresh.
//!
//! * **Leadership on purpose**: a leader balancer and controlled shutdown
//!   ([`crate::balancer`]).
//!
//! * **A bounded metadata log.** After every `metadata_checkpoint_records` records the
//!   controller appends a [`MetadataRecord::Checkpoint`]: the whole image, encoded as a
//!   snapshot, appended under the controller's append lock and only when every record
//!   before it is applied, so it is exactly the state after them. Applying it, each
//!   broker deletes its metadata segments wholly below it and starts a new segment
//!   (the log keeps about two checkpoint intervals). A replica whose log starts after
//!   offset 0 — restarted on a trimmed log, or reset by the leader to its log start
//!   because it fell behind (a wiped broker) — applies nothing before the first
//!   checkpoint it reads and then replaces its image with it. A broker that had applied
//!   the same records and holds a different image logs an error (the images diverged;
//!   the checkpoint wins).
//!
//!   The image remembers the last 10,000 deleted topics' ids, so a broker that was
//!   down across a deletion whose record has since been trimmed still removes that
//!   topic's replica directories when it applies the checkpoint.
//!
//! * **Brokers outside `controller_voters`** (KRaft's observers) are learners of the
//!   metadata group. Such a broker opens its metadata replica with the configured
//!   voters as its membership (so it is not a voter: it never campaigns and never
//!   counts for the quorum) and connects to the voters. Its handshake announces its
//!   inter-broker address, which the controller registers with the rest of its
//!   registration; every broker applying a registration adds the broker to its
//!   transport's peers (voters stay at their configured addresses), and leadership
//!   reports go to every registered broker. The controller then adds each registered
//!   broker that is not a member of the metadata group as a learner
//!   (`MembershipChange::AddLearner`, one at a time), so its leader replicates the
//!   metadata log (or, behind a trimmed log, the checkpoint at its start) to it. A
//!   registered learner is eligible for placement like any broker.
//!
//!   Membership survives restarts: membership entries are control batches of the
//!   metadata log, and the metadata replica reads them on open
//!   (`PartitionStore::recover_memberships`). Entries trimmed away below a checkpoint
//!   are not needed: a replica whose log holds none starts with the voters, and the
//!   controller adds any registered broker missing from its membership again, so a
//!   controller restarted on a trimmed log re-adds its learners within one
//!   registration tick. Members disagreeing about learners is harmless: only the
//!   voters (fixed) elect and commit.
//!
//!   A learner that is down stays registered and a learner however long it is gone
//!   (as Kafka keeps registered brokers): the leader keeps probing it (so the metadata
//!   group does not go quiet meanwhile, one group's ticks), and when it returns it
//!   catches up from the log or, if the log was trimmed past it, from the checkpoint at
//!   the log start; on an empty data directory it starts as any fresh learner.
//!   Learners are never promoted to voters: the voters are `controller_voters`.
//!
//! Limits: assignments never change after creation (no reassignment).
//!
//! # Broker identity: duplicates, stale incarnations, rejoining
//!
//! A broker id is a Raft voter in every group it hosts, so two processes must never
//! speak for one id. Every process start draws a random incarnation id, announced in
//! its transport handshakes. The rules (details in `transport::identity`):
//!
//! * **Registration order fences.** The controller registers a peer's incarnation when
//!   the image lacks it or holds another one, but only while that incarnation has a live
//!   session at the controller (an open connection heard from within the transport's
//!   `session_timeout_ms`, 3 s; idle connections carry keepalives). Every broker applies
//!   the registration in log order and from then on refuses the incarnation it replaced:
//!   its handshakes get a StaleIncarnation refusal and its open connections close at their
//!   next frame, so a zombie (a process stopped, replaced, then resumed) can send no Raft
//!   message. The zombie learns it from the refusal and exits with an error naming its id
//!   and the incarnation that replaced it.
//! * **A live session is never replaced.** While an incarnation's session is live at a
//!   broker, a handshake of another incarnation with the same id (and not the registered
//!   one) is refused as DUPLICATE_BROKER_REGISTRATION. A restart after a crash is admitted
//!   at once (the dead process's connections closed with it); a second process started
//!   with the id of a running broker is refused, and exits once it has been refused for
//!   two session timeouts in a row. A broker that restarts while its old process is merely
//!   silent (stopped, cut off) is admitted once that session times out, and fences it.
//! * **Wiped data directories rejoin without double votes.** A broker started on an
//!   empty data directory recreates `meta/node.json` and its metadata replica, catches the
//!   metadata log up from the controller, recreates its replicas, and those catch up from
//!   their leaders (reset to the leader's log start when retention moved it). It is not a
//!   duplicate: its old incarnation is gone, so it is registered like any restart. Its
//!   lost terms and votes are handled by the replica engine's vote restraint
//!   (`replica::engine`): a peer's handshake tells it the cluster knew it, and until each
//!   replica has caught up with a leader and waited two election timeouts it grants no
//!   vote and never campaigns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_storage::batch::{encode_uncompressed, RecordSpec};
use rill_storage::{LogConfig, PartitionLog};
use tokio::sync::watch;
use uuid::Uuid;

use crate::controller::image::{MetadataImage, TopicImage};
use crate::controller::placement::assign_replicas;
use crate::controller::record::{MetadataRecord, PartitionAssignment};
use crate::controller::REPLICAS_PER_PARTITION_MAX;
use crate::error::BrokerError;
use crate::leadership::{
    encode_reports, report_envelope, IsrTracker, LeaderReport, LeadershipTable,
    REPORTS_PER_MESSAGE_MAX,
};
use crate::replica::hard_state::ReplicaKey;
use crate::replica::store::raft_node_id;
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
/// Segment size of the metadata log. Each broker also starts a new segment at every
/// checkpoint it applies, so the segments before the previous checkpoint can go.
const METADATA_SEGMENT_BYTES: u64 = 1 << 20;
/// How often the controller looks whether a checkpoint is due.
const CHECKPOINT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The replication factor of a topic created with -1, when that many brokers are
/// registered (Kafka's `default.replication.factor` is 1; 3 is what every production
/// cluster sets, and a replicated log should replicate by default).
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;
/// Leaders report every partition at least this often (changes at once, and everything
/// when a peer broker connects), so a broker that missed a report learns within this
/// long.
const FULL_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest and longest time between two ISR samples (a quarter of the lag bound in
/// between: 2 s by default). A sample locks each led partition's Raft state, so with
/// thousands of partitions it is kept rare.
const SAMPLE_INTERVAL_MIN: Duration = Duration::from_millis(50);
const SAMPLE_INTERVAL_MAX: Duration = Duration::from_secs(2);
/// A reported leader whose broker the transport has not heard from (keepalives come
/// every 200 ms) for this long is not named in Metadata.
const LEADER_SILENCE: Duration = Duration::from_secs(1);
/// How often a leader looks for partitions it newly leads (reading their status only),
/// so other brokers learn a new leader within this long of its election.
const LEADERSHIP_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Producer-id block requests from peers queued at most (more are dropped; a peer
/// asks again every second while it waits).
const PRODUCER_ID_REQUESTS_QUEUED_MAX: usize = 64;

/// One partition as Metadata and the CLI describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// The leader, when known.
    pub leader: Option<i32>,
    /// Its epoch (-1 when unknown).
    pub leader_epoch: i32,
    /// The assigned replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// The in-sync replicas (see the module docs).
    pub isr: Vec<i32>,
}

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
    /// Every partition's leader and ISR as reported (see [`crate::leadership`]).
    leadership: Arc<LeadershipTable>,
    /// Topic ids whose deletion the applier has applied (their replica directories are
    /// removed when met).
    deleted: Mutex<HashSet<Uuid>>,
    /// Peers silent for [`LEADER_SILENCE`], and when that was computed.
    silent: Mutex<(Option<Instant>, HashSet<i32>)>,
    /// Held by the controller around each append to the metadata log, so a checkpoint
    /// is appended right after the records its image covers, with nothing between.
    append_lock: tokio::sync::Mutex<()>,
    /// Metadata records applied since the last checkpoint (or this start).
    records_since_checkpoint: AtomicU64,
    /// Held by the controller around each producer-id block allocation (propose and
    /// apply), so each block starts where the applied image says the previous ended.
    producer_ids_lock: tokio::sync::Mutex<()>,
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
        // No time or size retention: only checkpoints trim the metadata log.
        let log_config = LogConfig {
            segment_bytes: METADATA_SEGMENT_BYTES,
            retention_ms: None,
            retention_bytes: None,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&dir, log_config)
            .map_err(|e| BrokerError::Storage(format!("{}: {e}", dir.display())))?;
        let voter_ids: Vec<i32> = voters.iter().map(|(id, _)| *id).collect();
        let metadata = Partition::open_with_changing_membership(
            METADATA_TOPIC.to_string(),
            0,
            METADATA_TOPIC_ID,
            log,
            Arc::clone(&manager.engine),
            config.node_id,
            &voter_ids,
            Arc::clone(&manager.metrics),
        )?;
        let leadership = Arc::new(LeadershipTable::default());
        manager.engine.set_leadership(Arc::clone(&leadership));
        let cluster = Arc::new(Cluster {
            me,
            voters,
            metadata,
            image: RwLock::new(MetadataImage::default()),
            applied_end: watch::Sender::new(0),
            manager,
            transport,
            leadership,
            deleted: Mutex::new(HashSet::new()),
            silent: Mutex::new((None, HashSet::new())),
            append_lock: tokio::sync::Mutex::new(()),
            records_since_checkpoint: AtomicU64::new(0),
            producer_ids_lock: tokio::sync::Mutex::new(()),
        });
        // Peers' requests for producer-id blocks (served while this broker controls).
        let (requests_tx, requests_rx) =
            tokio::sync::mpsc::channel(PRODUCER_ID_REQUESTS_QUEUED_MAX);
        cluster.manager.engine.set_producer_id_requests(requests_tx);
        tokio::spawn(Arc::clone(&cluster).producer_id_request_loop(requests_rx));
        let applier = Arc::clone(&cluster);
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("rill-metadata".into())
            .spawn(move || applier.apply_loop(&runtime))
            .map_err(|e| BrokerError::Storage(format!("cannot start the metadata applier: {e}")))?;
        tokio::spawn(Arc::clone(&cluster).register_loop());
        tokio::spawn(Arc::clone(&cluster).checkpoint_loop());
        tokio::spawn(Arc::clone(&cluster).report_loop());
        if config.leader_balance_interval_ms > 0 {
            tokio::spawn(crate::balancer::balance_loop(
                Arc::clone(&cluster.manager),
                Arc::clone(&cluster.transport),
                Duration::from_millis(config.leader_balance_interval_ms),
            ));
        }
        Ok(cluster)
    }

    /// Becomes `Some(reason)` once this process may no longer speak for its broker id
    /// (see the module docs); the broker must stop.
    pub fn fenced(&self) -> watch::Receiver<Option<String>> {
        self.transport.fenced()
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

    /// Where the next producer-id block starts: every id below was handed to some
    /// broker.
    pub fn next_producer_id(&self) -> i64 {
        self.image.read().expect("image lock").next_producer_id()
    }

    /// Asks for a block of producer ids for this process, without waiting: the
    /// controller allocates one for itself at once; another broker sends the request to
    /// the controller. The block arrives through the metadata applier
    /// ([`crate::producer_ids`]).
    pub fn request_producer_ids(self: &Arc<Self>) {
        let me = self.me.broker_id;
        let incarnation_id = self.me.registration.incarnation_id;
        if self.is_controller() {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.allocate_producer_ids(me, incarnation_id).await });
        } else if let Some(controller) = self.controller_id() {
            let envelope =
                crate::leadership::producer_ids_request_envelope(me, controller, incarnation_id);
            if let Err(e) = self.transport.send(controller, envelope) {
                tracing::debug!(controller, error = %e, "producer id request not sent");
            }
        }
    }

    /// The controller's loop serving peers' producer-id block requests.
    async fn producer_id_request_loop(
        self: Arc<Self>,
        mut requests: tokio::sync::mpsc::Receiver<(i32, Uuid)>,
    ) {
        while let Some((broker_id, incarnation_id)) = requests.recv().await {
            if self.metadata.is_closed() {
                return;
            }
            if self.is_controller() {
                self.allocate_producer_ids(broker_id, incarnation_id).await;
            }
        }
    }

    /// At the controller: proposes the next producer-id block for `incarnation_id` of
    /// `broker_id`, if that is the incarnation the image registers (a fenced process
    /// gets nothing), and waits until it is applied.
    async fn allocate_producer_ids(&self, broker_id: i32, incarnation_id: Uuid) {
        let _one_at_a_time = self.producer_ids_lock.lock().await;
        let record = {
            let image = self.image.read().expect("image lock");
            if image.broker(broker_id).map(|b| b.incarnation_id) != Some(incarnation_id) {
                tracing::debug!(broker_id, %incarnation_id, "producer ids not allocated: not the registered incarnation");
                return;
            }
            MetadataRecord::ProducerIdBlock {
                broker_id,
                incarnation_id,
                first_producer_id: image.next_producer_id(),
                size: crate::producer_ids::PRODUCER_ID_BLOCK_SIZE,
            }
        };
        match self.propose(&record).await {
            Ok(()) => tracing::debug!(?record, "producer id block allocated"),
            Err(e) => tracing::debug!(broker_id, error = %e, "producer id block not committed"),
        }
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

    /// The replication factor -1 stands for: [`DEFAULT_REPLICATION_FACTOR`], or the
    /// number of registered brokers when fewer.
    pub fn default_replication_factor(&self) -> i16 {
        let image = self.image.read().expect("image lock");
        image.brokers().count().min(DEFAULT_REPLICATION_FACTOR) as i16
    }

    /// Checks a replica assignment given in a request against the registered brokers.
    fn check_assignment(
        image: &MetadataImage,
        assignments: &[Vec<i32>],
        replication_factor: Option<usize>,
    ) -> Result<(), BrokerError> {
        let bad = |message: String| Err(BrokerError::InvalidReplicaAssignment(message));
        let size = replication_factor.or(assignments.first().map(Vec::len));
        for (index, replicas) in assignments.iter().enumerate() {
            if replicas.is_empty() || replicas.len() > REPLICAS_PER_PARTITION_MAX {
                return bad(format!(
                    "partition {index}: {} replicas, 1..={REPLICAS_PER_PARTITION_MAX} allowed",
                    replicas.len()
                ));
            }
            if Some(replicas.len()) != size {
                return bad(format!(
                    "partition {index} has {} replicas; every partition must have {}",
                    replicas.len(),
                    size.unwrap_or(0)
                ));
            }
            let mut seen = HashSet::new();
            for broker in replicas {
                if !seen.insert(*broker) {
                    return bad(format!("partition {index}: broker {broker} listed twice"));
                }
                if image.broker(*broker).is_none() {
                    return bad(format!(
                        "partition {index}: broker {broker} is not registered"
                    ));
                }
            }
        }
        Ok(())
    }

    /// CreateTopics at the controller: places the replicas (or checks `assignments`),
    /// proposes the topic and returns once every partition has a known leader (or
    /// [`LEADER_WAIT`] passed).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        assignments: Option<Vec<Vec<i32>>>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        if !self.is_controller() {
            return Err(BrokerError::NotController);
        }
        let (record, topic_id, count) = {
            let image = self.image.read().expect("image lock");
            if image.topic_by_name(name).is_some() {
                return Err(BrokerError::TopicAlreadyExists(name.to_string()));
            }
            let assignments = match assignments {
                Some(assignments) => {
                    Self::check_assignment(&image, &assignments, None)?;
                    assignments
                }
                None => {
                    let brokers = image.placement_brokers();
                    let factor = if replication_factor == -1 {
                        brokers.len().min(DEFAULT_REPLICATION_FACTOR) as i16
                    } else {
                        replication_factor
                    };
                    if factor < 1 || factor as usize > brokers.len() {
                        return Err(BrokerError::InvalidReplicationFactor(format!(
                            "replication factor {factor} with {} registered brokers",
                            brokers.len()
                        )));
                    }
                    assign_replicas(&brokers, partitions, factor, 0, &image.replica_lists())
                        .map_err(|e| BrokerError::InvalidReplicationFactor(e.to_string()))?
                }
            };
            let topic_id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            let count = assignments.len() as i32;
            let record = MetadataRecord::CreateTopic {
                name: name.to_string(),
                topic_id,
                configs,
                partitions: assignments
                    .into_iter()
                    .map(|replicas| PartitionAssignment { replicas })
                    .collect(),
            };
            (record, topic_id, count)
        };
        if validate_only {
            return Ok(());
        }
        self.propose(&record).await?;
        match self.manager.topic(name) {
            Some(topic) if topic.id == topic_id => {
                self.wait_leaders(name, topic_id, 0..count).await;
                Ok(())
            }
            // The applier skipped it (another creation of the name got in first).
            _ => Err(BrokerError::TopicAlreadyExists(name.to_string())),
        }
    }

    /// Waits until the partitions have a reported leader, on any broker, so the
    /// client's next Metadata finds them; logs the ones still without one at
    /// [`LEADER_WAIT`].
    async fn wait_leaders(&self, name: &str, topic_id: Uuid, partitions: std::ops::Range<i32>) {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        if !self
            .leadership
            .wait_known(topic_id, partitions, deadline)
            .await
        {
            tracing::warn!(
                topic = name,
                "partitions without a leader yet; clients retry"
            );
        }
    }

    /// DeleteTopics at the controller: proposes the deletion; every broker removes its
    /// replicas when it applies it. Returns the deleted topic's id.
    pub async fn delete_topic(&self, name: &str) -> Result<Uuid, BrokerError> {
        if !self.is_controller() {
            return Err(BrokerError::NotController);
        }
        let topic_id = {
            let image = self.image.read().expect("image lock");
            image
                .topic_by_name(name)
                .ok_or(BrokerError::UnknownTopicOrPartition)?
                .topic_id
        };
        self.propose(&MetadataRecord::DeleteTopic { topic_id })
            .await?;
        tracing::info!(topic = name, %topic_id, "deleted topic");
        Ok(topic_id)
    }

    /// AlterConfigs / IncrementalAlterConfigs of a topic at the controller: proposes the
    /// topic's new set of config overrides (checked by the caller); every broker applies
    /// it to its replicas when it applies the record. Returns once this broker applied it.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        if !self.is_controller() {
            return Err(BrokerError::NotController);
        }
        let topic_id = {
            let image = self.image.read().expect("image lock");
            let topic = image
                .topic_by_name(name)
                .ok_or(BrokerError::UnknownTopicOrPartition)?;
            if topic.configs == configs {
                return Ok(());
            }
            topic.topic_id
        };
        if validate_only {
            return Ok(());
        }
        self.propose(&MetadataRecord::AlterTopicConfigs { topic_id, configs })
            .await?;
        tracing::info!(topic = name, %topic_id, "altered topic configs");
        Ok(())
    }

    /// CreatePartitions at the controller: places the new partitions' replicas (or
    /// checks `assignments`, one list per new partition), proposes them and returns once
    /// they have leaders.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
    ) -> Result<(), BrokerError> {
        if !self.is_controller() {
            return Err(BrokerError::NotController);
        }
        let (record, topic_id, current) = {
            let image = self.image.read().expect("image lock");
            let topic = image
                .topic_by_name(name)
                .ok_or(BrokerError::UnknownTopicOrPartition)?;
            let current = topic.partitions.len() as i32;
            crate::state::check_partition_growth(name, current, count)?;
            let factor = topic.partitions.first().map_or(1, |p| p.replicas.len());
            let new_partitions = match assignments {
                Some(assignments) => {
                    if assignments.len() as i32 != count - current {
                        return Err(BrokerError::InvalidReplicaAssignment(format!(
                            "{} assignments for {} new partitions",
                            assignments.len(),
                            count - current
                        )));
                    }
                    Self::check_assignment(&image, &assignments, Some(factor))?;
                    assignments
                }
                None => assign_replicas(
                    &image.placement_brokers(),
                    count - current,
                    factor as i16,
                    current,
                    &image.replica_lists(),
                )
                .map_err(|e| BrokerError::InvalidReplicationFactor(e.to_string()))?,
            };
            let record = MetadataRecord::CreatePartitions {
                topic_id: topic.topic_id,
                new_partitions: new_partitions
                    .into_iter()
                    .map(|replicas| PartitionAssignment { replicas })
                    .collect(),
            };
            (record, topic.topic_id, current)
        };
        if validate_only {
            return Ok(());
        }
        self.propose(&record).await?;
        self.wait_leaders(name, topic_id, current..count).await;
        Ok(())
    }

    /// How a partition is described to clients (see the module docs): `local` is this
    /// broker's replica of it, if it hosts one.
    pub fn describe_partition(
        &self,
        topic_id: Uuid,
        index: i32,
        local: Option<&Arc<Partition>>,
    ) -> PartitionView {
        let replicas = self.replicas(topic_id, index).unwrap_or_default();
        let reported = self.leadership.get(topic_id, index);
        let mut view = PartitionView {
            leader: None,
            leader_epoch: -1,
            replicas,
            isr: Vec::new(),
        };
        if let Some(known) = &reported {
            // A reported leader whose broker has gone silent is not named: clients
            // would only time out on it (Kafka answers LEADER_NOT_AVAILABLE while a
            // partition has no live leader). Its replicas elect another and report it.
            if !self.is_silent(known.leader) {
                view.leader = Some(known.leader);
                view.leader_epoch = known.leader_epoch;
                view.isr = known.isr.clone();
            }
        }
        if let Some(partition) = local {
            let status = partition.status();
            let epoch = partition.leader_epoch();
            let me = self.me.broker_id;
            // This replica names itself once its high watermark is current; a
            // follower names the leader it follows.
            let leader = match status.leader {
                Some(id) if status.leader_ready || id != me => Some(id),
                _ => None,
            };
            if leader.is_some() && epoch >= view.leader_epoch {
                let same_term = reported
                    .as_ref()
                    .is_some_and(|r| r.leader_epoch == epoch && Some(r.leader) == leader);
                view.leader = leader;
                view.leader_epoch = epoch;
                if !same_term {
                    // No report of this term yet: a new leader counts every follower
                    // in sync for one lag bound (see crate::leadership).
                    view.isr = view.replicas.clone();
                }
            }
        }
        if view.leader.is_none() {
            view.isr.clear();
        }
        view
    }

    /// Whether `broker` is another broker the transport has heard nothing from (not
    /// even keepalives) for [`LEADER_SILENCE`]. The set is refreshed at most every
    /// 100 ms, so a Metadata request over many partitions computes it once.
    fn is_silent(&self, broker: i32) -> bool {
        if broker == self.me.broker_id {
            return false;
        }
        let mut cached = self.silent.lock().expect("silent lock");
        let now = Instant::now();
        if cached
            .0
            .is_none_or(|at| now.duration_since(at) > Duration::from_millis(100))
        {
            *cached = (Some(now), self.transport.silent_peers(LEADER_SILENCE));
        }
        cached.1.contains(&broker)
    }

    /// The current leader of a partition, if known: for NOT_LEADER_OR_FOLLOWER answers.
    pub fn current_leader(&self, topic_id: Uuid, index: i32) -> Option<(i32, i32)> {
        let local = self
            .manager
            .topic_by_id(topic_id)
            .and_then(|t| t.partitions.get(index as usize).cloned().flatten());
        let view = self.describe_partition(topic_id, index, local.as_ref());
        view.leader.map(|leader| (leader, view.leader_epoch))
    }

    /// A registered broker's client endpoint: (host, port, rack).
    pub fn endpoint(&self, broker_id: i32) -> Option<(String, u16, Option<String>)> {
        let image = self.image.read().expect("image lock");
        image
            .broker(broker_id)
            .map(|b| (b.client_host.clone(), b.client_port, b.rack.clone()))
    }

    /// Every leader's task: samples its led partitions' Raft progress into in-sync
    /// replicas and reports them to every broker (see [`crate::leadership`]).
    async fn report_loop(self: Arc<Self>) {
        let lag_max = Duration::from_millis(self.manager.config().replica_lag_time_max_ms);
        let sample_interval = (lag_max / 4).clamp(SAMPLE_INTERVAL_MIN, SAMPLE_INTERVAL_MAX);
        let interval = sample_interval.min(LEADERSHIP_CHECK_INTERVAL);
        let samples_every = (sample_interval.as_millis() / interval.as_millis()).max(1) as u64;
        let mut ticks: u64 = 0;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trackers: HashMap<ReplicaKey, IsrTracker> = HashMap::new();
        let mut sent: HashMap<ReplicaKey, (i32, Vec<i32>)> = HashMap::new();
        let mut last_full: Option<Instant> = None;
        // A peer's handshake (a broker started or restarted) brings a full report
        // forward, so it learns every leader at once rather than within FULL_REPORT_INTERVAL.
        let mut registrations = self.transport.registrations_changed();
        let me = self.me.broker_id;
        loop {
            tick.tick().await;
            if self.metadata.is_closed() {
                return;
            }
            ticks += 1;
            let sampling = ticks % samples_every == 0;
            let now = Instant::now();
            let peer_joined = registrations.has_changed().unwrap_or(false);
            if peer_joined {
                registrations.mark_unchanged();
            }
            let full = peer_joined
                || last_full.is_none_or(|at| now.duration_since(at) >= FULL_REPORT_INTERVAL);
            // Every led partition's report, gathered on the ticks that need them all.
            let mut all = Vec::new();
            let mut changed = Vec::new();
            // Cheap for partitions not led here (most of them): one status read each.
            let topics = self.manager.topics();
            let hosted = topics.iter().flat_map(|t| t.hosted().map(move |p| (t, p)));
            for (topic, partition) in hosted {
                let status = partition.status();
                if !status.leader_ready || status.leader != Some(me) {
                    continue;
                }
                let key = partition.key();
                if !sampling {
                    // Between samples only new leaderships are sampled; the others keep
                    // their last in-sync replicas (reported again on full reports).
                    let epoch = crate::replica::store::epoch_of(status.term);
                    if let Some((sent_epoch, isr)) = sent.get(&key) {
                        if *sent_epoch == epoch {
                            if full {
                                all.push(LeaderReport {
                                    topic_id: topic.id,
                                    partition: partition.index,
                                    leader_epoch: epoch,
                                    isr: isr.clone(),
                                });
                            }
                            continue;
                        }
                    }
                }
                let Some(replicas) = self.replicas(topic.id, partition.index) else {
                    continue;
                };
                let (term, end_offset, followers) = {
                    let state = partition.state();
                    let raft = state.raft();
                    let followers: Vec<(i32, Option<u64>)> = replicas
                        .iter()
                        .filter(|r| **r != me)
                        .map(|r| {
                            // A follower not heard from this check-quorum round has
                            // not caught up, however far its last answer got.
                            let progress =
                                raft.progress(raft_node_id(*r)).filter(|p| p.recent_active);
                            (*r, progress.map(|p| p.match_end_offset))
                        })
                        .collect();
                    (raft.term(), raft.last_end_offset(), followers)
                };
                let tracker = trackers
                    .entry(key)
                    .and_modify(|t| {
                        if t.term() != term {
                            *t = IsrTracker::new(term, end_offset);
                        }
                    })
                    .or_insert_with(|| IsrTracker::new(term, end_offset));
                let isr = tracker.sample(now, me, end_offset, &followers, lag_max);
                let report = LeaderReport {
                    topic_id: topic.id,
                    partition: partition.index,
                    leader_epoch: crate::replica::store::epoch_of(term),
                    isr,
                };
                let last = (report.leader_epoch, report.isr.clone());
                if sent.get(&key) != Some(&last) {
                    if sent
                        .get(&key)
                        .is_some_and(|(_, isr)| isr.len() != last.1.len())
                    {
                        tracing::info!(topic = %topic.name, partition = partition.index, isr = ?last.1, "in-sync replicas changed");
                    }
                    sent.insert(key, last);
                    changed.push(report.clone());
                }
                all.push(report);
            }
            if sampling {
                // Every led partition was sampled: forget the ones no longer led.
                let led: HashSet<ReplicaKey> =
                    all.iter().map(|r| (r.topic_id, r.partition)).collect();
                trackers.retain(|k, _| led.contains(k));
                sent.retain(|k, _| led.contains(k));
            }
            let outgoing = if full {
                last_full = Some(now);
                &all
            } else {
                &changed
            };
            if outgoing.is_empty() {
                continue;
            }
            self.leadership.apply(me, outgoing.clone());
            let peers = self.other_brokers();
            for chunk in outgoing.chunks(REPORTS_PER_MESSAGE_MAX) {
                let data = encode_reports(chunk);
                for peer in &peers {
                    if let Err(e) = self
                        .transport
                        .send(*peer, report_envelope(me, *peer, data.clone()))
                    {
                        tracing::debug!(to = peer, error = %e, "leadership report not sent");
                    }
                }
            }
        }
    }

    /// Every other broker: the voters and the registered brokers.
    fn other_brokers(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.voters.iter().map(|(id, _)| *id).collect();
        {
            let image = self.image.read().expect("image lock");
            ids.extend(image.brokers().map(|b| b.broker_id));
        }
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| *id != self.me.broker_id);
        ids
    }

    /// Appends `record` to the metadata log and waits until this broker applied it.
    async fn propose(&self, record: &MetadataRecord) -> Result<(), BrokerError> {
        let value = record
            .encode()
            .map_err(|e| BrokerError::InvalidRequest(e.to_string()))?;
        let appended = {
            let _appending = self.append_lock.lock().await;
            self.append_value(&value)?
        };
        self.wait_applied(&appended).await
    }

    /// Appends one metadata record value (the caller holds the append lock).
    fn append_value(&self, value: &[u8]) -> Result<crate::replica::Appended, BrokerError> {
        self.metadata.append(
            &metadata_batch(value),
            BatchCounts {
                batches: 1,
                offsets: 1,
            },
        )
    }

    /// Waits until `appended` is committed and this broker's applier has applied it.
    async fn wait_applied(&self, appended: &crate::replica::Appended) -> Result<(), BrokerError> {
        self.metadata.wait_acknowledgeable(appended).await?;
        let end = (appended.last_offset + 1) as u64;
        let mut applied = self.applied_end.subscribe();
        tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= end))
            .await
            .map_err(|_| BrokerError::RequestTimedOut)?
            .map_err(|_| BrokerError::RequestTimedOut)?;
        Ok(())
    }

    /// The controller's loop: once `metadata_checkpoint_records` records were applied
    /// since the last checkpoint, appends a [`MetadataRecord::Checkpoint`] of the image.
    /// Under the append lock, and only when everything in the metadata log is applied,
    /// so the checkpoint lands right after the records its image covers.
    async fn checkpoint_loop(self: Arc<Self>) {
        let due = self.manager.config().metadata_checkpoint_records;
        let mut tick = tokio::time::interval(CHECKPOINT_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.metadata.is_closed() {
                return;
            }
            if !self.is_controller() || self.records_since_checkpoint.load(Ordering::Relaxed) < due
            {
                continue;
            }
            match self.append_checkpoint().await {
                Ok(true) => tracing::debug!("metadata checkpoint written"),
                Ok(false) => {} // records in flight: next time
                Err(e) => tracing::warn!(error = %e, "metadata checkpoint failed"),
            }
        }
    }

    /// Appends a checkpoint of the image if every record of the metadata log is applied
    /// (else returns false) and waits for it to be applied.
    async fn append_checkpoint(&self) -> Result<bool, BrokerError> {
        let appended = {
            let _appending = self.append_lock.lock().await;
            let log_end = self.metadata.log_end_offset();
            if log_end < 0 || *self.applied_end.borrow() != log_end as u64 {
                return Ok(false);
            }
            let snapshot = {
                let image = self.image.read().expect("image lock");
                crate::controller::encode_snapshot(&image)
                    .map_err(|e| BrokerError::Storage(format!("metadata snapshot: {e}")))?
            };
            let value = match (MetadataRecord::Checkpoint { snapshot }).encode() {
                Ok(value) => value,
                Err(e) => {
                    // An image past the checkpoint limit keeps its whole log.
                    tracing::warn!(error = %e, "metadata image too large to checkpoint");
                    self.records_since_checkpoint.store(0, Ordering::Relaxed);
                    return Ok(false);
                }
            };
            self.append_value(&value)?
        };
        self.wait_applied(&appended).await?;
        Ok(true)
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
            self.add_missing_learner();
        }
    }

    /// The controller adds one registered broker that is not a controller voter, and
    /// not yet a member of the metadata group, as a learner of it (see the module
    /// docs). One change at a time: the next waits until this one is committed (the
    /// core refuses it meanwhile, and the next tick tries again).
    fn add_missing_learner(&self) {
        let (voters, learners) = self.metadata.members();
        let missing = {
            let image = self.image.read().expect("image lock");
            let found = image
                .brokers()
                .map(|b| b.broker_id)
                .find(|id| !voters.contains(id) && !learners.contains(id));
            found
        };
        let Some(broker) = missing else { return };
        let change = rill_raft::MembershipChange::AddLearner(raft_node_id(broker));
        match self.metadata.propose_membership_change(change) {
            Ok(()) => {
                tracing::info!(broker, "adding broker as a learner of the metadata group")
            }
            Err(e) => tracing::debug!(broker, error = %e, "learner not added yet"),
        }
    }

    /// Registrations the image lacks or holds for another incarnation: this broker's
    /// own, and each peer's as its handshake announced it (a voter at the address
    /// `controller_voters` gives it, any other broker at the inter-broker address its
    /// handshake announced), if that incarnation's session here is live — a
    /// registration fences its predecessor, so only a process that is there now may
    /// take the id over.
    fn missing_registrations(&self) -> Vec<MetadataRecord> {
        let image = self.image.read().expect("image lock");
        let mut out = Vec::new();
        let me = &self.me;
        let mut known: Vec<(i32, BrokerRegistrationInfo, String, u16)> = vec![(
            me.broker_id,
            me.registration.clone(),
            me.inter_broker.ip().to_string(),
            me.inter_broker.port(),
        )];
        for (id, info) in self.transport.peer_registrations() {
            if !self.transport.is_live(id, info.incarnation_id) {
                continue;
            }
            // A voter is reached where `controller_voters` says; any other broker
            // where its handshake says (the receiving transport already replaced an
            // unspecified host with the connection's address).
            let (host, port) = match self.voters.iter().find(|(v, _)| *v == id) {
                Some((_, addr)) => (addr.ip().to_string(), addr.port()),
                None => (info.inter_broker_host.clone(), info.inter_broker_port),
            };
            known.push((id, info, host, port));
        }
        for (broker_id, info, inter_broker_host, inter_broker_port) in known {
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
                inter_broker_host,
                inter_broker_port,
                rack: info.rack,
            });
        }
        out
    }

    /// The applier thread: applies every newly committed metadata record, then makes
    /// the local replicas match the image.
    fn apply_loop(self: Arc<Self>, runtime: &tokio::runtime::Handle) {
        let mut status = self.metadata.watch_status();
        // A log trimmed below a checkpoint starts with records whose predecessors are
        // gone: the image is built from the first checkpoint on, and nothing before it
        // is applied (a partial image must not open or remove replicas).
        let mut next_offset: i64 = self.metadata.log_start_offset();
        let mut complete = next_offset == 0;
        loop {
            let commit = status.borrow_and_update().commit_offset;
            if commit > next_offset {
                match self.apply_committed(next_offset, commit, &mut complete) {
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

    /// Applies the records of `[from, to)`; returns the end reached. While the image is
    /// not `complete` (the log was trimmed and no checkpoint applied yet), only a
    /// checkpoint is applied.
    fn apply_committed(&self, from: i64, to: i64, complete: &mut bool) -> Result<i64, BrokerError> {
        let mut offset = from;
        while offset < to {
            let read = match self.metadata.read(offset, READ_BYTES_MAX) {
                Ok(read) => read,
                Err(e) => {
                    // The leader reset this replica's log to a later start (it fell
                    // behind a trimmed log): the image is rebuilt from the checkpoint
                    // that starts the new log.
                    let start = self.metadata.log_start_offset();
                    if start > offset {
                        tracing::info!(from = offset, log_start_offset = start, "metadata log starts later than the applier: waiting for its checkpoint");
                        offset = start;
                        *complete = false;
                        continue;
                    }
                    return Err(e);
                }
            };
            if read.records.is_empty() {
                break;
            }
            let mut changed = false;
            let mut deletions = false;
            let mut registrations = false;
            let mut checkpoint_at = None;
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
                        let decoded = match MetadataRecord::decode(value) {
                            Ok(decoded) => decoded,
                            Err(e) => {
                                tracing::error!(offset = record.offset, error = %e, "undecodable metadata record skipped");
                                continue;
                            }
                        };
                        let record_offset = record.offset as u64;
                        if let MetadataRecord::Checkpoint { snapshot } = &decoded {
                            if self.apply_checkpoint(record_offset, snapshot, *complete) {
                                *complete = true;
                                checkpoint_at = Some(record_offset);
                                changed = true;
                                deletions = true;
                                registrations = true;
                            }
                            continue;
                        }
                        if !*complete {
                            continue;
                        }
                        self.records_since_checkpoint
                            .fetch_add(1, Ordering::Relaxed);
                        let mut image = self.image.write().expect("image lock");
                        match image.apply(record_offset, &decoded) {
                            Ok(_) => match &decoded {
                                MetadataRecord::DeleteTopic { topic_id } => {
                                    self.deleted.lock().expect("deleted lock").insert(*topic_id);
                                    deletions = true;
                                }
                                MetadataRecord::RegisterBroker {
                                    broker_id,
                                    incarnation_id,
                                    ..
                                } => {
                                    // In log order on every broker: fences the
                                    // incarnation it replaces.
                                    self.transport.set_registered(*broker_id, *incarnation_id);
                                    registrations = true;
                                }
                                MetadataRecord::ProducerIdBlock {
                                    broker_id,
                                    incarnation_id,
                                    first_producer_id,
                                    size,
                                } if *broker_id == self.me.broker_id
                                    && *incarnation_id == self.me.registration.incarnation_id =>
                                {
                                    self.manager
                                        .producer_ids
                                        .add_block(*first_producer_id, *size);
                                }
                                _ => {}
                            },
                            Err(e) => {
                                tracing::warn!(offset = record.offset, error = %e, "metadata record skipped");
                            }
                        }
                        changed = true;
                    }
                }
                offset = next;
            }
            if registrations {
                self.connect_registered_brokers();
            }
            if changed && *complete {
                self.reconcile();
            }
            if deletions {
                let deleted = self.deleted.lock().expect("deleted lock").clone();
                self.manager.remove_stale_replicas(&deleted);
            }
            if let Some(at) = checkpoint_at {
                // Best effort: a trim skipped now (the persist loop held the group)
                // happens at the next checkpoint.
                self.metadata.trim_log_at_checkpoint(at);
            }
        }
        Ok(offset)
    }

    /// Applies a checkpoint record at `offset`; false if its snapshot was refused. A
    /// `complete` image that covered the same records and differed is reported: the
    /// brokers' images diverged (the checkpoint, from the log, wins). After a
    /// checkpoint, every broker registration it holds is in force, as if its records
    /// had been applied here.
    fn apply_checkpoint(&self, offset: u64, snapshot: &Bytes, complete: bool) -> bool {
        let mut image = self.image.write().expect("image lock");
        match image.apply_checkpoint(offset, snapshot) {
            Ok(applied) => {
                if applied.diverged && complete {
                    tracing::error!(offset, "this broker's metadata image differed from the controller's checkpoint: replaced by it");
                }
                for broker in image.brokers() {
                    self.transport
                        .set_registered(broker.broker_id, broker.incarnation_id);
                }
                // Deletions the trimmed log may no longer hold: their replica
                // directories are removed like those of deletions applied here.
                self.deleted
                    .lock()
                    .expect("deleted lock")
                    .extend(image.recent_deleted_topics().copied());
                self.records_since_checkpoint.store(0, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::error!(offset, error = %e, "metadata checkpoint refused");
                false
            }
        }
    }

    /// Makes the transport's peers every registered broker, at its registered
    /// inter-broker address, besides the voters (at their configured ones): brokers
    /// outside `controller_voters` are known only from their registrations.
    fn connect_registered_brokers(&self) {
        let mut peers: HashMap<i32, SocketAddr> = self.voters.iter().copied().collect();
        let registered: Vec<(i32, String, u16)> = {
            let image = self.image.read().expect("image lock");
            image
                .brokers()
                .filter(|b| !peers.contains_key(&b.broker_id))
                .map(|b| {
                    (
                        b.broker_id,
                        b.inter_broker_host.clone(),
                        b.inter_broker_port,
                    )
                })
                .collect()
        };
        for (broker, host, port) in registered {
            // On the applier's thread, so a name may be resolved here.
            match (host.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(addr)) => {
                    peers.insert(broker, addr);
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(broker, %host, port, "registered broker's inter-broker address does not resolve");
                }
            }
        }
        self.transport.set_peers(peers);
    }

    /// Opens the replicas the image assigns to this broker (and an entry for every
    /// topic, hosted here or not) and removes those of deleted topics.
    fn reconcile(&self) {
        let topics: Vec<TopicImage> = {
            let image = self.image.read().expect("image lock");
            image.topics().cloned().collect()
        };
        let live: HashMap<Uuid, usize> = topics
            .iter()
            .map(|t| (t.topic_id, t.partitions.len()))
            .collect();
        for topic in self.manager.topics() {
            if !live.contains_key(&topic.id) {
                self.manager.remove_replicated_topic(&topic.name, topic.id);
            }
        }
        self.leadership.retain(|id| live.get(&id).copied());
        for topic in topics {
            let TopicImage {
                name,
                topic_id,
                configs,
                partitions,
            } = topic;
            let replicas: Vec<Vec<i32>> = partitions.into_iter().map(|p| p.replicas).collect();
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
