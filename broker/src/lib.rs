//! rill-broker: the Kafka-protocol broker behind the `rilld` binary; every partition is a
//! Raft group (of one voter on a single node; over its assigned replicas in a cluster).
//!
//! # Layout
//!
//! Along the request path dependencies point one way, with no cycle: `server` →
//! `api` → `context` → `state` → `replica` (a module may also use any further right).
//!
//! * [`config`] — every configuration key: TOML file + flags, defaults, validation.
//! * [`server`] — accept loop with a connection limit, one task per connection,
//!   framing, pipelined requests answered in order, graceful shutdown, the
//!   retention loop.
//! * [`api`] — one module per Kafka API; [`api::dispatch`] routes a decoded header.
//! * [`context`] — the shared [`context::Broker`] every handler reaches, and the
//!   [`context::order`] turns that apply a connection's requests in arrival order.
//! * [`state`] — the [`state::PartitionManager`]: live topics and their partitions,
//!   topic create/delete/grow, free-space floor; [`state::topic_meta`] owns the
//!   topic metadata files and the cluster id on disk, [`state::topic_config`] the
//!   per-topic configs.
//! * [`replica`] — one [`replica::Partition`] per partition replica: its Raft group
//!   over a `rill-storage` log ([`replica::store::PartitionStore`]), leader epoch = term
//!   and its one check, high watermark = commit offset; [`replica::engine`] is the
//!   persist loop and timer of a data directory (sync rounds across partitions,
//!   fail-stop), [`replica::hard_state`] the terms and votes file.
//! * [`transport`] — the inter-broker transport: Raft messages of all groups batched
//!   per peer broker over TCP, bounded queues, heartbeat coalescing, reconnects;
//!   [`replica::engine::Engine::connect`] plugs the groups into it.
//! * [`controller`] — the cluster metadata model, sans-I/O: metadata log records, the
//!   image every broker applies them to (brokers, topics, replica assignments), replica
//!   placement and image snapshots (which [`cluster`] writes into the metadata log as
//!   checkpoints).
//! * [`cluster`] — in a cluster: this broker's metadata replica, the applier that
//!   turns the committed metadata log into local replicas, and the controller's
//!   proposals (CreateTopics) when it leads the metadata group.
//! * [`group`] — the consumer-group coordinator: groups and committed offsets kept in
//!   `__consumer_offsets`, the classic Join/Sync/Heartbeat/Leave protocol, session and
//!   rebalance timeouts.
//! * [`cleaner`] — the log cleaner thread: compacts `cleanup.policy=compact` replicas
//!   below their commit point, rate-limited, off the runtime.
//! * [`admin`] — the admin HTTP port (`/metrics`, `/partitions`).
//! * [`metrics`] — counters.
//! * [`clock`] — the wall clock (`now_ms`).
//! * [`runtime`] — stepping off the async runtime for blocking file-system work.
//! * [`error`] — [`error::BrokerError`], one variant per cause, each a Kafka error code.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod balancer;
pub mod cleaner;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod context;
pub mod controller;
pub mod error;
pub mod group;
pub mod leadership;
pub mod metrics;
pub mod producer_ids;
pub mod replica;
pub mod runtime;
pub mod server;
pub mod state;
pub mod transport;
