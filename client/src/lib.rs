//! `rill-client`: an async Rust client for Rill and any Kafka-compatible broker.
//!
//! * [`Producer`] — `send` returns a [`DeliveryFuture`] of (partition, offset);
//!   per-partition batching by `linger_ms`/`batch_bytes_max`, Kafka's murmur2 key
//!   partitioner and sticky partitioning for null keys, acks 0/1/all, compression
//!   none/gzip/snappy/lz4/zstd, retries with backoff that keep per-partition order,
//!   `flush`, and back-pressure once `buffer_bytes_max` is in use. Not idempotent:
//!   delivery is at least once.
//! * [`Consumer`] — assign mode: `assign`, `seek` (offset, beginning, end, timestamp), a
//!   `Stream` of records with prefetch, offsets by time, earliest/latest; subscribe mode:
//!   `subscribe` (topics or a pattern) in a consumer group, with `range`, `roundrobin`
//!   and `cooperative-sticky` assignors, rebalance callbacks, auto and manual commits.
//! * [`Admin`] — create/delete/list/describe topics, create partitions, describe
//!   configs and the cluster; consumer groups ([`groups`]): list, describe, delete,
//!   committed offsets (read, alter, delete) and lag.
//!
//! # Layout
//!
//! * `conn` — one TCP connection: pipelining with a bound on requests in flight,
//!   correlation ids, a timeout on every request, ApiVersions negotiation.
//! * `cluster` — connections by broker and the metadata cache (refreshed on stale-leader
//!   errors and connection loss).
//! * `wire` — everything that touches `rill-protocol` (frames, headers, batches).
//! * [`producer`] — accumulator (batching, sans-I/O), delivery futures, sender task.
//! * [`consumer`], [`admin`] — as named.
//! * [`group`] — consumer-group membership, assignors, commits.
//! * [`partitioner`] — Kafka-compatible murmur2 partitioning.
//! * [`config`], [`record`], [`error`] — the public types.
//!
//! The `rill` command-line tool lives in `src/bin/rill/` behind the `cli` feature (on by
//! default); with `default-features = false` the library pulls none of its dependencies.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod cluster;
pub mod config;
mod conn;
pub mod consumer;
pub mod error;
pub mod group;
pub mod partitioner;
pub mod producer;
pub mod record;
mod wire;

pub use admin::groups::{
    GroupDescription, GroupList, GroupListing, MemberDescription, OffsetSpec, PartitionLag,
};
pub use admin::{Admin, ClusterDescription, ConfigEntry, NewTopic};
pub use cluster::{BrokerInfo, PartitionInfo, TopicInfo};
pub use config::{
    Acks, AssignmentStrategy, ClientConfig, Compression, ConsumerConfig, OffsetReset,
    ProducerConfig,
};
pub use consumer::{Consumer, Offset};
pub use error::{Error, ResponseError, Result};
pub use group::{RebalanceListener, Subscription};
pub use producer::{BatchDelivery, BatchReport, DeliveryFuture, Producer};
pub use record::{
    ConsumerRecord, Header, ProducerRecord, RecordBatchRef, RecordHeaders, RecordMetadata,
    RecordRef, TopicPartition,
};
