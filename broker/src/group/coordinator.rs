//! [`GroupCoordinator`]: the driver around the [`Group`] state machines — which
//! `__consumer_offsets` partition owns a group, loading a partition's groups when this
//! broker leads it, writing records through the partition's replica, and the timer that
//! enforces session and rebalance timeouts.
//!
//! Locking: one `std` mutex per `__consumer_offsets` partition ([`Shard`]), never held
//! across an `.await`. Requests that must wait (a JoinGroup until the rebalance completes,
//! an OffsetCommit until its record is committed) take the lock, leave a channel or an
//! append behind, release it, and wait outside.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rill_protocol::batch::{batches, BatchBuilder, Compression};
use tokio::sync::{oneshot, watch};

use super::member::{JoinAnswer, SyncAnswer};
use super::records::{self, OffsetValue, OffsetsRecord};
use super::state::{
    Committed, Group, GroupSettings, GroupState, JoinOutcome, JoinRequest, SyncOutcome,
};
use super::{check_group_id, partition_for, GROUPS_MAX, OFFSETS_TOPIC, TICK_MS};
use crate::config::Config;
use crate::error::BrokerError;
use crate::replica::{Appended, BatchCounts, Partition};
use crate::state::PartitionManager;

/// Committed offsets by topic: (topic, [(partition, offset if committed)]).
pub type TopicOffsets = Vec<(String, Vec<(i32, Option<OffsetValue>)>)>;

/// How often the timer looks for expired offsets (Kafka's
/// `offsets.retention.check.interval.ms` is 10 minutes).
const OFFSETS_RETENTION_CHECK_MS: u64 = 60_000;

/// How long a FindCoordinator on a broker that is not the controller waits for the
/// controller to create `__consumer_offsets` (then the client is told to retry).
const CONTROLLER_CREATE_WAIT: Duration = Duration::from_secs(5);

/// CreateTopics version used to ask the controller (the first flexible one; Rill serves
/// 2..=4).
const CREATE_TOPICS_VERSION: i16 = 4;

/// Largest answer read back from the controller's CreateTopics (one topic's result).
const CONTROLLER_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Sends `request` to the controller at `host:port` as a CreateTopics and reads its
/// answer frame. The answer is not decoded: the caller waits for the topic to appear in
/// its own metadata, which is what it needs whatever the controller said (a topic
/// another broker created first comes back TOPIC_ALREADY_EXISTS).
async fn send_to_controller(
    host: &str,
    port: u16,
    request: CreateTopicsRequest,
) -> std::io::Result<()> {
    use kafka_protocol::protocol::Encodable;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::CreateTopics as i16)
        .with_request_api_version(CREATE_TOPICS_VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("rill-group-coordinator")));
    let header_version = ApiKey::CreateTopics.request_header_version(CREATE_TOPICS_VERSION);
    let mut payload = bytes::BytesMut::new();
    header
        .encode(&mut payload, header_version)
        .map_err(|e| invalid(e.to_string()))?;
    request
        .encode(&mut payload, CREATE_TOPICS_VERSION)
        .map_err(|e| invalid(e.to_string()))?;
    let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream
        .write_all(&(payload.len() as u32).to_be_bytes())
        .await?;
    stream.write_all(&payload).await?;
    let answer_bytes = stream.read_u32().await? as usize;
    if answer_bytes > CONTROLLER_ANSWER_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a CreateTopics answer of {answer_bytes} bytes"),
        ));
    }
    let mut answer = vec![0; answer_bytes];
    stream.read_exact(&mut answer).await?;
    Ok(())
}

/// Bytes read from `__consumer_offsets` per step while loading.
const LOAD_READ_BYTES: usize = 1 << 20;

/// The groups of one `__consumer_offsets` partition, while this broker leads it.
#[derive(Debug, Default)]
struct Shard {
    /// The term (leader epoch) whose log has been replayed into `groups`.
    loaded_term: Option<u64>,
    /// The term whose replay is under way.
    loading_term: Option<u64>,
    groups: HashMap<String, Group>,
}

/// A group operation's view: the shard (locked) and its partition.
struct Owned<'a> {
    shard: MutexGuard<'a, Shard>,
    partition: Arc<Partition>,
}

/// The group coordinator of this broker.
#[derive(Debug)]
pub struct GroupCoordinator {
    config: Arc<Config>,
    manager: Arc<PartitionManager>,
    /// One per `__consumer_offsets` partition, made when the topic is first seen.
    shards: OnceLock<Vec<Mutex<Shard>>>,
    /// The coordinator clock's origin (deadlines are ms since it).
    clock: tokio::time::Instant,
    shutdown: watch::Receiver<bool>,
    /// Itself, for the tasks it spawns.
    me: std::sync::Weak<GroupCoordinator>,
    /// Coordinator clock of the last offset-retention pass.
    last_retention_check_ms: std::sync::atomic::AtomicU64,
    /// Held while asking the controller to create `__consumer_offsets`, so concurrent
    /// FindCoordinators send one request.
    creating: tokio::sync::Mutex<()>,
}

fn not_available(e: BrokerError) -> ResponseError {
    match e {
        BrokerError::NotLeaderOrFollower => ResponseError::NotCoordinator,
        BrokerError::MessageTooLarge { .. } => ResponseError::InvalidCommitOffsetSize,
        other => {
            tracing::warn!(error = %other, "group coordinator write failed");
            ResponseError::CoordinatorNotAvailable
        }
    }
}

impl GroupCoordinator {
    /// A coordinator over `manager`'s `__consumer_offsets`; [`GroupCoordinator::start`]
    /// starts its timer.
    pub fn new(
        config: Arc<Config>,
        manager: Arc<PartitionManager>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<GroupCoordinator> {
        Arc::new_cyclic(|me| GroupCoordinator {
            config,
            manager,
            shards: OnceLock::new(),
            clock: tokio::time::Instant::now(),
            shutdown,
            me: me.clone(),
            last_retention_check_ms: std::sync::atomic::AtomicU64::new(0),
            creating: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts the timer task (sessions, rebalance deadlines, loading partitions this broker
    /// came to lead); it ends at shutdown.
    pub fn start(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(TICK_MS));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                let Some(coordinator) = me.upgrade() else {
                    break;
                };
                coordinator.tick();
            }
        });
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn settings(&self) -> GroupSettings {
        GroupSettings {
            initial_rebalance_delay_ms: self.config.group_initial_rebalance_delay_ms,
        }
    }

    fn node_id(&self) -> i32 {
        self.config.node_id
    }

    /// The shards, made on the first sight of a topic with partitions (a cluster topic not
    /// applied here yet has none, and must not fix the count at zero).
    fn shards(&self, partitions: usize) -> &[Mutex<Shard>] {
        if partitions == 0 {
            return self.shards.get().map_or(&[], Vec::as_slice);
        }
        self.shards
            .get_or_init(|| (0..partitions).map(|_| Mutex::default()).collect())
    }

    /// The `__consumer_offsets` topic, created with `offsets_topic_partitions` partitions
    /// on first use (as Kafka does).
    async fn offsets_topic(&self) -> Result<Arc<crate::state::Topic>, ResponseError> {
        if let Some(topic) = self.manager.topic(OFFSETS_TOPIC) {
            return Ok(topic);
        }
        // Never deleted by retention: the log cleaner compacts it (the last commit per
        // group and partition, tombstones of deleted groups and offsets dropped after
        // delete.retention.ms), as in Kafka. `replay` takes the last value per key and
        // walks batches by their last offset, so a compacted log (emptied batches
        // included) replays to the same state.
        let configs = [("cleanup.policy", "compact"), ("retention.ms", "-1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match self
            .manager
            .create_topic(
                OFFSETS_TOPIC,
                self.config.offsets_topic_partitions,
                -1,
                configs,
                false,
            )
            .await
        {
            Ok(topic) => Ok(topic),
            Err(BrokerError::TopicAlreadyExists(_)) => self
                .manager
                .topic(OFFSETS_TOPIC)
                .ok_or(ResponseError::CoordinatorNotAvailable),
            // In a cluster only the controller creates topics; Kafka brokers forward the
            // creation to theirs. Before this, a group whose clients never happened to
            // ask the controller got COORDINATOR_NOT_AVAILABLE for good (seen in
            // groups_cluster.rs: two librdkafka members asking brokers 2 and 3 for 12 s).
            Err(BrokerError::NotController) => self.create_through_controller().await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create {OFFSETS_TOPIC}");
                Err(ResponseError::CoordinatorNotAvailable)
            }
        }
    }

    /// Has the controller create `__consumer_offsets` (this broker is not the controller):
    /// sends it a CreateTopics on its client port, as a Kafka client would, then waits
    /// until the metadata log brings the topic here. One request at a time per broker;
    /// the whole wait is bounded by [`CONTROLLER_CREATE_WAIT`], after which the client
    /// hears COORDINATOR_NOT_AVAILABLE and retries.
    async fn create_through_controller(&self) -> Result<Arc<crate::state::Topic>, ResponseError> {
        let deadline = tokio::time::Instant::now() + CONTROLLER_CREATE_WAIT;
        let present = || {
            self.manager
                .topic(OFFSETS_TOPIC)
                .filter(|t| !t.partitions.is_empty())
        };
        let _one = tokio::time::timeout_at(deadline, self.creating.lock())
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        if let Some(topic) = present() {
            return Ok(topic);
        }
        let cluster = self
            .manager
            .cluster()
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let controller = cluster
            .controller_id()
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let (_, host, port) = cluster
            .brokers()
            .into_iter()
            .find(|(id, _, _)| *id == controller)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let request = self.offsets_topic_request();
        match tokio::time::timeout_at(deadline, send_to_controller(&host, port, request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(controller, error = %e, "cannot ask the controller to create {OFFSETS_TOPIC}");
            }
            Err(_) => {
                tracing::warn!(
                    controller,
                    "the controller did not answer the creation of {OFFSETS_TOPIC} in time"
                );
            }
        }
        loop {
            if let Some(topic) = present() {
                return Ok(topic);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The CreateTopics request body for `__consumer_offsets` (its settings as
    /// [`GroupCoordinator::offsets_topic`] gives them).
    fn offsets_topic_request(&self) -> CreateTopicsRequest {
        let configs = [("cleanup.policy", "compact"), ("retention.ms", "-1")]
            .into_iter()
            .map(|(name, value)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str(name))
                    .with_value(Some(StrBytes::from_static_str(value)))
            })
            .collect();
        CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(OFFSETS_TOPIC)))
                .with_num_partitions(self.config.offsets_topic_partitions)
                .with_replication_factor(-1)
                .with_configs(configs)])
            .with_timeout_ms(CONTROLLER_CREATE_WAIT.as_millis() as i32)
    }

    /// The broker that coordinates `group` (creating `__consumer_offsets` if needed).
    pub async fn find_coordinator(&self, group: &str) -> Result<i32, ResponseError> {
        if let Some(e) = check_group_id(group) {
            return Err(e);
        }
        let topic = self.offsets_topic().await?;
        let index = partition_for(group, topic.partitions.len() as i32) as usize;
        // A cluster topic this broker has not applied yet has no partitions here.
        let slot = topic
            .partitions
            .get(index)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let Some(partition) = slot else {
            // A partition whose replicas are on other brokers: its reported leader.
            return self
                .manager
                .cluster()
                .and_then(|c| c.current_leader(topic.id, index as i32))
                .map(|(leader, _)| leader)
                .ok_or(ResponseError::CoordinatorNotAvailable);
        };
        let status = partition.status();
        if status.failed || status.closed {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        match status.leader {
            Some(leader) => {
                if leader == self.node_id() {
                    // Start loading now, so the group's first JoinGroup finds it loaded.
                    let _ = self.owned(group);
                }
                Ok(leader)
            }
            None => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// The shard that owns `group`, locked, if this broker leads its partition and has
    /// loaded it; NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS otherwise.
    fn owned(&self, group: &str) -> Result<Owned<'_>, ResponseError> {
        let topic = self
            .manager
            .topic(OFFSETS_TOPIC)
            .ok_or(ResponseError::NotCoordinator)?;
        let index = partition_for(group, topic.partitions.len() as i32) as usize;
        let partition = Arc::clone(
            topic
                .partitions
                .get(index)
                .ok_or(ResponseError::CoordinatorNotAvailable)?
                .as_ref()
                // Its replicas are on other brokers.
                .ok_or(ResponseError::NotCoordinator)?,
        );
        let shards = self.shards(topic.partitions.len());
        let shard = shards
            .get(index)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let status = partition.status();
        if status.failed || status.closed {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if status.leader != Some(self.node_id()) {
            return Err(ResponseError::NotCoordinator);
        }
        if !status.leader_ready {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        let mut guard = shard.lock().expect("group shard lock");
        if guard.loaded_term == Some(status.term) {
            return Ok(Owned {
                shard: guard,
                partition,
            });
        }
        if guard.loading_term != Some(status.term) {
            self.start_load(&mut guard, index, &partition, status.term);
        }
        Err(ResponseError::CoordinatorLoadInProgress)
    }

    /// Replays partition `index` (up to its high watermark) into a fresh set of groups, off
    /// the runtime; the shard serves them once the replay is done, if the term is still
    /// the same.
    fn start_load(&self, shard: &mut Shard, index: usize, partition: &Arc<Partition>, term: u64) {
        shard.loading_term = Some(term);
        let partition = Arc::clone(partition);
        let now_ms = self.now_ms();
        let Some(me) = self.self_arc() else { return };
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let replay_partition = Arc::clone(&partition);
            let loaded =
                tokio::task::spawn_blocking(move || replay(&replay_partition, now_ms)).await;
            let Some(shards) = me.shards.get() else {
                return;
            };
            let Some(shard) = shards.get(index) else {
                return;
            };
            let mut shard = shard.lock().expect("group shard lock");
            if shard.loading_term != Some(term) {
                return;
            }
            shard.loading_term = None;
            match loaded {
                Ok(Ok((groups, records))) => {
                    for group in shard.groups.values_mut() {
                        group.unload();
                    }
                    tracing::info!(
                        partition = index,
                        term,
                        groups = groups.len(),
                        records,
                        load_ms = started.elapsed().as_millis() as u64,
                        "loaded {OFFSETS_TOPIC} partition"
                    );
                    shard.groups = groups;
                    shard.loaded_term = Some(term);
                }
                Ok(Err(e)) => {
                    tracing::warn!(partition = index, error = %e, "cannot load {OFFSETS_TOPIC}");
                }
                Err(e) => {
                    tracing::warn!(partition = index, error = %e, "{OFFSETS_TOPIC} load task failed");
                }
            }
        });
    }

    /// The coordinator as an `Arc` (it always lives in one: [`GroupCoordinator::new`]).
    fn self_arc(&self) -> Option<Arc<GroupCoordinator>> {
        self.me.upgrade()
    }

    /// One timer step: load partitions this broker came to lead, drop those it lost,
    /// expire sessions and complete rebalances.
    fn tick(&self) {
        let Some(topic) = self.manager.topic(OFFSETS_TOPIC) else {
            return;
        };
        let shards = self.shards(topic.partitions.len());
        let now_ms = self.now_ms();
        let settings = self.settings();
        let now_wall_ms = crate::clock::now_ms();
        let retention_due = now_ms
            >= self
                .last_retention_check_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                + OFFSETS_RETENTION_CHECK_MS;
        if retention_due {
            self.last_retention_check_ms
                .store(now_ms, std::sync::atomic::Ordering::Relaxed);
        }
        let retention_ms = (self.config.offsets_retention_minutes as i64).saturating_mul(60_000);
        for (index, (partition, shard)) in topic.partitions.iter().zip(shards).enumerate() {
            // Partitions whose replicas are on other brokers are coordinated there.
            let Some(partition) = partition else { continue };
            let status = partition.status();
            let leads = status.leader == Some(self.node_id())
                && status.leader_ready
                && !status.failed
                && !status.closed;
            let mut guard = shard.lock().expect("group shard lock");
            let shard = &mut *guard;
            if shard.loaded_term.is_some() && (!leads || shard.loaded_term != Some(status.term)) {
                tracing::info!(
                    partition = index,
                    "no longer coordinating {OFFSETS_TOPIC} partition"
                );
                for group in shard.groups.values_mut() {
                    group.unload();
                }
                shard.groups.clear();
                shard.loaded_term = None;
            }
            if !leads {
                shard.loading_term = None;
                continue;
            }
            if shard.loaded_term != Some(status.term) {
                if shard.loading_term != Some(status.term) {
                    self.start_load(shard, index, partition, status.term);
                }
                continue;
            }
            let mut writes = Vec::new();
            shard.groups.retain(|id, group| {
                group.tick(settings, now_ms);
                if let Some(value) = group.take_dirty(now_wall_ms) {
                    writes.push((records::group_key(id), Some(records::group_value(&value))));
                }
                if retention_due {
                    for (topic, partition) in group.expire_offsets(now_wall_ms, retention_ms) {
                        tracing::info!(group = %id, topic, partition, "committed offset expired");
                        writes.push((records::offset_key(id, &topic, partition), None));
                    }
                }
                !group.is_forgettable()
            });
            if !writes.is_empty() {
                self.write_in_background(partition, writes);
            }
        }
    }

    /// Appends records to `partition` as its leader; the result says where they went.
    fn write(
        &self,
        partition: &Partition,
        entries: &[(Bytes, Option<Bytes>)],
    ) -> Result<Appended, ResponseError> {
        let mut builder = BatchBuilder::new(Compression::None);
        let now = crate::clock::now_ms();
        for (key, value) in entries {
            builder
                .push(now, Some(key), value.as_deref(), &[])
                .map_err(|_| ResponseError::InvalidCommitOffsetSize)?;
        }
        let count = builder.records_count() as u64;
        let batch = builder
            .build()
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        partition
            .append(
                &batch,
                BatchCounts {
                    batches: 1,
                    offsets: count,
                },
            )
            .map_err(not_available)
    }

    /// Appends group metadata without waiting for it to commit (a lost write costs only
    /// the membership a restarted coordinator would restore; offsets are written with
    /// [`GroupCoordinator::commit_offsets`], which waits).
    fn write_in_background(
        &self,
        partition: &Arc<Partition>,
        entries: Vec<(Bytes, Option<Bytes>)>,
    ) {
        match self.write(partition, &entries) {
            Ok(appended) => {
                let partition = Arc::clone(partition);
                tokio::spawn(async move {
                    if let Err(e) = partition.wait_acknowledgeable(&appended).await {
                        tracing::warn!(error = %e, "group metadata write not committed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = ?e, "cannot write group metadata"),
        }
    }

    /// Writes the group's metadata if its durable state changed.
    fn persist(&self, owned: &mut Owned<'_>, group_id: &str) {
        let Some(group) = owned.shard.groups.get_mut(group_id) else {
            return;
        };
        if let Some(value) = group.take_dirty(crate::clock::now_ms()) {
            let entries = vec![(
                records::group_key(group_id),
                Some(records::group_value(&value)),
            )];
            let partition = Arc::clone(&owned.partition);
            self.write_in_background(&partition, entries);
        }
    }

    /// Waits for a parked answer; NOT_COORDINATOR if the group was unloaded meanwhile or
    /// the broker shuts down.
    async fn wait<T>(&self, rx: oneshot::Receiver<T>) -> Option<T> {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            answer = rx => answer.ok(),
            _ = shutdown.wait_for(|s| *s) => None,
        }
    }

    /// JoinGroup.
    pub async fn join(&self, group_id: &str, request: JoinRequest) -> JoinAnswer {
        let member_id = request.member_id.clone();
        let refuse = |e: ResponseError| JoinAnswer::error(e.code(), &member_id);
        if let Some(e) = check_group_id(group_id) {
            return refuse(e);
        }
        let outcome = {
            let mut owned = match self.owned(group_id) {
                Ok(owned) => owned,
                Err(e) => return refuse(e),
            };
            if !owned.shard.groups.contains_key(group_id) {
                if !request.member_id.is_empty() {
                    return refuse(ResponseError::UnknownMemberId);
                }
                if self.group_count() >= GROUPS_MAX {
                    return refuse(ResponseError::CoordinatorNotAvailable);
                }
                owned
                    .shard
                    .groups
                    .insert(group_id.to_string(), Group::new(group_id.to_string()));
            }
            let now_ms = self.now_ms();
            let settings = self.settings();
            let Some(group) = owned.shard.groups.get_mut(group_id) else {
                return refuse(ResponseError::CoordinatorNotAvailable);
            };
            let was_empty = group.state == GroupState::Empty;
            let outcome = group.join(request, settings, now_ms);
            if let Some(until_ms) = group.initial_delay_until_ms().filter(|_| was_empty) {
                self.tick_group_at(group_id, until_ms);
            }
            self.persist(&mut owned, group_id);
            outcome
        };
        match outcome {
            JoinOutcome::Now(answer) => answer,
            JoinOutcome::Wait(rx) => self
                .wait(rx)
                .await
                .unwrap_or_else(|| refuse(ResponseError::NotCoordinator)),
        }
    }

    /// Runs `group_id`'s timer step at `at_ms` (coordinator clock): a new group's initial
    /// delay ends then, and waiting for the periodic tick instead would add up to
    /// [`TICK_MS`] to every new group's first rebalance. One task per group that starts
    /// its first rebalance, so bounded by the number of groups.
    fn tick_group_at(&self, group_id: &str, at_ms: u64) {
        let Some(me) = self.self_arc() else { return };
        let group_id = group_id.to_string();
        let at = self.clock + Duration::from_millis(at_ms);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            // Not coordinating it any more (or still loading): the periodic tick of
            // whoever does takes over.
            let Ok(mut owned) = me.owned(&group_id) else {
                return;
            };
            let now_ms = me.now_ms();
            let settings = me.settings();
            if let Some(group) = owned.shard.groups.get_mut(&group_id) {
                group.tick(settings, now_ms);
            }
            me.persist(&mut owned, &group_id);
        });
    }

    /// Groups this broker holds, over every partition it coordinates.
    fn group_count(&self) -> usize {
        // Called with one shard locked: the others are counted without waiting for
        // theirs (try_lock), so the bound is approximate but never deadlocks.
        self.shards
            .get()
            .map(|shards| {
                shards
                    .iter()
                    .filter_map(|s| s.try_lock().ok().map(|s| s.groups.len()))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// SyncGroup.
    #[allow(clippy::too_many_arguments)]
    pub async fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncAnswer {
        let refuse = |e: ResponseError| SyncAnswer::error(e.code());
        if let Some(e) = check_group_id(group_id) {
            return refuse(e);
        }
        let (outcome, written) = {
            let owned = match self.owned(group_id) {
                Ok(owned) => owned,
                Err(e) => return refuse(e),
            };
            let now_ms = self.now_ms();
            let Owned {
                mut shard,
                partition,
            } = owned;
            let Some(group) = shard.groups.get_mut(group_id) else {
                return refuse(ResponseError::UnknownMemberId);
            };
            let outcome = group.sync(
                generation,
                member_id,
                instance,
                protocol_type,
                protocol_name,
                assignments,
                now_ms,
            );
            // The leader's SyncGroup completed the generation: its metadata (members and
            // assignments) is written, and the leader answered once it is committed, so a
            // coordinator that restarts after the answer restores the generation.
            let written = group.take_dirty(crate::clock::now_ms()).map(|value| {
                let entries = [(
                    records::group_key(group_id),
                    Some(records::group_value(&value)),
                )];
                self.write(&partition, &entries)
                    .map(|appended| (appended, Arc::clone(&partition)))
            });
            (outcome, written)
        };
        match written {
            None => {}
            Some(Err(e)) => return refuse(e),
            Some(Ok((appended, partition))) => {
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    result = partition.wait_acknowledgeable(&appended) => {
                        if let Err(e) = result {
                            return refuse(not_available(e));
                        }
                    }
                    _ = shutdown.wait_for(|s| *s) => {
                        return refuse(ResponseError::CoordinatorNotAvailable);
                    }
                }
            }
        }
        match outcome {
            SyncOutcome::Now(answer) => answer,
            SyncOutcome::Wait(rx) => self
                .wait(rx)
                .await
                .unwrap_or_else(|| refuse(ResponseError::NotCoordinator)),
        }
    }

    /// Heartbeat.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(e) = check_group_id(group_id) {
            return Err(e);
        }
        let mut owned = self.owned(group_id)?;
        let now_ms = self.now_ms();
        let group = owned
            .shard
            .groups
            .get_mut(group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        group.heartbeat(generation, member_id, instance, now_ms)
    }

    /// LeaveGroup: one result per (member id, instance id).
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        if let Some(e) = check_group_id(group_id) {
            return Err(e);
        }
        let mut owned = self.owned(group_id)?;
        let now_ms = self.now_ms();
        let settings = self.settings();
        let Some(group) = owned.shard.groups.get_mut(group_id) else {
            return Ok(members
                .iter()
                .map(|_| Err(ResponseError::UnknownMemberId))
                .collect());
        };
        let results = members
            .iter()
            .map(|(member_id, instance)| {
                group.leave(member_id, instance.as_deref(), settings, now_ms)
            })
            .collect();
        self.persist(&mut owned, group_id);
        Ok(results)
    }

    /// OffsetCommit: writes every offset in one batch and answers once it is committed.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        offsets: Vec<(String, i32, OffsetValue)>,
    ) -> Result<(), ResponseError> {
        if let Some(e) = check_group_id(group_id) {
            return Err(e);
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let (appended, partition) = {
            let mut owned = self.owned(group_id)?;
            let now_ms = self.now_ms();
            if !owned.shard.groups.contains_key(group_id) {
                // A commit for an unknown group creates it (Kafka does the same for
                // generation -1 commits; member commits are checked below).
                if self.group_count() >= GROUPS_MAX {
                    return Err(ResponseError::CoordinatorNotAvailable);
                }
                owned
                    .shard
                    .groups
                    .insert(group_id.to_string(), Group::new(group_id.to_string()));
            }
            let group = owned
                .shard
                .groups
                .get_mut(group_id)
                .ok_or(ResponseError::CoordinatorNotAvailable)?;
            group.check_commit(generation, member_id, instance, now_ms)?;
            let entries: Vec<(Bytes, Option<Bytes>)> = offsets
                .iter()
                .map(|(topic, partition, value)| {
                    (
                        records::offset_key(group_id, topic, *partition),
                        Some(records::offset_value(value)),
                    )
                })
                .collect();
            let appended = self.write(&owned.partition, &entries)?;
            (appended, Arc::clone(&owned.partition))
        };
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            result = partition.wait_acknowledgeable(&appended) => result.map_err(not_available)?,
            _ = shutdown.wait_for(|s| *s) => return Err(ResponseError::CoordinatorNotAvailable),
        }
        let mut owned = self.owned(group_id)?;
        let group = owned
            .shard
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| Group::new(group_id.to_string()));
        for (i, (topic, partition, value)) in offsets.into_iter().enumerate() {
            group.apply_offset(
                &topic,
                partition,
                Committed {
                    value,
                    log_offset: appended.base_offset + i as i64,
                },
            );
        }
        Ok(())
    }

    /// OffsetFetch for one group: the committed offset of each wanted partition (`None`:
    /// every partition with one), `None` where nothing is committed.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<TopicOffsets, ResponseError> {
        if let Some(e) = check_group_id(group_id) {
            return Err(e);
        }
        let owned = self.owned(group_id)?;
        let group = owned.shard.groups.get(group_id);
        let lookup = |topic: &str, partition: i32| {
            group.and_then(|g| {
                g.offsets
                    .get(&(topic.to_string(), partition))
                    .map(|c| c.value.clone())
            })
        };
        Ok(match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let found = partitions
                        .into_iter()
                        .map(|p| (p, lookup(&topic, p)))
                        .collect();
                    (topic, found)
                })
                .collect(),
            None => {
                let mut by_topic: std::collections::BTreeMap<
                    String,
                    Vec<(i32, Option<OffsetValue>)>,
                > = std::collections::BTreeMap::new();
                if let Some(g) = group {
                    for ((topic, partition), committed) in &g.offsets {
                        by_topic
                            .entry(topic.clone())
                            .or_default()
                            .push((*partition, Some(committed.value.clone())));
                    }
                }
                by_topic
                    .into_iter()
                    .map(|(topic, mut partitions)| {
                        partitions.sort_by_key(|(p, _)| *p);
                        (topic, partitions)
                    })
                    .collect()
            }
        })
    }
}

/// Replays a `__consumer_offsets` partition from its start to its high watermark into
/// groups; returns them and the records read. Records that do not decode are skipped with
/// a warning (someone may have produced into the topic).
fn replay(
    partition: &Partition,
    now_ms: u64,
) -> Result<(HashMap<String, Group>, u64), BrokerError> {
    let mut groups: HashMap<String, Group> = HashMap::new();
    let end_offset = partition.visible_end_offset();
    let mut offset = partition.log().log_start_offset() as i64;
    let mut records_read = 0u64;
    while offset < end_offset {
        let read = partition.read(offset, LOAD_READ_BYTES)?;
        if read.records.is_empty() {
            break;
        }
        let before = offset;
        for batch in batches(&read.records) {
            let batch = batch.map_err(|e| BrokerError::Storage(e.to_string()))?;
            offset = batch.next_offset();
            if batch.is_control() {
                continue;
            }
            let records = match batch.records() {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(offset = batch.base_offset(), error = %e, "skipping a {OFFSETS_TOPIC} batch");
                    continue;
                }
            };
            for record in records {
                let record = match record {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping a {OFFSETS_TOPIC} record");
                        break;
                    }
                };
                records_read += 1;
                match records::decode(record.key, record.value) {
                    Ok(decoded) => apply(&mut groups, decoded, record.offset, now_ms),
                    Err(e) => {
                        tracing::warn!(offset = record.offset, error = %e, "skipping a {OFFSETS_TOPIC} record")
                    }
                }
            }
        }
        if offset <= before {
            break;
        }
    }
    groups.retain(|_, g| !g.is_forgettable());
    Ok((groups, records_read))
}

fn apply(groups: &mut HashMap<String, Group>, record: OffsetsRecord, log_offset: i64, now_ms: u64) {
    match record {
        OffsetsRecord::Offset {
            group,
            topic,
            partition,
            value,
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group));
            match value {
                Some(value) => g.apply_offset(&topic, partition, Committed { value, log_offset }),
                None => {
                    g.offsets.remove(&(topic, partition));
                }
            }
        }
        OffsetsRecord::Group { group, value } => match value {
            Some(value) => groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group))
                .restore(value, now_ms),
            // A group tombstone deletes the group's metadata; its offsets have their own
            // keys and tombstones (a compacted log may keep either without the other).
            None => {
                if let Some(g) = groups.get_mut(&group) {
                    g.restore(
                        super::records::GroupValue {
                            protocol_type: String::new(),
                            generation: 0,
                            protocol: None,
                            leader: None,
                            current_state_timestamp_ms: 0,
                            members: Vec::new(),
                        },
                        now_ms,
                    );
                }
            }
        },
    }
}

/// One group as ListGroups and DescribeGroups show it.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    /// The group id.
    pub group_id: String,
    /// Kafka's state name ("Stable", "Empty", …; "Dead" for a group this coordinator
    /// does not know).
    pub state: &'static str,
    /// The protocol type ("consumer").
    pub protocol_type: String,
    /// The chosen protocol (assignor), "" outside Stable / CompletingRebalance.
    pub protocol: String,
    /// Members: (member id, instance id, client id, client host, metadata, assignment).
    pub members: Vec<MemberSummary>,
}

/// One member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct MemberSummary {
    /// Its member id.
    pub member_id: String,
    /// Its static instance id.
    pub group_instance_id: Option<String>,
    /// Its client id.
    pub client_id: String,
    /// Its address.
    pub client_host: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
    /// Its assignment.
    pub assignment: Bytes,
}

fn summarize(group: &Group) -> GroupSummary {
    let protocol = group.protocol.clone().unwrap_or_default();
    let show_protocol = matches!(
        group.state,
        super::state::GroupState::Stable | super::state::GroupState::CompletingRebalance
    );
    GroupSummary {
        group_id: group.id.clone(),
        state: group.state.name(),
        protocol_type: group.protocol_type.clone().unwrap_or_default(),
        protocol: if show_protocol {
            protocol.clone()
        } else {
            String::new()
        },
        members: group
            .members
            .values()
            .map(|m| MemberSummary {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.metadata_for(&protocol).cloned().unwrap_or_default(),
                assignment: m.assignment.clone(),
            })
            .collect(),
    }
}

impl GroupCoordinator {
    /// ListGroups: every group of every partition this broker coordinates (loaded ones),
    /// with its protocol type and state.
    pub fn list_groups(&self) -> Vec<GroupSummary> {
        let Some(shards) = self.shards.get() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for shard in shards {
            let shard = shard.lock().expect("group shard lock");
            if shard.loaded_term.is_none() {
                continue;
            }
            out.extend(shard.groups.values().map(|g| {
                let mut summary = summarize(g);
                summary.members.clear();
                summary
            }));
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// DescribeGroups for one group ("Dead" with no members if it does not exist).
    pub fn describe_group(&self, group_id: &str) -> Result<GroupSummary, ResponseError> {
        if let Some(e) = check_group_id(group_id) {
            return Err(e);
        }
        let owned = self.owned(group_id)?;
        Ok(match owned.shard.groups.get(group_id) {
            Some(group) => summarize(group),
            None => GroupSummary {
                group_id: group_id.to_string(),
                state: "Dead",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
        })
    }
}

impl GroupCoordinator {
    /// DeleteGroups for one group: refused while it has members (NON_EMPTY_GROUP) or if it
    /// does not exist (GROUP_ID_NOT_FOUND); otherwise tombstones for its offsets and its
    /// metadata are written and committed, then it is forgotten.
    pub async fn delete_group(&self, group_id: &str) -> Result<(), ResponseError> {
        if let Some(e) = check_group_id(group_id) {
            return Err(e);
        }
        let (appended, partition) = {
            let mut owned = self.owned(group_id)?;
            let group = owned
                .shard
                .groups
                .get(group_id)
                .ok_or(ResponseError::GroupIdNotFound)?;
            if !group.members.is_empty() || !group.pending_members.is_empty() {
                return Err(ResponseError::NonEmptyGroup);
            }
            let mut entries: Vec<(Bytes, Option<Bytes>)> = group
                .offsets
                .keys()
                .map(|(topic, partition)| (records::offset_key(group_id, topic, *partition), None))
                .collect();
            entries.push((records::group_key(group_id), None));
            let appended = self.write(&owned.partition, &entries)?;
            owned.shard.groups.remove(group_id);
            (appended, Arc::clone(&owned.partition))
        };
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            result = partition.wait_acknowledgeable(&appended) => result.map_err(not_available),
            _ = shutdown.wait_for(|s| *s) => Err(ResponseError::CoordinatorNotAvailable),
        }
    }
}

/// One partition's answer to OffsetDelete: `Ok` if its offset is gone (or there was none).
pub type OffsetDeleteResult = (String, i32, Result<(), ResponseError>);

impl GroupCoordinator {
    /// OffsetDelete for one group: GROUP_ID_NOT_FOUND for a group this coordinator does
    /// not know, NON_EMPTY_GROUP for a group with members that is not a consumer group;
    /// otherwise each partition's offset is deleted unless a live member subscribes to its
    /// topic (GROUP_SUBSCRIBED_TO_TOPIC). Deleted offsets get tombstones in
    /// `__consumer_offsets`, answered once committed, so a restarted coordinator replays
    /// the deletion.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<OffsetDeleteResult>, ResponseError> {
        if let Some(e) = check_group_id(group_id) {
            return Err(e);
        }
        let (results, written) = {
            let owned = self.owned(group_id)?;
            let group = owned
                .shard
                .groups
                .get(group_id)
                .ok_or(ResponseError::GroupIdNotFound)?;
            let eligibility = group.offset_delete_eligibility(&partitions)?;
            // Tombstones only for offsets the group has; the others are answered without
            // a write, as Kafka does.
            let tombstones: Vec<(String, i32)> = partitions
                .iter()
                .zip(&eligibility)
                .filter(|(key, eligible)| eligible.is_ok() && group.offsets.contains_key(*key))
                .map(|(key, _)| key.clone())
                .collect();
            let results: Vec<OffsetDeleteResult> = partitions
                .into_iter()
                .zip(eligibility)
                .map(|((topic, partition), result)| (topic, partition, result))
                .collect();
            let written = if tombstones.is_empty() {
                None
            } else {
                let entries: Vec<(Bytes, Option<Bytes>)> = tombstones
                    .iter()
                    .map(|(topic, partition)| {
                        (records::offset_key(group_id, topic, *partition), None)
                    })
                    .collect();
                let appended = self.write(&owned.partition, &entries)?;
                Some((appended, Arc::clone(&owned.partition), tombstones))
            };
            (results, written)
        };
        let Some((appended, partition, tombstones)) = written else {
            return Ok(results);
        };
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            result = partition.wait_acknowledgeable(&appended) => result.map_err(not_available)?,
            _ = shutdown.wait_for(|s| *s) => return Err(ResponseError::CoordinatorNotAvailable),
        }
        let mut owned = self.owned(group_id)?;
        if let Some(group) = owned.shard.groups.get_mut(group_id) {
            for (i, (topic, partition)) in tombstones.iter().enumerate() {
                group.remove_offset(topic, *partition, appended.base_offset + i as i64);
            }
        }
        Ok(results)
    }
}
