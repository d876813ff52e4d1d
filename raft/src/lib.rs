//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`raft`](crate::Raft) | the state machine of one node of one group: elections, replication, membership |
//! | `log` | the core's view of its log: the durable store plus not-yet-durable changes |
//! | `progress` | the leader's per-follower replication state and flow control |
//! | [`ready`](crate::Ready) | the output handed to the driver, and the persist-before-send receipts |
//! | [`message`](crate::Message) | messages between the nodes of a group |
//! | [`storage`](crate::LogStore) | the read-only log trait and the in-memory [`MemStore`] |
//! | [`config`](crate::Config) | every tunable and bound, with defaults |
//! | `types`, `error`, `rng` | plain data, the error enums, the node's seeded generator |
//!
//! `rill-raft` is the Raft consensus core of one partition: plain Rust with no
//! tokio, no files, no sockets, no clock and no global randomness. The broker's
//! driver moves messages, time and disk writes in and out of it; the seeded
//! simulator in `tests/simulator.rs` drives the same code and checks Raft's
//! safety properties after every step.
//!
//! # The Ready/advance loop
//!
//! ```text
//! inputs ─ step(msg) / tick() / propose(..) / transfer_leadership(..) ─┐
//!                                                                     ▼
//!   while raft.has_ready():  let rd = raft.ready();
//!     1. send rd.messages now            (need nothing durable: appends from the leader, vote requests)
//!     2. write rd.persist                (reset_to, truncate_to, entries, hard_state) and fsync
//!     3. let durable = rd.persist.into_durable();
//!     4. send rd.after_persist.release(&durable)   (acks and vote grants: only once durable)
//!     5. raft.advance(durable);          (the core now counts its own durable log/vote)
//!   rd.role / rd.commit_offset report role changes and the new high watermark.
//! ```
//! No input may be given between `ready()` and `advance()`; a broker queues
//! them and fsyncs the `Ready`s of many groups together. See [`Raft`] and
//! [`Ready`] for the exact rules.
//!
//! # Offsets, not dense indexes
//!
//! The partition log *is* the Raft log. An entry is a batch covering offsets
//! `[base_offset, end_offset)`; its term is the batch's partitionLeaderEpoch.
//! The entry's Raft index is its last offset; the core writes it as the
//! exclusive `end_offset = last offset + 1`, Kafka's own convention for the
//! high watermark, the log end offset and OffsetForLeaderEpoch answers, which
//! also needs no `-1` for "before the first entry". Log matching uses
//! `(prev_end_offset, prev_term)`, the commit offset is the high watermark, and
//! the [`LogStore`] is asked about "the entry ending at X" and "entries from
//! X", never about the n-th entry.
//!
//! # Many groups per broker: timers and heartbeats
//!
//! * One broker timer calls [`Raft::tick`] on every group; an idle follower's
//!   tick is a counter increment and a compare (see `benches/raft_core.rs`).
//! * A [`MessageBody::Heartbeat`] carries only `(term, commit_offset)` and the
//!   response nothing at all, so a driver merges the heartbeats of all groups
//!   bound for one peer into one frame of `(group, term, commit)` triples and
//!   splits the coalesced response back per group. Heartbeats never carry
//!   entries, so dropping or merging duplicates is always safe.
//! * Every message of one `Ready` to the same peer can share a frame with other
//!   groups' messages: the core never assumes a message per frame.
//! * With [`Config::quiesce`], an idle group stops even that: its leader, once
//!   every member matches its log and commit, sends one last heartbeat flagged
//!   `quiesce` and both sides stop ticking ([`Raft::is_quiesced`]), so a broker
//!   with thousands of idle groups sends and ticks nothing for them. Any input
//!   wakes a group. Liveness moves to the driver: it watches its peers' nodes
//!   and calls [`Raft::unquiesce`] on groups whose leader's node went silent
//!   (CockroachDB's quiesced ranges work the same way).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
mod log;
pub mod message;
mod progress;
mod raft;
pub mod ready;
pub mod rng;
pub mod storage;
pub mod types;

pub use config::Config;
pub use error::{ConfigError, MessageError, ProposeError};
pub use message::{AppendResult, Message, MessageBody};
pub use progress::{ProgressView, ReplicationState};
pub use raft::Raft;
pub use ready::{AfterPersist, Durable, LogReset, Persist, Ready};
pub use storage::{BootState, LogReadError, LogStore, MemStore};
pub use types::{
    Entry, EntryKind, HardState, LogStart, Membership, MembershipChange, NodeId, Proposal, Role,
    RoleState, Term,
};
