//! The work a flush defers past the acknowledgement (`FlushJob::run_deferring`): a
//! closed segment's trim and index syncs, the recovery point and small files. A power
//! loss may come before that work reached the disk; these tests write what a lost
//! write can leave behind (garbage or missing index files, an untrimmed segment) and
//! check that recovery never trusts it.

mod common;

use std::path::{Path, PathBuf};

use common::{batch_bytes, headers, small_config};
use rill_storage::{atomic_file, PartitionLog, RECOVERY_POINT_FILE};

const SEGMENT_BYTES: u64 = 16 * 1024;

/// Appends ~1 KiB batches of 4 records until the log has rolled once and holds a
/// few batches in the new segment; returns the closed segment's base offset (0) and
/// the new active segment's base offset.
fn append_past_one_roll(log: &mut PartitionLog) -> (u64, u64) {
    loop {
        let b = batch_bytes(0, -1, 4, 200, 1_000);
        log.append_as_leader(&b, 1).unwrap();
        let bases = log_bases(log.dir());
        if bases.len() == 2 && log.log_end_offset() >= bases[1] + 12 {
            return (bases[0], bases[1]);
        }
        assert!(bases.len() < 3, "rolled twice: {bases:?}");
    }
}

fn log_bases(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

fn seg_file(dir: &Path, base: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}{suffix}"))
}

/// The recovery point as the checkpoint file holds it.
fn recovery_point(dir: &Path) -> Option<u64> {
    let text = atomic_file::read_text(dir, RECOVERY_POINT_FILE).unwrap()?;
    text.lines()
        .find_map(|l| l.strip_prefix("recovery_point ")?.parse().ok())
}

/// Rewrites an offset index so every entry but the last points one byte into the
/// batch it names: a well-formed file (ascending, in range, its last entry right)
/// whose lookups land inside batches. Only a scan of the segment can tell.
fn poison_offset_index(path: &Path) {
    let raw = std::fs::read(path).unwrap();
    assert!(
        raw.len() >= 3 * 8,
        "want a few index entries, got {}",
        raw.len() / 8
    );
    let entries: Vec<(u32, u32)> = raw
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_be_bytes(c[0..4].try_into().unwrap()),
                u32::from_be_bytes(c[4..8].try_into().unwrap()),
            )
        })
        .collect();
    let mut out = Vec::with_capacity(raw.len());
    for (i, &(rel, pos)) in entries.iter().enumerate() {
        let pos = if i + 1 < entries.len() { pos + 1 } else { pos };
        out.extend_from_slice(&rel.to_be_bytes());
        out.extend_from_slice(&pos.to_be_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// Every offset reads back from the batch that holds it.
fn assert_every_offset_reads_its_batch(log: &PartitionLog) {
    let end = log.log_end_offset();
    for offset in 0..end {
        let bytes = log.read(offset, 1, end).unwrap();
        let hs = headers(&bytes);
        let first = hs.first().expect("a batch");
        let (base, last) = (first.base_offset() as u64, first.last_offset() as u64);
        assert!(
            base <= offset && offset <= last,
            "offset {offset} read batch {base}..={last}"
        );
    }
}

#[test]
fn power_loss_before_deferred_sync_rebuilds_the_closed_segments_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    let (closed_base, active_base) = append_past_one_roll(&mut log);
    let end = log.log_end_offset();
    let closed_used = std::fs::metadata(seg_file(dir.path(), closed_base, ".index")).is_ok();
    assert!(closed_used, "the roll wrote the closed segment's index");

    let (done, deferred) = log.prepare_flush().run_deferring().unwrap();
    log.complete_flush(done);
    let deferred = deferred.expect("the roll left work to defer");
    assert_eq!(deferred.closed_segments(), 1);
    // Acknowledgeable now; the recovery point has not moved past the closed segment
    // whose index files nobody synced yet.
    assert_eq!(log.flushed_offset(), end);
    let rp = recovery_point(dir.path()).unwrap_or(0);
    println!("recovery point before the deferred sync: {rp} (closed segment at {closed_base}, active at {active_base}, end {end})");
    assert!(
        rp <= closed_base,
        "recovery point {rp} vouches for the closed segment"
    );
    // Power loss: the deferred work never ran; the index writes were lost as garbage.
    drop(deferred);
    drop(log);
    poison_offset_index(&seg_file(dir.path(), closed_base, ".index"));

    let log = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    assert_eq!(log.log_end_offset(), end);
    assert_every_offset_reads_its_batch(&log);
}

#[test]
fn deferred_sync_trims_the_closed_segment_then_moves_the_recovery_point() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    let (closed_base, _) = append_past_one_roll(&mut log);
    let end = log.log_end_offset();
    let closed_path = seg_file(dir.path(), closed_base, ".log");
    let len_at_roll = std::fs::metadata(&closed_path).unwrap().len();

    let (done, deferred) = log.prepare_flush().run_deferring().unwrap();
    log.complete_flush(done);
    let deferred = deferred.expect("deferred work");
    // A full flush meanwhile (interval sync, shutdown) must not move the recovery
    // point past a segment whose index sync is still pending either.
    log.append_as_leader(&batch_bytes(0, -1, 4, 200, 1_000), 1)
        .unwrap();
    log.flush().unwrap();
    let rp = recovery_point(dir.path()).unwrap_or(0);
    assert!(
        rp <= closed_base,
        "a full flush moved the recovery point to {rp}"
    );

    deferred.run().unwrap();
    let len_after = std::fs::metadata(&closed_path).unwrap().len();
    println!(
        "closed segment length at the roll {len_at_roll}, after the deferred sync {len_after}"
    );
    assert!(
        len_after < len_at_roll,
        "the deferred sync trims the closed segment"
    );
    let rp = recovery_point(dir.path()).unwrap();
    assert!(
        rp >= end,
        "recovery point {rp} after the deferred sync (end {end})"
    );
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    assert_every_offset_reads_its_batch(&log);
}

#[test]
fn deferred_writes_of_a_sealed_log_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config(SEGMENT_BYTES)).unwrap();
    let mut late = log.deferred_writes();
    late.write_file("late.snapshot", b"old partition".to_vec());
    let mut early = log.deferred_writes();
    early.write_file("early.snapshot", b"written".to_vec());
    early.run().unwrap();
    log.seal();
    late.run().unwrap();
    assert!(dir.path().join("early.snapshot").exists());
    assert!(
        !dir.path().join("late.snapshot").exists(),
        "a sealed (deleted) partition's deferred write reached its directory"
    );
}
