//! [`PartitionStore`]: `rill-raft`'s [`LogStore`] over a partition's `rill-storage` log.
//! The partition log *is* the Raft log: an entry is a run of record batches, its term is
//! their partitionLeaderEpoch, and the core's "entry ending at X" is answered from the
//! leader-epoch file.
//!
//! Two ends: the storage log may run ahead of what the core counts as its log. A leader
//! writes its own entries into the segment as soon as it creates them (the memcpy of a
//! produce happens while the request holds its connection's turn, as before Raft, so
//! acks=1 is answered after the local append); the core learns they are durable only
//! when the persist loop applies the `Ready` that carries them, fsyncs and advances.
//! `raft_end` is the end the core has been told about; everything the trait answers is
//! bounded by it, so the core never sees an entry before it is in one of its `Ready`s.

use bytes::BytesMut;
use kafka_protocol::messages::leader_change_message::{LeaderChangeMessage, Voter};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::Encodable;
use rill_raft::{
    BootState, Entry, EntryKind, HardState, LogReadError, LogStart, LogStore, Membership, Message,
    MessageBody, NodeId, Persist, Term,
};
use rill_record::control::{
    control_batch, control_record, CONTROL_TYPE_LEADER_CHANGE, CONTROL_TYPE_RILL_DELETE_RECORDS,
    CONTROL_TYPE_RILL_MEMBERSHIP,
};
use rill_record::BatchView;
use rill_storage::{PartitionLog, StorageError};

use super::engine::SharedJournal;
use super::producer_state::{BatchSequence, ProducerStates};

/// Bytes read at a time when the producer state is rebuilt from the log.
const PRODUCER_REBUILD_READ_BYTES: usize = 1 << 20;
/// The producer-state snapshot, next to the segments (see [`PartitionStore::take_producer_snapshot`]).
pub const PRODUCER_SNAPSHOT_FILE: &str = "producer-state.snapshot";

/// A partition log seen as a Raft log (see the module docs).
#[derive(Debug)]
pub struct PartitionStore {
    log: PartitionLog,
    /// End of the log as the core knows it (≤ the storage log end).
    raft_end: u64,
    /// Term of the entry ending at the log start, when a reset put the start there
    /// (otherwise the leader-epoch file answers).
    reset_start: Option<LogStart>,
    hard_state: HardState,
    /// Membership in effect at the log start.
    start_membership: Membership,
    /// The membership entries of the log, by end offset, as
    /// [`PartitionStore::recover_memberships`] found them on open (empty unless called).
    log_memberships: Vec<(u64, Membership)>,
    /// The latest membership written (named by this broker's LEADER_CHANGE records).
    membership: Membership,
    /// This broker's id.
    broker_id: i32,
    /// The data directory's shared journal (`None` in unit tests without one).
    journal: Option<SharedJournal>,
    /// Idempotent producers' state as of the storage log end: every write and
    /// truncation goes through this store, which keeps it current
    /// (`super::producer_state`'s module docs).
    producers: ProducerStates,
    /// Bytes of idempotent batches recorded since the last producer-state snapshot.
    producer_bytes_since_snapshot: u64,
    /// When the last producer-state snapshot was taken (or the store opened).
    producer_snapshot_at: std::time::Instant,
}

/// Bytes read at a time while looking for membership entries.
const MEMBERSHIP_SCAN_BYTES: usize = 1 << 20;

/// Timestamp of the control batches the replication layer writes: none (-1), so
/// ListOffsets by timestamp and time-based retention see only the records clients
/// produced, never the moment a leader was elected.
const CONTROL_TIMESTAMP: i64 = -1;

/// Kafka's epochs are i32; Raft terms are u64 and start at 0, so any term a log holds
/// fits (a term would need 2³¹ elections to overflow).
pub fn epoch_of(term: Term) -> i32 {
    i32::try_from(term).unwrap_or(i32::MAX)
}

impl PartitionStore {
    /// Wraps an opened (recovered) log of broker `broker_id`: everything in it counts as
    /// the core's log.
    pub fn new(
        log: PartitionLog,
        hard_state: HardState,
        membership: Membership,
        broker_id: i32,
        journal: Option<SharedJournal>,
    ) -> Self {
        let raft_end = log.log_end_offset();
        let mut store = PartitionStore {
            log,
            raft_end,
            reset_start: None,
            hard_state,
            start_membership: membership.clone(),
            log_memberships: Vec::new(),
            membership,
            broker_id,
            journal,
            producers: ProducerStates::new(),
            producer_bytes_since_snapshot: 0,
            producer_snapshot_at: std::time::Instant::now(),
        };
        store.rebuild_producers();
        store
    }

    /// The idempotent producers' state as of the storage log end.
    pub fn producers(&self) -> &ProducerStates {
        &self.producers
    }

    /// The idempotent producers' state, for expiry.
    pub fn producers_mut(&mut self) -> &mut ProducerStates {
        &mut self.producers
    }

    /// On the persist thread after a round: when idempotent producers wrote since the
    /// last snapshot and `interval` passed (or a segment's worth of their bytes), the
    /// producer state as of the end of the core's log (entries the core knows are never
    /// rewritten in the same term: Raft's log matching), with the file name (in the
    /// log's directory) to write it to. The caller writes it without holding the
    /// partition's lock.
    pub fn take_producer_snapshot(
        &mut self,
        now: std::time::Instant,
        interval: std::time::Duration,
    ) -> Option<(&'static str, Vec<u8>)> {
        if self.producer_bytes_since_snapshot == 0 {
            return None;
        }
        let due = self.producer_bytes_since_snapshot >= self.log.config().segment_bytes
            || now.duration_since(self.producer_snapshot_at) >= interval;
        if !due || self.raft_end == 0 {
            return None;
        }
        let term = self.log.term_at(self.raft_end - 1)?;
        let mut table = self.producers.clone();
        if table.truncate(self.raft_end) {
            // A producer seen only in appends not yet proposed: next round.
            return None;
        }
        self.producer_bytes_since_snapshot = 0;
        self.producer_snapshot_at = now;
        Some((
            PRODUCER_SNAPSHOT_FILE,
            table.encode_snapshot(self.raft_end, term),
        ))
    }

    /// The producer-state snapshot, if there is one that this log still matches (its
    /// end within the log and the entry ending there of the same term): its table and
    /// end offset. Anything else (none, unreadable, a log cut or replaced below it) means
    /// a scan from the log start.
    fn load_producer_snapshot(&self) -> Option<(ProducerStates, u64)> {
        let path = self.log.dir().join(PRODUCER_SNAPSHOT_FILE);
        let body = match rill_storage::atomic_file::read(&path) {
            Ok(Some(body)) => body,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "producer state snapshot unreadable: the log is scanned instead");
                return None;
            }
        };
        let Some((end, term, table)) = ProducerStates::decode_snapshot(&body) else {
            tracing::warn!(path = %path.display(), "producer state snapshot malformed: the log is scanned instead");
            return None;
        };
        if end == 0 || end > self.log.log_end_offset() || self.log.term_at(end - 1) != Some(term) {
            tracing::debug!(path = %path.display(), end, "producer state snapshot does not match the log");
            return None;
        }
        Some((table, end))
    }

    /// Rebuilds the producer state (at open, and when a truncation cut a producer's
    /// whole kept window): from the snapshot when it matches the log, then every batch
    /// after it; else every batch from the log start. Reads headers only; a read error
    /// stops the scan where it happened (the log is read again at the next rebuild).
    fn rebuild_producers(&mut self) {
        self.producers.clear();
        let end = self.log.log_end_offset();
        let mut offset = self.log.segment_start_offset();
        let snapshot_end = match self.load_producer_snapshot() {
            Some((table, snapshot_end)) if snapshot_end >= offset => {
                self.producers = table;
                offset = snapshot_end;
                Some(snapshot_end)
            }
            _ => None,
        };
        let scan_from = offset;
        let mut batches_read = 0u64;
        while offset < end {
            let bytes = match self.log.read(offset, PRODUCER_REBUILD_READ_BYTES, end) {
                Ok(bytes) if !bytes.is_empty() => bytes,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(dir = %self.log.dir().display(), offset, error = %e, "producer state rebuild stopped: log unreadable");
                    break;
                }
            };
            let mut next = offset;
            for view in rill_record::batches(&bytes) {
                let Ok(view) = view else { break };
                let base = view.base_offset().max(0) as u64;
                if let Some(sequence) = BatchSequence::of(&view) {
                    self.producers
                        .record(&sequence, base, sequence.max_timestamp_ms);
                }
                batches_read += 1;
                next = base + u64::from(view.last_offset_delta().max(0) as u32) + 1;
            }
            if next <= offset {
                break;
            }
            offset = next;
        }
        if snapshot_end.is_some() || !self.producers.is_empty() {
            tracing::info!(
                dir = %self.log.dir().display(),
                snapshot_end_offset = snapshot_end,
                scanned_from_offset = scan_from,
                batches_read,
                producers = self.producers.len(),
                "producer state rebuilt{}",
                if snapshot_end.is_some() { " from a snapshot and the log after it" } else { " from the log" }
            );
        }
    }

    /// Records the idempotent batches of an entry just written at `base_offset`.
    fn record_producers(&mut self, batches: &[u8], base_offset: u64) {
        let now_ms = crate::clock::now_ms();
        let mut offset = base_offset;
        for view in rill_record::batches(batches) {
            let Ok(view) = view else { break };
            if let Some(sequence) = BatchSequence::of(&view) {
                self.producers.record(&sequence, offset, now_ms);
                self.producer_bytes_since_snapshot += view.size_bytes() as u64;
            }
            offset += u64::from(view.last_offset_delta().max(0) as u32) + 1;
        }
    }

    /// Reads the membership entries of the whole log, so the core boots with the
    /// membership its log holds rather than the one it was created with (Raft
    /// dissertation §4.1: a server uses the latest configuration in its log). Every
    /// batch header is read, so this is for small logs (the metadata group's, which
    /// checkpoints bound); partition groups never change membership.
    pub fn recover_memberships(&mut self) -> Result<(), StorageError> {
        let mut found = Vec::new();
        let mut offset = self.log.segment_start_offset();
        while offset < self.raft_end {
            let bytes = self
                .log
                .read(offset, MEMBERSHIP_SCAN_BYTES, self.raft_end)?;
            if bytes.is_empty() {
                break;
            }
            let mut pos = 0;
            while pos < bytes.len() {
                let view = BatchView::new(&bytes[pos..]).map_err(record_error)?;
                pos += view.size_bytes();
                offset = view.next_offset() as u64;
                if let Some((CONTROL_TYPE_RILL_MEMBERSHIP, value)) =
                    control_record(&view).ok().flatten()
                {
                    let membership = parse_membership(value).ok_or(StorageError::CorruptBatch {
                        position: 0,
                        reason: "malformed membership record",
                    })?;
                    found.push((offset, membership));
                }
            }
        }
        if let Some((_, latest)) = found.last() {
            self.membership = latest.clone();
        }
        self.log_memberships = found;
        Ok(())
    }

    /// Truncates the log to `offset` behind the journal barrier (a no-op cut, at or
    /// past the log end, needs none: a follower's every append checks this).
    fn truncate_suffix(&mut self, offset: u64) -> Result<(), StorageError> {
        if offset < self.log.log_end_offset() {
            self.journal_barrier()?;
        }
        self.log.truncate_suffix(offset)?;
        if self.producers.truncate(offset) {
            self.rebuild_producers();
        }
        Ok(())
    }

    /// Gives the control entries (leader change, membership) of outgoing appends the
    /// bytes this replica wrote for them, so every follower stores the same batch (the
    /// term's leader and voters as the leader wrote them, not its own view). A leader's
    /// entries are in its log before its `Ready` is taken.
    pub fn attach_control_data(&self, messages: &mut [Message]) {
        for message in messages {
            let MessageBody::Append { entries, .. } = &mut message.body else {
                continue;
            };
            for entry in entries.iter_mut() {
                if entry.kind == EntryKind::Data || !entry.data.is_empty() {
                    continue;
                }
                match self.log.read(entry.base_offset, 1, entry.end_offset) {
                    Ok(bytes) if !bytes.is_empty() => entry.data = bytes,
                    // Not in the log (cannot happen for the leader's own entries): the
                    // follower builds the batch itself.
                    _ => {}
                }
            }
        }
    }

    /// Call before the log truncates, resets or is deleted: if bytes of this log are
    /// durable only through the journal's current epoch, the journal checkpoints, so
    /// a replay can never write them back over what replaces them
    /// (`rill_storage::journal`'s rule). Rare: a truncation means a leader change.
    pub fn journal_barrier(&mut self) -> Result<(), StorageError> {
        let Some(epoch) = self.log.journal_epoch() else {
            return Ok(());
        };
        if let Some(journal) = &self.journal {
            journal
                .lock()
                .expect("journal lock")
                .checkpoint_epoch(epoch)?;
        }
        self.log.clear_journal_epoch();
        Ok(())
    }

    /// The storage log (reads, metrics).
    pub fn log(&self) -> &PartitionLog {
        &self.log
    }

    /// The storage log, for retention and flushes.
    pub fn log_mut(&mut self) -> &mut PartitionLog {
        &mut self.log
    }

    /// Writes one entry at the storage log end, stamped with the entry's offsets and
    /// term through the iovecs: a produce's batches, or a control entry. A control entry
    /// that arrives with its batch (read from a leader's log) is written as it is; one the
    /// local core just created (empty data) is built here: a LEADER_CHANGE naming this
    /// broker and the current voters, or a membership record.
    pub fn write_entry(&mut self, entry: &Entry) -> Result<(), StorageError> {
        let log_end = self.log.log_end_offset();
        if log_end != entry.base_offset {
            return Err(StorageError::NonContiguous {
                expected: log_end,
                actual: entry.base_offset as i64,
            });
        }
        let now_ms = crate::clock::now_ms();
        // segment.ms is checked when data arrives, as in Kafka.
        self.log.maybe_roll(now_ms)?;
        let control;
        let batches: &[u8] = match &entry.kind {
            EntryKind::Data => &entry.data,
            _ if !entry.data.is_empty() => &entry.data,
            EntryKind::LeaderChange => {
                let value = leader_change_value(self.broker_id, &self.membership);
                control = control_batch(CONTROL_TYPE_LEADER_CHANGE, &value, CONTROL_TIMESTAMP)
                    .map_err(record_error)?;
                &control
            }
            EntryKind::Membership(m) => {
                control = control_batch(
                    CONTROL_TYPE_RILL_MEMBERSHIP,
                    &membership_value(m),
                    CONTROL_TIMESTAMP,
                )
                .map_err(record_error)?;
                &control
            }
        };
        if let EntryKind::Membership(m) = &entry.kind {
            // A membership takes effect once it is in the log (Raft dissertation §4.1).
            self.membership = m.clone();
        }
        let info = self.log.append_as_leader(batches, epoch_of(entry.term))?;
        if info.log_end_offset != entry.end_offset {
            // The batches hold another number of offsets than the core was told: undo.
            self.truncate_suffix(entry.base_offset)?;
            return Err(StorageError::CorruptBatch {
                position: 0,
                reason: "entry's offset count does not match its batches",
            });
        }
        if entry.kind == EntryKind::Data {
            self.record_producers(batches, entry.base_offset);
            self.apply_delete_records(batches)?;
        }
        Ok(())
    }

    /// A DeleteRecords entry (a control batch of [`CONTROL_TYPE_RILL_DELETE_RECORDS`],
    /// which only a leader's `Partition::delete_records` writes: Produce refuses control
    /// batches) moves the log start offset on every replica as it is written. Safe before
    /// it commits: the leader checked that the offset is at or below its high watermark,
    /// so the records it deletes are committed, and a replica that holds the entry holds
    /// the leader's log up to it (Raft's log matching). The leader's outcome is answered
    /// once the entry commits.
    fn apply_delete_records(&mut self, batches: &[u8]) -> Result<(), StorageError> {
        let Ok(view) = BatchView::new(batches) else {
            return Ok(());
        };
        if !view.header().is_control() {
            return Ok(());
        }
        if let Ok(Some((CONTROL_TYPE_RILL_DELETE_RECORDS, value))) = control_record(&view) {
            if let Ok(bytes) = <[u8; 8]>::try_from(value) {
                let offset = i64::from_be_bytes(bytes).max(0) as u64;
                let start = self.log.delete_records_below(offset)?;
                tracing::info!(dir = %self.log.dir().display(), log_start_offset = start, "records deleted (DeleteRecords)");
            }
        }
        Ok(())
    }

    /// Removes entries the storage log holds beyond what the core knows (a leader's
    /// appends that never reached the core, when it stops leading).
    pub fn discard_unknown_suffix(&mut self) -> Result<(), StorageError> {
        if self.log.log_end_offset() > self.raft_end {
            self.truncate_suffix(self.raft_end)?;
        }
        Ok(())
    }

    /// Removes an append this leader wrote at `base_offset` (the core's log end) that
    /// the core then refused. Unlike [`Self::discard_unknown_suffix`] it keeps the
    /// entries the core holds but no `Ready` has applied yet (proposed while a `Ready`
    /// was out).
    pub fn discard_refused_append(&mut self, base_offset: u64) -> Result<(), StorageError> {
        self.truncate_suffix(base_offset.max(self.raft_end))
    }

    /// Applies a `Ready`'s log changes in the required order (reset, truncate, append):
    /// entries the leader wrote already are only counted; others (a follower's) are
    /// written. Returns whether the log changed (a flush is needed). The hard state is
    /// the persist loop's (one file per data directory).
    pub fn apply(&mut self, persist: &Persist) -> Result<bool, StorageError> {
        let mut changed = false;
        if let Some(reset) = &persist.reset_to {
            tracing::info!(
                dir = %self.log.dir().display(),
                old_log_end_offset = self.log.log_end_offset(),
                start_offset = reset.start.offset,
                start_term = reset.start.term,
                "log reset to the leader's log start: this replica's log ended before it"
            );
            self.journal_barrier()?;
            self.log.reset_to(reset.start.offset)?;
            // Nothing of the old log is left to hold producer state for.
            self.producers.clear();
            self.raft_end = reset.start.offset;
            self.reset_start = Some(reset.start);
            self.start_membership = reset.membership.clone();
            self.membership = reset.membership.clone();
            changed = true;
        }
        if let Some(offset) = persist.truncate_to {
            self.raft_end = self.raft_end.min(offset);
            self.truncate_suffix(offset)?;
            changed = true;
        }
        for entry in &persist.entries {
            let written = entry.base_offset == self.raft_end
                && self.log.log_end_offset() >= entry.end_offset
                && self.log.term_at(entry.last_offset()) == Some(epoch_of(entry.term));
            if !written {
                self.truncate_suffix(entry.base_offset)?;
                self.write_entry(entry)?;
            }
            self.raft_end = entry.end_offset;
            changed = true;
        }
        if let Some(hs) = persist.hard_state {
            self.hard_state = hs;
        }
        Ok(changed)
    }
}

fn record_error(e: rill_record::RecordError) -> StorageError {
    StorageError::CorruptBatch {
        position: 0,
        reason: e.reason(),
    }
}

/// Broker ids are Kafka's (0 allowed); Raft node ids are non-zero.
pub fn raft_node_id(broker_id: i32) -> NodeId {
    broker_id as u64 + 1
}

/// The broker id of a Raft node id.
pub fn broker_id(node: NodeId) -> i32 {
    (node - 1) as i32
}

/// Kafka's `LeaderChangeMessage` v0 (what KRaft writes in its metadata log).
fn leader_change_value(leader: i32, voters: &Membership) -> Vec<u8> {
    let voter_list: Vec<Voter> = voters
        .voters
        .iter()
        .map(|&v| Voter::default().with_voter_id(broker_id(v)))
        .collect();
    let message = LeaderChangeMessage::default()
        .with_version(0)
        .with_leader_id(BrokerId(leader))
        .with_voters(voter_list.clone())
        .with_granting_voters(voter_list);
    let mut buf = BytesMut::new();
    // Encoding our own plain message cannot fail; an empty value would still be a
    // valid control batch for consumers.
    let _ = message.encode(&mut buf, 0);
    buf.to_vec()
}

/// Rill's membership value: `voters=1,2,3;learners=4` (broker ids).
fn membership_value(m: &Membership) -> Vec<u8> {
    let list = |ids: &std::collections::BTreeSet<NodeId>| {
        ids.iter()
            .map(|&n| broker_id(n).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("voters={};learners={}", list(&m.voters), list(&m.learners)).into_bytes()
}

fn parse_membership(value: &[u8]) -> Option<Membership> {
    let text = std::str::from_utf8(value).ok()?;
    let (voters, learners) = text.split_once(';')?;
    let ids = |s: &str, key: &str| -> Option<std::collections::BTreeSet<NodeId>> {
        let list = s.strip_prefix(key)?;
        list.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse::<i32>().ok().map(raft_node_id))
            .collect()
    };
    Some(Membership {
        voters: ids(voters, "voters=")?,
        learners: ids(learners, "learners=")?,
    })
}

impl LogStore for PartitionStore {
    fn log_start(&self) -> LogStart {
        let offset = self.log.segment_start_offset();
        if let Some(start) = self.reset_start.filter(|s| s.offset == offset) {
            return start;
        }
        // The batch at the start carries the term of the entry ending there or a later
        // one; a log that starts at 0 starts with term 0.
        let term = if offset == 0 {
            0
        } else {
            self.log.term_at(offset).map_or(0, |t| t.max(0) as u64)
        };
        LogStart { offset, term }
    }

    fn end_offset(&self) -> u64 {
        self.raft_end
    }

    fn term_of_entry_ending_at(&self, end_offset: u64) -> Option<Term> {
        let start = self.log_start();
        if end_offset == start.offset {
            return Some(start.term);
        }
        if end_offset < start.offset || end_offset > self.raft_end {
            return None;
        }
        self.log.term_at(end_offset - 1).map(|t| t.max(0) as u64)
    }

    fn last_entry_with_term_at_most(&self, term: Term) -> Option<(Term, u64)> {
        let start = self.log_start();
        // The log start counts as an entry (of the start term).
        let at_start = (start.term <= term).then_some((start.term, start.offset));
        let Some((epoch, end)) = self.log.end_offset_for_epoch(epoch_of(term)) else {
            return at_start;
        };
        let end = end.min(self.raft_end);
        if end <= start.offset {
            return at_start;
        }
        Some((epoch.max(0) as u64, end))
    }

    fn read_entries(
        &self,
        from_offset: u64,
        bytes_max: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogReadError> {
        if from_offset < self.log.segment_start_offset() {
            return Err(LogReadError::Compacted {
                offset: from_offset,
            });
        }
        let bytes = self
            .log
            .read(from_offset, bytes_max, self.raft_end)
            .map_err(|e| match e {
                StorageError::OffsetOutOfRange { .. } => LogReadError::Compacted {
                    offset: from_offset,
                },
                other => LogReadError::Unavailable(other.to_string()),
            })?;
        let mut pos = 0;
        while pos < bytes.len() {
            let view = BatchView::new(&bytes[pos..])
                .map_err(|e| LogReadError::Unavailable(e.to_string()))?;
            let size = view.size_bytes();
            let kind = match control_record(&view).ok().flatten() {
                Some((CONTROL_TYPE_LEADER_CHANGE, _)) => EntryKind::LeaderChange,
                Some((CONTROL_TYPE_RILL_MEMBERSHIP, value)) => {
                    EntryKind::Membership(parse_membership(value).ok_or_else(|| {
                        LogReadError::Unavailable("malformed membership record".into())
                    })?)
                }
                _ => EntryKind::Data,
            };
            out.push(Entry {
                term: view.partition_leader_epoch().max(0) as u64,
                base_offset: view.base_offset() as u64,
                end_offset: view.next_offset() as u64,
                kind,
                data: bytes.slice(pos..pos + size),
            });
            pos += size;
        }
        Ok(())
    }

    fn boot_state(&self) -> BootState {
        // Only groups whose membership changes (the metadata group) look for
        // membership entries on open (`recover_memberships`); partition groups keep
        // the voters of their assignment. The segments' start, not the records' start
        // (DeleteRecords may move that inside a segment): memberships are per segment.
        let start = self.log.segment_start_offset();
        let mut memberships = vec![(start, self.start_membership.clone())];
        memberships.extend(
            self.log_memberships
                .iter()
                .filter(|(end, _)| *end > start && *end <= self.raft_end)
                .cloned(),
        );
        BootState {
            hard_state: self.hard_state,
            memberships,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rill_protocol::batch::{BatchBuilder, Compression};
    use rill_raft::MemStore;
    use rill_storage::LogConfig;

    fn batch(records: usize) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..records {
            b.push(1_700_000_000_000, None, Some(b"v"), &[])
                .expect("push");
        }
        b.build().expect("build")
    }

    fn entry(term: Term, base: u64, kind: EntryKind, records: usize) -> Entry {
        let data = if kind == EntryKind::Data {
            batch(records)
        } else {
            Bytes::new()
        };
        let count = if kind == EntryKind::Data { records } else { 1 } as u64;
        Entry {
            term,
            base_offset: base,
            end_offset: base + count,
            kind,
            data,
        }
    }

    /// The store answers every LogStore question like the in-memory reference holding
    /// the same entries (one term's leader entry, then its data, over three terms),
    /// before and after a suffix truncation, and reads the entries back with their kinds.
    #[test]
    fn answers_like_the_in_memory_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = PartitionLog::open(dir.path(), LogConfig::default()).expect("open");
        let voters = Membership::with_voters([raft_node_id(1)]);
        let mut store = PartitionStore::new(log, HardState::default(), voters.clone(), 1, None);
        let mut reference = MemStore::new(voters.clone());
        let mut next = 0;
        let mut entries = Vec::new();
        for (term, sizes) in [(1, vec![3, 1]), (2, vec![]), (4, vec![2, 5, 1])] {
            let leader = entry(term, next, EntryKind::LeaderChange, 1);
            next = leader.end_offset;
            entries.push(leader);
            for records in sizes {
                let data = entry(term, next, EntryKind::Data, records);
                next = data.end_offset;
                entries.push(data);
            }
        }
        for e in &entries {
            store.write_entry(e).expect("write");
            store.raft_end = e.end_offset;
        }
        reference.append(&entries);
        let compare = |store: &PartitionStore, reference: &MemStore| {
            assert_eq!(store.log_start(), reference.log_start());
            assert_eq!(store.end_offset(), reference.end_offset());
            for end in 0..=store.end_offset() + 1 {
                // Mid-entry offsets are never asked (see the trait docs); entry ends are.
                if reference.term_of_entry_ending_at(end).is_some() || end > store.end_offset() {
                    assert_eq!(
                        store.term_of_entry_ending_at(end),
                        reference.term_of_entry_ending_at(end),
                        "term of the entry ending at {end}"
                    );
                }
            }
            for term in 0..6 {
                assert_eq!(
                    store.last_entry_with_term_at_most(term),
                    reference.last_entry_with_term_at_most(term),
                    "last entry with term <= {term}"
                );
            }
        };
        compare(&store, &reference);
        let mut read = Vec::new();
        store.read_entries(0, usize::MAX, &mut read).expect("read");
        // (term, base, end, is a leader entry) of each entry.
        let shapes = |list: &[Entry]| -> Vec<(Term, u64, u64, bool)> {
            list.iter()
                .map(|e| {
                    let leader = e.kind == EntryKind::LeaderChange;
                    (e.term, e.base_offset, e.end_offset, leader)
                })
                .collect()
        };
        let (kinds, expected) = (shapes(&read), shapes(&entries));
        assert_eq!(
            kinds, expected,
            "entries read back with their terms and kinds"
        );

        // A follower's truncation to the end of term 2's leader entry.
        let cut = entries[3].end_offset;
        store.log.truncate_suffix(cut).expect("truncate");
        store.raft_end = cut;
        reference.truncate_to(cut);
        compare(&store, &reference);
    }

    /// A reopened log boots with the membership entries it holds (a learner added to
    /// a group of three), not only the membership the group was created with.
    #[test]
    fn a_reopened_log_boots_with_its_membership_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let voters = Membership::with_voters([1, 2, 3].map(raft_node_id));
        let with_learner = voters
            .apply(rill_raft::MembershipChange::AddLearner(raft_node_id(4)))
            .expect("add learner");
        {
            let log = PartitionLog::open(dir.path(), LogConfig::default()).expect("open");
            let mut store = PartitionStore::new(log, HardState::default(), voters.clone(), 1, None);
            let entries = [
                entry(1, 0, EntryKind::LeaderChange, 1),
                entry(1, 1, EntryKind::Data, 3),
                entry(1, 4, EntryKind::Membership(with_learner.clone()), 1),
                entry(1, 5, EntryKind::Data, 2),
            ];
            for e in &entries {
                store.write_entry(e).expect("write");
                store.raft_end = e.end_offset;
            }
        }
        let reopen = || {
            let log = PartitionLog::open(dir.path(), LogConfig::default()).expect("reopen");
            PartitionStore::new(log, HardState::default(), voters.clone(), 1, None)
        };
        // Without looking for them (a partition group), the creation membership.
        assert_eq!(reopen().boot_state().memberships, vec![(0, voters.clone())]);
        let mut store = reopen();
        store.recover_memberships().expect("recover");
        assert_eq!(
            store.boot_state().memberships,
            vec![(0, voters.clone()), (5, with_learner.clone())]
        );
        // The core restored from it replicates to the learner.
        let raft =
            rill_raft::Raft::new(rill_raft::Config::new(raft_node_id(1), 7), store).expect("raft");
        assert_eq!(raft.membership(), &with_learner);
    }
}
