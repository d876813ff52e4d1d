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
