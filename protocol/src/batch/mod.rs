//! RecordBatch v2 (magic 2) as the protocol crate's users see it.
//!
//! # Layout
//!
//! The layout itself — field positions, the CRC32C range, attribute bits, the header and batch
//! views, the batch walker, the record iterator, the in-place writers and the client-batch
//! rules — has one home, the `rill-record` crate, shared with `rill-storage` (which must not
//! depend on `kafka-protocol`). This module re-exports it so clients need one import path, and
//! adds what needs more than the layout:
//!
//! * [`builder`] — [`BatchBuilder`]: records in, one batch out (client side).
//! * [`compress`] — the codecs behind the `compression` feature, and [`DecompressRecords`]:
//!   bounded decompression of a [`BatchView`]'s records.

pub mod builder;
pub mod compress;
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // kafka-protocol's decoder is the reference here
mod tests;

pub use builder::BatchBuilder;
pub use compress::{DecompressRecords, DECOMPRESSED_RECORDS_BYTES_MAX_DEFAULT};
pub use rill_record::layout::{
    BATCH_LENGTH_MIN, HEADER_BYTES as BATCH_HEADER_BYTES,
    LOG_OVERHEAD_BYTES as BATCH_LENGTH_PREFIX_BYTES, MAGIC_V2,
};
pub use rill_record::write::{
    set_base_offset, set_log_append_time, set_partition_leader_epoch, set_producer,
};
pub use rill_record::{
    batches, validate_client_batch, BatchView, Batches, ClientBatchRules, Compression, HeaderView,
    Headers, RecordError, RecordView, Records, TimestampType,
};
