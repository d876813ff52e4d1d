//! One partition replica: its Raft group, its log, its leader epoch and high
//! watermark. Every partition runs through `rill-raft`; on a single broker each group
//! has one voter, so it elects itself and commits what it has made durable.
//!
//! * **Offsets and epochs**: a produce's batches become one Raft entry; the leader
//!   writes them into the segment at once (one copy, frame buffer → page cache, with
//!   baseOffset and partitionLeaderEpoch = the Raft term stamped through the iovecs,
//!   see [`store`]), then proposes the entry. A new leader's entry is a Kafka
//!   LEADER_CHANGE control batch, so each term leaves one offset consumers skip.
//! * **High watermark = Raft commit offset.** Fetch reads below it, ListOffsets(latest)
//!   answers it; acks=-1 is answered once it covers the batch, acks=1 after the local
//!   append.
//! * **Persist loop** ([`engine`]): one thread per data directory takes the `Ready` of
//!   every group that has one, makes them durable with one sync round (and one write
//!   of the terms and votes file, [`hard_state`]), then advances them. It also drives
//!   every group's ticks from one timer. While a group's `Ready` is being synced the
//!   core takes no input but proposals: produces that arrive meanwhile are written,
//!   proposed and sent to the followers at once (they sync them while the leader
//!   syncs), and share the leader's next sync (group commit).
//! * **Fail-stop**: a failed write or sync takes the data directory offline: every
//!   partition answers KAFKA_STORAGE_ERROR, nothing is acknowledged after it and no
//!   later sync is trusted; a restart recovers.
//!
//! Lock order: a partition's state, then the engine's hard states or queue. The
//! `std::sync::Mutex` is held only for non-blocking work (a memcpy append, slicing a
//! read, handing a `Ready` over); fsyncs run on the persist thread without it.

pub mod engine;
pub mod hard_state;
mod leadership;
pub mod producer_state;
pub mod store;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rill_raft::{Entry, EntryKind, ProposeError, Raft, Role};
use rill_storage::{
    CleanJob, CleanOptions, CleanOutcome, CleanStats, CleanedSegments, PartitionLog, StorageError,
};
use tokio::sync::watch;

use crate::error::BrokerError;
use crate::metrics::Metrics;
use engine::{Engine, Timer};
use hard_state::ReplicaKey;
use producer_state::{BatchSequence, SequenceError, Verdict};
use store::{broker_id, epoch_of, PartitionStore};

/// What a replica shows to requests without taking its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Raft commit offset: the high watermark.
    pub commit_offset: i64,
    /// Current Raft term: the leader epoch.
    pub term: u64,
    /// The leader's broker id, if known.
    pub leader: Option<i32>,
    /// This replica leads and has committed its leader entry (every earlier entry is
    /// committed, so the high watermark is current).
    pub leader_ready: bool,
    /// The data directory is offline (a write or sync failed).
    pub failed: bool,
    /// The topic was deleted.
    pub closed: bool,
    /// Bumped whenever written-but-unproposed appends are thrown away (leadership
    /// lost): an acks=-1 waiter from before must not be answered by other records
    /// that later reuse its offsets.
    pub discards: u64,
}

/// Batches and offsets of one produce's records, counted by the produce check's walk
/// over their headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Record batches.
    pub batches: u64,
    /// Offsets they cover (records).
    pub offsets: u64,
}

/// Result of appending one produce's batches.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// Offset assigned to the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// log_start_offset after the append.
    pub log_start_offset: i64,
    /// The term (leader epoch) the batches were written in.
    pub term: u64,
    /// [`ReplicaStatus::discards`] at the append.
    pub discards: u64,
    /// [`ReplicaStatus::leader`] at the append: this broker.
    pub leader: Option<i32>,
    /// The time stamped on the batches of a LogAppendTime topic (Produce answers it),
    /// -1 otherwise.
    pub log_append_time_ms: i64,
}

/// The replica's mutable half, behind [`Partition::state`].
pub struct ReplicaState {
    raft: Raft<PartitionStore>,
    /// The persist loop holds this group's `Ready` (no input to the core until it
    /// advances).
    ready_out: bool,
    /// The group is in the persist loop's queue.
    scheduled: bool,
    /// The persist loop is working on this group (a topic deletion waits for it).
    in_round: bool,
    /// End of this term's leader entry (committing it makes the leader ready).
    leader_entry_end: u64,
    discards: u64,
    /// Which of the engine's timer sets holds the group.
    timer: Timer,
    /// Bytes appended since the persist loop last grew the segment ahead.
    appended_since_reserve: usize,
    /// Messages from peers that arrived while the persist loop held the `Ready` (the
    /// core takes no input until it advances), stepped right after.
    inbox: VecDeque<rill_raft::Message>,
    /// Opened on a fresh data directory: its votes may be held back while the broker
    /// rejoins (`engine`'s module docs). `None` once released (or never fresh).
    restraint: Option<VoteRestraint>,
    /// Peer replicas whose broker restarted, for the core to forget their match
    /// (`Raft::forget_follower_match`) once it takes input again.
    restarted_peers: Vec<rill_raft::NodeId>,
}

/// A fresh replica's progress towards voting (see `engine`'s module docs).
#[derive(Debug, Default, Clone, Copy)]
struct VoteRestraint {
    /// The commit offset the first leader's append announced: caught up once the
    /// replica's own commit offset reaches it.
    catch_up_offset: Option<u64>,
    /// It caught up with a leader (kept: a quiet group may see no message afterwards,
    /// and its leader may be gone by the time the rejoin wait is over).
    caught_up: bool,
}

/// Most peer messages a replica holds while its `Ready` is being synced; more are
/// dropped (Raft resends what matters: appends are retried, votes re-requested).
const INBOX_MESSAGES_MAX: usize = 1024;

impl ReplicaState {
    /// The storage log.
    pub fn log(&self) -> &PartitionLog {
        self.raft.store().log()
    }

    /// The Raft group (tests, admin).
    pub fn raft(&self) -> &Raft<PartitionStore> {
        &self.raft
    }

    /// Hands the core the restarted peers noted while it could take no input. A leader
    /// forgets what each acknowledged (its disk may be gone). A follower whose leader
    /// restarted has lost that leader: a restarted process leads nothing, and a quiet
    /// follower would otherwise trust it for good — it ticks no election timer, and a
    /// process back within a second never looks silent to the transport. If the new
    /// process came up on an empty data directory it may not campaign either (vote
    /// restraint), so nobody would ever start an election.
    fn forget_restarted_peers(&mut self) {
        for node in std::mem::take(&mut self.restarted_peers) {
            if self.raft.role() != Role::Leader && self.raft.leader() == Some(node) {
                self.raft.unquiesce(true);
            } else {
                self.raft.forget_follower_match(node);
            }
        }
    }

    /// Writes the entries the core created that storage does not have yet (a new
    /// leader's entry). Only a leader writes ahead: a follower's entries come in its
    /// `Ready`.
    fn write_own_entries(&mut self) -> Result<(), StorageError> {
        if self.raft.role() != Role::Leader {
            return Ok(());
        }
        let storage_end = self.log().log_end_offset();
        if storage_end >= self.raft.last_end_offset() {
            return Ok(());
        }
        let mut entries = Vec::new();
        self.raft
            .read_entries(storage_end, usize::MAX, &mut entries)
            .map_err(|e| StorageError::CorruptBatch {
                position: 0,
                reason: if matches!(e, rill_raft::LogReadError::Compacted { .. }) {
                    "own entries below the log start"
                } else {
                    "own entries unreadable"
                },
            })?;
        for entry in entries.iter().filter(|e| e.base_offset >= storage_end) {
            if matches!(entry.kind, EntryKind::LeaderChange) {
                self.leader_entry_end = entry.end_offset;
            }
            self.raft.store_mut().write_entry(entry)?;
        }
        Ok(())
    }

    /// Whether this replica leads a group with no other member (a single broker).
    fn is_sole_leader(&self) -> bool {
        let membership = self.raft.membership();
        self.raft.role() == Role::Leader
            && membership.voters.len() == 1
            && membership.learners.is_empty()
    }

    /// On the persist thread after a round: grows the active segment ahead of the
    /// write stream (twice what arrived since the last time, at most
    /// `RESERVE_AHEAD_BYTES_MAX`), so the produce path rarely grows a file itself. An
    /// idle partition reserves nothing more. Failures are left to the next append,
    /// which reports them.
    fn reserve_ahead(&mut self) {
        let ahead = (2 * self.appended_since_reserve).min(RESERVE_AHEAD_BYTES_MAX);
        self.appended_since_reserve = 0;
        if ahead > 0 {
            if let Err(e) = self.raft.store_mut().log_mut().reserve_ahead(ahead) {
                tracing::debug!(error = %e, "could not grow the segment ahead");
            }
        }
    }
}

/// The membership of a group of `voters` (broker ids) and no learners.
fn voters_membership(voters: &[i32]) -> rill_raft::Membership {
    rill_raft::Membership::with_voters(voters.iter().map(|&b| store::raft_node_id(b)))
}

/// Most bytes the persist loop grows a segment ahead of its writes.
const RESERVE_AHEAD_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Bytes of appends a leader holds uncommitted (the core refuses more proposals).
const QUEUED_BYTES_MAX: usize = 256 * 1024 * 1024;

/// One partition of a topic, served by this broker.
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub index: i32,
    key: ReplicaKey,
    /// Itself, for handing the persist loop an `Arc` without a map lookup.
    this: std::sync::Weak<Partition>,
    state: Mutex<ReplicaState>,
    status: watch::Sender<ReplicaStatus>,
    closed: AtomicBool,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    /// This broker's id.
    broker_id: i32,
    /// The replica placement lists first: where leadership goes back to
    /// (`leadership.rs`).
    preferred_leader: i32,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partition({}-{})", self.topic, self.index)
    }
}

/// Read access to a partition's log under its lock.
pub struct LogGuard<'a>(MutexGuard<'a, ReplicaState>);

impl std::ops::Deref for LogGuard<'_> {
    type Target = PartitionLog;

    fn deref(&self) -> &PartitionLog {
        self.0.log()
    }
}

impl Partition {
    /// Starts the replica of an opened log: restores its Raft group from the log and
    /// the data directory's terms and votes, registers it with the persist loop and
    /// starts an election if it is the group's only voter (a group of one elects
    /// itself at once; a larger group elects on its election timeout). `voters` are
    /// the broker ids of the group's replicas in assignment order (the first is the
    /// preferred leader), this broker among them.
    #[allow(clippy::too_many_arguments)] // one replica's identity, log and context
    pub fn open(
        topic: String,
        index: i32,
        topic_id: uuid::Uuid,
        log: PartitionLog,
        engine: Arc<Engine>,
        broker_id: i32,
        voters: &[i32],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Partition>, BrokerError> {
        if !voters.contains(&broker_id) {
            return Err(BrokerError::Storage(format!(
                "replica of {topic}-{index} on broker {broker_id}, which is not among its voters {voters:?}"
            )));
        }
        let store = PartitionStore::new(
            log,
            engine.hard_state((topic_id, index)),
            voters_membership(voters),
            broker_id,
            Some(Arc::clone(engine.journal())),
        );
        Self::start(
            topic, index, topic_id, store, engine, broker_id, voters, metrics,
        )
    }

    /// Opens the replica of a group whose membership changes (the metadata group,
    /// which adds the brokers outside `voters` as learners): its membership is the
    /// latest membership entry of its log, or `voters` when the log holds none (a new
    /// group, or one whose membership entries were trimmed). `broker_id` need not be
    /// among `voters`: a broker that is not starts as a non-voting member, which never
    /// campaigns, and follows whatever leader replicates to it.
    #[allow(clippy::too_many_arguments)] // one replica's identity, log and context
    pub fn open_with_changing_membership(
        topic: String,
        index: i32,
        topic_id: uuid::Uuid,
        log: PartitionLog,
        engine: Arc<Engine>,
        broker_id: i32,
        voters: &[i32],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Partition>, BrokerError> {
        let mut store = PartitionStore::new(
            log,
            engine.hard_state((topic_id, index)),
            voters_membership(voters),
            broker_id,
            Some(Arc::clone(engine.journal())),
        );
        store
            .recover_memberships()
            .map_err(|e| BrokerError::Storage(format!("{topic}-{index}: {e}")))?;
        Self::start(
            topic, index, topic_id, store, engine, broker_id, voters, metrics,
        )
    }

    /// Starts a replica over its store (see [`Partition::open`]).
    #[allow(clippy::too_many_arguments)] // one replica's identity, log and context
    fn start(
        topic: String,
        index: i32,
        topic_id: uuid::Uuid,
        store: PartitionStore,
        engine: Arc<Engine>,
        broker_id: i32,
        voters: &[i32],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Partition>, BrokerError> {
        let key = (topic_id, index);
        let node = store::raft_node_id(broker_id);
        let sole_voter = voters == [broker_id];
        let mut config = rill_raft::Config::new(node, rand::random());
        // Appends are bounded by the request budget and QUEUED_BYTES_MAX; the data of
        // a leader's uncommitted entries are slices of its mapped segments.
        config.uncommitted_bytes_max = QUEUED_BYTES_MAX;
        // Idle groups go quiet; the engine wakes those whose members' brokers fall
        // silent on the transport (`Engine::wake_orphans`).
        config.quiesce = true;
        let raft = Raft::new(config, store).map_err(|e| BrokerError::Storage(e.to_string()))?;
        let status = ReplicaStatus {
            commit_offset: raft.commit_offset() as i64,
            term: raft.term(),
            leader: None,
            leader_ready: false,
            failed: false,
            closed: false,
            discards: 0,
        };
        let partition = Arc::new_cyclic(|this| Partition {
            topic,
            index,
            key,
            this: this.clone(),
            state: Mutex::new(ReplicaState {
                raft,
                ready_out: false,
                scheduled: false,
                in_round: false,
                leader_entry_end: u64::MAX,
                discards: 0,
                timer: Timer::Ticking,
                appended_since_reserve: 0,
                inbox: VecDeque::new(),
                restraint: engine.is_fresh_data_dir().then(VoteRestraint::default),
                restarted_peers: Vec::new(),
            }),
            status: watch::Sender::new(status),
            closed: AtomicBool::new(false),
            engine: Arc::clone(&engine),
            metrics,
            broker_id,
            preferred_leader: voters.first().copied().unwrap_or(broker_id),
        });
        engine.register(&partition);
        if sole_voter {
            let mut st = partition.state();
            st.raft.campaign();
            partition.after_input(&mut st);
        }
        Ok(partition)
    }

    /// A message from a peer replica of this group: stepped into the core now, or
    /// held until the persist loop advances the group (see [`ReplicaState`]'s inbox).
    pub fn deliver(&self, message: rill_raft::Message) {
        if self.is_closed() {
            return;
        }
        if self.engine.is_stopping() && matches!(message.body, rill_raft::MessageBody::TimeoutNow) {
            // A broker shutting down hands leadership away; it takes none (the
            // sender's transfer is abandoned after an election timeout).
            return;
        }
        let mut st = self.state();
        if self.vote_restrained(&mut st) {
            match message.body {
                // Granting either would be a vote this replica's lost life may have
                // given to another candidate in the same term.
                rill_raft::MessageBody::Vote { .. } | rill_raft::MessageBody::TimeoutNow => {
                    tracing::debug!(topic = %self.topic, partition = self.index, from = message.from, term = message.term, "vote request ignored: rejoining on a fresh data directory");
                    return;
                }
                rill_raft::MessageBody::Append { commit_offset, .. } => {
                    if let Some(restraint) = st.restraint.as_mut() {
                        restraint.catch_up_offset.get_or_insert(commit_offset);
                    }
                }
                _ => {}
            }
        }
        if st.ready_out {
            if st.inbox.len() < INBOX_MESSAGES_MAX {
                st.inbox.push_back(message);
            } else {
                tracing::debug!(topic = %self.topic, partition = self.index, "replica inbox full: message dropped");
            }
            return;
        }
        if let Err(e) = st.raft.step(message) {
            tracing::debug!(topic = %self.topic, partition = self.index, error = %e, "message refused by the core");
        }
        // Notes a catch-up the message completed.
        self.vote_restrained(&mut st);
        self.after_input(&mut st);
    }

    /// The broker `peer` restarted (a new incarnation): if this replica leads, it
    /// forgets what that broker's replica acknowledged and probes it again, since a
    /// restart may come with an empty data directory (`Raft::forget_follower_match`);
    /// if it follows `peer`, it wakes and campaigns unless a new leader speaks first
    /// ([`ReplicaState::forget_restarted_peers`]).
    pub fn peer_restarted(&self, peer: i32) {
        if self.is_closed() {
            return;
        }
        let mut st = self.state();
        st.restarted_peers.push(store::raft_node_id(peer));
        if !st.ready_out {
            st.forget_restarted_peers();
            self.after_input(&mut st);
        }
    }

    /// Whether this replica holds back its votes now (see `engine`'s module docs);
    /// releases it for good once it heard a leader, caught up and waited long enough.
    fn vote_restrained(&self, st: &mut ReplicaState) -> bool {
        let Some(mut restraint) = st.restraint else {
            return false;
        };
        if !self.engine.rejoining_fresh() {
            // Not (yet) known to be rejoining: a new cluster's fresh brokers vote at once.
            return false;
        }
        if !restraint.caught_up
            && st.raft.leader().is_some()
            && restraint
                .catch_up_offset
                .is_some_and(|offset| st.raft.commit_offset() >= offset)
        {
            restraint.caught_up = true;
            st.restraint = Some(restraint);
            tracing::info!(
                topic = %self.topic,
                partition = self.index,
                commit_offset = st.raft.commit_offset(),
                wait_ms = engine::REJOIN_VOTE_WAIT.as_millis() as u64,
                "rejoined on a fresh data directory: caught up with the leader; votes once the rejoin wait since start is over"
            );
        }
        if restraint.caught_up && self.engine.uptime() >= engine::REJOIN_VOTE_WAIT {
            st.restraint = None;
            tracing::info!(
                topic = %self.topic,
                partition = self.index,
                term = st.raft.term(),
                commit_offset = st.raft.commit_offset(),
                "rejoined on a fresh data directory: caught up with the leader, votes again"
            );
            return false;
        }
        true
    }

    /// Locks the replica state. A poisoned lock means a panic inside storage or Raft;
    /// the state may be half-updated, so the panic propagates (release builds abort).
    pub fn state(&self) -> MutexGuard<'_, ReplicaState> {
        self.state.lock().expect("partition state lock poisoned")
    }

    /// The log, under the replica's lock.
    pub fn log(&self) -> LogGuard<'_> {
        LogGuard(self.state())
    }

    /// The replica's key in the data directory's terms-and-votes file.
    pub fn key(&self) -> ReplicaKey {
        self.key
    }

    /// Current status (high watermark, leader epoch, leader).
    pub fn status(&self) -> ReplicaStatus {
        *self.status.borrow()
    }

    /// The high watermark: consumers read below it.
    pub fn visible_end_offset(&self) -> i64 {
        self.status().commit_offset
    }

    /// The leader epoch (the Raft term).
    pub fn leader_epoch(&self) -> i32 {
        epoch_of(self.status().term)
    }

    /// A receiver woken whenever the status changes (Fetch long polls on the high
    /// watermark, acks=-1 on the commit).
    pub fn watch_status(&self) -> watch::Receiver<ReplicaStatus> {
        self.status.subscribe()
    }

    /// Checks a client's view of the leader epoch against ours (-1: no check): the one
    /// place Fetch, ListOffsets and OffsetForLeaderEpoch decide FENCED_LEADER_EPOCH
    /// (the client is behind) or UNKNOWN_LEADER_EPOCH (the client is ahead). Also
    /// where they refuse a replica whose data directory is offline.
    pub fn check_leader_epoch(&self, current_leader_epoch: i32) -> Result<(), BrokerError> {
        let status = self.status();
        if status.failed && !status.closed {
            return Err(self.engine.offline_error());
        }
        let ours = epoch_of(status.term);
        if current_leader_epoch == -1 || current_leader_epoch == ours {
            Ok(())
        } else if current_leader_epoch > ours {
            Err(BrokerError::UnknownLeaderEpoch)
        } else {
            Err(BrokerError::FencedLeaderEpoch)
        }
    }

    /// Waits until this replica leads and its high watermark is current, or
    /// `deadline` passes (creation and start-up; clients retry NOT_LEADER otherwise).
    pub async fn wait_leader_ready(&self, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.watch_status();
        tokio::time::timeout_at(deadline, rx.wait_for(|s| s.leader_ready || s.failed))
            .await
            .is_ok_and(|r| r.is_ok_and(|s| s.leader_ready))
    }

    /// Waits until this replica knows its group's leader (itself or a peer), or
    /// `deadline` passes: what a new cluster topic waits for before CreateTopics is
    /// answered, wherever its leaders end up.
    pub async fn wait_leader_known(&self, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.watch_status();
        tokio::time::timeout_at(deadline, rx.wait_for(|s| s.leader.is_some() || s.failed))
            .await
            .is_ok_and(|r| r.is_ok_and(|s| s.leader.is_some()))
    }

    /// Appends a produce's record batches (whole, validated) as leader, all or nothing,
    /// without waiting: writes them to the segment (acks=1 may be answered) and
    /// proposes them to the group. [`Partition::wait_acknowledgeable`] waits for what
    /// acks=-1 needs.
    pub fn append(&self, batches: &Bytes, counts: BatchCounts) -> Result<Appended, BrokerError> {
        let BatchCounts {
            batches: batch_count,
            offsets: offset_count,
        } = counts;
        if offset_count == 0 {
            return Err(BrokerError::CorruptMessage("no record batch".into()));
        }
        let mut st = self.state();
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::UnknownTopicOrPartition);
        }
        if self.engine.is_offline() {
            return Err(self.engine.offline_error());
        }
        if self.engine.is_short_of_space() {
            return Err(BrokerError::Storage(
                "the log directory is out of space: appends are refused until space is freed"
                    .into(),
            ));
        }
        if st.raft.role() != Role::Leader {
            return Err(BrokerError::NotLeaderOrFollower);
        }
        let term = st.raft.term();
        // Idempotent producers: checked against every batch in the log, proposed or not,
        // under the lock that orders appends (`producer_state`'s module docs).
        let sequences: Vec<BatchSequence> = rill_record::batches(batches)
            .filter_map(|view| view.ok().as_ref().and_then(BatchSequence::of))
            .collect();
        if !sequences.is_empty() {
            let verdict = st
                .raft
                .store()
                .producers()
                .check(&sequences)
                .map_err(sequence_error)?;
            if let Verdict::Duplicate {
                base_offset,
                last_offset,
            } = verdict
            {
                // Nothing is written; acks=-1 waits until the original is committed in
                // this term (a leader never truncates its own log while it leads).
                Metrics::add(&self.metrics.duplicate_batches_total, 1);
                return Ok(Appended {
                    base_offset: base_offset as i64,
                    last_offset: last_offset as i64,
                    log_start_offset: st.log().log_start_offset() as i64,
                    term,
                    discards: st.discards,
                    leader: st.raft.leader().map(broker_id),
                    log_append_time_ms: -1,
                });
            }
        }
        // Back-pressure is checked before anything is written: a proposal the core
        // refused after the write had to be cut back out of the segment, a truncation
        // that copies the segment's kept prefix to a new file and fsyncs it while
        // readers hold the old one (seen at acks=1 under `durability = fsync` whenever
        // appends ran 256 MiB ahead of the disk: 163 truncations in 2.5 s).
        if !st.raft.has_room_for(batches.len()) {
            Metrics::add(&self.metrics.appends_backlogged_total, 1);
            return Err(BrokerError::Backlogged);
        }
        let base_offset = st.log().log_end_offset();
        debug_assert_eq!(base_offset, st.raft.last_end_offset());
        let entry = Entry {
            term,
            base_offset,
            end_offset: base_offset + offset_count,
            kind: EntryKind::Data,
            data: batches.clone(),
        };
        // Segment roll and growth (file creation, fallocate, index writes) may block on
        // the disk: step off the runtime for them; a plain append is a memcpy into the
        // page cache and stays.
        let needs_file_io = st
            .log()
            .append_needs_file_io(batches.len(), crate::clock::now_ms());
        let store = st.raft.store_mut();
        let written = if needs_file_io {
            crate::runtime::off_runtime(|| store.write_entry(&entry))
        } else {
            store.write_entry(&entry)
        };
        if let Err(e) = written {
            if is_fatal_write(&e) {
                drop(st);
                self.engine.go_offline(&e.to_string());
                return Err(self.engine.offline_error());
            }
            return Err(crate::state::append_error(e));
        }
        // The entry's data for followers: the stamped batches, a zero-copy slice of the
        // segment (so the request buffer is not held until the entry commits).
        let data = st
            .log()
            .read(base_offset, batches.len(), entry.end_offset)
            .unwrap_or_else(|_| batches.clone());
        // Proposed at once even while the persist loop holds the group's `Ready`: the
        // core sends the entry to the followers now, so they write and fsync it while
        // this leader fsyncs (before, it waited in `queued` for the leader's sync and
        // only then went out: the leader's and the followers' syncs ran one after the
        // other). The leader counts it towards a commit only after its own sync.
        if let Err(e) = st.raft.propose(data, offset_count) {
            // Not in the core's log: take it back out of the segment.
            let _ = st.raft.store_mut().discard_refused_append(base_offset);
            return Err(match e {
                ProposeError::NotLeader { .. } => BrokerError::NotLeaderOrFollower,
                other => BrokerError::Busy(other.to_string()),
            });
        }
        if st.ready_out {
            // `schedule` is a no-op while the `Ready` is out: the appends go now.
            let mut messages = st.raft.take_messages();
            st.raft.store().attach_control_data(&mut messages);
            if !messages.is_empty() {
                Metrics::add(&self.metrics.appends_replicated_during_sync_total, 1);
            }
            self.engine.send(self.key(), messages);
        }
        st.appended_since_reserve += batches.len();
        if needs_file_io {
            Metrics::add(&self.metrics.appends_with_file_io_total, 1);
        }
        let appended = Appended {
            base_offset: base_offset as i64,
            last_offset: (entry.end_offset - 1) as i64,
            log_start_offset: st.log().log_start_offset() as i64,
            term,
            discards: st.discards,
            leader: st.raft.leader().map(broker_id),
            log_append_time_ms: -1,
        };
        self.schedule(&mut st);
        drop(st);
        Metrics::add(&self.metrics.batches_in_total, batch_count);
        Metrics::add(&self.metrics.bytes_in_total, batches.len() as u64);
        Ok(appended)
    }

    /// Waits until `appended` may be acknowledged to an acks=-1 producer: its batches
    /// are committed (the high watermark covers them) in the term they were written in.
    ///
    /// A leader that steps down without a new term (check-quorum: it lost contact with
    /// its majority, Raft dissertation §6.2) can never commit anything of its term
    /// again, so its waiters are answered NOT_LEADER_OR_FOLLOWER at once (the outcome
    /// is unknown to the producer, who retries at the new leader). Waiting for the
    /// term to change instead held them until the partition healed or the request
    /// timed out (30 s by default): a client cut off with an isolated leader had to
    /// time out before it looked for the new one.
    pub async fn wait_acknowledgeable(&self, appended: &Appended) -> Result<(), BrokerError> {
        let end = appended.last_offset + 1;
        let mut rx = self.watch_status();
        let status = *rx
            .wait_for(|s| {
                s.commit_offset >= end
                    || s.failed
                    || s.closed
                    || s.term != appended.term
                    || s.discards != appended.discards
                    || s.leader != appended.leader
            })
            .await
            .map_err(|_| BrokerError::Storage("partition closed".into()))?;
        if status.failed && !status.closed {
            Err(self.engine.offline_error())
        } else if status.closed {
            Err(BrokerError::UnknownTopicOrPartition)
        } else if status.term == appended.term
            && status.discards == appended.discards
            && status.commit_offset >= end
        {
            Ok(())
        } else {
            Err(BrokerError::NotLeaderOrFollower)
        }
    }

    /// Reads whole batches from `start_offset`, at most `bytes_max` (but at least one
    /// batch, like Kafka, so a large batch never blocks a consumer), below the high
    /// watermark. The returned `Bytes` are slices of the mapped segment (zero copy).
    pub fn read(&self, start_offset: i64, bytes_max: usize) -> Result<ReadResult, BrokerError> {
        let visible_end = self.visible_end_offset();
        let st = self.state();
        if self.engine.is_offline() {
            return Err(self.engine.offline_error());
        }
        let log = st.log();
        let log_start_offset = log.log_start_offset() as i64;
        if start_offset < log_start_offset
            || start_offset > visible_end.max(log.log_end_offset() as i64)
        {
            return Err(BrokerError::OffsetOutOfRange {
                offset: start_offset,
                log_start_offset,
                log_end_offset: visible_end,
            });
        }
        let records = if start_offset >= visible_end {
            Bytes::new()
        } else {
            log.read(start_offset as u64, bytes_max, visible_end as u64)
                .map_err(|e| BrokerError::Storage(e.to_string()))?
        };
        Ok(ReadResult {
            records,
            high_watermark: visible_end,
            log_start_offset,
        })
    }

    /// Deletes closed segments past the topic's retention, never anything at or above
    /// the high watermark (committed entries only leave the Raft log).
    pub fn apply_retention(&self, now_ms: i64) {
        let visible_end = self.visible_end_offset() as u64;
        let mut st = self.state();
        if st.ready_out || self.engine.is_offline() {
            return; // next round
        }
        match st
            .raft
            .store_mut()
            .log_mut()
            .apply_retention(now_ms, visible_end)
        {
            Ok(outcome) if outcome.segments_deleted > 0 => tracing::info!(
                topic = %self.topic,
                partition = self.index,
                segments = outcome.segments_deleted,
                bytes = outcome.bytes_deleted,
                log_start_offset = outcome.log_start_offset,
                "retention deleted segments"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "retention failed")
            }
        }
    }

    /// DeleteRecords at the leader: appends a DeleteRecords control entry (see
    /// `store`), which moves the log start offset to `offset` (-1: the high watermark) on
    /// every replica that writes it, and waits until it commits. An offset above the
    /// high watermark is OFFSET_OUT_OF_RANGE; one at or below the log start changes
    /// nothing. Returns the log start offset after it (the low watermark).
    pub async fn delete_records(&self, offset: i64) -> Result<i64, BrokerError> {
        let status = self.status();
        if status.failed {
            return Err(self.engine.offline_error());
        }
        if !status.leader_ready {
            return Err(BrokerError::NotLeaderOrFollower);
        }
        let high_watermark = status.commit_offset;
        let target = if offset == -1 { high_watermark } else { offset };
        let log_start_offset = self.log_start_offset();
        if target < 0 || target > high_watermark {
            return Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start_offset,
                log_end_offset: high_watermark,
            });
        }
        if target <= log_start_offset {
            return Ok(log_start_offset);
        }
        let batch = rill_record::control::control_batch(
            rill_record::control::CONTROL_TYPE_RILL_DELETE_RECORDS,
            &target.to_be_bytes(),
            crate::clock::now_ms(),
        )
        .map_err(|e| BrokerError::Storage(e.to_string()))?;
        let appended = self.append(
            &Bytes::from(batch),
            BatchCounts {
                batches: 1,
                offsets: 1,
            },
        )?;
        self.wait_acknowledgeable(&appended).await?;
        Ok(self.log_start_offset())
    }

    /// Replaces the log's configuration (the topic's configs were altered): takes effect
    /// on this replica at once, without a restart.
    pub fn set_log_config(&self, config: rill_storage::LogConfig) -> Result<(), BrokerError> {
        let mut st = self.state();
        st.raft
            .store_mut()
            .log_mut()
            .set_config(config)
            .map_err(|e| BrokerError::InvalidConfig(e.to_string()))
    }

    /// The log cleaner's view of this replica: clean and dirty bytes below the commit
    /// point (see `rill_storage::CleanStats`). `None` while offline or closed.
    pub fn clean_stats(&self, now_ms: i64, min_compaction_lag_ms: i64) -> Option<CleanStats> {
        if self.is_closed() || self.engine.is_offline() {
            return None;
        }
        let below = self.visible_end_offset().max(0) as u64;
        Some(
            self.state()
                .log()
                .clean_stats(below, now_ms, min_compaction_lag_ms),
        )
    }

    /// First step of a cleaning pass (cheap, under the lock): only committed offsets
    /// (below the high watermark this replica knows) are ever cleaned, so compaction
    /// never touches what Raft may still truncate.
    pub fn prepare_clean(
        &self,
        mut options: CleanOptions,
    ) -> Result<Option<CleanJob>, BrokerError> {
        if self.is_closed() || self.engine.is_offline() {
            return Ok(None);
        }
        options.cleanable_below_offset = self.visible_end_offset().max(0) as u64;
        self.state()
            .log()
            .prepare_clean(options)
            .map_err(|e| BrokerError::Storage(e.to_string()))
    }

    /// Last step of a cleaning pass: swaps the cleaned segments in under the lock,
    /// waiting (up to about a second) while the persist loop holds the group, as
    /// retention does; gives the job up (`None`) if it cannot.
    pub fn complete_clean(
        &self,
        done: CleanedSegments,
    ) -> Result<Option<CleanOutcome>, BrokerError> {
        const WAIT_ROUNDS_MAX: u32 = 200;
        for _ in 0..WAIT_ROUNDS_MAX {
            if self.is_closed() || self.engine.is_offline() {
                break;
            }
            let mut st = self.state();
            if st.ready_out {
                drop(st);
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            // The swap rewrites segment files in place of others: journalled bytes of
            // this log must never be replayed over them (the journal's rule, as for a
            // truncation).
            if let Err(e) = st.raft.store_mut().journal_barrier() {
                done.discard();
                return Err(BrokerError::Storage(e.to_string()));
            }
            let log = st.raft.store_mut().log_mut();
            let outcome = log.complete_clean(done);
            let deleted = log.take_deleted_files();
            drop(st);
            // Unlinking the replaced segments takes time: not under the lock.
            rill_storage::remove_deleted_files(deleted);
            return outcome
                .map(Some)
                .map_err(|e| BrokerError::Storage(e.to_string()));
        }
        done.discard();
        Ok(None)
    }

    /// At an applied checkpoint at `offset` (committed): deletes the log's closed
    /// segments wholly below it, then starts a new segment, so that the segment holding
    /// this checkpoint is deleted at the next one (the log keeps at most about two
    /// checkpoint intervals). Followers that fall behind the log start are reset to it,
    /// as after retention. Skipped (returns false) while the persist loop holds the
    /// group; the caller tries again later.
    pub fn trim_log_at_checkpoint(&self, offset: u64) -> bool {
        let offset = offset.min(self.visible_end_offset().max(0) as u64);
        let mut st = self.state();
        if st.ready_out || self.engine.is_offline() {
            return false;
        }
        let log = st.raft.store_mut().log_mut();
        match log.delete_segments_below(offset).and_then(|outcome| {
            log.roll()?;
            Ok(outcome)
        }) {
            Ok(outcome) => {
                if outcome.segments_deleted > 0 {
                    tracing::info!(
                        topic = %self.topic,
                        partition = self.index,
                        segments = outcome.segments_deleted,
                        log_start_offset = outcome.log_start_offset,
                        "log trimmed below a checkpoint"
                    );
                }
                true
            }
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.index, error = %e, "trimming the log failed");
                false
            }
        }
    }

    /// Forgets idempotent producers idle for `expiration_ms` (see
    /// [`producer_state::ProducerStates::expire`]).
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) {
        let expired = self
            .state()
            .raft
            .store_mut()
            .producers_mut()
            .expire(now_ms, expiration_ms);
        if expired > 0 {
            tracing::debug!(topic = %self.topic, partition = self.index, expired, "idle producers expired");
        }
    }

    /// How many idempotent producers this replica holds state for (tests, admin).
    pub fn producer_count(&self) -> usize {
        self.state().raft.store().producers().len()
    }

    /// The end of the replica's Raft log: everything appended, committed or not.
    pub fn log_end_offset(&self) -> i64 {
        self.state().raft.last_end_offset() as i64
    }

    /// The log start offset (the oldest offset still kept).
    pub fn log_start_offset(&self) -> i64 {
        self.state().log().log_start_offset() as i64
    }

    /// Closes the replica for a topic deletion: later appends fail with
    /// UNKNOWN_TOPIC_OR_PARTITION, acks=-1 waiters are answered, and this returns once
    /// the persist loop no longer works on it, so nothing writes into the directory
    /// after it is removed (or into a new topic of the same name).
    pub async fn close(&self) {
        self.mark_closed();
        while self.state().in_round {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        crate::runtime::off_runtime(|| self.journal_barrier());
    }

    /// [`Partition::close`] for synchronous callers (undoing a failed creation): the
    /// wait is at most one sync round.
    pub fn close_blocking(&self) {
        self.mark_closed();
        while self.state().in_round {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.journal_barrier();
    }

    /// A closed partition's directory may be removed and a new one made under its
    /// name: none of its bytes may stay in the journal's current epoch, or a replay
    /// would write them into the newcomer's files. A failure takes the directory
    /// offline (fail-stop, like any failed sync).
    fn journal_barrier(&self) {
        let result = self.state().raft.store_mut().journal_barrier();
        if let Err(e) = result {
            self.engine.go_offline(&e.to_string());
        }
    }

    fn mark_closed(&self) {
        {
            let st = self.state();
            self.closed.store(true, Ordering::Release);
            // Deferred work still queued for this log (checkpoints, producer snapshot)
            // must not write into the directory once it may be removed and recreated.
            st.log().seal();
        }
        self.status.send_modify(|s| s.closed = true);
        self.engine.unregister(self);
    }

    /// Whether the topic was deleted.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// After an input to the core (campaign, tick, propose, advance): writes a new
    /// leader's own entries, and queues the group for the persist loop if it has a
    /// `Ready`.
    fn after_input(&self, st: &mut ReplicaState) {
        if let Err(e) = st.write_own_entries() {
            // Out of space: the entry stays in the core's `Ready`, which the persist
            // loop writes (and retries) itself.
            if !self.is_closed() && !engine::is_out_of_space(&e) {
                self.engine.go_offline(&e.to_string());
            }
            return;
        }
        if st.raft.has_ready() {
            self.schedule(st);
        }
        self.sync_timer(st);
    }

    /// Moves the group to the timer set its state needs: a sole-member leader needs
    /// no ticks at all, a quiet group none until its members' brokers fall silent,
    /// any other group a tick every `TICK`.
    fn sync_timer(&self, st: &mut ReplicaState) {
        let timer = if st.is_sole_leader() {
            Timer::Untimed
        } else if st.raft.is_quiesced() {
            Timer::Quiet
        } else {
            Timer::Ticking
        };
        if timer != st.timer {
            st.timer = timer;
            self.engine.set_timer(self, timer);
        }
    }

    /// A quiet group whose other members include a broker in `silent` wakes: its
    /// leader may be gone (a follower campaigns once its timeout runs out) or it may
    /// lead without a quorum (a leader's quorum check steps it down). Skipped while
    /// the persist loop holds the group; the engine asks again next tick.
    pub(super) fn wake_if_orphaned(&self, silent: &HashSet<i32>) {
        let mut st = self.state();
        if st.ready_out || self.is_closed() || !st.raft.is_quiesced() {
            return;
        }
        let me = st.raft.id();
        let membership = st.raft.membership();
        let orphaned = membership
            .voters
            .iter()
            .chain(membership.learners.iter())
            .any(|&node| node != me && silent.contains(&broker_id(node)));
        if orphaned {
            let leader_lost = st
                .raft
                .leader()
                .is_none_or(|leader| silent.contains(&broker_id(leader)));
            tracing::debug!(topic = %self.topic, partition = self.index, leader_lost, "waking a quiet group: a member's broker is silent");
            st.raft.unquiesce(leader_lost);
            self.after_input(&mut st);
        }
    }

    fn schedule(&self, st: &mut ReplicaState) {
        if !st.scheduled && !st.ready_out {
            if let Some(this) = self.this.upgrade() {
                st.scheduled = true;
                self.engine.schedule(this);
            }
        }
    }

    /// Publishes the group's status after the persist loop advanced it, and tells the
    /// timer whether the group needs ticks.
    fn publish(&self, st: &mut ReplicaState) {
        self.sync_timer(st);
        let raft = &st.raft;
        let leader_ready =
            raft.role() == Role::Leader && raft.commit_offset() >= st.leader_entry_end;
        let next = ReplicaStatus {
            commit_offset: raft.commit_offset() as i64,
            term: raft.term(),
            leader: raft.leader().map(broker_id),
            leader_ready,
            failed: self.engine.is_offline(),
            closed: self.is_closed(),
            discards: st.discards,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != next;
            *s = next;
            changed
        });
    }

    /// Marks the replica failed (its data directory went offline).
    fn publish_failed(&self) {
        self.status.send_if_modified(|s| {
            let changed = !s.failed;
            s.failed = true;
            changed
        });
    }
}

/// The produce error for a refused idempotent batch.
fn sequence_error(e: SequenceError) -> BrokerError {
    match e {
        SequenceError::OutOfOrder { .. } => BrokerError::OutOfOrderSequence(e.to_string()),
        SequenceError::InvalidEpoch { .. } => BrokerError::InvalidProducerEpoch(e.to_string()),
        SequenceError::UnknownProducer { .. } => BrokerError::UnknownProducerId(e.to_string()),
    }
}

/// Whether a storage error during an append means the disk failed, so the data
/// directory must go offline. Running out of space to grow or roll a segment and a
/// bad batch leave the log unchanged.
fn is_fatal_write(e: &StorageError) -> bool {
    matches!(e, StorageError::Io { .. }) && !engine::is_out_of_space(e)
}

/// Batches read for a Fetch.
#[derive(Debug)]
pub struct ReadResult {
    /// Whole record batches, zero-copy slices of the log.
    pub records: Bytes,
    /// The high watermark at the time of the read.
    pub high_watermark: i64,
    /// The log start offset at the time of the read.
    pub log_start_offset: i64,
}
