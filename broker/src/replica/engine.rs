//! The persist loop of one data directory: a thread of its own (fsyncs never block a
//! tokio worker) that drives every Raft group of the directory.
//!
//! One round: take every scheduled group that has a `Ready`, apply its log changes
//! (a leader's entries are in the segment already; a follower's are written here),
//! then sync them all — the new bytes of every group that only appended go into the
//! directory's shared journal with one fdatasync for all of them (`rill_storage`'s
//! `Journal`; from two such groups on), the rest get an fdatasync of their dirty files
//! (and a directory fsync where segments were created), the terms and votes of all
//! groups one file write — and only then advance the groups, release their after-persist messages and publish
//! their new high watermarks (persist before send: `Durable` receipts exist only after
//! the sync). Appends that arrive during the sync are written, proposed and sent to the
//! followers at once (they write and sync them while the leader syncs; the leader
//! counts them towards a commit only after its own next sync), and all share the next
//! round (group commit across requests *and* partitions).
//!
//! The same thread is the one timer of every group: each `TICK` it ticks every group
//! that is not in the middle of a round. Under `durability = interval` a round does not
//! sync; every `flush_interval_ms` a thread of its own (`rill-interval-sync`) syncs
//! every group instead (what Kafka does by default: a power loss loses the records of
//! the last interval). Rounds go on meanwhile: each group's sync job runs outside its
//! lock, appends during it are simply not covered, and a truncation in between voids
//! it (the log's generation). On the persist thread, a sync of a large backlog stalled
//! every round behind it: measured with 3 brokers, RF=3 acks=all produce at about 130
//! MB/s with latency spikes of 1.4 s, against about 300 MB/s when no sync fell into the
//! run.
//!
//! Rejoining on an empty data directory: a broker whose data directory was wiped (or
//! replaced) restarts with every Raft term and vote of its earlier life gone, and could
//! vote a second time in a term in which it voted already — two leaders of one term, a
//! safety violation. So while the directory is fresh (this start created
//! `meta/node.json`) *and* the broker is rejoining (a peer's handshake said the cluster
//! metadata registers an earlier incarnation of it, [`Transport::rejoining`]), each of its
//! replicas is **vote-restrained**: it grants no vote, follows no TimeoutNow and never
//! campaigns (its election timer does not run), until it has (1) heard from a leader of
//! its group, (2) caught up to the commit offset that leader announced in its first
//! append, and (3) lived [`REJOIN_VOTE_WAIT`] since the broker started. After that it
//! votes only in terms above the leader's it follows (Raft refuses a second vote in a
//! term with a known leader). Why this is enough, nearly: a term in which the lost life
//! voted had a candidate then; within the wait (two maximal election timeouts) that
//! candidate either won — and the restrained replica learns that leader's term — or timed
//! out into a later term, so a vote request of that old term can only come from a
//! candidate that was stopped or cut off for the whole wait. That residual risk remains
//! (Kafka's KIP-853 removes it with directory ids known to the quorum), as does the
//! loss of entries the wiped replica had helped commit if a second replica fails before it
//! caught up: a wiped disk counts as one failure. For the same reason a group that lost
//! its leader while another of its replicas is down cannot elect one with the wiped
//! replica's vote: it waits for that replica to return (availability yields to safety,
//! as Raft does with two of three replicas gone). A brand-new cluster is not restrained:
//! no peer knows the broker, so its first elections are as fast as ever.
//!
//! A leader also forgets what a restarted peer acknowledged ([`Partition::peer_restarted`]
//! when a handshake announces a new incarnation): a wiped follower's log is shorter than
//! its old match, and a leader that kept the match would take its rejections as stale.
//!
//! Fail-stop: if a write or sync fails, the directory goes offline for good (until a
//! restart runs recovery): no group is advanced again, so nothing is acknowledged after
//! the failure, and no later fsync is ever taken to cover the failed range (after a
//! failed fsync, Linux may have dropped the dirty pages and report the next one clean).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rill_storage::{DeferredSync, FlushJob, FlushedTo, Journal, JournalWrite, StorageError};

use super::hard_state::{HardStates, ReplicaKey};
use super::Partition;
use crate::config::Durability;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::transport::{Envelope, InboundBatch, Transport};

/// Which timer set of the engine holds a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Ticked every `TICK`.
    Ticking,
    /// Quiet (Raft quiescence): not ticked; woken if a member's broker falls silent.
    Quiet,
    /// A sole-member leader: nothing to time.
    Untimed,
}

/// How long a peer broker may send nothing (not even the transport's keepalives, every
/// 200 ms) before the quiet groups it is a member of are woken: one election timeout.
const PEER_SILENCE: Duration = Duration::from_secs(1);

/// Raft tick period (the core's election timeout is 10–20 ticks).
pub const TICK: Duration = Duration::from_millis(100);

/// How long after start a replica on a wiped data directory of a rejoining broker waits
/// before it may vote (see the module docs): two maximal election timeouts (2 × 20
/// ticks), so any election of a term its lost life voted in has ended.
pub const REJOIN_VOTE_WAIT: Duration = Duration::from_millis(
    2 * 2 * rill_raft::config::ELECTION_TIMEOUT_TICKS_DEFAULT as u64 * TICK.as_millis() as u64,
);

/// Settings of one persist loop.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// fsync before acknowledging, or sync every `flush_interval`.
    pub durability: Durability,
    /// Sync period under `durability = interval`.
    pub flush_interval: Duration,
    /// Testing aid: sleep this long before each sync round (widens group commits).
    pub debug_flush_delay: Duration,
    /// Testing aid: sleep this long before each deferred job (see [`DeferredSync`]).
    pub debug_deferred_sync_delay: Duration,
    /// The data directory: root of the journal records' segment paths.
    pub data_dir: std::path::PathBuf,
    /// Size of the shared journal (`meta/journal`).
    pub journal_bytes: u64,
    /// How often a partition whose idempotent producers wrote may snapshot their state
    /// (also after a segment's worth of bytes); see `super::store`.
    pub producer_snapshot_interval: Duration,
}

/// The shared journal of a data directory, locked by the persist loop (holding no
/// partition lock) and by a partition's truncation barrier (holding that partition's
/// lock): the order is always partition → journal.
pub type SharedJournal = Arc<Mutex<Journal>>;

/// Fewest partitions a round makes durable through the journal rather than with an
/// fdatasync each: a single partition syncs in place (no second copy of its bytes);
/// from two on, one journal fdatasync replaces one per partition.
const JOURNAL_PARTITIONS_MIN: usize = 2;

#[derive(Default)]
struct Queue {
    scheduled: Vec<Arc<Partition>>,
    stop: bool,
}

/// The persist loop and timer of one data directory (see the module docs).
pub struct Engine {
    config: EngineConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    hard_states: Mutex<HardStates>,
    journal: SharedJournal,
    /// Every live replica of the directory (interval syncs, shutdown).
    replicas: Mutex<HashMap<ReplicaKey, Weak<Partition>>>,
    /// The replicas whose ticks matter: neither sole-member leaders nor quiet groups
    /// (see `tick_all`).
    ticking: Mutex<HashMap<ReplicaKey, Weak<Partition>>>,
    /// Quiet groups (Raft quiescence), woken when a member's broker falls silent.
    quiet: Mutex<HashMap<ReplicaKey, Weak<Partition>>>,
    offline: AtomicBool,
    /// Controlled shutdown began: replicas here no longer take leadership handed to
    /// them (`Partition::deliver` drops `TimeoutNow`).
    stopping: AtomicBool,
    offline_reason: Mutex<String>,
    /// Groups whose last `Ready` ran out of space, retried every round.
    stuck: Mutex<Vec<Work>>,
    short_of_space: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The interval-sync thread (`durability = interval` only).
    interval_thread: Mutex<Option<JoinHandle<()>>>,
    /// Where rounds hand work no acknowledgement waits for (see [`DeferredSync`]):
    /// the `rill-deferred-sync` thread runs it in order. Taken (closing the channel)
    /// at shutdown.
    deferred: Mutex<Option<std::sync::mpsc::SyncSender<DeferredSync>>>,
    deferred_thread: Mutex<Option<JoinHandle<()>>>,
    /// Held by each sync of every group (interval thread, shutdown): one at a time.
    sync_all_lock: Mutex<()>,
    /// Test-only fault ([`SYNC_TO_ADVANCE_DELAY_ENV`], unset by default): how long
    /// each round that holds a leader's `Ready` waits before its syncs and again
    /// between its syncs and advancing its groups, on this thread.
    sync_to_advance_delay: Option<Duration>,
    metrics: Arc<Metrics>,
    /// Where the groups' messages to peer replicas go (unset on a single node, whose
    /// groups have no peers).
    transport: OnceLock<Arc<Transport>>,
    /// Where leadership reports from peers go (messages of the reserved group
    /// [`crate::leadership::LEADERSHIP_TOPIC_ID`]); unset on a single node.
    leadership: OnceLock<Arc<crate::leadership::LeadershipTable>>,
    /// Where peers' requests for producer-id blocks go (the controller serves them);
    /// unset on a single node.
    producer_id_requests: OnceLock<tokio::sync::mpsc::Sender<(i32, uuid::Uuid)>>,
    /// This start created the data directory's identity (see the module docs).
    fresh_data_dir: AtomicBool,
    /// When the engine started (the rejoin wait counts from here).
    started: Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("offline", &self.offline.load(Ordering::Relaxed))
            .finish()
    }
}

/// What a round holds for one group between handing over its `Ready` and advancing.
struct Work {
    partition: Arc<Partition>,
    persist: rill_raft::Persist,
    after_persist: rill_raft::AfterPersist,
    flush: Option<FlushJob>,
    flushed: Option<FlushedTo>,
    /// What the flush left for the deferred-sync thread.
    deferred: Option<DeferredSync>,
    /// The round's new bytes as a journal write, when that is all the group needs.
    journal: Option<JournalWrite>,
    /// Made durable by the journal in this epoch.
    journalled: Option<(FlushedTo, u64)>,
}

impl Engine {
    /// Replays the directory's journal (before any log opens: the caller opens them
    /// after this), loads its terms and votes and starts the loop's thread.
    pub fn start(
        meta_dir: &std::path::Path,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Engine>, BrokerError> {
        let (journal, replayed) = Journal::open(
            &meta_dir.join("journal"),
            &config.data_dir,
            config.journal_bytes,
        )
        .map_err(|e| BrokerError::Storage(e.to_string()))?;
        if replayed.records > 0 {
            tracing::info!(
                records = replayed.records,
                bytes = replayed.bytes,
                "wrote back journalled segment bytes"
            );
        }
        let engine = Arc::new(Engine {
            journal: Arc::new(Mutex::new(journal)),
            config,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            hard_states: Mutex::new(HardStates::load(meta_dir)?),
            replicas: Mutex::new(HashMap::new()),
            ticking: Mutex::new(HashMap::new()),
            quiet: Mutex::new(HashMap::new()),
            offline: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            offline_reason: Mutex::new(String::new()),
            stuck: Mutex::new(Vec::new()),
            short_of_space: AtomicBool::new(false),
            thread: Mutex::new(None),
            interval_thread: Mutex::new(None),
            deferred: Mutex::new(None),
            deferred_thread: Mutex::new(None),
            sync_all_lock: Mutex::new(()),
            sync_to_advance_delay: sync_to_advance_delay_from_env(),
            metrics,
            transport: OnceLock::new(),
            leadership: OnceLock::new(),
            producer_id_requests: OnceLock::new(),
            fresh_data_dir: AtomicBool::new(false),
            started: Instant::now(),
        });
        let weak = Arc::downgrade(&engine);
        let handle = std::thread::Builder::new()
            .name("rill-persist".into())
            .spawn(move || run(weak))
            .map_err(|e| BrokerError::Storage(format!("cannot start the persist thread: {e}")))?;
        *engine.thread.lock().expect("engine thread lock") = Some(handle);
        let (deferred_tx, deferred_rx) = std::sync::mpsc::sync_channel(DEFERRED_QUEUE_JOBS_MAX);
        let weak = Arc::downgrade(&engine);
        let delay = engine.config.debug_deferred_sync_delay;
        let handle = std::thread::Builder::new()
            .name("rill-deferred-sync".into())
            .spawn(move || run_deferred(weak, deferred_rx, delay))
            .map_err(|e| {
                BrokerError::Storage(format!("cannot start the deferred-sync thread: {e}"))
            })?;
        *lock_unpoisoned(&engine.deferred) = Some(deferred_tx);
        *lock_unpoisoned(&engine.deferred_thread) = Some(handle);
        if engine.config.durability == Durability::Interval {
            let weak = Arc::downgrade(&engine);
            let interval = engine.config.flush_interval;
            let handle = std::thread::Builder::new()
                .name("rill-interval-sync".into())
                .spawn(move || run_interval_syncs(weak, interval))
                .map_err(|e| {
                    BrokerError::Storage(format!("cannot start the interval-sync thread: {e}"))
                })?;
            *engine.interval_thread.lock().expect("interval thread lock") = Some(handle);
        }
        Ok(engine)
    }

    /// Connects the groups to their peers: from now on their messages go out through
    /// `transport`, and every batch arriving on `inbound` is handed to its groups by a
    /// thread of its own (stepping a message may write a new leader's entry: file
    /// I/O, never on a tokio worker). Call once.
    pub fn connect(
        self: &Arc<Self>,
        transport: Arc<Transport>,
        mut inbound: tokio::sync::mpsc::Receiver<InboundBatch>,
    ) -> Result<(), BrokerError> {
        if self.transport.set(Arc::clone(&transport)).is_err() {
            return Err(BrokerError::Storage(
                "the engine is connected already".into(),
            ));
        }
        self.watch_restarts(&transport);
        let engine = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("rill-inbound".into())
            .spawn(move || {
                while let Some(batch) = inbound.blocking_recv() {
                    let Some(engine) = engine.upgrade() else {
                        return;
                    };
                    engine.deliver(batch);
                }
            })
            .map_err(|e| BrokerError::Storage(format!("cannot start the inbound thread: {e}")))?;
        Ok(())
    }

    /// Sends the leadership reports of peers to `table` from now on. Call once.
    pub fn set_leadership(&self, table: Arc<crate::leadership::LeadershipTable>) {
        let _ = self.leadership.set(table);
    }

    /// Where peers' producer-id block requests go (see [`crate::producer_ids`]).
    pub fn set_producer_id_requests(&self, requests: tokio::sync::mpsc::Sender<(i32, uuid::Uuid)>) {
        let _ = self.producer_id_requests.set(requests);
    }

    /// Watches the peers' handshakes: a peer's new incarnation may have lost its disk,
    /// so every group this broker leads forgets what that peer acknowledged
    /// ([`Partition::peer_restarted`]). Runs on the current tokio runtime.
    fn watch_restarts(self: &Arc<Self>, transport: &Arc<Transport>) {
        let mut changed = transport.registrations_changed();
        let mut known: HashMap<i32, uuid::Uuid> = transport
            .peer_registrations()
            .into_iter()
            .map(|(id, info)| (id, info.incarnation_id))
            .collect();
        let engine = Arc::downgrade(self);
        let transport = Arc::downgrade(transport);
        tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                let (Some(engine), Some(transport)) = (engine.upgrade(), transport.upgrade())
                else {
                    return;
                };
                let restarted: Vec<i32> = transport
                    .peer_registrations()
                    .into_iter()
                    .filter(|(peer, info)| {
                        let previous = known.insert(*peer, info.incarnation_id);
                        previous.is_some_and(|old| old != info.incarnation_id)
                    })
                    .map(|(peer, _)| peer)
                    .collect();
                if restarted.is_empty() {
                    continue;
                }
                // Stepping a core may write a new leader's entry: file I/O, off the
                // runtime's workers.
                let _ = tokio::task::spawn_blocking(move || {
                    for partition in engine.live_replicas() {
                        for &peer in &restarted {
                            partition.peer_restarted(peer);
                        }
                    }
                })
                .await;
            }
        });
    }

    /// Hands each received message to its group's replica; messages for groups this
    /// broker does not host (deleted, not created yet) are dropped. Leadership reports
    /// go to the leadership table.
    fn deliver(&self, batch: InboundBatch) {
        let (reports, envelopes): (Vec<Envelope>, Vec<Envelope>) = batch
            .envelopes
            .into_iter()
            .partition(|e| e.group.0 == crate::leadership::LEADERSHIP_TOPIC_ID);
        for report in reports {
            if report.group.1 == crate::leadership::PRODUCER_IDS_PARTITION {
                let request = crate::leadership::decode_producer_ids_request(&report.message);
                match (request, self.producer_id_requests.get()) {
                    // Full: the requester asks again within a second.
                    (Some(incarnation), Some(requests)) => {
                        let _ = requests.try_send((batch.from_broker, incarnation));
                    }
                    _ => tracing::debug!(from = batch.from_broker, "producer id request dropped"),
                }
            } else if let Some(table) = self.leadership.get() {
                table.receive(batch.from_broker, report.message);
            }
        }
        let replicas = self.replicas.lock().expect("replicas lock");
        let targets: Vec<(Option<Arc<Partition>>, rill_raft::Message)> = envelopes
            .into_iter()
            .map(|e| (replicas.get(&e.group).and_then(Weak::upgrade), e.message))
            .collect();
        drop(replicas);
        for (partition, message) in targets {
            match partition {
                Some(p) => p.deliver(message),
                None => tracing::debug!(
                    from = batch.from_broker,
                    "message for a group not hosted here"
                ),
            }
        }
    }

    /// Sends a group's messages to its peer replicas (dropped without a transport:
    /// a group of one has no peers).
    pub(super) fn send(&self, group: ReplicaKey, messages: Vec<rill_raft::Message>) {
        if messages.is_empty() {
            return;
        }
        let Some(transport) = self.transport.get() else {
            tracing::debug!(count = messages.len(), "messages without a transport");
            return;
        };
        for message in messages {
            let to = super::store::broker_id(message.to);
            if let Err(e) = transport.send(to, Envelope { group, message }) {
                // Raft resends what matters; the transport counts the drop.
                tracing::debug!(to, error = %e, "message not sent");
            }
        }
    }

    /// Marks the data directory as created by this start: its replicas' terms and votes
    /// of any earlier life are lost (see the module docs).
    pub fn mark_fresh_data_dir(&self) {
        self.fresh_data_dir.store(true, Ordering::Release);
    }

    /// Whether this start created the data directory's identity.
    pub(super) fn is_fresh_data_dir(&self) -> bool {
        self.fresh_data_dir.load(Ordering::Acquire)
    }

    /// Whether replicas on this directory must hold back their votes: the directory is
    /// fresh and the cluster knew this broker before (see the module docs).
    pub(super) fn rejoining_fresh(&self) -> bool {
        self.fresh_data_dir.load(Ordering::Acquire)
            && self.transport.get().is_some_and(|t| t.rejoining())
    }

    /// How long the engine has run.
    pub(super) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The directory's shared journal (for partition truncation barriers).
    pub fn journal(&self) -> &SharedJournal {
        &self.journal
    }

    /// Marks the start of a controlled shutdown (see `stopping`).
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether a controlled shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// A replica's last durable term, vote and commit hint.
    pub fn hard_state(&self, key: ReplicaKey) -> rill_raft::HardState {
        self.hard_states.lock().expect("hard states lock").get(key)
    }

    pub(super) fn register(&self, partition: &Arc<Partition>) {
        self.replicas
            .lock()
            .expect("replicas lock")
            .insert(partition.key(), Arc::downgrade(partition));
        self.set_timer(partition, Timer::Ticking);
    }

    /// Puts a replica in the timer set `timer` names, out of the others.
    pub(super) fn set_timer(&self, partition: &Partition, timer: Timer) {
        let key = partition.key();
        let weak = self
            .replicas
            .lock()
            .expect("replicas lock")
            .get(&key)
            .cloned();
        let mut ticking = self.ticking.lock().expect("ticking lock");
        let mut quiet = self.quiet.lock().expect("quiet lock");
        ticking.remove(&key);
        quiet.remove(&key);
        let Some(weak) = weak else {
            return;
        };
        match timer {
            Timer::Ticking => {
                ticking.insert(key, weak);
            }
            Timer::Quiet => {
                quiet.insert(key, weak);
            }
            Timer::Untimed => {}
        }
        self.publish_timer_gauges(&ticking, &quiet);
    }

    fn publish_timer_gauges(
        &self,
        ticking: &HashMap<ReplicaKey, Weak<Partition>>,
        quiet: &HashMap<ReplicaKey, Weak<Partition>>,
    ) {
        self.metrics
            .raft_ticking_groups
            .store(ticking.len() as u64, Ordering::Relaxed);
        self.metrics
            .raft_quiet_groups
            .store(quiet.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn unregister(&self, partition: &Partition) {
        self.replicas
            .lock()
            .expect("replicas lock")
            .remove(&partition.key());
        {
            let mut ticking = self.ticking.lock().expect("ticking lock");
            let mut quiet = self.quiet.lock().expect("quiet lock");
            ticking.remove(&partition.key());
            quiet.remove(&partition.key());
            self.publish_timer_gauges(&ticking, &quiet);
        }
        self.hard_states
            .lock()
            .expect("hard states lock")
            .remove(partition.key());
    }

    pub(super) fn schedule(&self, partition: Arc<Partition>) {
        let mut queue = self.queue.lock().expect("engine queue lock");
        queue.scheduled.push(partition);
        drop(queue);
        self.wake.notify_one();
    }

    /// Whether the directory is offline after a failed write or sync.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    /// The error every request to an offline directory gets.
    pub fn offline_error(&self) -> BrokerError {
        let reason = self.offline_reason.lock().expect("offline reason lock");
        BrokerError::Storage(format!(
            "log directory offline after a failed write or sync ({reason}); restart the broker to recover"
        ))
    }

    /// Takes the directory offline: nothing is acknowledged or advanced any more.
    pub(super) fn go_offline(&self, reason: &str) {
        if self.offline.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(error = reason, "log directory offline: a write or sync failed; no further acknowledgement until restart");
        Metrics::add(&self.metrics.log_flush_errors_total, 1);
        *self.offline_reason.lock().expect("offline reason lock") = reason.to_string();
        for partition in self.live_replicas() {
            partition.publish_failed();
        }
    }

    fn live_replicas(&self) -> Vec<Arc<Partition>> {
        self.replicas
            .lock()
            .expect("replicas lock")
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Stops the loop after a last round, syncs every replica and writes the commit
    /// hints, so a restart exposes the high watermark at once.
    pub fn shutdown(&self) -> Result<(), BrokerError> {
        self.queue.lock().expect("engine queue lock").stop = true;
        self.wake.notify_one();
        if let Some(handle) = self.thread.lock().expect("engine thread lock").take() {
            let _ = handle.join();
        }
        if let Some(handle) = self
            .interval_thread
            .lock()
            .expect("interval thread lock")
            .take()
        {
            let _ = handle.join();
        }
        // The deferred work of the last rounds first (index syncs, checkpoints): a
        // restart then scans only the active segments.
        lock_unpoisoned(&self.deferred).take();
        if let Some(handle) = lock_unpoisoned(&self.deferred_thread).take() {
            let _ = handle.join();
        }
        if self.is_offline() {
            return Err(self.offline_error());
        }
        self.sync_all()?;
        // Everything journalled goes in place too, so the journal starts empty.
        self.journal
            .lock()
            .expect("journal lock")
            .checkpoint()
            .map_err(|e| BrokerError::Storage(e.to_string()))?;
        let mut hard_states = self.hard_states.lock().expect("hard states lock");
        for partition in self.live_replicas() {
            let st = partition.state();
            if !st.ready_out {
                hard_states.set(partition.key(), st.raft.hard_state());
            }
        }
        hard_states
            .write(true)
            .map(|_| ())
            .map_err(|e| BrokerError::Storage(e.to_string()))
    }

    /// Syncs every replica (interval policy, shutdown), one sync of all at a time.
    fn sync_all(&self) -> Result<(), BrokerError> {
        let _one_at_a_time = self.sync_all_lock.lock().expect("sync-all lock");
        Metrics::add(&self.metrics.log_flushes_total, 1);
        for partition in self.live_replicas() {
            if partition.is_closed() {
                continue;
            }
            let job = partition.state().log().prepare_flush();
            match job.run() {
                Ok(done) => {
                    Metrics::add(&self.metrics.partition_syncs_total, 1);
                    let mut st = partition.state();
                    st.raft.store_mut().log_mut().complete_flush(done);
                }
                Err(e) if partition.is_closed() => {
                    tracing::debug!(error = %e, "sync of a deleted partition failed");
                }
                Err(e) => {
                    self.go_offline(&e.to_string());
                    return Err(self.offline_error());
                }
            }
        }
        Ok(())
    }

    /// One round over the scheduled groups (see the module docs), plus the groups
    /// whose last round ran out of space (retried until space is freed).
    fn round(&self, scheduled: Vec<Arc<Partition>>) {
        let mut pending = std::mem::take(&mut *self.stuck.lock().expect("stuck lock"));
        for partition in scheduled {
            let mut st = partition.state();
            st.scheduled = false;
            if partition.is_closed() || self.is_offline() || st.ready_out || !st.raft.has_ready() {
                continue;
            }
            let mut ready = st.raft.ready();
            st.ready_out = true;
            st.raft.store().attach_control_data(&mut ready.messages);
            // Need nothing durable (a leader's appends, vote requests): out at once,
            // under the lock, so that appends proposed while the `Ready` is out (sent
            // by `Partition::append`) follow them in order.
            self.send(partition.key(), ready.messages);
            drop(st);
            pending.push(Work {
                partition,
                persist: ready.persist,
                after_persist: ready.after_persist,
                flush: None,
                flushed: None,
                deferred: None,
                journal: None,
                journalled: None,
            });
        }
        let mut work = Vec::with_capacity(pending.len());
        let mut stuck = Vec::new();
        for mut w in pending {
            match self.apply(&mut w) {
                Ok(()) => work.push(w),
                Err(_) if w.partition.is_closed() => {
                    w.partition.state().in_round = false;
                }
                Err(e) if is_out_of_space(&e) => {
                    w.partition.state().in_round = false;
                    stuck.push(w);
                }
                Err(e) => {
                    w.partition.state().in_round = false;
                    self.go_offline(&e.to_string());
                    return;
                }
            }
        }
        if !stuck.is_empty() {
            self.out_of_space(stuck);
        }
        if work.is_empty() {
            return;
        }
        // Test-only (`SYNC_TO_ADVANCE_DELAY_ENV`): a slow leader's round. Appends it
        // writes and replicates while it waits after its syncs are not covered by
        // them, and stay unsynced while it waits before the next round's syncs
        // (followers' rounds are not slowed: their acknowledgements come first).
        let leader_round_delay = self.sync_to_advance_delay.filter(|_| {
            work.iter()
                .any(|w| w.partition.state().raft.role() == rill_raft::Role::Leader)
        });
        if let Some(delay) = leader_round_delay {
            std::thread::sleep(delay);
        }
        // Sync: every dirty segment, then the terms and votes of all groups at once.
        if work.iter().any(|w| w.flush.is_some()) && !self.config.debug_flush_delay.is_zero() {
            std::thread::sleep(self.config.debug_flush_delay);
        }
        if let Err(e) = self.journal_round(&mut work) {
            self.fail_round(&work, &e.to_string());
            return;
        }
        let jobs: Vec<(usize, FlushJob)> = work
            .iter_mut()
            .enumerate()
            .filter_map(|(i, w)| w.flush.take().map(|job| (i, job)))
            .collect();
        let mut synced = 0u64;
        for (i, result) in run_syncs(jobs) {
            match result {
                Ok((done, deferred)) => {
                    work[i].flushed = Some(done);
                    work[i].deferred = deferred;
                    synced += 1;
                }
                Err(e) if work[i].partition.is_closed() => {
                    tracing::debug!(error = %e, "sync of a deleted partition failed");
                }
                Err(e) => {
                    self.fail_round(&work, &e.to_string());
                    return;
                }
            }
        }
        let hard_state_result = self
            .hard_states
            .lock()
            .expect("hard states lock")
            .write(false);
        match hard_state_result {
            Ok(_) => {}
            Err(e) if is_out_of_space(&e) => {
                // Nothing is advanced; every group of the round waits for space.
                for w in &work {
                    w.partition.state().in_round = false;
                }
                self.out_of_space(work);
                return;
            }
            Err(e) => {
                self.fail_round(&work, &e.to_string());
                return;
            }
        }
        if self.short_of_space.swap(false, Ordering::AcqRel) {
            tracing::info!("log directory has space again");
        }
        if synced > 0 || work.iter().any(|w| w.journalled.is_some()) {
            Metrics::add(&self.metrics.log_flushes_total, 1);
            Metrics::add(&self.metrics.partition_syncs_total, synced);
        }
        if let Some(delay) = leader_round_delay {
            std::thread::sleep(delay);
        }
        // Durable: advance every group, then answer.
        for w in work {
            let partition = w.partition;
            let mut st = partition.state();
            if let Some(done) = w.flushed {
                st.raft.store_mut().log_mut().complete_flush(done);
            }
            if let Some((done, epoch)) = w.journalled {
                st.raft
                    .store_mut()
                    .log_mut()
                    .complete_journaled(done, epoch);
            }
            let durable = w.persist.into_durable();
            let after = w.after_persist.release(&durable);
            self.send(partition.key(), after);
            st.raft.advance(durable);
            st.ready_out = false;
            st.in_round = false;
            st.forget_restarted_peers();
            // What peers sent while the `Ready` was out.
            while let Some(message) = st.inbox.pop_front() {
                if let Err(e) = st.raft.step(message) {
                    tracing::debug!(error = %e, "message refused by the core");
                }
            }
            // Notes a catch-up those messages or this round completed.
            partition.vote_restrained(&mut st);
            if partition.is_closed() {
                continue;
            }
            partition.after_input(&mut st);
            st.reserve_ahead();
            partition.publish(&mut st);
            let snapshot = st
                .raft
                .store_mut()
                .take_producer_snapshot(Instant::now(), self.config.producer_snapshot_interval);
            let mut deferred = w.deferred;
            if let Some((name, body)) = snapshot {
                // Written by the deferred-sync thread: a producer snapshot falls due at
                // every roll (its byte threshold is the segment size), and its four
                // fsync calls here delayed the next round's acknowledgements.
                deferred
                    .get_or_insert_with(|| st.log().deferred_writes())
                    .write_file(name, body);
            }
            drop(st);
            if let Some(job) = deferred {
                self.defer(job);
            }
        }
    }

    /// Hands `job` to the deferred-sync thread; runs it here when its queue is full
    /// (bounded: a disk slower than the rolls only slows the rounds down again) or
    /// gone (shutdown).
    fn defer(&self, job: DeferredSync) {
        use std::sync::mpsc::TrySendError;
        let job = match lock_unpoisoned(&self.deferred).as_ref() {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
            },
            None => job,
        };
        self.run_deferred_job(job);
    }

    /// Runs deferred work; a failed sync takes the directory offline (fail-stop, as
    /// for the round's own syncs).
    fn run_deferred_job(&self, job: DeferredSync) {
        if self.is_offline() {
            return;
        }
        let started = Instant::now();
        let closed_segments = job.closed_segments();
        match job.run() {
            Ok(()) => tracing::debug!(
                closed_segments,
                elapsed_us = started.elapsed().as_micros() as u64,
                "deferred sync done"
            ),
            Err(e) => self.go_offline(&format!("deferred sync: {e}")),
        }
    }

    /// Applies a group's `Ready` to its log (idempotent: a retry after running out of
    /// space applies it again) and prepares its sync.
    fn apply(&self, w: &mut Work) -> Result<(), StorageError> {
        let mut st = w.partition.state();
        st.in_round = true;
        if w.partition.is_closed() {
            return Err(StorageError::CorruptBatch {
                position: 0,
                reason: "partition deleted",
            });
        }
        let changed = st.raft.store_mut().apply(&w.persist)?;
        if let Some(hs) = w.persist.hard_state {
            self.hard_states
                .lock()
                .expect("hard states lock")
                .set(w.partition.key(), hs);
        }
        if changed && self.config.durability == Durability::Fsync {
            w.journal = st.log().journal_write(&self.config.data_dir);
            w.flush = Some(st.log().prepare_flush());
        }
        Ok(())
    }

    /// Makes the round's journal writes durable with one journal fdatasync, when at
    /// least [`JOURNAL_PARTITIONS_MIN`] groups have one; those groups then skip their
    /// own sync. Writes beyond what the journal holds sync in place as before.
    fn journal_round(&self, work: &mut [Work]) -> Result<(), StorageError> {
        let candidates = work.iter().filter(|w| w.journal.is_some()).count();
        if candidates < JOURNAL_PARTITIONS_MIN {
            for w in work.iter_mut() {
                w.journal = None; // drops its reference to the segment map
            }
            return Ok(());
        }
        let mut journal = self.journal.lock().expect("journal lock");
        let capacity_bytes = journal.record_capacity_bytes();
        let mut total_bytes = 0u64;
        let mut indices = Vec::with_capacity(candidates);
        let mut writes = Vec::with_capacity(candidates);
        for (i, w) in work.iter_mut().enumerate() {
            let Some(write) = w.journal.take() else {
                continue;
            };
            if total_bytes + write.journal_bytes() > capacity_bytes {
                continue; // synced in place by its flush job
            }
            total_bytes += write.journal_bytes();
            indices.push(i);
            writes.push(write);
        }
        if writes.len() < JOURNAL_PARTITIONS_MIN {
            return Ok(());
        }
        journal.append(&writes)?;
        let epoch = journal.epoch();
        // Checkpoints also run in truncation barriers: the totals live in the journal.
        let metrics = &self.metrics;
        metrics
            .journal_checkpoints_total
            .store(journal.checkpoints_total(), Ordering::Relaxed);
        metrics
            .journal_checkpoint_file_syncs_total
            .store(journal.checkpoint_file_syncs_total(), Ordering::Relaxed);
        drop(journal);
        Metrics::add(&self.metrics.journal_syncs_total, 1);
        Metrics::add(
            &self.metrics.journal_partition_writes_total,
            writes.len() as u64,
        );
        for (i, write) in indices.into_iter().zip(writes) {
            work[i].flush = None;
            work[i].journalled = Some((write.into_outcome(), epoch));
        }
        Ok(())
    }

    /// Groups whose `Ready` could not be written for lack of space keep it (no input,
    /// no advance) and are retried every round; meanwhile the directory refuses new
    /// appends with a clear error and serves reads up to the high watermarks it has.
    fn out_of_space(&self, stuck: Vec<Work>) {
        if !self.short_of_space.swap(true, Ordering::AcqRel) {
            tracing::error!(groups = stuck.len(), "log directory out of space: appends are refused until space is freed; reads continue");
        }
        self.stuck.lock().expect("stuck lock").extend(stuck);
    }

    /// Whether the directory ran out of space (appends are refused).
    pub fn is_short_of_space(&self) -> bool {
        self.short_of_space.load(Ordering::Acquire)
    }

    /// A sync failed: the directory goes offline and no group of the round advances.
    fn fail_round(&self, work: &[Work], reason: &str) {
        self.go_offline(reason);
        for w in work {
            w.partition.state().in_round = false;
        }
    }

    /// Ticks every group not in a round (the one timer of all groups). A leader that
    /// is its group's only member is left out of the ticked set: it has no one to send
    /// heartbeats to and no election to time out, so its tick would change nothing
    /// (measured with 10,000 idle groups of one: ticking them all cost 3.6 % of a core,
    /// visiting them to skip the tick still 2 %).
    fn tick_all(&self) {
        if self.is_offline() {
            return;
        }
        let ticking: Vec<Arc<Partition>> = self
            .ticking
            .lock()
            .expect("ticking lock")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for partition in ticking {
            let mut st = partition.state();
            if st.ready_out || partition.is_closed() {
                continue;
            }
            if partition.vote_restrained(&mut st) {
                // No election timer: it must not campaign (see the module docs).
                continue;
            }
            st.raft.tick();
            partition.after_input(&mut st);
        }
        self.wake_orphans();
    }

    /// Wakes the quiet groups that have a member on a peer broker the transport has
    /// not heard from for `PEER_SILENCE` (its keepalives stopped: dead, cut off, or
    /// stalled). A quiet group ticks nothing, so without this a follower would never
    /// notice that its leader is gone. Checked every tick while any peer is silent,
    /// not once when it falls silent: a group can go quiet on a heartbeat that was
    /// received just before the silence began and delivered just after.
    fn wake_orphans(&self) {
        let Some(transport) = self.transport.get() else {
            return;
        };
        let silent = transport.silent_peers(PEER_SILENCE);
        if silent.is_empty() {
            return;
        }
        let quiet: Vec<Arc<Partition>> = self
            .quiet
            .lock()
            .expect("quiet lock")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for partition in quiet {
            partition.wake_if_orphaned(&silent);
        }
    }
}

/// What a round's sync of one group made durable, and what it left for later.
type SyncResult = Result<(FlushedTo, Option<DeferredSync>), StorageError>;

/// Most deferred jobs waiting for the deferred-sync thread; beyond, the persist loop
/// runs them itself. One per rolled partition per round, or per producer snapshot.
const DEFERRED_QUEUE_JOBS_MAX: usize = 1024;

/// The deferred-sync thread: runs the rounds' deferred work in order until the engine
/// closes the channel (shutdown: what is queued still runs) or is dropped.
fn run_deferred(
    engine: Weak<Engine>,
    jobs: std::sync::mpsc::Receiver<DeferredSync>,
    delay: Duration,
) {
    while let Ok(job) = jobs.recv() {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.run_deferred_job(job);
    }
}

/// Most threads one round syncs partition files on.
const SYNC_THREADS_MAX: usize = 64;

/// Environment variable of a test-only fault: milliseconds each persist round that
/// holds a leader's `Ready` waits before its syncs, and again after them before it
/// advances its groups (the `debug_flush_delay_ms` key slows every round, the
/// followers' too). Appends that arrive during the second wait are written and
/// replicated but not covered by the round's syncs, nor made durable before the next
/// round's first wait is over: a wide window in which a leader must not count them as
/// durable. Cluster tests set it; never set in production.
pub const SYNC_TO_ADVANCE_DELAY_ENV: &str = "RILL_TEST_SYNC_TO_ADVANCE_DELAY_MS";

/// [`SYNC_TO_ADVANCE_DELAY_ENV`], if set to a number of milliseconds above 0.
fn sync_to_advance_delay_from_env() -> Option<Duration> {
    let ms: u64 = std::env::var(SYNC_TO_ADVANCE_DELAY_ENV)
        .ok()?
        .parse()
        .ok()?;
    if ms == 0 {
        return None;
    }
    tracing::warn!(
        delay_ms = ms,
        "{SYNC_TO_ADVANCE_DELAY_ENV} is set: a leader's persist rounds wait that long before and after their syncs (a test fault)"
    );
    Some(Duration::from_millis(ms))
}

/// Runs a round's syncs (each an fdatasync of one partition's dirty files), several
/// at once: every partition has its own segment files, so one fdatasync cannot cover
/// another partition's data, but concurrent fdatasyncs on one file system share their
/// journal commits and device cache flushes (ext4's jbd2, xfs's log), where one after
/// another each pays for its own. Measured with 1,000 partitions written round-robin:
/// 17 rounds/s and 8 MB/s with sequential syncs; about 40 rounds/s and 18 MB/s (as
/// before the replica engine, whose per-partition flush tasks ran on the blocking
/// pool) with 64 at once, and half the device cache flushes of 16 at once.
fn run_syncs(jobs: Vec<(usize, FlushJob)>) -> Vec<(usize, SyncResult)> {
    if jobs.len() <= 1 {
        return jobs
            .into_iter()
            .map(|(i, job)| (i, job.run_deferring()))
            .collect();
    }
    let threads = jobs.len().min(SYNC_THREADS_MAX);
    let queue = Mutex::new(jobs);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let Some((i, job)) = queue.lock().expect("sync queue lock").pop() else {
                    return;
                };
                let result = job.run_deferring();
                results.lock().expect("sync results lock").push((i, result));
            });
        }
    });
    results.into_inner().expect("sync results lock")
}

/// Whether a storage error is a lack of space before anything was written (the log
/// is unchanged: retry later) rather than a failed write or sync (fail-stop).
pub fn is_out_of_space(e: &StorageError) -> bool {
    match e {
        StorageError::Io { op, source, .. } => {
            let no_space = matches!(
                source.raw_os_error(),
                Some(libc_errno::ENOSPC) | Some(libc_errno::EDQUOT)
            );
            let sync_or_write = matches!(
                *op,
                "fsync"
                    | "fsync directory"
                    | "fdatasync segment"
                    | "fdatasync index"
                    | "write segment"
            );
            no_space && !sync_or_write
        }
        _ => false,
    }
}

/// The two errno values of "no space" (Linux).
mod libc_errno {
    pub const ENOSPC: i32 = 28;
    pub const EDQUOT: i32 = 122;
}

/// The loop's thread: rounds as groups are scheduled, ticks every `TICK`. Ends when
/// the engine is dropped or shut down.
fn run(engine: Weak<Engine>) {
    let mut next_tick = Instant::now() + TICK;
    loop {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let scheduled = {
            let mut queue = engine.queue.lock().expect("engine queue lock");
            loop {
                if queue.stop {
                    let scheduled = std::mem::take(&mut queue.scheduled);
                    drop(queue);
                    engine.round(scheduled);
                    return;
                }
                if !queue.scheduled.is_empty() {
                    break std::mem::take(&mut queue.scheduled);
                }
                let now = Instant::now();
                let deadline = next_tick;
                if deadline <= now {
                    break Vec::new();
                }
                queue = engine
                    .wake
                    .wait_timeout(queue, deadline - now)
                    .expect("engine queue lock")
                    .0;
            }
        };
        let retry = !engine.stuck.lock().expect("stuck lock").is_empty();
        if !scheduled.is_empty() || (retry && Instant::now() >= next_tick) {
            engine.round(scheduled);
        }
        let now = Instant::now();
        if now >= next_tick {
            engine.tick_all();
            next_tick = now + TICK;
        }
    }
}

/// How often the interval-sync thread looks whether the engine stopped.
const INTERVAL_SYNC_STOP_CHECK: Duration = Duration::from_millis(100);

/// The interval-sync thread (`durability = interval`): syncs every group every
/// `interval`, beside the persist loop (see the module docs). Ends when the engine is
/// dropped or shut down (its last sync is the shutdown's).
fn run_interval_syncs(engine: Weak<Engine>, interval: Duration) {
    let mut next_sync = Instant::now() + interval;
    loop {
        let now = Instant::now();
        if now < next_sync {
            std::thread::sleep((next_sync - now).min(INTERVAL_SYNC_STOP_CHECK));
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        if engine.queue.lock().expect("engine queue lock").stop {
            return;
        }
        if Instant::now() < next_sync {
            continue;
        }
        // An offline directory is never synced again (see the module docs).
        if !engine.is_offline() && engine.sync_all().is_err() {
            tracing::error!("interval sync failed");
        }
        next_sync = Instant::now() + interval;
    }
}

/// Locks `m` even if a holder panicked: the deferred-sync sender and thread handle it
/// guards are valid whatever a panicking holder did, and shutdown must still reach them.
fn lock_unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
