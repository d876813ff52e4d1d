//! Replication while the leader syncs (Raft §10.2.1), with real processes: a
//! partition leader proposes and sends to its followers the appends that arrive while
//! its own `Ready` is being fsynced, and counts them towards a commit only once its
//! next sync has made them durable (`Raft::advance` marks durable only what the
//! outstanding `Ready` held).
//!
//! Three brokers run on `rill-lossyfs` mounts (unsynced writes are lost in a crash),
//! with the test-only fault `RILL_TEST_SYNC_TO_ADVANCE_DELAY_MS`: a leader's persist
//! rounds wait before and after their syncs, which widens the window of appends
//! replicated but not covered by the leader's sync. One follower is frozen (SIGSTOP) so
//! that every commit needs the leader's own durability plus the other follower's.
//! Under a concurrent acks=all load the leader's
//! `rill_appends_replicated_during_sync_total` shows the overlap happening. Then the
//! leader is SIGKILLed (timed by its disk's fsync counter into a round's wait before
//! its syncs, when such appends may already be acknowledged) and its disk loses what
//! it had not synced; the follower that took part in the commits is frozen, the other
//! thaws and the old leader restarts: the two of them elect a leader from their own
//! logs. If the leader had counted an
//! entry as durable before its sync, an acknowledged write would exist only on the
//! frozen follower, and the new leader would reuse its offset; the history checker
//! must find every acknowledged write at its offset.
//!
//! Counting the whole log as durable in `advance` fails it in most runs (acknowledged
//! records lost, their offsets reused by the new term; see [`ROUNDS_DEFAULT`]).
//! `RILL_SYNC_OVERLAP_ROUNDS=N` repeats the kill N times (default 3).

mod cluster_common;
mod lossy_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_common::*;
use lossy_common::read_all;
use lossy_common::Disk;
use rill_client::{Producer, ProducerConfig, ProducerRecord};
use rill_lossyfs::MountOptions;
use rill_tests::history::{Duplicates, History};
use rill_tests::raw::RawConn;

/// Rounds by default: with `advance` counting the whole log as durable, a round
/// loses acknowledged records about one time in three (3 of 5 two-round runs failed),
/// so 3 rounds catch it about three times in four, in about 30 s.
const ROUNDS_DEFAULT: u32 = 3;
/// Concurrent producers (each with its own connection), so that produces reach the
/// leader while its `Ready` is being synced.
const WRITERS: usize = 4;
/// Each producer sends one record per this interval, and its batches (one per
/// `linger_ms`) go out without waiting for earlier ones (many in flight): produces
/// reach the leader all through its persist rounds. Writers that send when
/// acknowledgements arrive would send only right after the leader's `advance`, and
/// the round's syncs would cover their appends.
const SEND_INTERVAL: Duration = Duration::from_millis(1);
/// Batches in flight per producer (idempotence off, which allows more than 5).
const IN_FLIGHT_BATCHES: usize = 64;
/// How long the load runs before the leader is killed under it.
const LOAD_MS: u64 = 2_500;
/// The brokers' test-only fault `RILL_TEST_SYNC_TO_ADVANCE_DELAY_MS`
/// (`broker/src/replica/engine.rs`): each persist round of a leader waits this long
/// between its syncs and its `advance`. Appends written and replicated meanwhile are
/// not covered by the round's syncs: a wide window in which the leader must not count
/// them as durable. (A slow fsync on lossyfs would not do: FUSE holds the file's
/// inode lock for the whole fsync, so no append is written during one.)
const SYNC_TO_ADVANCE_DELAY_MS: &str = "20";
/// Records produced (acks=all) after the restart, so the new leader's term commits
/// entries at the offsets the old one had acknowledged.
const AFTER_RECORDS: usize = 20;
/// Longest wait for a leader or for acknowledgements after a restart (elections take
/// 1-2 s; a restarted broker replays its logs and the metadata log first).
const RECOVERY_WAIT_MAX: Duration = Duration::from_secs(60);

/// The history shared by the producer tasks (locked only between awaits).
type Shared = Arc<Mutex<History>>;

fn lock(history: &Shared) -> std::sync::MutexGuard<'_, History> {
    history.lock().unwrap_or_else(|p| p.into_inner())
}

/// acks=all sends to partition 0, one per [`SEND_INTERVAL`], until aborted; every
/// value is recorded as attempted before it is sent, and as acknowledged (or failed)
/// by a task of its own when its outcome arrives. Values whose outcome never arrives
/// stay indeterminate.
async fn produce_until_aborted(producer: Producer, round: u32, writer: usize, history: Shared) {
    let mut pace = tokio::time::interval(SEND_INTERVAL);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        pace.tick().await;
        let value = Bytes::from(format!("round{round}-w{writer}-{n}"));
        lock(&history).record_attempt(value.clone());
        let record = ProducerRecord::new(TOPIC, value.clone()).with_partition(0);
        match producer.send(record).await {
            Ok(delivery) => {
                let history = Arc::clone(&history);
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(meta) => lock(&history).record_ack(meta.partition, meta.offset, value),
                        Err(_) => lock(&history).record_failure(value),
                    }
                });
            }
            Err(_) => lock(&history).record_failure(value),
        }
    }
}

/// Quiet time after which a burst of fsyncs (one round's syncs) counts as over.
const SYNC_BURST_QUIET: Duration = Duration::from_millis(4);

/// Returns once the disk's last round of fsyncs is over and about 1.5 times the
/// leader-round delay has passed since: past that round's `advance` (one delay after
/// its syncs), within the next round's wait before its syncs. Returns how long after
/// the syncs that was (the kill's phase, for the printout).
fn kill_into_the_wait_before_a_sync(disk: &Disk) -> Duration {
    let controls = disk.controls();
    let delay_ms: u64 = SYNC_TO_ADVANCE_DELAY_MS.parse().expect("a number");
    let deadline = Instant::now() + Duration::from_secs(5);
    // A burst starts.
    let mut seen = controls.fsyncs();
    while controls.fsyncs() == seen && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    // And ends.
    seen = controls.fsyncs();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < SYNC_BURST_QUIET && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
        let now = controls.fsyncs();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    let target = Duration::from_millis(delay_ms * 3 / 2);
    let since_syncs = quiet_since.elapsed();
    if let Some(left) = target.checked_sub(since_syncs) {
        std::thread::sleep(left);
    }
    quiet_since.elapsed()
}

/// The leader of partition 0 once every broker of `ids` names the same one (one
/// broker's Metadata may still name a leader that has stepped down), waiting for it.
async fn agreed_leader(cluster: &Cluster, ids: &[i32]) -> i32 {
    let deadline = Instant::now() + RECOVERY_WAIT_MAX;
    loop {
        let mut seen = Vec::new();
        for id in ids {
            seen.push(leader_of(&cluster.broker(*id).bootstrap(), 0).await);
        }
        if let Some(Some(leader)) = seen.first() {
            if seen.iter().all(|s| *s == Some(*leader)) {
                return *leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "brokers {ids:?} do not agree on a leader of partition 0: {seen:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_writes_replicated_while_the_leader_syncs_survive_its_power_loss() {
    let rounds: u32 = env_number("RILL_SYNC_OVERLAP_ROUNDS").unwrap_or(ROUNDS_DEFAULT);
    let started = Instant::now();
    // Declared before the cluster: the brokers are killed before their disks go.
    let mut disks = Vec::new();
    for i in 1..=3 {
        let Some(disk) = Disk::mount(
            &format!("cluster_sync_overlap-{i}"),
            MountOptions::default(),
        ) else {
            return;
        };
        disks.push(disk);
    }
    // Inherited by the brokers this test starts (the only test of this binary).
    std::env::set_var(
        "RILL_TEST_SYNC_TO_ADVANCE_DELAY_MS",
        SYNC_TO_ADVANCE_DELAY_MS,
    );
    let paths: Vec<&std::path::Path> = disks.iter().map(Disk::path).collect();
    let mut cluster = Cluster::start_on(&paths, &[]);
    drop(paths);
    wait_registered(&cluster, 3).await;
    create_replicated_topic(&cluster).await;
    let history: Shared = Arc::new(Mutex::new(History::default()));

    // The highest offset acknowledged after a restart (the last records of the test).
    let mut last_acked_offset = -1;
    for round in 0..rounds {
        let leader = agreed_leader(&cluster, &[1, 2, 3]).await;
        let followers: Vec<i32> = (1..=3).filter(|id| *id != leader).collect();
        // `frozen` sleeps through the load; `partner` is the follower every commit needs.
        let (partner, frozen) = (followers[0], followers[1]);
        signal(cluster.broker(frozen), "-STOP");

        let leader_bootstrap = cluster.broker(leader).bootstrap();
        let overlap_before = cluster
            .broker(leader)
            .metric("rill_appends_replicated_during_sync_total");
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let producer = Producer::new(ProducerConfig {
                    enable_idempotence: false,
                    in_flight_batches_per_partition_max: IN_FLIGHT_BATCHES,
                    ..ProducerConfig::new(&leader_bootstrap)
                })
                .expect("producer");
                tokio::spawn(produce_until_aborted(
                    producer,
                    round,
                    writer,
                    Arc::clone(&history),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(LOAD_MS)).await;
        let overlap = cluster
            .broker(leader)
            .metric("rill_appends_replicated_during_sync_total")
            - overlap_before;
        let acks_all = cluster
            .broker(leader)
            .metric("rill_acks_all_responses_total");
        let flushes = cluster.broker(leader).metric("rill_log_flushes_total");

        // Power loss of the leader mid-load, timed into the wait before a round's syncs
        // (when appends replicated during the previous round's wait after its syncs are
        // acknowledged by a leader that counted them durable too early, and not synced
        // yet); its partner freezes at once, before it can campaign (an election timeout
        // is at least 1 s), holding what it synced.
        let kill_phase = kill_into_the_wait_before_a_sync(&disks[(leader - 1) as usize]);
        cluster.brokers[(leader - 1) as usize].kill();
        signal(cluster.broker(partner), "-STOP");
        for writer in writers {
            writer.abort();
            let _ = writer.await;
        }
        // Outcomes the producers received before the kill reach the history.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let acked_so_far = lock(&history).check(Duplicates::Allowed).acks;
        let dropped = disks[(leader - 1) as usize].power_cycle();
        println!(
            "round {round}: leader {leader}, partner {partner}, frozen {frozen}: \
             {overlap} appends sent to followers while the leader synced \
             (leader totals: {acks_all} acks=all responses, {flushes} sync rounds); \
             {acked_so_far} records acknowledged so far; killed {kill_phase:.1?} after \
             its last syncs; the power loss dropped {} unsynced bytes",
            dropped.bytes_dropped
        );
        assert!(
            overlap > 0,
            "round {round}: no append was replicated while the leader synced\n{}",
            cluster.logs()
        );

        // The old leader and the frozen follower elect a leader without the partner.
        signal(cluster.broker(frozen), "-CONT");
        cluster.brokers[(leader - 1) as usize].restart();
        let survivors = cluster.bootstrap_without(&[partner]);
        let new_leader = agreed_leader(&cluster, &[leader, frozen]).await;
        let producer = Producer::new(ProducerConfig::new(&survivors)).expect("producer");
        let mut after_acked = 0;
        for n in 0..AFTER_RECORDS {
            let value = Bytes::from(format!("round{round}-after-{n}"));
            lock(&history).record_attempt(value.clone());
            let record = ProducerRecord::new(TOPIC, value.clone()).with_partition(0);
            let outcome = match producer.send(record).await {
                Ok(delivery) => tokio::time::timeout(RECOVERY_WAIT_MAX, delivery).await,
                Err(e) => panic!("round {round}: send after the restart: {e}"),
            };
            match outcome {
                Ok(Ok(meta)) => {
                    after_acked += 1;
                    last_acked_offset = last_acked_offset.max(meta.offset);
                    lock(&history).record_ack(meta.partition, meta.offset, value);
                }
                _ => lock(&history).record_failure(value),
            }
        }
        assert!(
            after_acked > 0,
            "round {round}: nothing acknowledged after the restart\n{}",
            cluster.logs()
        );
        println!(
            "round {round}: broker {new_leader} leads after the restart; {after_acked} more \
             records acknowledged"
        );
        // The partner comes back and follows the new leader's log (truncating any
        // suffix the others do not hold).
        signal(cluster.broker(partner), "-CONT");
    }

    // Read partition 0 back from its leader, once that leader's high watermark covers
    // the last acknowledged record (leadership may move as the partner comes back, and
    // a new leader's high watermark catches up only once it commits in its term).
    let deadline = Instant::now() + RECOVERY_WAIT_MAX;
    let records: Vec<(i64, Bytes)> = loop {
        let leader = wait_leader(&cluster, 0).await;
        let mut conn = RawConn::connect(cluster.broker(leader).addr());
        let records = read_all(&mut conn, TOPIC, 0);
        let end = records.last().map_or(-1, |(offset, _)| *offset);
        if end >= last_acked_offset || Instant::now() >= deadline {
            break records
                .into_iter()
                .map(|(o, v)| (o, Bytes::from(v)))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut history = lock(&history).clone();
    history.record_reads(&BTreeMap::from([(0, records)]));
    let report = history.check(Duplicates::Allowed);
    println!(
        "{rounds} rounds in {:.1?}: {} attempted, {} acknowledged, {} read",
        started.elapsed(),
        report.attempts,
        report.acks,
        report.records_read
    );
    assert!(report.is_ok(), "{report}\n{}", cluster.logs());
    kill_all(&mut cluster);
}
