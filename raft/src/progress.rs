//! The leader's view of one follower's replication (Raft §5.3 nextIndex /
//! matchIndex), with the flow control of etcd's Progress: probe one message at
//! a time until the follower matches, then pipeline within a byte window.

use std::collections::VecDeque;

/// How the leader currently sends to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// The match point is unknown: one append at a time, resent at most once per
    /// heartbeat, backtracking by term on rejection.
    Probe,
    /// The follower matches: appends are pipelined up to `inflight_bytes_max`.
    Replicate,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// End of the last entry known to match the leader's log.
    pub(crate) match_end: u64,
    /// `prev_end_offset` of the next append to send.
    pub(crate) next_end: u64,
    pub(crate) state: ReplicationState,
    /// In `Probe`: an append is outstanding; wait for an answer or a heartbeat.
    pub(crate) probe_sent: bool,
    /// In `Probe`: the follower needs entries below our log start.
    pub(crate) reset_needed: bool,
    /// In `Replicate`: (end offset, bytes) of each unacknowledged append.
    pub(crate) inflight: VecDeque<(u64, usize)>,
    pub(crate) inflight_bytes: usize,
    /// Heard from since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// `match_end` when the previous heartbeat response arrived; no movement
    /// across a whole heartbeat interval means an append was lost.
    pub(crate) match_at_last_heartbeat: u64,
}

impl Progress {
    pub(crate) fn new(next_end: u64) -> Progress {
        Progress {
            match_end: 0,
            next_end,
            state: ReplicationState::Probe,
            probe_sent: false,
            reset_needed: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            // A new leader gives every follower one election timeout to answer
            // before check-quorum counts it as missing.
            recent_active: true,
            match_at_last_heartbeat: 0,
        }
    }

    pub(crate) fn become_probe(&mut self, next_end: u64) {
        self.state = ReplicationState::Probe;
        self.next_end = next_end;
        self.probe_sent = false;
        self.reset_needed = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_end = self.match_end;
        self.probe_sent = false;
        self.reset_needed = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Frees the window for everything acknowledged up to `match_end`.
    pub(crate) fn free_inflight_to(&mut self, match_end: u64) {
        while let Some(&(end, bytes)) = self.inflight.front() {
            if end > match_end {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
    }
}

/// A read-only snapshot of a follower's replication progress (for status
/// pages, tests and the leader balancer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressView {
    /// End of the last entry known to match the leader's log.
    pub match_end_offset: u64,
    /// Where the next append starts.
    pub next_end_offset: u64,
    /// Probe or pipelined replication.
    pub state: ReplicationState,
    /// Bytes sent and not yet acknowledged.
    pub inflight_bytes: usize,
    /// Heard from within the current check-quorum round.
    pub recent_active: bool,
}

impl From<&Progress> for ProgressView {
    fn from(p: &Progress) -> ProgressView {
        ProgressView {
            match_end_offset: p.match_end,
            next_end_offset: p.next_end,
            state: p.state,
            inflight_bytes: p.inflight_bytes,
            recent_active: p.recent_active,
        }
    }
}
