//! Partition leadership and in-sync replicas, known on every broker of a cluster.
//!
//! Only a partition's replicas take part in its Raft group, so only they learn who
//! leads it. Metadata must still answer for every partition on every broker, so each
//! leader *reports* its partitions to every peer broker: (topic id, partition, leader
//! epoch, in-sync replicas), the leader being the sender. Every broker keeps the
//! latest report of each partition in its [`LeadershipTable`]; a report with an older
//! epoch than the one held is ignored (one leader per Raft term, so an epoch names its
//! leader).
//!
//! # Why reports, and not records in the metadata log
//!
//! Kafka's controller elects partition leaders and writes each change to its metadata
//! log. Here leaders are elected by the partitions' own Raft groups, so the log would
//! only echo what a group already decided, at the cost of a metadata commit per
//! leader change (thousands after a broker failure) and of depending on the controller
//! being up for clients to find a new leader. Reports go straight from the new leader
//! to every broker, within one report interval of its election. What they carry is
//! advisory: nothing that must be correct (acknowledgements, fencing, who accepts
//! writes) reads the table; a stale entry costs a client one NOT_LEADER_OR_FOLLOWER
//! (which names the current leader when the answering broker knows it) and a refresh.
//!
//! # Wire
//!
//! Reports travel on the inter-broker transport as the data of one entry of an
//! `Append` message on the reserved group [`LEADERSHIP_TOPIC_ID`] partition 0, which no
//! partition ever uses (client topic ids are random v4 UUIDs); the replica engine hands
//! such messages to the table instead of a Raft group, and a broker of an older build
//! drops them as a message for a group it does not host. Entry data layout (big-endian):
//!
//! ```text
//! reports = version:u8 (= 1) count:u32 report*count
//! report  = topic_id:16 partition:i32 leader_epoch:i32 isr_count:u32 broker_id:i32*isr_count
//! ```
//!
//! Decoding reads through `rill-protocol`'s bounded [`WireReader`]: counts are checked
//! against the bytes left before anything is allocated, and the in-sync list is bounded
//! by [`crate::controller::REPLICAS_PER_PARTITION_MAX`].
//!
//! # In-sync replicas ([`IsrTracker`])
//!
//! Kafka's rule: a follower is in sync while it has caught up with the leader's log end
//! within the last `replica_lag_time_max_ms`. The leader samples its Raft progress
//! every quarter of that bound (between 50 ms and 2 s; sampling locks each partition's
//! state, so it stays rare with thousands of partitions) and looks for partitions it
//! newly leads every 250 ms (reading their status only), reporting what changed at once
//! and everything every 5 s. A follower whose match offset reached the leader's log end
//! *as of the previous sample*, and that the leader has heard from in the current
//! check-quorum round (Raft's `recent_active`), has caught up now. The previous sample's
//! end, not the current one, so that a steady stream of produces does not push every
//! follower out; heard from, so that a follower that died at the log end of an idle
//! partition leaves too (Kafka's followers leave when they stop fetching). A new leader
//! counts every follower as caught up at its election, giving each one lag bound to
//! answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rill_protocol::decode::source::prealloc_capacity;
use rill_protocol::decode::{DecodeError, Source, WireReader};
use rill_raft::{Entry, EntryKind, Message, MessageBody};
use tokio::sync::watch;
use uuid::Uuid;

use crate::controller::REPLICAS_PER_PARTITION_MAX;
use crate::replica::store::raft_node_id;
use crate::transport::Envelope;

/// The reserved group whose messages carry leadership reports, not Raft traffic.
pub const LEADERSHIP_TOPIC_ID: Uuid = Uuid::from_u128(2);
/// Version byte of an encoded list of reports.
const REPORTS_VERSION: u8 = 1;
/// Bytes one report takes at least (an empty in-sync list).
const REPORT_BYTES_MIN: usize = 16 + 4 + 4 + 4;
/// Reports in one message at most, so a broker leading many partitions sends frames of
/// bounded size (4,096 reports of 3 replicas: about 160 KiB).
pub const REPORTS_PER_MESSAGE_MAX: usize = 4_096;

/// What a leader says about one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderReport {
    /// The topic.
    pub topic_id: Uuid,
    /// The partition.
    pub partition: i32,
    /// The leader's epoch (its Raft term).
    pub leader_epoch: i32,
    /// The replicas within the lag bound of the leader, the leader first.
    pub isr: Vec<i32>,
}

/// A partition's leader as last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownLeader {
    /// The leader's broker id.
    pub leader: i32,
    /// Its epoch.
    pub leader_epoch: i32,
    /// The in-sync replicas it reported.
    pub isr: Vec<i32>,
}

/// Encodes reports as the data of one transport message (see the module docs).
pub fn encode_reports(reports: &[LeaderReport]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + reports.len() * (REPORT_BYTES_MIN + 12));
    out.put_u8(REPORTS_VERSION);
    out.put_u32(reports.len() as u32);
    for report in reports {
        out.put_u128(report.topic_id.as_u128());
        out.put_i32(report.partition);
        out.put_i32(report.leader_epoch);
        out.put_u32(report.isr.len() as u32);
        for broker in &report.isr {
            out.put_i32(*broker);
        }
    }
    out.freeze()
}

/// Why bytes are not a list of reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Truncated, an impossible count, or trailing bytes.
    #[error("malformed leadership report: {0}")]
    Wire(#[from] DecodeError),
    /// A version this build does not know.
    #[error("unknown leadership report version {0}")]
    UnknownVersion(u8),
    /// More in-sync replicas than a partition may have.
    #[error("{0} in-sync replicas, at most {REPLICAS_PER_PARTITION_MAX}")]
    TooManyReplicas(usize),
}

/// Decodes what [`encode_reports`] wrote; bounded (see the module docs).
pub fn decode_reports(bytes: Bytes) -> Result<Vec<LeaderReport>, ReportError> {
    let mut r = WireReader::new(bytes);
    let version = r.int8()? as u8;
    if version != REPORTS_VERSION {
        return Err(ReportError::UnknownVersion(version));
    }
    let count = r.int32()? as u32 as usize;
    if count.saturating_mul(REPORT_BYTES_MIN) > r.remaining() {
        return Err(DecodeError::Truncated {
            needed: count.saturating_mul(REPORT_BYTES_MIN),
            left: r.remaining(),
        }
        .into());
    }
    let mut reports = Vec::with_capacity(prealloc_capacity::<LeaderReport>(count));
    for _ in 0..count {
        let topic_id = r.uuid()?;
        let partition = r.int32()?;
        let leader_epoch = r.int32()?;
        let isr_count = r.int32()? as u32 as usize;
        if isr_count > REPLICAS_PER_PARTITION_MAX {
            return Err(ReportError::TooManyReplicas(isr_count));
        }
        let mut isr = Vec::with_capacity(isr_count);
        for _ in 0..isr_count {
            isr.push(r.int32()?);
        }
        reports.push(LeaderReport {
            topic_id,
            partition,
            leader_epoch,
            isr,
        });
    }
    r.finish()?;
    Ok(reports)
}

/// The partition of [`LEADERSHIP_TOPIC_ID`] whose messages ask the controller for a
/// block of producer ids (`crate::producer_ids`); entry data: version:u8 (= 1)
/// incarnation_id:16, the asking process's incarnation.
pub const PRODUCER_IDS_PARTITION: i32 = 1;
/// Version byte of a producer-id request.
const PRODUCER_IDS_REQUEST_VERSION: u8 = 1;

/// The message asking the controller `to` for a producer-id block for incarnation
/// `incarnation_id` of broker `from`.
pub fn producer_ids_request_envelope(from: i32, to: i32, incarnation_id: Uuid) -> Envelope {
    let mut data = BytesMut::with_capacity(17);
    data.put_u8(PRODUCER_IDS_REQUEST_VERSION);
    data.put_u128(incarnation_id.as_u128());
    let mut envelope = report_envelope(from, to, data.freeze());
    envelope.group.1 = PRODUCER_IDS_PARTITION;
    envelope
}

/// The incarnation a producer-id request names, or `None` for a malformed one.
pub fn decode_producer_ids_request(message: &Message) -> Option<Uuid> {
    let MessageBody::Append { entries, .. } = &message.body else {
        return None;
    };
    let data = &entries.first()?.data;
    if data.len() != 17 || data[0] != PRODUCER_IDS_REQUEST_VERSION {
        return None;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&data[1..]);
    Some(Uuid::from_bytes(id))
}

/// The message carrying `data` (encoded reports) from broker `from` to broker `to`.
pub fn report_envelope(from: i32, to: i32, data: Bytes) -> Envelope {
    Envelope {
        group: (LEADERSHIP_TOPIC_ID, 0),
        message: Message {
            from: raft_node_id(from),
            to: raft_node_id(to),
            term: 0,
            body: MessageBody::Append {
                prev_end_offset: 0,
                prev_term: 0,
                entries: vec![Entry {
                    term: 0,
                    base_offset: 0,
                    end_offset: 1,
                    kind: EntryKind::Data,
                    data,
                }],
                commit_offset: 0,
            },
        },
    }
}

/// The latest leadership report of every partition (see the module docs).
#[derive(Debug)]
pub struct LeadershipTable {
    entries: Mutex<HashMap<(Uuid, i32), KnownLeader>>,
    /// Bumped at every change, for waiters.
    changed: watch::Sender<u64>,
}

impl Default for LeadershipTable {
    fn default() -> Self {
        LeadershipTable {
            entries: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
        }
    }
}

impl LeadershipTable {
    /// Records what `leader` reported; reports older than the epoch held are ignored.
    pub fn apply(&self, leader: i32, reports: Vec<LeaderReport>) {
        let mut changed = false;
        {
            let mut entries = self.entries.lock().expect("leadership lock");
            for report in reports {
                let key = (report.topic_id, report.partition);
                let fresh = KnownLeader {
                    leader,
                    leader_epoch: report.leader_epoch,
                    isr: report.isr,
                };
                match entries.get_mut(&key) {
                    Some(held) if held.leader_epoch > fresh.leader_epoch => {}
                    Some(held) => {
                        if *held != fresh {
                            *held = fresh;
                            changed = true;
                        }
                    }
                    None => {
                        entries.insert(key, fresh);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// A message from the transport on [`LEADERSHIP_TOPIC_ID`]: applies its reports,
    /// or logs and drops it when it is not well-formed.
    pub fn receive(&self, from_broker: i32, message: Message) {
        let MessageBody::Append { entries, .. } = message.body else {
            tracing::debug!(
                from = from_broker,
                "leadership message of another kind dropped"
            );
            return;
        };
        for entry in entries {
            match decode_reports(entry.data) {
                Ok(reports) => self.apply(from_broker, reports),
                Err(e) => {
                    tracing::warn!(from = from_broker, error = %e, "leadership report dropped")
                }
            }
        }
    }

    /// The partition's leader as last reported.
    pub fn get(&self, topic_id: Uuid, partition: i32) -> Option<KnownLeader> {
        self.entries
            .lock()
            .expect("leadership lock")
            .get(&(topic_id, partition))
            .cloned()
    }

    /// Forgets the partitions of topics for which `live` is false, and partitions
    /// numbered at or past `live`'s count.
    pub fn retain(&self, live: impl Fn(Uuid) -> Option<usize>) {
        self.entries
            .lock()
            .expect("leadership lock")
            .retain(|(topic_id, partition), _| {
                live(*topic_id).is_some_and(|count| (*partition as usize) < count)
            });
    }

    /// Waits until every partition of `topic_id` below `count` has a known leader, or
    /// `deadline`; returns whether they all have one.
    pub async fn wait_known(
        &self,
        topic_id: Uuid,
        partitions: std::ops::Range<i32>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let mut changed = self.changed.subscribe();
        loop {
            let all = {
                let entries = self.entries.lock().expect("leadership lock");
                partitions
                    .clone()
                    .all(|p| entries.contains_key(&(topic_id, p)))
            };
            if all {
                return true;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return false,
            }
        }
    }
}

/// One led partition's in-sync tracking (see the module docs).
#[derive(Debug)]
pub struct IsrTracker {
    /// The leader term this tracking belongs to; a new term starts afresh.
    term: u64,
    /// The leader's log end at the previous sample.
    previous_end_offset: u64,
    /// When each follower last caught up.
    caught_up_at: HashMap<i32, Instant>,
}

impl IsrTracker {
    /// Tracking for a leader of `term` whose log ends at `end_offset`.
    pub fn new(term: u64, end_offset: u64) -> IsrTracker {
        IsrTracker {
            term,
            previous_end_offset: end_offset,
            caught_up_at: HashMap::new(),
        }
    }

    /// The term this tracker belongs to.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// One sample: `followers` holds each follower's match end offset (`None` when the
    /// leader has no progress for it or has not heard from it this round). Returns the in-sync replicas, `leader`
    /// first, then the followers in the order given.
    pub fn sample(
        &mut self,
        now: Instant,
        leader: i32,
        end_offset: u64,
        followers: &[(i32, Option<u64>)],
        lag_max: Duration,
    ) -> Vec<i32> {
        let mut isr = vec![leader];
        for (follower, match_end) in followers {
            let caught_up = self.caught_up_at.entry(*follower).or_insert(now);
            if match_end.is_some_and(|m| m >= self.previous_end_offset) {
                *caught_up = now;
            }
            if now.duration_since(*caught_up) <= lag_max {
                isr.push(*follower);
            }
        }
        self.previous_end_offset = end_offset;
        isr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(partition: i32, leader_epoch: i32, isr: &[i32]) -> LeaderReport {
        LeaderReport {
            topic_id: Uuid::from_u128(7),
            partition,
            leader_epoch,
            isr: isr.to_vec(),
        }
    }

    #[test]
    fn reports_round_trip_and_truncations_are_refused() {
        let reports = vec![report(0, 3, &[1, 2]), report(5, 9, &[])];
        let bytes = encode_reports(&reports);
        assert_eq!(decode_reports(bytes.clone()).unwrap(), reports);
        for cut in 0..bytes.len() {
            assert!(decode_reports(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut long = BytesMut::from(&bytes[..]);
        long.put_u8(0);
        assert!(decode_reports(long.freeze()).is_err());
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut bytes = BytesMut::new();
        bytes.put_u8(REPORTS_VERSION);
        bytes.put_u32(u32::MAX);
        assert!(decode_reports(bytes.freeze()).is_err());
        let mut bytes = BytesMut::from(&encode_reports(&[report(0, 1, &[])])[..]);
        // The in-sync count of the one report.
        let len = bytes.len();
        bytes[len - 4..].copy_from_slice(&(u32::MAX).to_be_bytes());
        assert!(matches!(
            decode_reports(bytes.freeze()),
            Err(ReportError::TooManyReplicas(_))
        ));
    }

    #[test]
    fn an_older_epoch_never_replaces_a_newer_one() {
        let table = LeadershipTable::default();
        table.apply(1, vec![report(0, 5, &[1, 2])]);
        table.apply(2, vec![report(0, 4, &[2])]);
        assert_eq!(table.get(Uuid::from_u128(7), 0).unwrap().leader, 1);
        table.apply(3, vec![report(0, 6, &[3])]);
        let known = table.get(Uuid::from_u128(7), 0).unwrap();
        assert_eq!((known.leader, known.leader_epoch), (3, 6));
        table.retain(|_| Some(0));
        assert!(table.get(Uuid::from_u128(7), 0).is_none());
    }

    #[test]
    fn a_follower_that_stops_catching_up_leaves_the_isr_after_the_lag_bound() {
        let lag = Duration::from_secs(2);
        let start = Instant::now();
        let mut tracker = IsrTracker::new(1, 100);
        // Both followers at the end.
        let isr = tracker.sample(start, 1, 100, &[(2, Some(100)), (3, Some(100))], lag);
        assert_eq!(isr, vec![1, 2, 3]);
        // Writes continue; 3 stops at 100.
        let mut now = start;
        for step in 1..=10u64 {
            now = start + Duration::from_millis(500 * step);
            let end = 100 + step * 10;
            let isr = tracker.sample(now, 1, end, &[(2, Some(end - 5)), (3, Some(100))], lag);
            assert!(
                isr.contains(&2),
                "a follower one sample behind stays in sync"
            );
            assert_eq!(isr.contains(&3), step <= 5, "step {step}: {isr:?}");
        }
        // 3 catches up again.
        let isr = tracker.sample(now, 1, 200, &[(2, Some(200)), (3, Some(200))], lag);
        assert_eq!(isr, vec![1, 2, 3]);
    }
}
