//! Consumer groups with rill-client's own subscribed consumer against a real `rilld`:
//! members split a topic's partitions, commit, close, and a new member resumes exactly
//! after the committed offsets; with `cooperative-sticky` a joining member makes the
//! others revoke only the partitions that move; a rill-client member and a librdkafka
//! member share one `range` group; a pattern subscription picks up a topic created later;
//! `rill consume --group` resumes after what it printed; in a 3-broker cluster a member
//! whose coordinator is killed finds the new one and keeps consuming and committing; a
//! member that stops polling for longer than `max.poll.interval.ms` leaves the group
//! (its partitions go to the others) and rejoins when it polls again.

mod client_common;
mod cluster_common;

mod groups_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rill_client::{
    AssignmentStrategy, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    RebalanceListener, Subscription, TopicPartition,
};
use rill_tests::RilldProcess;

use client_common::create_topic;
use groups_common::{BROKER_ARGS, PARTITIONS};

const TIMEOUT: Duration = Duration::from_secs(30);

/// (partition, offset, value) of every record a member read.
type Seen = Arc<Mutex<Vec<(i32, i64, String)>>>;

fn group_config(
    bootstrap: &str,
    group: &str,
    strategy: AssignmentStrategy,
    auto_commit: bool,
) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(bootstrap);
    c.group_id = Some(group.to_string());
    c.session_timeout_ms = 6_000;
    c.heartbeat_interval_ms = 200;
    c.assignment_strategies = vec![strategy];
    c.enable_auto_commit = auto_commit;
    c.auto_commit_interval_ms = 500;
    c.fetch_wait_ms_max = 100;
    c
}

/// Sends `count` records `<prefix>-<i>` round-robin over the partitions; returns them.
async fn produce(bootstrap: &str, topic: &str, prefix: &str, count: usize) -> Vec<String> {
    produce_over(bootstrap, topic, PARTITIONS, prefix, count).await
}

/// Sends `count` records `<prefix>-<i>` round-robin over `partitions` partitions of
/// `topic`; returns them.
async fn produce_over(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    let producer = Producer::new(ProducerConfig::new(bootstrap)).expect("producer");
    let mut deliveries = Vec::new();
    let mut values = Vec::new();
    for i in 0..count {
        let value = format!("{prefix}-{i}");
        let record = ProducerRecord::new(topic, value.clone().into_bytes())
            .with_partition(i as i32 % partitions);
        deliveries.push(producer.send(record).await.expect("send"));
        values.push(value);
    }
    for d in deliveries {
        d.await.expect("delivered");
    }
    producer.close().await.expect("close producer");
    values
}

/// Records each callback with its partitions.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(&'static str, Vec<TopicPartition>)>>,
}

impl Recorder {
    fn events(&self) -> Vec<(&'static str, Vec<TopicPartition>)> {
        self.events.lock().unwrap().clone()
    }
}

impl RebalanceListener for Recorder {
    fn on_assigned(&self, partitions: &[TopicPartition]) {
        self.events
            .lock()
            .unwrap()
            .push(("assigned", partitions.to_vec()));
    }
    fn on_revoked(&self, partitions: &[TopicPartition]) {
        self.events
            .lock()
            .unwrap()
            .push(("revoked", partitions.to_vec()));
    }
    fn on_lost(&self, partitions: &[TopicPartition]) {
        self.events
            .lock()
            .unwrap()
            .push(("lost", partitions.to_vec()));
    }
}

/// A rill-client group member on its own task: reads until told to stop, then commits
/// (if `manual_commit`), and closes (auto commit, LeaveGroup) when told to close.
struct Member {
    stop: Arc<AtomicBool>,
    /// Set once it stopped reading and committed.
    stopped: Arc<AtomicBool>,
    close: Arc<AtomicBool>,
    assigned: Arc<AtomicUsize>,
    listener: Arc<Recorder>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_member(config: ConsumerConfig, subscription: Subscription, seen: Seen) -> Member {
    let manual_commit = !config.enable_auto_commit;
    let mut consumer = Consumer::new(config).expect("consumer");
    let listener = Arc::new(Recorder::default());
    consumer
        .subscribe_with(subscription, Some(listener.clone()))
        .expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(AtomicBool::new(false));
    let close = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicUsize::new(0));
    let task = {
        let (stop, stopped, close, assigned) = (
            stop.clone(),
            stopped.clone(),
            close.clone(),
            assigned.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                assigned.store(consumer.assignment().len(), Ordering::Release);
                match tokio::time::timeout(Duration::from_millis(50), consumer.next()).await {
                    Err(_) => {}
                    Ok(Some(Ok(r))) => {
                        let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                        seen.lock()
                            .unwrap()
                            .push((r.partition, r.offset, value.into_owned()));
                    }
                    Ok(Some(Err(e))) => panic!("consumer error: {e}"),
                    Ok(None) => panic!("stream ended"),
                }
            }
            if manual_commit {
                consumer.commit_sync().await.expect("commit_sync");
            }
            stopped.store(true, Ordering::Release);
            while !close.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            consumer.close().await.expect("close");
        })
    };
    Member {
        stop,
        stopped,
        close,
        assigned,
        listener,
        task,
    }
}

impl Member {
    async fn stop(self) -> Arc<Recorder> {
        stop_all(vec![self]).await.pop().expect("one member")
    }
}

/// Stops every member reading and committing before any closes: a member leaving makes
/// the others rebalance, and one that has not committed yet (manual commit) would lose
/// its positions with its partitions.
async fn stop_all(members: Vec<Member>) -> Vec<Arc<Recorder>> {
    for m in &members {
        m.stop.store(true, Ordering::Release);
    }
    wait_until("every member to stop and commit", || {
        members.iter().all(|m| m.stopped.load(Ordering::Acquire))
    })
    .await;
    let mut listeners = Vec::new();
    for m in members {
        m.close.store(true, Ordering::Release);
        m.task.await.expect("member task");
        listeners.push(m.listener);
    }
    listeners
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < TIMEOUT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn values_of(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, _, v)| v.clone())
        .collect()
}

/// Every value of `want` read exactly once (the failure names what was missed, read
/// twice, or read without being wanted, not the whole sets).
fn assert_exactly_once(read: &[String], want: &[String], what: &str) {
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for v in read {
        *counts.entry(v).or_default() += 1;
    }
    let missed: Vec<&String> = want.iter().filter(|v| !counts.contains_key(v)).collect();
    let twice: Vec<&&String> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(v, _)| v)
        .collect();
    let wanted: BTreeSet<&String> = want.iter().collect();
    let foreign: Vec<&&String> = counts.keys().filter(|v| !wanted.contains(**v)).collect();
    assert!(
        missed.is_empty() && twice.is_empty() && foreign.is_empty(),
        "{what}: {} missed {:?}, {} read twice {:?}, {} not expected {:?}",
        missed.len(),
        missed.iter().take(5).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>(),
        foreign.len(),
        foreign.iter().take(5).collect::<Vec<_>>(),
    );
}

/// `members` rill-client consumers split the partitions, read every record once between
/// them, commit (manually or by auto commit on close) and leave; then a new member resumes
/// exactly after the committed offsets.
async fn members_split_commit_and_a_new_member_resumes(
    bootstrap: &str,
    members: usize,
    auto_commit: bool,
) {
    let topic = format!("rill-split{members}");
    let group = format!("rill-group-of-{members}");
    create_topic(bootstrap, &topic, PARTITIONS).await;
    let config = group_config(bootstrap, &group, AssignmentStrategy::Range, auto_commit);
    let subscription = Subscription::Topics(vec![topic.clone()]);
    let seen: Seen = Arc::default();
    let team: Vec<Member> = (0..members)
        .map(|_| spawn_member(config.clone(), subscription.clone(), seen.clone()))
        .collect();
    let formed = wait_until("the group to split the partitions", || {
        let counts: Vec<usize> = team
            .iter()
            .map(|m| m.assigned.load(Ordering::Acquire))
            .collect();
        counts.iter().all(|&c| c > 0) && counts.iter().sum::<usize>() == PARTITIONS as usize
    })
    .await;
    let counts: Vec<usize> = team
        .iter()
        .map(|m| m.assigned.load(Ordering::Acquire))
        .collect();
    println!("{members} rill-client members split {PARTITIONS} partitions as {counts:?} after {formed:?}");

    let first = produce(bootstrap, &topic, &format!("{topic}-first"), 200).await;
    wait_until("every record to be read", || {
        seen.lock().unwrap().len() >= first.len()
    })
    .await;
    stop_all(team).await;
    assert_exactly_once(&values_of(&seen), &first, "the group");

    let second = produce(bootstrap, &topic, &format!("{topic}-second"), 80).await;
    let resumed: Seen = Arc::default();
    let member = spawn_member(config, subscription, resumed.clone());
    wait_until("the new member to read the new records", || {
        resumed.lock().unwrap().len() >= second.len()
    })
    .await;
    // Anything committed-but-reread would arrive right behind; give it a moment to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    member.stop().await;
    assert_exactly_once(&values_of(&resumed), &second, "the new member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rill_client_groups_of_two_and_three_split_partitions_commit_and_resume() {
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let bootstrap = broker.bootstrap();
    // Two members commit with commit_sync; three rely on auto commit at close.
    members_split_commit_and_a_new_member_resumes(&bootstrap, 2, false).await;
    members_split_commit_and_a_new_member_resumes(&bootstrap, 3, true).await;
}

/// Kafka's `max.poll.interval.ms` (our `rebalance_timeout_ms`): a member that holds its
/// records without polling for longer leaves the group — far sooner than its session
/// timeout, since its heartbeats would keep it in — so the other member takes every
/// partition; its own partitions are reported lost. When it polls again it rejoins and
/// the partitions are split again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_polling_leaves_and_rejoins_when_it_polls_again() {
    const POLL_INTERVAL_MAX_MS: i32 = 2_000;
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let bootstrap = broker.bootstrap();
    let topic = "stalls";
    create_topic(&bootstrap, topic, PARTITIONS).await;
    produce(&bootstrap, topic, "stalls", 40).await;
    let mut config = group_config(&bootstrap, "stalling", AssignmentStrategy::Range, true);
    // Its heartbeats would keep a member that stopped polling in the group for good;
    // only the poll timer can take its partitions away.
    config.rebalance_timeout_ms = POLL_INTERVAL_MAX_MS;
    let subscription = Subscription::Topics(vec![topic.to_string()]);
    let steady = spawn_member(config.clone(), subscription.clone(), Seen::default());

    let mut stalling = Consumer::new(config).expect("consumer");
    let stalling_events = Arc::new(Recorder::default());
    stalling
        .subscribe_with(subscription, Some(stalling_events.clone()))
        .expect("subscribe");
    // Poll until the group split the partitions and a record came back, then stop
    // polling while holding it (a `next()` still pending counts as polling).
    let deadline = Instant::now() + TIMEOUT;
    let mut produced_after_split = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "the group never split the partitions"
        );
        let got = tokio::time::timeout(Duration::from_millis(50), stalling.next()).await;
        let split =
            steady.assigned.load(Ordering::Acquire) > 0 && !stalling.assignment().is_empty();
        if split && matches!(got, Ok(Some(Ok(_)))) {
            break;
        }
        if split && !produced_after_split {
            // Records for its new partitions even if it read everything before the split.
            produce(&bootstrap, topic, "after-split", 40).await;
            produced_after_split = true;
        }
    }
    let held = stalling.assignment();
    println!("the stalling member holds {held:?}; it stops polling");
    let taken_over = wait_until("the steady member to take every partition", || {
        steady.assigned.load(Ordering::Acquire) == PARTITIONS as usize
    })
    .await;
    println!(
        "the steady member holds all {PARTITIONS} partitions {:.2} s after the other stopped \
         polling (max.poll.interval.ms {POLL_INTERVAL_MAX_MS}, session timeout 6 s)",
        taken_over.as_secs_f64()
    );
    let events = stalling_events.events();
    assert!(
        events
            .iter()
            .any(|(kind, parts)| *kind == "lost" && !parts.is_empty()),
        "the stalled member's partitions were not reported lost: {events:?}"
    );

    // It polls again: it rejoins and the partitions are split again.
    let deadline = Instant::now() + TIMEOUT;
    while stalling.assignment().is_empty()
        || steady.assigned.load(Ordering::Acquire) == PARTITIONS as usize
    {
        assert!(
            Instant::now() < deadline,
            "the stalled member never rejoined"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), stalling.next()).await;
    }
    println!("rejoined with {:?}", stalling.assignment());
    stalling.close().await.expect("close");
    steady.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_join_revokes_only_the_partitions_that_move() {
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let bootstrap = broker.bootstrap();
    let topic = "coop";
    create_topic(&bootstrap, topic, PARTITIONS).await;
    let config = group_config(
        &bootstrap,
        "coop",
        AssignmentStrategy::CooperativeSticky,
        true,
    );
    let subscription = Subscription::Topics(vec![topic.to_string()]);
    let seen: Seen = Arc::default();
    let first = spawn_member(config.clone(), subscription.clone(), seen.clone());
    wait_until("the first member to own every partition", || {
        first.assigned.load(Ordering::Acquire) == PARTITIONS as usize
    })
    .await;
    let before = produce(&bootstrap, topic, "before", 100).await;
    wait_until("the first member to read them", || {
        seen.lock().unwrap().len() >= before.len()
    })
    .await;

    let started = Instant::now();
    let second = spawn_member(config, subscription, seen.clone());
    let moved = wait_until("the two members to hold two partitions each", || {
        first.assigned.load(Ordering::Acquire) == 2 && second.assigned.load(Ordering::Acquire) == 2
    })
    .await;
    println!(
        "cooperative rebalance moved 2 partitions {moved:?} after the second member subscribed"
    );
    let first_events = first.listener.events();
    let second_events = second.listener.events();
    println!("first member: {first_events:?}\nsecond member: {second_events:?}");

    let all: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    assert_eq!(
        first_events[0],
        ("assigned", all.clone()),
        "first assignment"
    );
    let revoked: Vec<TopicPartition> = first_events
        .iter()
        .filter(|(kind, _)| *kind == "revoked")
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert!(
        first_events
            .iter()
            .all(|(kind, p)| *kind != "lost" && (*kind != "revoked" || p.len() < all.len())),
        "a cooperative join must not revoke (or lose) the whole assignment: {first_events:?}"
    );
    let received: Vec<TopicPartition> = second_events
        .iter()
        .filter(|(kind, _)| *kind == "assigned")
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert_eq!(
        revoked.len(),
        2,
        "exactly the moved partitions are revoked: {first_events:?}"
    );
    assert_eq!(
        revoked.iter().collect::<BTreeSet<_>>(),
        received.iter().collect::<BTreeSet<_>>(),
        "the partitions revoked are those the new member got"
    );
    assert!(started.elapsed() < TIMEOUT);

    // Positions of the moved partitions were committed on revoke: the new member
    // continues where the first stopped.
    let after = produce(&bootstrap, topic, "after", 100).await;
    let want: Vec<String> = before.iter().chain(&after).cloned().collect();
    wait_until("both members to read the new records", || {
        seen.lock().unwrap().len() >= want.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_all(vec![first, second]).await;
    assert_exactly_once(&values_of(&seen), &want, "the cooperative group");
}

/// A librdkafka group member polling on a thread of its own; dropping its consumer at
/// stop commits (auto commit) and leaves the group.
struct RdkafkaMember {
    stop: Arc<AtomicBool>,
    assigned: Arc<Mutex<Vec<i32>>>,
    handle: std::thread::JoinHandle<()>,
}

fn spawn_rdkafka_member(bootstrap: &str, group: &str, topic: &str, seen: Seen) -> RdkafkaMember {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "200")
        .set("partition.assignment.strategy", "range")
        .create()
        .expect("librdkafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(Mutex::new(Vec::<i32>::new()));
    let handle = {
        let (stop, assigned) = (stop.clone(), assigned.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into();
                    seen.lock()
                        .unwrap()
                        .push((m.partition(), m.offset(), value));
                }
                let partitions: Vec<i32> = consumer
                    .assignment()
                    .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default();
                *assigned.lock().unwrap() = partitions;
            }
        })
    };
    RdkafkaMember {
        stop,
        assigned,
        handle,
    }
}

/// One rill-client and one librdkafka member in a `range` group split the partitions 2/2
/// and read every record once. The member that joins first stays the group's leader and
/// runs the assignor, so `rill_leads` decides whose assignor and whose decoder of the
/// other's subscription is exercised.
async fn mixed_range_group(bootstrap: &str, rill_leads: bool) {
    let topic = if rill_leads {
        "mixed-rill-leads"
    } else {
        "mixed-rdkafka-leads"
    };
    create_topic(bootstrap, topic, PARTITIONS).await;
    let config = group_config(bootstrap, topic, AssignmentStrategy::Range, true);
    let subscription = Subscription::Topics(vec![topic.to_string()]);
    let ours_seen: Seen = Arc::default();
    let theirs_seen: Seen = Arc::default();
    let (ours, theirs) = if rill_leads {
        let ours = spawn_member(config, subscription, ours_seen.clone());
        wait_until("the rill-client member to own every partition", || {
            ours.assigned.load(Ordering::Acquire) == PARTITIONS as usize
        })
        .await;
        (
            ours,
            spawn_rdkafka_member(bootstrap, topic, topic, theirs_seen.clone()),
        )
    } else {
        let theirs = spawn_rdkafka_member(bootstrap, topic, topic, theirs_seen.clone());
        wait_until("the librdkafka member to own every partition", || {
            theirs.assigned.lock().unwrap().len() == PARTITIONS as usize
        })
        .await;
        (
            spawn_member(config, subscription, ours_seen.clone()),
            theirs,
        )
    };
    let formed = wait_until("the two clients to split the partitions", || {
        theirs.assigned.lock().unwrap().len() == 2 && ours.assigned.load(Ordering::Acquire) == 2
    })
    .await;
    let events = ours.listener.events();
    let ours_partitions: BTreeSet<i32> = events
        .iter()
        .rev()
        .find(|(kind, _)| *kind == "assigned")
        .map(|(_, p)| p.iter().map(|tp| tp.partition).collect())
        .unwrap_or_default();
    let theirs_partitions: BTreeSet<i32> =
        theirs.assigned.lock().unwrap().iter().copied().collect();
    println!(
        "range split ({} leads) {formed:?} after the second member subscribed: rill-client \
         {ours_partitions:?}, librdkafka {theirs_partitions:?}",
        if rill_leads {
            "rill-client"
        } else {
            "librdkafka"
        }
    );
    assert_eq!(ours_partitions.len(), 2, "{events:?}");
    assert!(ours_partitions.is_disjoint(&theirs_partitions));
    // Range gives each member a consecutive range.
    for set in [&ours_partitions, &theirs_partitions] {
        let v: Vec<i32> = set.iter().copied().collect();
        assert_eq!(
            v[1],
            v[0] + 1,
            "range assigns consecutive partitions: {v:?}"
        );
    }

    let values = produce(bootstrap, topic, topic, 100).await;
    wait_until("the two members to read every record", || {
        ours_seen.lock().unwrap().len() + theirs_seen.lock().unwrap().len() >= values.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    theirs.stop.store(true, Ordering::Release);
    theirs.handle.join().expect("librdkafka member");
    ours.stop().await;
    let partitions_read =
        |seen: &Seen| -> BTreeSet<i32> { seen.lock().unwrap().iter().map(|r| r.0).collect() };
    assert_eq!(
        partitions_read(&ours_seen),
        ours_partitions,
        "rill-client read only its own partitions"
    );
    assert_eq!(
        partitions_read(&theirs_seen),
        theirs_partitions,
        "librdkafka read only its own partitions"
    );
    let mut read = values_of(&ours_seen);
    read.extend(values_of(&theirs_seen));
    assert_exactly_once(&read, &values, "the mixed group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rill_client_member_and_a_librdkafka_member_share_a_range_group() {
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let bootstrap = broker.bootstrap();
    mixed_range_group(&bootstrap, true).await;
    mixed_range_group(&bootstrap, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_picks_up_a_matching_topic_created_later() {
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "metrics-a", 2).await;
    create_topic(&bootstrap, "other", 2).await;
    let mut config = group_config(&bootstrap, "pattern", AssignmentStrategy::Range, true);
    // The pattern is re-checked on every metadata refresh.
    config.client.metadata_max_age_ms = 300;
    let seen: Seen = Arc::default();
    let regex = Subscription::pattern("metrics-.*").expect("pattern");
    let member = spawn_member(config, regex, seen.clone());
    wait_until("the member to own metrics-a", || {
        member.assigned.load(Ordering::Acquire) == 2
    })
    .await;
    create_topic(&bootstrap, "metrics-b", 2).await;
    let grew = wait_until("the member to own metrics-b too", || {
        member.assigned.load(Ordering::Acquire) == 4
    })
    .await;
    println!("pattern subscription took metrics-b {grew:?} after it was created");
    let listener = member.stop().await;
    let assigned: BTreeSet<String> = listener
        .events()
        .iter()
        .filter(|(kind, _)| *kind == "assigned")
        .flat_map(|(_, p)| p.iter().map(|tp| tp.topic.clone()).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        assigned,
        ["metrics-a", "metrics-b"]
            .map(String::from)
            .into_iter()
            .collect(),
        "only matching topics are assigned"
    );
}

/// `rill consume --group` reading `count` records; the process is killed if it runs
/// longer than a minute (a hang fails the test instead of stalling it).
async fn rill_consume_group(
    bootstrap: &str,
    topic: &str,
    group: &str,
    count: usize,
) -> Vec<String> {
    let mut command = std::process::Command::new("timeout");
    command
        .arg("60")
        .arg(rill_tests::rill_bin())
        .args([
            "--bootstrap-server",
            bootstrap,
            "consume",
            topic,
            "--group",
            group,
        ])
        .args(["--count", &count.to_string()]);
    let output = tokio::task::spawn_blocking(move || rill_tests::run_piped(command, None, "rill"))
        .await
        .expect("rill runner");
    assert!(
        output.status.success(),
        "rill consume --group failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rill_consume_group_resumes_after_what_it_printed() {
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let bootstrap = broker.bootstrap();
    let topic = "cli-group";
    create_topic(&bootstrap, topic, PARTITIONS).await;
    let values = produce(&bootstrap, topic, "cli", 100).await;
    // The first run stops after 60 records and commits exactly those; the second prints
    // the other 40.
    let mut read = rill_consume_group(&bootstrap, topic, "cli", 60).await;
    assert_eq!(read.len(), 60);
    read.extend(rill_consume_group(&bootstrap, topic, "cli", 40).await);
    assert_exactly_once(&read, &values, "two runs of rill consume --group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_finds_the_new_coordinator_after_the_old_one_is_killed() {
    // One __consumer_offsets partition, so the group's coordinator is its leader.
    let mut cluster = cluster_common::Cluster::start_with(&[
        "--offsets-topic-partitions",
        "1",
        "--group-initial-rebalance-delay-ms",
        "300",
    ]);
    cluster_common::wait_registered(&cluster, 3).await;
    cluster_common::create_replicated_topic(&cluster).await;
    let topic = cluster_common::TOPIC;
    let partitions = cluster_common::PARTITIONS as usize;
    let mut config = group_config(
        &cluster.bootstrap(),
        "failover",
        AssignmentStrategy::Range,
        true,
    );
    config.auto_commit_interval_ms = 200;
    let seen: Seen = Arc::default();
    let member = spawn_member(
        config.clone(),
        Subscription::Topics(vec![topic.to_string()]),
        seen.clone(),
    );
    wait_until("the member to own every partition", || {
        member.assigned.load(Ordering::Acquire) == partitions
    })
    .await;
    let before = produce_over(
        &cluster.bootstrap(),
        topic,
        cluster_common::PARTITIONS,
        "before",
        50,
    )
    .await;
    wait_until("the member to read them", || {
        seen.lock().unwrap().len() >= before.len()
    })
    .await;

    let coordinator = cluster_common::wait_topic_leader(&cluster, "__consumer_offsets", 0).await;
    let killed_at = Instant::now();
    cluster.brokers[(coordinator - 1) as usize].kill();
    let live = cluster.bootstrap();
    let deadline = Instant::now() + TIMEOUT;
    let new_coordinator = loop {
        let leader = cluster_common::partitions_of(&live, "__consumer_offsets")
            .await
            .and_then(|p| Some(p.first()?.leader));
        match leader {
            Some(l) if l >= 0 && l != coordinator => break l,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "no new coordinator\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let after = produce_over(&live, topic, cluster_common::PARTITIONS, "after", 50).await;
    let want: Vec<String> = before.iter().chain(&after).cloned().collect();
    wait_until(
        "the member to read the records produced after the kill",
        || {
            let read: BTreeSet<String> = values_of(&seen).into_iter().collect();
            want.iter().all(|v| read.contains(v))
        },
    )
    .await;
    println!(
        "coordinator {coordinator} killed; {new_coordinator} took over; the member read every \
         record {:?} after the kill",
        killed_at.elapsed()
    );
    // Closing commits the positions through the new coordinator.
    let listener = member.stop().await;
    // A consumer of the same group (not a member) reads the committed offsets back from
    // the new coordinator: they must cover every record read.
    let mut probe_config = config;
    probe_config.client = rill_client::ClientConfig::new(&live);
    let probe = Consumer::new(probe_config).expect("probe");
    let tps: Vec<TopicPartition> = (0..partitions as i32)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    let committed = probe.committed(&tps).await.expect("committed offsets");
    let read = seen.lock().unwrap().clone();
    for tp in &tps {
        let last_read = read
            .iter()
            .filter(|r| r.0 == tp.partition)
            .map(|r| r.1)
            .max()
            .expect("records");
        assert!(
            committed.get(tp).is_some_and(|c| *c > last_read),
            "{tp}: committed {:?}, last read {last_read}",
            committed.get(tp)
        );
    }
    let read_values = values_of(&seen);
    let duplicates = read_values.len() - read_values.iter().collect::<BTreeSet<_>>().len();
    println!(
        "rebalance events: {:?}; records read twice: {duplicates}",
        listener.events()
    );
}
