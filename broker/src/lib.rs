//! rill-broker: the single-node Kafka-protocol broker behind the `rilld` binary.
//!
//! # Layout
//!
//! * [`config`] — every configuration key: TOML file + flags, defaults, validation.
//! * [`server`] — accept loop with a connection limit, one task per connection,
//!   framing, pipelined requests answered in order, graceful shutdown.
//! * [`api`] — one module per Kafka API; [`api::dispatch`] routes a decoded header.
//! * [`state`] — the [`state::PartitionManager`]: topics (persisted metadata files),
//!   partitions over `rill-storage` logs, group commit, high watermarks.
//! * [`admin`] — the admin HTTP port (`/metrics`, `/partitions`).
//! * [`metrics`] — counters.
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
