//! Acceptance 1: random sequences of append (leader and follower) / read / truncate /
//! reset / roll / retention / flush / timestamp and epoch queries / close-reopen,
//! run against the real log and a plain in-memory model, must never disagree.
//!
//! Each CI run executes `cases × OPS_PER_CASE` operations (40 × 260 = 10,400 by
//! default; `RILL_MODEL_CASES=N` runs more). Segments are 16 KiB so rolls, closed
//! segment maps (at most 2 open) and retention happen constantly.

mod common;

use common::headers;
use proptest::prelude::*;
use rill_storage::batch::{self, RecordSpec};
use rill_storage::{LogConfig, PartitionLog, StorageError};

const OPS_PER_CASE: usize = 260;
const SEGMENT_BYTES: u64 = 16 * 1024;
const RETENTION_BYTES: u64 = 48 * 1024;

#[derive(Debug, Clone)]
enum Op {
    /// Leader append of `batches` batches (in one call) of `records` records.
    AppendLeader {
        batches: u8,
        records: u8,
        value_bytes: u16,
        ts: i64,
        bump_epoch: bool,
    },
    /// Follower append carrying its own offsets; `wrong_base` makes it non-contiguous.
    AppendFollower {
        records: u8,
        value_bytes: u16,
        ts: i64,
        wrong_base: bool,
    },
    /// Append of a batch with one flipped byte.
    AppendCorrupt {
        flip_at: u16,
    },
    /// `start`/`hw` pick points in (and just outside) the log.
    Read {
        start: u16,
        bytes_max: u16,
        hw: u16,
    },
    Truncate {
        at: u16,
    },
    Reset {
        gap: u8,
    },
    Roll,
    Retention {
        hw: u16,
    },
    Flush,
    OffsetForTimestamp {
        ts: i64,
    },
    MaxTimestamp,
    Epochs {
        epoch_probe: u8,
        offset_probe: u16,
    },
    Reopen {
        clean: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (1u8..4, 1u8..6, 0u16..400, 0i64..10_000, prop::bool::weighted(0.05)).prop_map(
            |(batches, records, value_bytes, ts, bump_epoch)| Op::AppendLeader {
                batches,
                records,
                value_bytes,
                ts,
                bump_epoch
            }
        ),
        10 => (1u8..6, 0u16..400, 0i64..10_000, prop::bool::weighted(0.1)).prop_map(
            |(records, value_bytes, ts, wrong_base)| Op::AppendFollower {
                records,
                value_bytes,
                ts,
                wrong_base
            }
        ),
        2 => any::<u16>().prop_map(|flip_at| Op::AppendCorrupt { flip_at }),
        25 => (any::<u16>(), any::<u16>(), any::<u16>())
            .prop_map(|(start, bytes_max, hw)| Op::Read { start, bytes_max, hw }),
        6 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        1 => any::<u8>().prop_map(|gap| Op::Reset { gap }),
        4 => Just(Op::Roll),
        4 => any::<u16>().prop_map(|hw| Op::Retention { hw }),
        4 => Just(Op::Flush),
        5 => (0i64..11_000).prop_map(|ts| Op::OffsetForTimestamp { ts }),
        2 => Just(Op::MaxTimestamp),
        4 => (any::<u8>(), any::<u16>())
            .prop_map(|(epoch_probe, offset_probe)| Op::Epochs { epoch_probe, offset_probe }),
        3 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

/// One batch as the model knows it: exactly the bytes the log must return.
#[derive(Debug, Clone)]
struct ModelBatch {
    base: u64,
    last: u64,
    epoch: i32,
    timestamps: Vec<i64>,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Model {
    log_start: u64,
    batches: Vec<ModelBatch>,
    epoch: i32,
}

impl Model {
    fn end(&self) -> u64 {
        self.batches.last().map_or(self.log_start, |b| b.last + 1)
    }
    fn size(&self) -> u64 {
        self.batches.iter().map(|b| b.bytes.len() as u64).sum()
    }
    /// Maps a random u16 to an offset in [log_start - 1, end + 1].
    fn pick(&self, x: u16) -> u64 {
        let lo = self.log_start.saturating_sub(1);
        let span = self.end() + 2 - lo;
        lo + u64::from(x) % span
    }
    fn batch_holding(&self, offset: u64) -> Option<usize> {
        self.batches
            .iter()
            .position(|b| b.last >= offset && b.base <= offset)
    }
    fn epoch_entries(&self) -> Vec<(i32, u64)> {
        let mut out: Vec<(i32, u64)> = Vec::new();
        for b in &self.batches {
            if out.last().is_none_or(|&(e, _)| b.epoch > e) {
                out.push((b.epoch, b.base));
            }
        }
        out
    }
}

fn make_batch(
    base: i64,
    epoch: i32,
    records: u8,
    value_bytes: u16,
    ts: i64,
) -> (Vec<u8>, Vec<i64>) {
    let value: Vec<u8> = (0..value_bytes).map(|i| (i as u8) ^ (base as u8)).collect();
    // Non-monotonic timestamps inside a batch too.
    let timestamps: Vec<i64> = (0..i64::from(records))
        .map(|i| ts + (i * 7919) % 13)
        .collect();
    let specs: Vec<RecordSpec<'_>> = timestamps
        .iter()
        .map(|&t| RecordSpec {
            timestamp_ms: t,
            key: Some(b"k"),
            value: Some(&value),
        })
        .collect();
    let mut out = Vec::new();
    batch::encode_uncompressed(&mut out, base, epoch, &specs);
    (out, timestamps)
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        index_interval_bytes: 1024,
        retention_ms: None,
        retention_bytes: Some(RETENTION_BYTES),
        open_maps_max: 2,
        ..LogConfig::default()
    }
}

fn check_whole_log(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
    let mut offset = model.log_start;
    let mut expected = model.batches.iter();
    while offset < model.end() {
        let chunk = log.read(offset, 64 * 1024, u64::MAX).unwrap();
        prop_assert!(
            !chunk.is_empty(),
            "empty read at {offset} below end {}",
            model.end()
        );
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let want = expected
                .next()
                .expect("log returned more batches than the model has");
            prop_assert_eq!(
                &rest[..want.bytes.len()],
                &want.bytes[..],
                "batch {}",
                want.base
            );
            rest = &rest[want.bytes.len()..];
            offset = want.last + 1;
        }
    }
    prop_assert!(expected.next().is_none());
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Some(PartitionLog::open(dir.path(), config()).unwrap());
    let mut model = Model {
        log_start: 0,
        batches: Vec::new(),
        epoch: 0,
    };
    for (step, op) in ops.into_iter().enumerate() {
        let l = log.as_mut().unwrap();
        match op {
            Op::AppendLeader {
                batches,
                records,
                value_bytes,
                ts,
                bump_epoch,
            } => {
                if bump_epoch {
                    model.epoch += 1;
                }
                let mut input = Vec::new();
                let mut stamped = Vec::new();
                let mut next = model.end();
                for k in 0..batches {
                    // Producers send base offset 0 and no epoch; the leader stamps both.
                    let (b, timestamps) =
                        make_batch(0, -1, records, value_bytes, ts + i64::from(k));
                    input.extend_from_slice(&b);
                    let mut s = b;
                    batch::stamp(&mut s, next, model.epoch).unwrap();
                    let last = next + u64::from(records) - 1;
                    stamped.push(ModelBatch {
                        base: next,
                        last,
                        epoch: model.epoch,
                        timestamps,
                        bytes: s,
                    });
                    next = last + 1;
                }
                let info = l.append_as_leader(&input, model.epoch).unwrap();
                prop_assert_eq!(info.base_offset, model.end());
                prop_assert_eq!(info.log_end_offset, next);
                prop_assert_eq!(info.batch_count, batches as usize);
                model.batches.extend(stamped);
            }
            Op::AppendFollower {
                records,
                value_bytes,
                ts,
                wrong_base,
            } => {
                let base = model.end() + u64::from(wrong_base) * 3;
                let (b, timestamps) =
                    make_batch(base as i64, model.epoch, records, value_bytes, ts);
                let result = l.append(&b);
                if wrong_base {
                    let is_non_contiguous =
                        matches!(result, Err(StorageError::NonContiguous { .. }));
                    prop_assert!(is_non_contiguous, "{:?}", result);
                } else {
                    result.unwrap();
                    model.batches.push(ModelBatch {
                        base,
                        last: base + u64::from(records) - 1,
                        epoch: model.epoch,
                        timestamps,
                        bytes: b,
                    });
                }
            }
            Op::AppendCorrupt { flip_at } => {
                let (mut b, _) = make_batch(model.end() as i64, model.epoch, 2, 50, 0);
                // Any byte from the magic on is covered by a check (magic, CRC, length).
                let at = 16 + usize::from(flip_at) % (b.len() - 16);
                b[at] ^= 0x5a;
                let result = l.append(&b);
                prop_assert!(result.is_err(), "corrupt batch accepted (byte {at})");
            }
            Op::Read {
                start,
                bytes_max,
                hw,
            } => {
                let start = model.pick(start);
                let hw = start + u64::from(hw) % (model.end() + 2 - start.min(model.end() + 1));
                let bytes_max = usize::from(bytes_max) % 8192;
                let result = l.read(start, bytes_max, hw);
                if start < model.log_start || start > model.end() {
                    let out_of_range = matches!(result, Err(StorageError::OffsetOutOfRange { .. }));
                    prop_assert!(out_of_range, "{:?}", result);
                    continue;
                }
                let got = result.unwrap();
                let Some(first) = model.batch_holding(start).filter(|_| start < hw) else {
                    prop_assert!(got.is_empty());
                    continue;
                };
                let mut rest = &got[..];
                let mut idx = first;
                let mut total = 0;
                while !rest.is_empty() {
                    let want = &model.batches[idx];
                    prop_assert!(want.last < hw, "batch past the high watermark");
                    prop_assert_eq!(&rest[..want.bytes.len()], &want.bytes[..]);
                    rest = &rest[want.bytes.len()..];
                    total += want.bytes.len();
                    idx += 1;
                }
                let returned = idx - first;
                if model.batches[first].last >= hw {
                    prop_assert_eq!(returned, 0);
                    continue;
                }
                prop_assert!(returned >= 1, "no progress at {}", start);
                prop_assert!(returned == 1 || total <= bytes_max);
                // Stopping early is only allowed at the high watermark, the byte
                // limit, or a segment boundary.
                if let Some(next) = model.batches.get(idx) {
                    let at_hw = next.last >= hw;
                    let at_limit = total + next.bytes.len() > bytes_max;
                    let at_segment = l.segment_base_offsets().contains(&next.base);
                    prop_assert!(
                        at_hw || at_limit || at_segment,
                        "read stopped early before {}",
                        next.base
                    );
                }
            }
            Op::Truncate { at } => {
                let offset = model.pick(at);
                let result = l.truncate_suffix(offset);
                if offset < model.log_start {
                    let out_of_range = matches!(result, Err(StorageError::OffsetOutOfRange { .. }));
                    prop_assert!(out_of_range, "{:?}", result);
                    continue;
                }
                let new_end = result.unwrap();
                model.batches.retain(|b| b.last < offset);
                prop_assert_eq!(new_end, model.end());
            }
            Op::Reset { gap } => {
                let start = model.end() + u64::from(gap % 50);
                l.reset_to(start).unwrap();
                model.batches.clear();
                model.log_start = start;
            }
            Op::Roll => {
                let before = l.segment_count();
                let had_data = l.segment_base_offsets().last() != Some(&model.end());
                l.roll().unwrap();
                prop_assert_eq!(l.segment_count(), before + usize::from(had_data));
            }
            Op::Retention { hw } => {
                let hw = model.pick(hw);
                let size_before = l.size_bytes();
                let out = l.apply_retention(0, hw).unwrap();
                prop_assert!(out.log_start_offset <= hw.max(model.log_start));
                prop_assert!(
                    out.log_start_offset == model.end()
                        || model.batches.iter().any(|b| b.base == out.log_start_offset),
                    "log start {} is not a batch boundary",
                    out.log_start_offset
                );
                model.batches.retain(|b| b.base >= out.log_start_offset);
                model.log_start = out.log_start_offset;
                if out.segments_deleted > 0 {
                    prop_assert!(l.size_bytes() >= RETENTION_BYTES);
                    prop_assert_eq!(size_before - l.size_bytes(), out.bytes_deleted);
                }
            }
            Op::Flush => {
                prop_assert_eq!(l.flush().unwrap(), model.end());
            }
            Op::OffsetForTimestamp { ts } => {
                let want = model.batches.iter().find_map(|b| {
                    let i = b.timestamps.iter().position(|&t| t >= ts)?;
                    Some((b.base + i as u64, b.timestamps[i]))
                });
                prop_assert_eq!(l.offset_for_timestamp(ts).unwrap(), want);
            }
            Op::MaxTimestamp => {
                let max = model
                    .batches
                    .iter()
                    .flat_map(|b| b.timestamps.iter().copied())
                    .max();
                let want = max.and_then(|m| {
                    model.batches.iter().find_map(|b| {
                        let i = b.timestamps.iter().position(|&t| t == m)?;
                        Some((m, b.base + i as u64))
                    })
                });
                prop_assert_eq!(l.max_timestamp().unwrap(), want);
            }
            Op::Epochs {
                epoch_probe,
                offset_probe,
            } => {
                let entries = model.epoch_entries();
                let got: Vec<(i32, u64)> = l
                    .epoch_entries()
                    .iter()
                    .map(|e| (e.epoch, e.start_offset))
                    .collect();
                prop_assert_eq!(&got, &entries);
                let offset = model.pick(offset_probe);
                let want_term = model.batch_holding(offset).map(|i| model.batches[i].epoch);
                prop_assert_eq!(l.term_at(offset), want_term);
                let epoch = i32::from(epoch_probe) % (model.epoch + 2);
                let want = entries.iter().rposition(|&(e, _)| e <= epoch).map(|i| {
                    let end = entries.get(i + 1).map_or(model.end(), |&(_, s)| s);
                    (entries[i].0, end)
                });
                prop_assert_eq!(l.end_offset_for_epoch(epoch), want);
            }
            Op::Reopen { clean } => {
                let l = log.take().unwrap();
                if clean {
                    l.close().unwrap();
                } else {
                    let mut l = l;
                    l.flush().unwrap();
                    drop(l);
                }
                let reopened = PartitionLog::open(dir.path(), config()).unwrap();
                check_whole_log(&reopened, &model)?;
                log = Some(reopened);
            }
        }
        let l = log.as_ref().unwrap();
        prop_assert_eq!(l.log_start_offset(), model.log_start, "after step {}", step);
        prop_assert_eq!(l.log_end_offset(), model.end(), "after step {}", step);
        prop_assert_eq!(l.size_bytes(), model.size(), "after step {}", step);
        if step % 64 == 63 {
            check_whole_log(l, &model)?;
        }
    }
    let l = log.as_ref().unwrap();
    check_whole_log(l, &model)?;
    // Everything the log hands out is valid batches.
    if model.end() > model.log_start {
        let all = l.read(model.log_start, usize::MAX, u64::MAX).unwrap();
        prop_assert!(!headers(&all).is_empty());
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("RILL_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_in_memory_model(ops in prop::collection::vec(op_strategy(), OPS_PER_CASE)) {
        run(ops)?;
    }
}
