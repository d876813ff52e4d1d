//! What the produce path checks in a partition's `records` before anything is appended:
//! Kafka's per-batch size limit and its log validator's rules for client batches (the rules
//! themselves are `rill-record`'s [`validate_client_batch`]). Header bytes only: no record is
//! decoded and nothing is allocated for a valid request; storage verifies each CRC once while
//! appending (and this check verifies it only when a rule fails, to report corruption first,
//! as Kafka does).

use rill_protocol::batch::{batches, validate_client_batch, ClientBatchRules, RecordError};

use crate::error::BrokerError;
pub use crate::replica::BatchCounts;

/// Transactions are not implemented yet (no transaction coordinator to commit or abort):
/// transactional batches are refused rather than stored forever undecided.
const RULES: ClientBatchRules = ClientBatchRules {
    transactions_supported: false,
};

/// Checks every batch of one partition's `records`, in order, and fails on the first bad one,
/// so that the partition is answered with an error and nothing of it is appended:
/// no batch or a torn tail → CORRUPT_MESSAGE; a batch over `max.message.bytes` →
/// MESSAGE_TOO_LARGE; magic other than 2, offsets inconsistent with the records count, more
/// records than bytes, a control or a transactional batch → INVALID_RECORD; a CRC failure →
/// CORRUPT_MESSAGE. Returns what the walk counted, so the append need not walk again.
pub fn check_client_batches(
    records: &[u8],
    max_message_bytes: i64,
) -> Result<BatchCounts, BrokerError> {
    if records.is_empty() {
        return Err(BrokerError::CorruptMessage("no record batch".into()));
    }
    let mut counts = BatchCounts::default();
    let mut walk = batches(records);
    for (batch_index, view) in walk.by_ref().enumerate() {
        let view = view.map_err(|e| batch_error(e, batch_index))?;
        counts.batches += 1;
        counts.offsets += u64::from(view.last_offset_delta() as u32) + 1;
        if view.size_bytes() as i64 > max_message_bytes {
            return Err(BrokerError::MessageTooLarge {
                size_bytes: view.size_bytes(),
                max_bytes: max_message_bytes,
            });
        }
        validate_client_batch(&view, RULES).map_err(|e| batch_error(e, batch_index))?;
    }
    let tail = walk.remainder();
    if !tail.is_empty() {
        return Err(BrokerError::CorruptMessage(format!(
            "{} trailing bytes at position {} are not a whole record batch",
            tail.len(),
            walk.position()
        )));
    }
    Ok(counts)
}

/// A compacted topic keeps the last record per key, so a record without a key has no
/// meaning there: Kafka refuses it with INVALID_RECORD, and so do we. Run after
/// [`check_client_batches`] (the batches are whole). Uncompressed batches are checked
/// record by record (no allocation); compressed ones pass unchecked, because the broker
/// carries no codecs (the cleaner keeps their records as they are).
pub fn check_keys_for_compaction(records: &[u8]) -> Result<(), BrokerError> {
    for (batch_index, view) in batches(records).enumerate() {
        let view = view.map_err(|e| batch_error(e, batch_index))?;
        let Ok(iter) = view.records() else {
            continue; // compressed
        };
        for record in iter {
            let record = record.map_err(|e| batch_error(e, batch_index))?;
            if record.key.is_none() {
                return Err(BrokerError::InvalidRecord {
                    message: format!(
                        "compacted topic cannot accept a record without a key (offset delta {} \
                         of record batch {batch_index})",
                        record.offset - view.base_offset()
                    ),
                });
            }
        }
    }
    Ok(())
}

fn batch_error(e: RecordError, batch_index: usize) -> BrokerError {
    if e.is_invalid_record() {
        BrokerError::InvalidRecord {
            message: format!("{e} (record batch {batch_index} of the partition's records)"),
        }
    } else {
        BrokerError::CorruptMessage(format!("record batch {batch_index}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_protocol::batch::{BatchBuilder, Compression};

    fn batch(values: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..values {
            b.push(0, None, Some(b"v"), &[]).unwrap();
        }
        b.build().unwrap().to_vec()
    }

    #[test]
    fn accepts_concatenated_batches_within_the_limit() {
        let mut all = batch(3);
        all.extend(batch(5));
        let largest = batch(5).len();
        assert_eq!(
            check_client_batches(&all, largest as i64).unwrap(),
            BatchCounts {
                batches: 2,
                offsets: 8
            },
            "the walk counts batches and offsets for the append"
        );
        assert!(matches!(
            check_client_batches(&all, largest as i64 - 1),
            Err(BrokerError::MessageTooLarge { size_bytes, .. }) if size_bytes == largest
        ));
    }

    #[test]
    fn rejects_empty_truncated_and_negative_lengths_as_corrupt() {
        assert!(matches!(
            check_client_batches(&[], 1000),
            Err(BrokerError::CorruptMessage(_))
        ));
        let mut short = batch(1);
        short.truncate(40);
        assert!(matches!(
            check_client_batches(&short, 1000),
            Err(BrokerError::CorruptMessage(_))
        ));
        let mut negative = batch(1);
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            check_client_batches(&negative, 1000),
            Err(BrokerError::CorruptMessage(_))
        ));
        let mut torn_second = batch(1);
        torn_second.extend_from_slice(&batch(1)[..30]);
        assert!(matches!(
            check_client_batches(&torn_second, 1000),
            Err(BrokerError::CorruptMessage(_))
        ));
    }

    #[test]
    fn a_broken_rule_in_a_later_batch_names_that_batch() {
        let mut all = batch(2);
        let mut second = batch(2);
        second[16] = 1; // magic
        all.extend(second);
        match check_client_batches(&all, 1 << 20) {
            Err(BrokerError::InvalidRecord { message }) => {
                assert!(message.contains("magic 1"), "{message}");
                assert!(message.contains("record batch 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
