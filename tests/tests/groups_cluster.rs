//! Consumer groups on a three-broker cluster: the group coordinator (the leader of the
//! group's `__consumer_offsets` partition, replicated on every broker) is SIGKILLed while a
//! librdkafka group with committed offsets runs. The broker that takes over the partition
//! replays it, so the group keeps its committed offsets (nothing before them is read again,
//! nothing after them is missed) and its next rebalance completes within the session
//! timeout plus 3 s. The group's first FindCoordinator goes to a broker that is not the
//! controller, which has the controller create `__consumer_offsets`.

mod cluster_common;

mod groups_common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_common::{wait_registered, Cluster};
use groups_common::client_config;
use kafka_protocol::messages::{FindCoordinatorRequest, MetadataRequest};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use rill_tests::raw::RawConn;

const TOPIC: &str = "failover";
const GROUP: &str = "failover-group";
const PARTITIONS: i32 = 4;
const SESSION_TIMEOUT_MS: u64 = 6000;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Few `__consumer_offsets` partitions (each is a Raft group on every broker) and a short
/// initial delay, so the group forms quickly.
const BROKER_ARGS: &[&str] = &[
    "--offsets-topic-partitions",
    "3",
    "--group-initial-rebalance-delay-ms",
    "300",
];

async fn create_topic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = admin
        .create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(3))],
            &options,
        )
        .await
        .expect("create topic");
    assert_eq!(results, vec![Ok(TOPIC.to_string())]);
}

/// Produces `prefix-i` for `i < count` round-robin over the partitions, acks=all.
async fn produce(bootstrap: &str, prefix: &str, count: usize) -> Vec<String> {
    let producer: FutureProducer = client_config(bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let values: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    for (i, value) in values.iter().enumerate() {
        let record = FutureRecord::<(), _>::to(TOPIC)
            .partition(i as i32 % PARTITIONS)
            .payload(value.as_bytes());
        producer
            .send(record, TIMEOUT)
            .await
            .unwrap_or_else(|(e, _)| panic!("produce {value}: {e}"));
    }
    values
}

/// One librdkafka group member on a thread of its own: polls, records what it reads, and
/// commits when asked.
struct Member {
    read: Arc<Mutex<Vec<String>>>,
    assigned: Arc<Mutex<BTreeSet<i32>>>,
    commit: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Member {
    fn spawn(bootstrap: &str) -> Member {
        let consumer: BaseConsumer = client_config(bootstrap)
            .set("group.id", GROUP)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
            .set("heartbeat.interval.ms", "500")
            .set("partition.assignment.strategy", "range")
            .create()
            .expect("consumer");
        consumer.subscribe(&[TOPIC]).expect("subscribe");
        let read = Arc::new(Mutex::new(Vec::new()));
        let assigned = Arc::new(Mutex::new(BTreeSet::new()));
        let commit = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (read, assigned, commit, stop) = (
                Arc::clone(&read),
                Arc::clone(&assigned),
                Arc::clone(&commit),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                        let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
                        read.lock().unwrap().push(value.into_owned());
                    }
                    let now: BTreeSet<i32> = consumer
                        .assignment()
                        .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                        .unwrap_or_default();
                    *assigned.lock().unwrap() = now;
                    if commit.load(Ordering::Acquire) {
                        consumer
                            .commit_consumer_state(CommitMode::Sync)
                            .expect("commit");
                        commit.store(false, Ordering::Release);
                    }
                }
                // Dropping closes the consumer: it leaves the group.
            })
        };
        Member {
            read,
            assigned,
            commit,
            stop,
            handle,
        }
    }

    fn assigned(&self) -> BTreeSet<i32> {
        self.assigned.lock().unwrap().clone()
    }

    fn read_count(&self) -> usize {
        self.read.lock().unwrap().len()
    }

    /// Commits what it has read (synchronously, on its thread) and waits for that.
    fn commit(&self, cluster: &Cluster) {
        self.commit.store(true, Ordering::Release);
        wait_until(cluster, "a commit", || !self.commit.load(Ordering::Acquire));
    }

    fn close(self) {
        self.stop.store(true, Ordering::Release);
        self.handle.join().expect("member thread");
    }
}

/// Waits for `done`; on timeout fails with the brokers' logs.
fn wait_until(cluster: &Cluster, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < TIMEOUT,
            "timed out waiting for {what}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Whether `members` hold every partition between them, each at least one, none twice.
fn split_among(members: &[&Member]) -> bool {
    let sets: Vec<BTreeSet<i32>> = members.iter().map(|m| m.assigned()).collect();
    sets.iter().all(|s| !s.is_empty())
        && sets.iter().map(BTreeSet::len).sum::<usize>() == PARTITIONS as usize
        && sets.iter().flatten().collect::<BTreeSet<_>>().len() == PARTITIONS as usize
}

/// The controller's broker id, per Metadata.
fn controller(cluster: &Cluster) -> i32 {
    let started = Instant::now();
    loop {
        let broker = cluster.brokers.iter().find(|b| b.pid().is_some());
        let mut conn = RawConn::connect(broker.expect("a live broker").addr());
        let metadata = conn.call(1, &MetadataRequest::default());
        if metadata.controller_id.0 >= 0 {
            return metadata.controller_id.0;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "no controller\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The coordinator of GROUP as broker `id` names it, asked until it names one.
fn find_coordinator_at(cluster: &Cluster, id: i32) -> i32 {
    let request = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str(GROUP));
    let started = Instant::now();
    loop {
        let mut conn = RawConn::connect(cluster.broker(id).addr());
        let found = conn.call(2, &request);
        if found.error_code == 0 {
            return found.node_id.0;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "broker {id} names no coordinator for {GROUP} (error {})\n{}",
            found.error_code,
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The coordinator of GROUP, asked of every live broker until one answers.
fn find_coordinator(cluster: &Cluster) -> i32 {
    let request = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str(GROUP));
    let started = Instant::now();
    loop {
        for broker in cluster.brokers.iter().filter(|b| b.pid().is_some()) {
            let mut conn = RawConn::connect(broker.addr());
            let found = conn.call(2, &request);
            if found.error_code == 0 {
                return found.node_id.0;
            }
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "no coordinator for {GROUP}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_keeps_its_offsets_and_rebalances_after_its_coordinator_is_killed() {
    let mut cluster = Cluster::start_with(BROKER_ARGS);
    wait_registered(&cluster, 3).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap).await;
    // The group's first FindCoordinator goes to a broker that is not the controller: it
    // has the controller create __consumer_offsets (only the controller creates topics).
    let controller = controller(&cluster);
    let asked = if controller == 1 { 2 } else { 1 };
    let started = Instant::now();
    let named = find_coordinator_at(&cluster, asked);
    println!(
        "broker {asked} (controller: {controller}) named coordinator {named} {:?} after the \
         group's first FindCoordinator",
        started.elapsed()
    );

    // Two members read everything and commit. The records go out once the group has
    // formed: a member that joined alone first would read them all before the second
    // joined, and both would read them again (nothing committed yet).
    let pair = [Member::spawn(&bootstrap), Member::spawn(&bootstrap)];
    wait_until(&cluster, "two members to split the partitions", || {
        split_among(&[&pair[0], &pair[1]])
    });
    let first = produce(&bootstrap, "before-kill", 200).await;
    wait_until(&cluster, "the first records to be read", || {
        pair.iter().map(Member::read_count).sum::<usize>() >= first.len()
    });
    for m in &pair {
        m.commit(&cluster);
    }
    let read_before: Vec<String> = pair
        .iter()
        .flat_map(|m| m.read.lock().unwrap().clone())
        .collect();
    assert_eq!(read_before.len(), first.len(), "a record was read twice");
    let marks: Vec<usize> = pair.iter().map(Member::read_count).collect();

    let coordinator = find_coordinator(&cluster);
    cluster.brokers[(coordinator - 1) as usize].kill();
    let killed = Instant::now();
    println!("killed the coordinator, broker {coordinator}");

    // The next rebalance: a third member joins (through the brokers still up).
    let live = cluster.bootstrap();
    let third = Member::spawn(&live);
    wait_until(&cluster, "three members to split the partitions", || {
        split_among(&[&pair[0], &pair[1], &third])
    });
    let rebalanced = killed.elapsed();
    let bound = Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(3);
    println!(
        "after the coordinator's SIGKILL the group of three formed in {rebalanced:?} (bound: \
         session timeout + 3 s = {bound:?}); split {:?} {:?} {:?}",
        pair[0].assigned(),
        pair[1].assigned(),
        third.assigned()
    );
    // Generous slack over the bound for a busy machine; the figure above is the measure.
    assert!(
        rebalanced < bound * 2,
        "the group took {rebalanced:?} to rebalance after its coordinator died\n{}",
        cluster.logs()
    );

    // Nothing from before the committed offsets comes back; everything after arrives once.
    let second = produce(&live, "after-kill", 100).await;
    let read_after = |members: &[&Member]| -> Vec<String> {
        let mut read: Vec<String> = members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                let from = marks.get(i).copied().unwrap_or(0);
                m.read.lock().unwrap()[from..].to_vec()
            })
            .collect();
        read.sort();
        read
    };
    wait_until(&cluster, "the new records to be read", || {
        read_after(&[&pair[0], &pair[1], &third]).len() >= second.len()
    });
    // Anything read twice would arrive right behind; give it a moment to show.
    std::thread::sleep(Duration::from_millis(500));
    let read = read_after(&[&pair[0], &pair[1], &third]);
    let reread: Vec<&String> = read.iter().filter(|v| v.starts_with("before-")).collect();
    assert!(
        reread.is_empty(),
        "{} records from before the committed offsets were read again, e.g. {:?}",
        reread.len(),
        reread.first()
    );
    let mut expected = second.clone();
    expected.sort();
    assert_eq!(read, expected, "every new record read exactly once");
    third.close();
    for m in pair {
        m.close();
    }
}
