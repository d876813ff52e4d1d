//! Power loss: `rilld` runs on `rill-lossyfs`, which forgets everything not fsynced
//! when it "crashes". Round after round, acks=-1 producers write to several partitions
//! across segment rolls, the broker is SIGKILLed mid-flight, the file system loses
//! its unsynced state, and the restarted broker must hold every acknowledged record at
//! its acknowledged offset, with no offset holding two records.
//!
//! A SIGKILL alone cannot catch a missing fsync (the page cache survives the process);
//! this can. `RILL_POWER_LOSS_ROUNDS=N` runs more rounds (default 20);
//! `RILL_POWER_LOSS_DURABILITY=interval` runs the broker with `--durability interval`
//! and reports what it loses instead of failing on it.

mod lossy_common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use lossy_common::{metadata_error, read_all, try_produce, Acked, Disk, CREATE_TOPICS_V};
use rill_lossyfs::MountOptions;
use rill_tests::raw::requests::create_topic;
use rill_tests::raw::RawConn;
use rill_tests::RilldProcess;

const TOPIC: &str = "power-loss";
const PARTITIONS: i32 = 4;
/// The smallest the broker accepts (1 MiB), so the run rolls segments (a batch is
/// about 8 KiB).
const SEGMENT_BYTES: &str = "1048576";
const ROUNDS_DEFAULT: u32 = 20;
/// How long producers run before the broker is killed under them.
const PRODUCE_MS: u64 = 500;
const RECORDS_PER_BATCH: usize = 4;
const VALUE_BYTES: usize = 2000;

/// What a check of the restarted broker found against what it had acknowledged.
#[derive(Debug, Default)]
struct Losses {
    /// Acknowledged records past the end of their partition.
    missing: u64,
    /// Acknowledged offsets that now hold another record.
    replaced: u64,
}

/// Reads every partition back and compares with `acked`. Panics on what no
/// durability mode allows (offsets out of order, a value twice).
fn check(conn: &mut RawConn, acked: &Acked) -> Losses {
    let mut losses = Losses::default();
    for (partition, acked) in acked.iter().enumerate() {
        let log = read_all(conn, TOPIC, partition as i32);
        for pair in log.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "partition {partition}: offsets not strictly increasing: {} then {}",
                pair[0].0,
                pair[1].0
            );
        }
        let mut seen = HashSet::new();
        for (offset, value) in &log {
            assert!(
                seen.insert(value.as_slice()),
                "partition {partition}: record {:?} appears twice (again at offset {offset})",
                String::from_utf8_lossy(&value[..20.min(value.len())])
            );
        }
        let by_offset: BTreeMap<i64, &Vec<u8>> = log.iter().map(|(o, v)| (*o, v)).collect();
        for (offset, value) in acked {
            match by_offset.get(offset) {
                Some(v) if *v == value => {}
                Some(_) => losses.replaced += 1,
                None => losses.missing += 1,
            }
        }
    }
    losses
}

fn value(round: u32, partition: i32, batch: u64, record: usize) -> Vec<u8> {
    let mut v = format!("round{round}-p{partition}-b{batch}-r{record}-").into_bytes();
    v.resize(VALUE_BYTES, b'x');
    v
}

/// (offset, value) pairs of one partition.
type Records = Vec<(i64, Vec<u8>)>;

/// What one round acknowledged, per partition, and the error codes answered.
struct Produced {
    acked: Vec<Records>,
    errors: Vec<i16>,
    /// Partition writes the broker made durable through its shared journal (one
    /// fdatasync for several partitions) rather than in place, just before the kill.
    journal_writes: u64,
}

/// One producer per partition on its own connection, acks=-1, until the broker dies
/// under it.
fn produce_until_killed(broker: &mut RilldProcess, round: u32) -> Produced {
    let addr = broker.addr();
    let producers: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(addr);
                let mut acked = Vec::new();
                let mut errors = Vec::new();
                for batch in 0u64.. {
                    let values: Vec<Vec<u8>> = (0..RECORDS_PER_BATCH)
                        .map(|r| value(round, partition, batch, r))
                        .collect();
                    match try_produce(&mut conn, TOPIC, partition, &values, -1) {
                        None => break,
                        Some((base, 0)) => {
                            for (i, v) in values.into_iter().enumerate() {
                                acked.push((base + i as i64, v));
                            }
                        }
                        Some((_, code)) => {
                            errors.push(code);
                            break;
                        }
                    }
                }
                (acked, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(PRODUCE_MS));
    let journal_writes = broker.metric("rill_journal_partition_writes_total");
    broker.kill();
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for p in producers {
        let (a, e) = p.join().expect("producer thread");
        acked.push(a);
        errors.extend(e);
    }
    Produced {
        acked,
        errors,
        journal_writes,
    }
}

#[test]
fn acknowledged_records_survive_power_loss_at_their_offsets() {
    let rounds: u32 = std::env::var("RILL_POWER_LOSS_ROUNDS")
        .ok()
        .map(|r| r.parse().expect("RILL_POWER_LOSS_ROUNDS is a number"))
        .unwrap_or(ROUNDS_DEFAULT);
    let durability =
        std::env::var("RILL_POWER_LOSS_DURABILITY").unwrap_or_else(|_| "fsync".to_string());
    let strict = durability == "fsync";
    let started = Instant::now();

    let Some(mut disk) = Disk::mount("power_loss", MountOptions::default()) else {
        return;
    };
    let mut broker = RilldProcess::start_with_data_dir(disk.path(), &["--durability", &durability]);
    {
        let mut conn = RawConn::connect(broker.addr());
        let response = conn.call(
            CREATE_TOPICS_V,
            &create_topic(TOPIC, PARTITIONS, &[("segment.bytes", SEGMENT_BYTES)]),
        );
        assert_eq!(
            response.topics[0].error_code, 0,
            "{:?}",
            response.topics[0].error_message
        );
    }

    let mut acked: Acked = vec![BTreeMap::new(); PARTITIONS as usize];
    let mut total = Losses::default();
    let mut bytes_dropped = 0;
    let mut undone = 0;
    let mut acked_records = 0u64;
    let mut journal_writes = 0u64;
    for round in 0..rounds {
        let Produced {
            acked: new,
            errors,
            journal_writes: journalled,
        } = produce_until_killed(&mut broker, round);
        journal_writes += journalled;
        assert!(
            errors.is_empty(),
            "round {round}: produce answered errors {errors:?}\n{}",
            broker.log()
        );
        for (partition, records) in new.into_iter().enumerate() {
            acked_records += records.len() as u64;
            acked[partition].extend(records);
        }
        let fsyncs = disk.controls().fsyncs();
        let report = disk.power_cycle();
        bytes_dropped += report.bytes_dropped;
        undone += report.namespace_ops_undone;
        if strict {
            assert!(fsyncs > 0, "round {round}: the broker never fsynced");
        }

        broker.restart();
        let mut conn = RawConn::connect(broker.addr());
        assert_eq!(
            metadata_error(&mut conn, TOPIC),
            0,
            "round {round}: the topic is gone after a power loss (backing dir: {:?})\n{}",
            list_backing(disk.backing()),
            broker.log()
        );
        let losses = check(&mut conn, &acked);
        if strict {
            assert!(
                losses.missing == 0 && losses.replaced == 0,
                "round {round}: after a power loss {} acknowledged records are missing and {} \
                 acknowledged offsets hold another record (crash dropped {} bytes, undid {} \
                 namespace changes)\n{}",
                losses.missing,
                losses.replaced,
                report.bytes_dropped,
                report.namespace_ops_undone,
                broker.log()
            );
        } else if losses.missing + losses.replaced > 0 {
            // What is gone now is forgotten, so later rounds count only new losses.
            total.missing += losses.missing;
            total.replaced += losses.replaced;
            let log: Vec<BTreeMap<i64, Vec<u8>>> = (0..PARTITIONS)
                .map(|p| read_all(&mut conn, TOPIC, p).into_iter().collect())
                .collect();
            for (partition, acked) in acked.iter_mut().enumerate() {
                acked.retain(|o, v| log[partition].get(o) == Some(v));
            }
        }
    }
    broker.kill();
    // Segments that made it to the backing directory, per partition: the run must have
    // produced across rolls for the check to cover them.
    let segments: Vec<usize> = (0..PARTITIONS)
        .map(|p| {
            std::fs::read_dir(disk.backing().join(format!("{TOPIC}-{p}")))
                .expect("partition dir in the backing dir")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
                })
                .count()
        })
        .collect();
    println!("segments per partition: {segments:?}");
    if strict && rounds >= ROUNDS_DEFAULT {
        assert!(
            segments.iter().all(|&n| n >= 2),
            "no segment roll in {rounds} rounds: {segments:?}"
        );
        // Both ways to durability must have been crossed by the power losses.
        assert!(journal_writes > 0, "the journal never made a write durable");
    }
    println!(
        "power loss, durability={durability}: {rounds} rounds, {acked_records} records \
         acknowledged, {} lost ({} missing, {} offsets reused), crashes dropped {bytes_dropped} \
         unsynced bytes and undid {undone} namespace changes, {journal_writes} partition \
         writes made durable through the journal, {:.1} s",
        total.missing + total.replaced,
        total.missing,
        total.replaced,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_topic_created_before_a_power_loss_survives_it() {
    let Some(mut disk) = Disk::mount("topic_survives_power_loss", MountOptions::default()) else {
        return;
    };
    let mut broker = RilldProcess::start_with_data_dir(disk.path(), &[]);
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(CREATE_TOPICS_V, &create_topic("kept", 2, &[]));
    assert_eq!(response.topics[0].error_code, 0);
    let (base, code) = try_produce(&mut conn, "kept", 1, &[b"acked".to_vec()], -1).expect("answer");
    assert_eq!(code, 0);
    broker.kill();
    let report = disk.power_cycle();
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    assert_eq!(
        metadata_error(&mut conn, "kept"),
        0,
        "a topic whose creation was answered is gone after a power loss (the crash undid \
         {} namespace changes; backing dir now: {:?})",
        report.namespace_ops_undone,
        list_backing(disk.backing())
    );
    assert_eq!(
        read_all(&mut conn, "kept", 1),
        vec![(base, b"acked".to_vec())]
    );
}

/// Every path under `dir` with its size, for failure messages.
fn list_backing(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(e.path());
            }
            let rel = e
                .path()
                .strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string();
            out.push((rel, meta.len()));
        }
    }
    out.sort();
    out
}

/// Topic of the deferred-sync test: one partition, 1 MiB segments.
const DEFERRED_TOPIC: &str = "deferred-sync";
/// Records per idempotent batch and their size there: a batch is about 8 KiB, so
/// about 128 batches fill a segment.
const DEFERRED_RECORDS: i32 = 4;
const DEFERRED_VALUE_BYTES: usize = 2000;

/// One idempotent batch of producer `id` (epoch 0) with sequences `seq..seq + 4`.
fn idempotent_batch(id: i64, seq: i32) -> bytes::Bytes {
    use kafka_protocol::records::{Record, TimestampType};
    let records: Vec<Record> = (0..DEFERRED_RECORDS)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            sequence: seq + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(bytes::Bytes::from(deferred_value(seq + i))),
            headers: Default::default(),
        })
        .collect();
    rill_tests::raw::encode_batch(&records)
}

/// The value of the record with sequence `seq`: its size and content follow from it.
fn deferred_value(seq: i32) -> Vec<u8> {
    let mut v = format!("seq-{seq}-").into_bytes();
    v.resize(DEFERRED_VALUE_BYTES, b'a' + (seq % 26) as u8);
    v
}

/// Produces the idempotent batch at `seq` (acks=all): (error code, base offset).
fn produce_idempotent(conn: &mut RawConn, id: i64, seq: i32) -> (i16, i64) {
    use kafka_protocol::messages::ProduceRequest;
    let request =
        rill_tests::raw::requests::produce(DEFERRED_TOPIC, 0, idempotent_batch(id, seq), -1);
    let response = conn.call::<ProduceRequest>(9, &request);
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Segment base offsets of the test partition's files in `dir`.
fn segment_bases(dir: &std::path::Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut bases: Vec<u64> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// The deferred half of a roll's sync (the closed segment's trim and index syncs, the
/// recovery-point checkpoint, the producer-state snapshot) runs after the acks of the
/// records it covers, on a thread of its own. Held back here (a debug delay) so the
/// power is cut with all of it pending right after a roll: the restarted broker must
/// hold every acknowledged record at its offset, rebuild the closed segment's index
/// from the log, replay the producer state forward from the older snapshot, and
/// answer a retried batch as a duplicate.
#[test]
fn a_power_loss_before_a_rolls_deferred_syncs_loses_no_ack_and_no_dedupe() {
    let started = Instant::now();
    let Some(mut disk) = Disk::mount("deferred_sync", MountOptions::default()) else {
        return;
    };
    let mut broker = RilldProcess::start_with_data_dir(disk.path(), &[]);
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(
        CREATE_TOPICS_V,
        &create_topic(DEFERRED_TOPIC, 1, &[("segment.bytes", SEGMENT_BYTES)]),
    );
    assert_eq!(response.topics[0].error_code, 0);
    let init = conn.call(
        4,
        &kafka_protocol::messages::InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(kafka_protocol::messages::ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    let id = init.producer_id.0;
    let backing_dir = disk.backing().join(format!("{DEFERRED_TOPIC}-0"));
    let snapshot_path = backing_dir.join("producer-state.snapshot");

    // Phase 1, deferred work on time: past one roll, until the producer snapshot the
    // roll made due is on the disk.
    let mut acked: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    let mut seq = 0i32;
    let mut batches = Vec::new(); // (first sequence, base offset)
    let mut produce_one =
        |conn: &mut RawConn, seq: &mut i32, acked: &mut BTreeMap<i64, Vec<u8>>| {
            let (code, base) = produce_idempotent(conn, id, *seq);
            assert_eq!(code, 0, "produce of sequence {seq} failed");
            for i in 0..DEFERRED_RECORDS {
                acked.insert(base + i64::from(i), deferred_value(*seq + i));
            }
            batches.push((*seq, base));
            *seq += DEFERRED_RECORDS;
        };
    while segment_bases(&backing_dir).len() < 2 || !snapshot_path.exists() {
        produce_one(&mut conn, &mut seq, &mut acked);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no roll and producer snapshot after {} records",
            acked.len()
        );
    }
    let first_roll_at = segment_bases(&backing_dir)[1];
    broker.kill();

    // Phase 2, deferred work held back: past a second roll, then the power goes.
    broker.restart_with(&["--debug-deferred-sync-delay-ms", "600000"]);
    let mut conn = RawConn::connect(broker.addr());
    let end_before_roll = loop {
        produce_one(&mut conn, &mut seq, &mut acked);
        let bases = segment_bases(&backing_dir);
        if bases.len() >= 3 {
            break bases[2];
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no second roll after {} records",
            acked.len()
        );
    };
    // A few more acknowledged batches in the new segment.
    for _ in 0..5 {
        produce_one(&mut conn, &mut seq, &mut acked);
    }
    let closed_index = backing_dir.join(format!("{first_roll_at:020}.index"));
    let durable_index_bytes = std::fs::metadata(&closed_index).map_or(0, |m| m.len());
    broker.kill();
    let report = disk.power_cycle();
    println!(
        "deferred sync: first roll at {first_roll_at}, second at {end_before_roll}, {} records \
         acked; the closed segment's index had {durable_index_bytes} durable bytes; the crash \
         dropped {} bytes and undid {} namespace changes",
        acked.len(),
        report.bytes_dropped,
        report.namespace_ops_undone
    );
    assert_eq!(
        durable_index_bytes, 0,
        "the deferred index sync of the second roll ran before the power loss: the test \
         did not hold it back"
    );

    broker.restart_with(&[]);
    let mut conn = RawConn::connect(broker.addr());
    let log: BTreeMap<i64, Vec<u8>> = read_all(&mut conn, DEFERRED_TOPIC, 0).into_iter().collect();
    let missing: Vec<i64> = acked
        .iter()
        .filter(|(o, v)| log.get(o) != Some(v))
        .map(|(o, _)| *o)
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged records missing or changed after the power loss, first: {missing:?}\n{}",
        broker.log()
    );
    assert!(
        broker
            .log()
            .contains("producer state rebuilt from a snapshot and the log after it"),
        "the producer state was not replayed forward from the older snapshot\n{}",
        broker.log()
    );
    let log_end = log.keys().next_back().map_or(0, |o| o + 1);
    // Retries of the last batches are duplicates: answered with their offsets.
    for &(first_seq, base) in batches.iter().rev().take(5) {
        let (code, retried_base) = produce_idempotent(&mut conn, id, first_seq);
        assert_eq!(
            (code, retried_base),
            (0, base),
            "a retry of sequence {first_seq} was not answered as the duplicate at {base}"
        );
    }
    // The next sequence appends at the end (past the new leader's control batch).
    let (code, next_base) = produce_idempotent(&mut conn, id, seq);
    assert_eq!(code, 0, "the next sequence was refused");
    assert!(
        next_base >= log_end,
        "the next sequence went to {next_base}, below the end {log_end}"
    );
    let after = read_all(&mut conn, DEFERRED_TOPIC, 0);
    assert_eq!(
        after.len(),
        acked.len() + DEFERRED_RECORDS as usize,
        "the retries appended records"
    );
    broker.kill();
    println!(
        "deferred sync power loss test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
