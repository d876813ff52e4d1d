//! [`Member`]: one member of a classic group, and the answers it may be waiting for.

use bytes::Bytes;
use tokio::sync::oneshot;

/// What a JoinGroup is answered with, in no particular version (the handler drops what its
/// version cannot carry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinAnswer {
    /// Kafka error code (0: none).
    pub error_code: i16,
    /// The generation the rebalance produced (-1 on errors).
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol (assignor).
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member id of the member answered (the one to use from now on).
    pub member_id: String,
    /// For the leader: every member with its metadata for the chosen protocol; empty for
    /// the others.
    pub members: Vec<JoinedMember>,
}

impl JoinAnswer {
    /// An answer carrying only an error (and the member id, when one was given out).
    pub fn error(code: i16, member_id: &str) -> JoinAnswer {
        JoinAnswer {
            error_code: code,
            generation_id: -1,
            member_id: member_id.to_string(),
            ..JoinAnswer::default()
        }
    }
}

/// One member as the leader's JoinGroup answer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    /// Its member id.
    pub member_id: String,
    /// Its static instance id.
    pub group_instance_id: Option<String>,
    /// Its metadata (subscription) for the chosen protocol.
    pub metadata: Bytes,
}

/// What a SyncGroup is answered with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncAnswer {
    /// Kafka error code (0: none).
    pub error_code: i16,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol_name: Option<String>,
    /// The member's assignment.
    pub assignment: Bytes,
}

impl SyncAnswer {
    /// An answer carrying only an error.
    pub fn error(code: i16) -> SyncAnswer {
        SyncAnswer {
            error_code: code,
            ..SyncAnswer::default()
        }
    }
}

/// One member of a group.
#[derive(Debug)]
pub struct Member {
    /// The id the coordinator gave it.
    pub member_id: String,
    /// Its static instance id (`group.instance.id`).
    pub group_instance_id: Option<String>,
    /// The client id of its last JoinGroup.
    pub client_id: String,
    /// The client's address.
    pub client_host: String,
    /// Removed when no request arrives for this long (outside a rebalance it waits in).
    pub session_timeout_ms: i32,
    /// How long a rebalance waits for it to rejoin.
    pub rebalance_timeout_ms: i32,
    /// Its protocols (assignor name, metadata), in its order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// What the leader assigned it in the current generation.
    pub assignment: Bytes,
    /// When its session ends unless it sends a request (coordinator clock, ms).
    pub session_deadline_ms: u64,
    /// Order of joining: the longest-standing member becomes leader when one is needed.
    pub joined_seq: u64,
    /// Its JoinGroup, parked until the rebalance completes.
    pub join_waiter: Option<oneshot::Sender<JoinAnswer>>,
    /// Its SyncGroup, parked until the leader's SyncGroup arrives.
    pub sync_waiter: Option<oneshot::Sender<SyncAnswer>>,
}

impl Member {
    /// Its metadata for `protocol`, if it supports it.
    pub fn metadata_for(&self, protocol: &str) -> Option<&Bytes> {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata)
    }

    /// Whether it supports `protocol`.
    pub fn supports(&self, protocol: &str) -> bool {
        self.metadata_for(protocol).is_some()
    }

    /// Whether `protocols` are exactly the ones it joined with.
    pub fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// Whether it waits on a JoinGroup or SyncGroup answer: such a member is not expected
    /// to heartbeat, so its session does not expire meanwhile.
    pub fn is_waiting(&self) -> bool {
        self.join_waiter.is_some() || self.sync_waiter.is_some()
    }

    /// Answers its parked JoinGroup, if any (a closed receiver is a client gone: ignored).
    pub fn answer_join(&mut self, answer: JoinAnswer) {
        if let Some(waiter) = self.join_waiter.take() {
            let _ = waiter.send(answer);
        }
    }

    /// Answers its parked SyncGroup, if any.
    pub fn answer_sync(&mut self, answer: SyncAnswer) {
        if let Some(waiter) = self.sync_waiter.take() {
            let _ = waiter.send(answer);
        }
    }
}
