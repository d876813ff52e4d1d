//! Every tunable and bound of the core, in one place, with its default.

use crate::error::ConfigError;
use crate::types::{NodeId, ENTRY_OVERHEAD_BYTES};

/// Default `election_timeout_ticks`: with a 100 ms broker tick, 1–2 s.
pub const ELECTION_TIMEOUT_TICKS_DEFAULT: u32 = 10;
/// Default `heartbeat_interval_ticks`.
pub const HEARTBEAT_INTERVAL_TICKS_DEFAULT: u32 = 2;
/// Default `append_bytes_max`: the payload bound of one append message.
pub const APPEND_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default `inflight_bytes_max`: unacknowledged bytes per follower.
pub const INFLIGHT_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
/// Default `uncommitted_bytes_max`: proposed but uncommitted bytes per leader.
pub const UNCOMMITTED_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;

/// Configuration of one node of one group. Validate with [`Config::validate`]
/// (the constructor of [`crate::Raft`] does).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Ticks without hearing from a leader before a follower campaigns. The
    /// actual timeout is drawn uniformly from `[t, 2t)` per term (Raft §5.2).
    pub election_timeout_ticks: u32,
    /// Ticks between a leader's heartbeats; must be below the election timeout.
    pub heartbeat_interval_ticks: u32,
    /// Ask for pre-votes before campaigning, so a partitioned node that comes
    /// back does not force an election (dissertation §9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within an election timeout
    /// steps down, and followers that heard from a leader within the timeout
    /// refuse votes (dissertation §6.2 / §4.2.3).
    pub check_quorum: bool,
    /// Payload bytes per append message (at least one entry is always sent).
    pub append_bytes_max: usize,
    /// Bytes sent to one follower and not yet acknowledged (pipelining window).
    pub inflight_bytes_max: usize,
    /// Bytes a leader accepts in proposals that are not committed yet.
    pub uncommitted_bytes_max: usize,
    /// Let an idle group go quiet (see [`crate::Raft::is_quiesced`]): a leader
    /// whose followers all match its log and commit sends a last heartbeat that
    /// says so, and neither side ticks until something happens. The driver must
    /// then tell a quiesced follower when its leader's node stops answering
    /// ([`crate::Raft::unquiesce`]); without that a dead leader is never replaced.
    pub quiesce: bool,
    /// Seed of the node's own generator for randomized election timeouts.
    pub seed: u64,
}

impl Config {
    /// A configuration with every default and the given id and seed.
    pub fn new(id: NodeId, seed: u64) -> Config {
        Config {
            id,
            election_timeout_ticks: ELECTION_TIMEOUT_TICKS_DEFAULT,
            heartbeat_interval_ticks: HEARTBEAT_INTERVAL_TICKS_DEFAULT,
            pre_vote: true,
            check_quorum: true,
            append_bytes_max: APPEND_BYTES_MAX_DEFAULT,
            inflight_bytes_max: INFLIGHT_BYTES_MAX_DEFAULT,
            uncommitted_bytes_max: UNCOMMITTED_BYTES_MAX_DEFAULT,
            quiesce: false,
            seed,
        }
    }

    /// Checks every field; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError::ZeroHeartbeatInterval);
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return Err(ConfigError::ElectionTimeoutNotAboveHeartbeat {
                election: self.election_timeout_ticks,
                heartbeat: self.heartbeat_interval_ticks,
            });
        }
        if self.append_bytes_max < ENTRY_OVERHEAD_BYTES {
            return Err(ConfigError::AppendBytesTooSmall {
                min: ENTRY_OVERHEAD_BYTES,
            });
        }
        if self.inflight_bytes_max < self.append_bytes_max {
            return Err(ConfigError::InflightBelowAppend {
                inflight: self.inflight_bytes_max,
                append: self.append_bytes_max,
            });
        }
        Ok(())
    }
}
