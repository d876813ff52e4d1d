//! Log compaction against a model: random keyed writes and tombstones over many small
//! segments, cleaned in passes (a small key-map budget forces several), must leave
//! exactly the last record of every key at its original offset, keyless records, and
//! tombstones until `delete_retention_ms` after their first cleaning; batch boundaries
//! and epochs never change; a crash at every step of the swap recovers to the old or the
//! new segments; readers during cleaning see a consistent log.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use rill_storage::batch::{self, RecordSpec};
use rill_storage::{CleanOptions, LogConfig, PartitionLog, SwapStep};

/// One record as read back: offset → (key, value).
type Content = BTreeMap<u64, (Option<Vec<u8>>, Option<Vec<u8>>)>;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 128,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// A write: key (None = keyless), tombstone or not.
#[derive(Debug, Clone, Copy)]
struct Op {
    key: Option<u8>,
    tombstone: bool,
}

fn ops() -> impl Strategy<Value = Vec<Vec<Op>>> {
    let op = (
        prop::option::weighted(0.9, 0u8..12),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(key, tombstone)| Op {
            key,
            tombstone: tombstone && key.is_some(),
        });
    prop::collection::vec(prop::collection::vec(op, 1..5), 20..120)
}

/// Appends each group of ops as one batch; values name their offset.
fn write(log: &mut PartitionLog, batches: &[Vec<Op>], epoch: i32, written: &mut Content) {
    for ops in batches {
        let base = log.log_end_offset();
        let keys: Vec<Option<Vec<u8>>> = ops
            .iter()
            .map(|o| o.key.map(|k| format!("key-{k}").into_bytes()))
            .collect();
        let values: Vec<Option<Vec<u8>>> = ops
            .iter()
            .enumerate()
            .map(|(i, o)| {
                (!o.tombstone).then(|| format!("value-at-{}", base + i as u64).into_bytes())
            })
            .collect();
        let specs: Vec<RecordSpec<'_>> = (0..ops.len())
            .map(|i| RecordSpec {
                timestamp_ms: 1_000 + (base + i as u64) as i64,
                key: keys[i].as_deref(),
                value: values[i].as_deref(),
            })
            .collect();
        let mut bytes = Vec::new();
        batch::encode_uncompressed(&mut bytes, 0, -1, &specs);
        log.append_as_leader(&bytes, epoch).unwrap();
        for i in 0..ops.len() {
            written.insert(base + i as u64, (keys[i].clone(), values[i].clone()));
        }
    }
}

/// Every record and every batch's (base, last) offsets, read from offset 0.
fn read_all(log: &PartitionLog) -> (Content, Vec<(u64, u64)>) {
    let mut content = Content::new();
    let mut batches = Vec::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let bytes = log.read(offset, 1 << 20, end).unwrap();
        assert!(
            !bytes.is_empty(),
            "no batch at {offset} below the end {end}"
        );
        let mut pos = 0;
        while pos < bytes.len() {
            let b = batch::parse_and_verify(&bytes[pos..]).expect("a valid batch with a good CRC");
            assert_eq!(b.base_offset() as u64, offset, "batches stay contiguous");
            batches.push((b.base_offset() as u64, b.last_offset() as u64));
            for r in b.records().unwrap() {
                let r = r.unwrap();
                let at = r.offset as u64;
                assert!(at >= offset && at <= b.last_offset() as u64);
                content.insert(at, (r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec)));
            }
            offset = b.last_offset() as u64 + 1;
            pos += b.size_bytes();
        }
    }
    (content, batches)
}

fn options(
    now_ms: i64,
    delete_retention_ms: i64,
    dedupe_buffer_bytes: usize,
    log: &PartitionLog,
) -> CleanOptions {
    CleanOptions {
        cleanable_below_offset: log.log_end_offset(),
        now_ms,
        min_compaction_lag_ms: 0,
        delete_retention_ms,
        dedupe_buffer_bytes,
    }
}

/// Cleans until nothing dirty is left; returns the passes run.
fn clean_fully(log: &mut PartitionLog, opts: impl Fn(&PartitionLog) -> CleanOptions) -> usize {
    let mut passes = 0;
    while let Some(job) = log.prepare_clean(opts(log)).unwrap() {
        let done = job.run(&mut |_| {}).unwrap();
        let outcome = log.complete_clean(done).unwrap();
        assert!(outcome.swapped);
        passes += 1;
        assert!(passes < 1000, "cleaning does not converge");
    }
    passes
}

/// What the log must hold after cleaning everything below `cleaned`: records at or above
/// `cleaned` unchanged; below it keyless records, and each key's last record below
/// `cleaned` unless it is a tombstone first cleaned below `tombstones_expired_below`.
fn expected(written: &Content, cleaned: u64, tombstones_expired_below: u64) -> Content {
    let mut last: HashMap<&[u8], u64> = HashMap::new();
    for (&offset, (key, _)) in written.range(..cleaned) {
        if let Some(k) = key {
            last.insert(k, offset);
        }
    }
    written
        .iter()
        .filter(|(&offset, (key, value))| {
            if offset >= cleaned {
                return true;
            }
            match key {
                None => true,
                Some(k) => {
                    last[k.as_slice()] == offset
                        && (value.is_some() || offset >= tombstones_expired_below)
                }
            }
        })
        .map(|(&o, r)| (o, r.clone()))
        .collect()
}

fn closed_end(log: &PartitionLog) -> u64 {
    *log.segment_base_offsets().last().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn cleaning_keeps_the_last_record_per_key_at_its_offset(
        first in ops(),
        second in ops(),
        small_map in any::<bool>(),
        disjoint_keys in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), config()).unwrap();
        let mut written = Content::new();
        write(&mut log, &first, 1, &mut written);
        log.flush().unwrap();
        let (_, batches_before) = read_all(&log);
        // A tiny map (about two batches' keys) forces one pass per batch or two.
        let budget = if small_map { 400 } else { 1 << 20 };
        let passes = clean_fully(&mut log, |l| options(10_000, 5_000, budget, l));
        let cleaned_1 = closed_end(&log);
        prop_assert_eq!(log.cleaned_offset(), cleaned_1);
        let (content, batches) = read_all(&log);
        // First cleaning: tombstones stay (delete retention counts from it).
        prop_assert_eq!(&content, &expected(&written, cleaned_1, 0));
        prop_assert_eq!(&batches, &batches_before, "batch boundaries never change");
        if small_map && cleaned_1 > 0 { prop_assert!(passes >= 1); }

        // More writes (a new epoch) and a second cleaning, delete retention 5 s, 10 s later: the
        // tombstones cleaned by the first pass go, the newly cleaned ones stay.
        // Half the time the second round writes other keys, so the first round's
        // tombstones stay the last records of their keys (in the clean section).
        let second: Vec<Vec<Op>> = if disjoint_keys {
            second.iter().map(|b| b.iter().map(|o| Op { key: o.key.map(|k| k + 100), ..*o }).collect()).collect()
        } else {
            second
        };
        write(&mut log, &second, 2, &mut written);
        log.flush().unwrap();
        clean_fully(&mut log, |l| options(20_000, 5_000, budget, l));
        let cleaned_2 = closed_end(&log);
        let (content, _) = read_all(&log);
        prop_assert_eq!(&content, &expected(&written, cleaned_2, cleaned_1));
        let epochs = log.epoch_entries().to_vec();

        // The cleaned log reopens to the same content, batches and epochs.
        log.close().unwrap();
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        let (reopened, _) = read_all(&log);
        prop_assert_eq!(&reopened, &content);
        prop_assert_eq!(log.epoch_entries(), &epochs[..]);
    }
}

fn sample_log(dir: &Path) -> (PartitionLog, Content) {
    let mut log = PartitionLog::open(dir, config()).unwrap();
    let mut written = Content::new();
    let batches: Vec<Vec<Op>> = (0..200u32)
        .map(|i| {
            vec![Op {
                key: (i % 7 != 0).then_some((i % 5) as u8),
                tombstone: i % 11 == 3,
            }]
        })
        .collect();
    write(&mut log, &batches, 1, &mut written);
    log.flush().unwrap();
    (log, written)
}

fn files_with_suffix(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(suffix)
        })
        .count()
}

#[test]
fn a_crash_at_any_step_of_the_swap_recovers_the_old_or_the_new_segments() {
    for stop in [
        None,
        Some(SwapStep::Committed),
        Some(SwapStep::OldDeleted),
        Some(SwapStep::Renamed),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, written) = sample_log(dir.path());
        let (before, _) = read_all(&log);
        let cleaned = closed_end(&log);
        let after = expected(&written, cleaned, 0);
        assert_ne!(before, after, "the sample must have something to clean");
        let job = log
            .prepare_clean(options(10_000, 1_000, 1 << 20, &log))
            .unwrap()
            .unwrap();
        let done = job.run(&mut |_| {}).unwrap();
        match stop {
            // Crash after the cleaned files were written, before the commit rename.
            None => drop(done),
            Some(step) => {
                log.complete_clean_until(done, step).unwrap();
            }
        }
        drop(log); // the crash: nothing more runs
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        let (content, _) = read_all(&log);
        let want = if stop.is_none() { &before } else { &after };
        assert_eq!(&content, want, "after a crash at {stop:?}");
        assert_eq!(files_with_suffix(dir.path(), ".cleaned"), 0);
        assert_eq!(files_with_suffix(dir.path(), ".swapped"), 0);
        println!(
            "crash at {stop:?}: recovered {} records (before {}, after {})",
            content.len(),
            before.len(),
            after.len()
        );
    }
}

#[test]
fn readers_during_cleaning_see_a_consistent_log_and_keep_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (log, written) = sample_log(dir.path());
    // A slice taken before cleaning stays intact after the swap.
    let held = log.read(0, 1 << 20, log.log_end_offset()).unwrap();
    let held_copy = held.to_vec();
    let log = Arc::new(Mutex::new(log));
    let written = Arc::new(written);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (log, written, stop) = (log.clone(), written.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
                let guard = log.lock().unwrap();
                let (content, _) = read_all(&guard);
                drop(guard);
                // Records only ever disappear; what is there is what was written there.
                for (offset, record) in &content {
                    if let Some(w) = written.get(offset) {
                        assert_eq!(w, record, "offset {offset} changed");
                    }
                }
                reads += 1;
            }
            reads
        })
    };
    let mut extra = Content::new();
    for round in 0..20 {
        {
            let mut guard = log.lock().unwrap();
            let batches: Vec<Vec<Op>> = (0..10)
                .map(|i| {
                    vec![Op {
                        key: Some((i % 5) as u8),
                        tombstone: false,
                    }]
                })
                .collect();
            write(&mut guard, &batches, 1, &mut extra);
            guard.flush().unwrap();
        }
        let job = {
            let guard = log.lock().unwrap();
            guard
                .prepare_clean(options(10_000 + round, 0, 1 << 20, &guard))
                .unwrap()
        };
        if let Some(job) = job {
            // The slow part runs without the lock, as the broker's cleaner does.
            let done = job.run(&mut |_| {}).unwrap();
            log.lock().unwrap().complete_clean(done).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let reads = reader.join().unwrap();
    assert_eq!(
        held.as_ref(),
        &held_copy[..],
        "a slice held across the swap changed"
    );
    let guard = log.lock().unwrap();
    let (content, _) = read_all(&guard);
    let mut all = (*written).clone();
    all.extend(extra);
    assert_eq!(content, expected(&all, closed_end(&guard), u64::MAX));
    println!("{reads} consistent full reads during 20 cleaning passes");
}
