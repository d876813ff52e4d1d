//! rill-record: the Kafka RecordBatch v2 (magic 2) layout, in one place, for every crate
//! that reads or writes batches (storage, protocol, broker, client).
//!
//! # Layout
//!
//! * [`layout`] — byte positions of every header field, header and prefix sizes, attribute
//!   bits, the CRC range, [`Compression`] ids.
//! * [`view`] — [`HeaderView`] (the 61 header bytes) and [`BatchView`] (a whole batch),
//!   borrowed and bounds-checked at construction: header fields
//!   read in place, attribute accessors, CRC32C compute/verify.
//! * [`walk`] — [`batches`]: the batches of a blob walked by their length prefixes.
//! * [`records`] — [`Records`]: the records of an uncompressed records section, headers
//!   included, with no allocation (every varint length and count is checked against the bytes
//!   left before it is used).
//! * [`write`](mod@write) — in-place writers (baseOffset, partitionLeaderEpoch, log-append time) and
//!   [`write::finish_batch`] for builders; varint encoding.
//! * [`validate`] — [`validate_client_batch`]: the produce-side rules of Kafka's log
//!   validator (records count vs offsets and bytes, control and transactional batches).
//! * [`error`] — [`RecordError`], one variant per cause.
//!
//! Dependencies: `bytes`, `crc32c`, `thiserror` only. This crate exists so that
//! `rill-storage` can share the layout without pulling in `kafka-protocol`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod control;
pub mod error;
pub mod layout;
pub mod records;
pub mod validate;
pub mod varint;
pub mod view;
pub mod walk;
pub mod write;

pub use error::RecordError;
pub use layout::Compression;
pub use records::{Headers, RecordView, Records};
pub use validate::{validate_client_batch, ClientBatchRules};
pub use view::{compute_crc, BatchView, HeaderView, TimestampType};
pub use walk::{batches, Batches};
