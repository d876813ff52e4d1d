//! [`validate_client_batch`]: what Kafka's log validator refuses in a batch from a client,
//! checked from the header alone (no record is decoded, nothing is allocated), so a
//! broker can run it on the produce path for every batch before appending any.

use crate::error::RecordError;
use crate::layout::{Compression, RECORD_BYTES_MIN};
use crate::view::BatchView;

/// What the receiving broker supports, as far as the rules depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientBatchRules {
    /// Whether transactional batches may be written (false until the transactional APIs
    /// exist: a transactional batch that no coordinator will ever commit or abort would stay
    /// invisible to read_committed consumers forever).
    pub transactions_supported: bool,
}

/// Checks a batch a client produced, in Kafka's order once the batch could be viewed
/// (magic is checked by [`BatchView::new`]):
///
/// 1. recordsCount > 0 and lastOffsetDelta >= 0, and `lastOffsetDelta + 1 == recordsCount`
///    (Kafka: "Inconsistent batch offset range ... and count of records");
/// 2. the records count fits the bytes: each record takes at least
///    [`RECORD_BYTES_MIN`] bytes uncompressed; for a compressed batch, the records section
///    can decompress to at most [`Compression::expansion_ratio_max`] times its size (the
///    broker does not decompress, so the format's worst case is the tightest bound that never
///    refuses a valid batch);
/// 3. no control batch (Kafka: "Clients are not allowed to write control records");
/// 4. no transactional batch unless `rules.transactions_supported`.
///
/// The CRC is verified only when a rule fails: a flipped bit in the header would otherwise
/// be reported as a broken rule (INVALID_RECORD, not retried) instead of corruption
/// (CORRUPT_MESSAGE, retried), as Kafka, which checks the CRC first, would. A passing batch's
/// CRC is left to the append, which verifies it anyway, so the produce path hashes each byte
/// once. An unknown compression id is corruption too.
pub fn validate_client_batch(
    view: &BatchView<'_>,
    rules: ClientBatchRules,
) -> Result<(), RecordError> {
    match check_rules(view, rules) {
        Ok(()) => Ok(()),
        Err(rule) => {
            view.verify_crc()?;
            Err(rule)
        }
    }
}

fn check_rules(view: &BatchView<'_>, rules: ClientBatchRules) -> Result<(), RecordError> {
    let codec = view.compression().ok_or(RecordError::UnknownCompression {
        codec: view.compression_id(),
    })?;
    let records_count = view.records_count();
    let last_offset_delta = view.last_offset_delta();
    if last_offset_delta < 0 {
        return Err(RecordError::InvalidOffsetRange { last_offset_delta });
    }
    if records_count <= 0 {
        return Err(RecordError::InvalidRecordsCount { records_count });
    }
    if i64::from(last_offset_delta) + 1 != i64::from(records_count) {
        return Err(RecordError::InconsistentRecordsCount {
            last_offset_delta,
            records_count,
        });
    }
    let records_bytes = view.records_bytes().len();
    let decompressed_bytes_max = (records_bytes as u64).saturating_mul(codec.expansion_ratio_max());
    // records_count > 0 here, so the cast is lossless.
    if (records_count as u64).saturating_mul(RECORD_BYTES_MIN as u64) > decompressed_bytes_max {
        return Err(RecordError::RecordsCountExceedsBytes {
            records_count,
            records_bytes,
            bytes_per_record_min: RECORD_BYTES_MIN,
            codec_note: match codec {
                Compression::None => "",
                Compression::Gzip => "; gzip expands at most 1032 times",
                Compression::Snappy => "; snappy expands at most 64 times",
                Compression::Lz4 => "; lz4 expands at most 256 times",
                Compression::Zstd => "; zstd expands at most 32768 times",
            },
        });
    }
    if view.is_control() {
        return Err(RecordError::ControlBatchFromClient);
    }
    if view.is_transactional() && !rules.transactions_supported {
        return Err(RecordError::TransactionalUnsupported);
    }
    Ok(())
}
