//! Idempotent producers against real `rilld` processes:
//!
//! * the broker's rules over the wire (raw requests): InitProducerId hands out ids that a
//!   restart never hands out again and bumps an id's epoch (KIP-360), refuses a
//!   transactional id; a retried batch is answered with its original offset — also after
//!   the broker was SIGKILLed and restarted, its producer state rebuilt from the log — a
//!   gap is OUT_OF_ORDER_SEQUENCE_NUMBER, an old epoch INVALID_PRODUCER_EPOCH;
//! * librdkafka with `enable.idempotence=true` produces and its records are read back
//!   once each, in order, from idempotent batches;
//! * on three brokers whose partition leaders are SIGKILLed while rill-client's
//!   idempotent producer and librdkafka's write, every acknowledged record is read
//!   exactly once and each producer's records in the order it sent them
//!   (`RILL_IDEMPOTENCE_ROUNDS=N` rounds, default 3).
//!
//! kafka-python's default (idempotent) producer is exercised by `groups_python.rs`.

mod cluster_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_common::*;
use kafka_protocol::messages::{
    CreateTopicsRequest, InitProducerIdRequest, ProduceRequest, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, TimestampType};
use rill_client::{Producer, ProducerConfig};
use rill_tests::history::{Duplicates, History};
use rill_tests::raw::{batch_producer_ids, encode_batch, read_all, requests, RawConn};
use rill_tests::RilldProcess;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

/// InitProducerId v4 (librdkafka's version); `current` names the producer's id and
/// epoch for a KIP-360 bump. Returns (error code, producer id, epoch).
fn init_producer_id(conn: &mut RawConn, current: Option<(i64, i16)>) -> (i16, i64, i16) {
    let (id, epoch) = current.unwrap_or((-1, -1));
    let response = conn.call(
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
    );
    (
        response.error_code,
        response.producer_id.0,
        response.producer_epoch,
    )
}

/// One idempotent batch of `values` from producer `id` at `epoch`, first sequence
/// `first_seq`.
fn idempotent_batch(id: i64, epoch: i16, first_seq: i32, values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: first_seq + i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    encode_batch(&records)
}

/// Produces one batch (acks=all, v9) to `topic`-0: (error code, base offset).
fn produce(conn: &mut RawConn, topic: &str, batch: Bytes) -> (i16, i64) {
    let response = conn.call::<ProduceRequest>(9, &requests::produce(topic, 0, batch, -1));
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn values(conn: &mut RawConn, topic: &str) -> Vec<(i64, String)> {
    read_all(conn, topic, 0)
        .into_iter()
        .map(|(o, v)| (o, String::from_utf8(v).expect("utf-8")))
        .collect()
}

#[test]
fn retries_are_deduplicated_across_a_kill_and_restart_and_ids_are_never_reused() {
    // Snapshots at most once a second, so the restart below finds one that covers the
    // first six batches and scans the log after it for the seventh.
    let mut broker = RilldProcess::start_with(&["--producer-snapshot-interval-ms", "1000"]);
    let topic = "idem-restart";
    let mut conn = RawConn::connect(broker.addr());
    let created = conn.call::<CreateTopicsRequest>(4, &requests::create_topic(topic, 1, &[]));
    assert_eq!(created.topics[0].error_code, 0, "create topic");

    let (error, id, epoch) = init_producer_id(&mut conn, None);
    assert_eq!((error, epoch), (0, 0), "InitProducerId");
    let (_, second_id, _) = init_producer_id(&mut conn, None);
    assert_ne!(second_id, id, "each InitProducerId gets its own id");

    // Seven batches of three: more than the five kept per producer, so the rebuild must
    // find the last five in the log, across segments.
    let snapshot = broker
        .data_dir()
        .join(format!("{topic}-0"))
        .join("producer-state.snapshot");
    let mut bases = Vec::new();
    for b in 0..7 {
        if b == 5 {
            // The snapshot is due a second after the partition opened; batch 5's round
            // takes it.
            std::thread::sleep(Duration::from_millis(1200));
        }
        let names: Vec<String> = (0..3).map(|i| format!("b{b}-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (error, base) = produce(&mut conn, topic, idempotent_batch(id, 0, b * 3, &names));
        assert_eq!(error, 0, "batch {b}");
        bases.push(base);
        if b == 5 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !snapshot.exists() {
                assert!(
                    Instant::now() < deadline,
                    "no snapshot at {}",
                    snapshot.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let retry = |b: i32| {
        let names: Vec<String> = (0..3).map(|i| format!("b{b}-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        idempotent_batch(id, 0, b * 3, &names)
    };
    assert_eq!(
        produce(&mut conn, topic, retry(6)),
        (0, bases[6]),
        "a retry of the last batch is answered with its original offset"
    );

    broker.kill();
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    let deadline = Instant::now() + Duration::from_secs(20);
    let after_restart = loop {
        let answer = produce(&mut conn, topic, retry(6));
        if answer.0 == 0 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        after_restart,
        (0, bases[6]),
        "after SIGKILL and restart, a retry is still a duplicate of the original\n{}",
        broker.log()
    );
    assert!(
        broker
            .log()
            .contains("producer state rebuilt from a snapshot and the log after it"),
        "the restart read the snapshot\n{}",
        broker.log()
    );
    assert_eq!(
        produce(&mut conn, topic, retry(2)),
        (0, bases[2]),
        "oldest kept batch"
    );
    assert_eq!(
        produce(&mut conn, topic, retry(1)).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a batch older than the five kept is out of order, not a duplicate"
    );
    assert_eq!(
        produce(&mut conn, topic, idempotent_batch(id, 0, 30, &["gap"])).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a gap in the sequence"
    );
    assert_eq!(
        produce(&mut conn, topic, idempotent_batch(id, 0, 21, &["next"])).0,
        0,
        "the next sequence is accepted"
    );

    // The restart took a new block: no id of the first process is handed out again.
    let (error, after_id, _) = init_producer_id(&mut conn, None);
    assert_eq!(error, 0);
    assert!(
        after_id > second_id,
        "id {after_id} after the restart, {id} and {second_id} before"
    );

    // KIP-360: the same id, epoch + 1; the old epoch is fenced once the new one wrote.
    let (error, bumped_id, bumped_epoch) = init_producer_id(&mut conn, Some((id, 0)));
    assert_eq!((error, bumped_id, bumped_epoch), (0, id, 1), "epoch bump");
    assert_eq!(
        produce(&mut conn, topic, idempotent_batch(id, 1, 0, &["epoch1"])).0,
        0,
        "a new epoch starts at sequence 0"
    );
    assert_eq!(
        produce(&mut conn, topic, idempotent_batch(id, 0, 24, &["stale"])).0,
        INVALID_PRODUCER_EPOCH,
        "the old epoch is fenced"
    );

    let transactional = conn.call(
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(
        transactional.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        "transactions are refused clearly"
    );

    // Every value once, in order: 21 from the seven batches, then "next" and "epoch1".
    let read = values(&mut conn, topic);
    let mut expected: Vec<String> = (0..7)
        .flat_map(|b| (0..3).map(move |i| format!("b{b}-{i}")))
        .collect();
    expected.push("next".into());
    expected.push("epoch1".into());
    let read_values: Vec<String> = read.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        read_values, expected,
        "the log holds each value once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_idempotent_producer_writes_each_record_once_in_order() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = RilldProcess::start();
    let topic = "idem-rdkafka";
    let mut conn = RawConn::connect(broker.addr());
    let created = conn.call::<CreateTopicsRequest>(4, &requests::create_topic(topic, 1, &[]));
    assert_eq!(created.topics[0].error_code, 0, "create topic");

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("batch.num.messages", "50")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("rdkafka producer");
    const COUNT: usize = 2_000;
    let sends: Vec<_> = (0..COUNT)
        .map(|n| {
            let producer = producer.clone();
            async move {
                let value = format!("rdk-{n}");
                let record = FutureRecord::<(), str>::to(topic)
                    .payload(&value)
                    .partition(0);
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|d| d.offset)
                    .map_err(|(e, _)| e)
            }
        })
        .collect();
    let offsets: Vec<i64> = futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
        .map(|(n, r)| r.unwrap_or_else(|e| panic!("record {n}: {e}\n{}", broker.log())))
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "acknowledged in send order"
    );

    let read: Vec<String> = values(&mut conn, topic)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let expected: Vec<String> = (0..COUNT).map(|n| format!("rdk-{n}")).collect();
    assert_eq!(read, expected, "each record once, in order");
    let ids = batch_producer_ids(&mut conn, topic, 0);
    assert!(
        !ids.is_empty() && ids.iter().all(|id| *id >= 0),
        "librdkafka wrote idempotent batches: producer ids {ids:?}"
    );
}

const ROUNDS_DEFAULT: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_write_each_record_once_in_order_across_leader_kills() {
    let rounds: u32 = env_number("RILL_IDEMPOTENCE_ROUNDS").unwrap_or(ROUNDS_DEFAULT);
    let mut cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    create_replicated_topic(&cluster).await;

    // Producer ids from every broker (controller or not) never collide, before and after
    // the brokers restart (each restart is a new incarnation, which takes a new block).
    let mut ids = std::collections::BTreeSet::new();
    let mut ask_every_broker = |cluster: &Cluster| {
        for broker in cluster.brokers.iter().filter(|b| b.pid().is_some()) {
            let mut conn = RawConn::connect(broker.addr());
            for _ in 0..2 {
                let (error, id, epoch) = init_producer_id(&mut conn, None);
                assert_eq!((error, epoch), (0, 0), "InitProducerId\n{}", cluster.logs());
                assert!(ids.insert(id), "producer id {id} handed out twice: {ids:?}");
            }
        }
    };
    ask_every_broker(&cluster);

    let mut history = History::default();
    let (mut ours_total, mut theirs_total) = (0, 0);
    for round in 0..rounds {
        let bootstrap = cluster.bootstrap();
        let leader = wait_leader(&cluster, 0).await;
        let mut config = ProducerConfig::new(&bootstrap);
        config.delivery_timeout_ms = 60_000;
        assert!(config.is_idempotent(), "idempotence is the default");
        let producer = Producer::new(config).expect("producer");
        let ours = produce_for(producer, round, Duration::from_millis(2500));
        let theirs = rdkafka_produce_with(
            &bootstrap,
            round,
            Duration::from_millis(2500),
            &[("enable.idempotence", "true")],
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        cluster.brokers[(leader - 1) as usize].kill();
        let killed_at = Instant::now();
        let ours = ours.await.expect("producer task");
        let theirs = theirs.await.expect("rdkafka task");
        // Retries the leaders recognised (counters of the brokers still running; the
        // killed one's are gone): printed, not asserted, as a kill may land between
        // batches.
        let duplicates: u64 = cluster
            .brokers
            .iter()
            .filter(|b| b.pid().is_some())
            .map(|b| b.metric("rill_duplicate_batches_total"))
            .sum();
        let (ours_acked, theirs_acked) = (
            record_with_order(&mut history, ours),
            record_with_order(&mut history, theirs),
        );
        ours_total += ours_acked;
        theirs_total += theirs_acked;
        println!(
            "round {round}: broker {leader} killed; rill-client {ours_acked} and librdkafka \
             {theirs_acked} records acknowledged, {:.1} s after the kill; {duplicates} retried \
             batches answered as duplicates so far",
            killed_at.elapsed().as_secs_f64()
        );
        cluster.brokers[(leader - 1) as usize].restart();
        wait_registered(&cluster, 3).await;
    }
    ask_every_broker(&cluster);
    println!("producer ids handed out by the brokers: {ids:?}");
    assert!(
        ours_total > 0 && theirs_total > 0,
        "rill-client acknowledged {ours_total}, librdkafka {theirs_total}\n{}",
        cluster.logs()
    );

    read_back(&cluster, &mut history).await;
    let report = history.check(Duplicates::Forbidden);
    println!("{report}");
    if !report.is_ok() {
        panic!("{report}\n{}", cluster.logs());
    }
    // Every value read once: the acknowledged ones by the check, and no value twice.
    let mut seen: HashMap<Bytes, usize> = HashMap::new();
    for partition in 0..PARTITIONS {
        let leader = wait_leader(&cluster, partition).await;
        let mut conn = RawConn::connect(cluster.broker(leader).addr());
        for (_, value) in read_all(&mut conn, TOPIC, partition) {
            *seen.entry(Bytes::from(value)).or_default() += 1;
        }
    }
    assert!(seen.values().all(|n| *n == 1), "a value read twice");
}

/// A producer idle past `producer_id_expiration_ms` is forgotten by the partition; its
/// next batch (sequence > 0) gets UNKNOWN_PRODUCER_ID, and rill-client's producer bumps
/// its epoch (KIP-360) and resends from sequence 0: every record lands once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_producer_bumps_its_epoch_and_goes_on() {
    let broker = RilldProcess::start_with(&[
        "--producer-id-expiration-ms",
        "1000",
        "--retention-check-interval-ms",
        "100",
    ]);
    let topic = "idem-expiry";
    let mut conn = RawConn::connect(broker.addr());
    let created = conn.call::<CreateTopicsRequest>(4, &requests::create_topic(topic, 1, &[]));
    assert_eq!(created.topics[0].error_code, 0, "create topic");

    let mut config = ProducerConfig::new(&broker.bootstrap());
    // A producer that cannot recover fails its record within this, not the default 120 s.
    config.delivery_timeout_ms = 15_000;
    let producer = Producer::new(config).expect("producer");
    let send = |n: usize| {
        let producer = &producer;
        async move {
            producer
                .send(rill_client::ProducerRecord::new(topic, format!("v{n}")).with_partition(0))
                .await
                .expect("send")
                .await
                .unwrap_or_else(|e| panic!("record {n}: {e}"))
                .offset
        }
    };
    for n in 0..10 {
        send(n).await;
    }
    let (id, epoch) = producer.producer_id_and_epoch().expect("idempotent");
    assert_eq!(epoch, 0);
    // Idle past the expiration (checked every 100 ms).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in 10..20 {
        send(n).await;
    }
    assert_eq!(
        producer.producer_id_and_epoch(),
        Some((id, 1)),
        "the same id, the next epoch"
    );
    assert_eq!(producer.epoch_bumps_total(), 1);
    let read: Vec<String> = values(&mut conn, topic)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let expected: Vec<String> = (0..20).map(|n| format!("v{n}")).collect();
    assert_eq!(read, expected, "each record once, in order");
}
