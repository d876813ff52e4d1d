//! Cleaning throughput of the storage cleaner, printed (never asserted):
//! `cargo run -p rill-storage --release --example clean_throughput [MiB] [keys]`.
//!
//! Writes MiB of uncompressed batches (10 records of 100-byte values each, keys drawn
//! round-robin from `keys` distinct keys) into 8 MiB segments, then times one full
//! cleaning pass (map + rewrite + fsync + swap) and prints MB/s of log read.

use std::time::Instant;

use rill_storage::batch::{self, RecordSpec};
use rill_storage::{CleanOptions, LogConfig, PartitionLog};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(Ok(256), |a| a.parse())?;
    let keys: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        segment_bytes: 8 << 20,
        retention_ms: None,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), config.clone())?;
    let value = [b'v'; 100];
    let mut n = 0u64;
    let mut bytes = Vec::new();
    let write_start = Instant::now();
    while log.size_bytes() < mib << 20 {
        let keys_text: Vec<String> = (0..10).map(|i| format!("key-{}", (n + i) % keys)).collect();
        let specs: Vec<RecordSpec<'_>> = keys_text
            .iter()
            .map(|k| RecordSpec {
                timestamp_ms: 1_700_000_000_000,
                key: Some(k.as_bytes()),
                value: Some(&value),
            })
            .collect();
        bytes.clear();
        batch::encode_uncompressed(&mut bytes, 0, -1, &specs);
        log.append_as_leader(&bytes, 1)?;
        n += 10;
    }
    log.roll()?;
    log.flush()?;
    let size_before = log.size_bytes();
    println!(
        "wrote {n} records, {:.1} MiB in {} segments ({:.1} s)",
        size_before as f64 / (1 << 20) as f64,
        log.segment_count(),
        write_start.elapsed().as_secs_f64()
    );
    let options = CleanOptions {
        cleanable_below_offset: log.log_end_offset(),
        now_ms: 1_800_000_000_000,
        min_compaction_lag_ms: 0,
        delete_retention_ms: 86_400_000,
        dedupe_buffer_bytes: 64 << 20,
    };
    let start = Instant::now();
    let mut passes = 0;
    // What a broker's partition lock would be held for: prepare and complete only.
    let mut locked = std::time::Duration::ZERO;
    loop {
        let t = Instant::now();
        let Some(job) = log.prepare_clean(options)? else {
            break;
        };
        locked += t.elapsed();
        let done = job.run(&mut |_| {})?;
        let t = Instant::now();
        log.complete_clean(done)?;
        let deleted = log.take_deleted_files();
        locked += t.elapsed();
        rill_storage::remove_deleted_files(deleted);
        passes += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "under the log's lock (prepare + swap): {:.1} ms in total",
        locked.as_secs_f64() * 1e3
    );
    println!(
        "cleaned {:.1} MiB -> {:.1} MiB ({} segments) in {passes} pass(es), {seconds:.2} s: {:.0} MB/s of log read",
        size_before as f64 / (1 << 20) as f64,
        log.size_bytes() as f64 / (1 << 20) as f64,
        log.segment_count(),
        size_before as f64 / 1e6 / seconds
    );
    Ok(())
}
