//! rill-broker: the single-node Kafka-protocol broker behind the `rilld` binary.
//!
//! # Layout
//!
//! Along the request path dependencies point one way, with no cycle: `server` →
//! `api` → `context` → `state` → `replica` (a module may also use any further right).
//!
//! * [`config`] — every configuration key: TOML file + flags, defaults, validation.
//! * [`server`] — accept loop with a connection limit, one task per connection,
//!   framing, pipelined requests answered in order, graceful shutdown, the
//!   retention and interval-flush loops.
//! * [`api`] — one module per Kafka API; [`api::dispatch`] routes a decoded header.
//! * [`context`] — the shared [`context::Broker`] every handler reaches, and the
//!   [`context::order`] turns that apply a connection's requests in arrival order.
//! * [`state`] — the [`state::PartitionManager`]: live topics and their partitions,
//!   topic create/delete/grow, free-space floor; [`state::topic_meta`] owns the
//!   topic metadata files and the cluster id on disk, [`state::topic_config`] the
//!   per-topic configs.
//! * [`replica`] — one [`replica::Partition`] over a `rill-storage` log: leader epoch
//!   and its check, group commit, high watermark (and, later, its Raft group).
//! * [`admin`] — the admin HTTP port (`/metrics`, `/partitions`).
//! * [`metrics`] — counters.
//! * [`clock`] — the wall clock (`now_ms`).
//! * [`error`] — [`error::BrokerError`], one variant per cause, each a Kafka error code.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod clock;
pub mod config;
pub mod context;
pub mod error;
pub mod metrics;
pub mod replica;
pub mod server;
pub mod state;
