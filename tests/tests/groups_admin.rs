//! Consumer-group operations against a real `rilld`: the `rill group` command (the real
//! binary) describes a librdkafka group's members, assignments, committed offsets and
//! lag, resets an empty group's offsets so a new librdkafka member re-reads from the
//! start, and deletes the group; OffsetDelete (through `rill-client`'s `Admin` and `rill
//! group delete-offsets`) refuses
//! topics a live member subscribes to and its tombstones survive a SIGKILL; clients can
//! neither delete, grow nor produce to `__consumer_offsets`; on three brokers, every
//! coordinator's groups are listed and OffsetDelete elsewhere is NOT_COORDINATOR.

mod cluster_common;

mod groups_common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use groups_common::{client_config, BROKER_ARGS, PARTITIONS};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rill_client::{Admin, Error, ResponseError, TopicPartition};
use rill_tests::raw::{requests, RawConn};
use rill_tests::{rill_bin, run_piped, RilldProcess};

const TIMEOUT: Duration = Duration::from_secs(30);

fn rill(bootstrap: &str, args: &[&str]) -> Output {
    let mut command = Command::new(rill_bin());
    command.arg("--bootstrap-server").arg(bootstrap).args(args);
    run_piped(command, None, "rill")
}

/// Runs `rill args` and returns its stdout; panics with its output if it fails.
fn rill_ok(bootstrap: &str, args: &[&str]) -> String {
    let output = rill(bootstrap, args);
    assert!(
        output.status.success(),
        "rill {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = client_config(bootstrap);
    c.set("group.id", group)
        .set("client.id", format!("{group}-client"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "200")
        .set("partition.assignment.strategy", "range");
    c
}

fn admin(bootstrap: &str) -> Admin {
    Admin::new(rill_client::ClientConfig::new(bootstrap)).expect("admin")
}

/// Produces `count` records per partition, `"{prefix}-{partition}-{i}"`.
async fn produce(bootstrap: &str, topic: &str, prefix: &str, count: usize) -> BTreeSet<String> {
    let producer: FutureProducer = client_config(bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    let mut sent = BTreeSet::new();
    for partition in 0..PARTITIONS {
        for i in 0..count {
            let value = format!("{prefix}-{partition}-{i}");
            let record = FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload(value.as_bytes());
            producer
                .send(record, TIMEOUT)
                .await
                .unwrap_or_else(|(e, _)| panic!("produce {value}: {e}"));
            sent.insert(value);
        }
    }
    sent
}

/// The high watermark of every partition of `topic`.
fn log_ends(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    let probe: BaseConsumer = client_config(bootstrap).create().expect("consumer");
    (0..PARTITIONS)
        .map(|p| {
            let (_, high) = probe
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, high)
        })
        .collect()
}

/// A librdkafka group member on its own thread: polls and records the values it reads;
/// commits its position when asked (`commit`), and closes (LeaveGroup) at `stop`.
struct Member {
    stop: Arc<AtomicBool>,
    commit: Arc<AtomicBool>,
    commits_done: Arc<AtomicUsize>,
    assigned: Arc<AtomicUsize>,
    handle: JoinHandle<()>,
}

type Seen = Arc<Mutex<Vec<String>>>;

fn spawn_member(bootstrap: &str, group: &str, topics: &[&str], seen: Seen) -> Member {
    let consumer: BaseConsumer = consumer_config(bootstrap, group)
        .create()
        .expect("consumer");
    consumer.subscribe(topics).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let commit = Arc::new(AtomicBool::new(false));
    let commits_done = Arc::new(AtomicUsize::new(0));
    let assigned = Arc::new(AtomicUsize::new(0));
    let handle = {
        let (stop, commit, done, assigned) = (
            Arc::clone(&stop),
            Arc::clone(&commit),
            Arc::clone(&commits_done),
            Arc::clone(&assigned),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
                    seen.lock().unwrap().push(value.into());
                }
                let count = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                assigned.store(count, Ordering::Release);
                if commit.swap(false, Ordering::AcqRel) {
                    consumer
                        .commit_consumer_state(CommitMode::Sync)
                        .expect("commit");
                    done.fetch_add(1, Ordering::AcqRel);
                }
            }
            // Dropping closes the consumer: it leaves the group.
        })
    };
    Member {
        stop,
        commit,
        commits_done,
        assigned,
        handle,
    }
}

impl Member {
    fn close(self) {
        self.stop.store(true, Ordering::Release);
        self.handle.join().expect("member thread");
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Waits until `group` is in `state` (as DescribeGroups reports it).
async fn wait_for_state(admin: &Admin, group: &str, state: &str) {
    let started = Instant::now();
    loop {
        let described = admin.describe_groups(&[group]).await.expect("describe");
        if described[0].state == state {
            return;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "group {group} still {} (waiting for {state})",
            described[0].state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One row of `rill group describe`'s partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    committed: String,
    log_end: String,
    lag: String,
    member: String,
}

/// A member line of `rill group describe`.
struct MemberLine {
    client_id: String,
    host: String,
    partitions: BTreeSet<String>,
}

/// `rill group describe`'s output, parsed: the header line's fields, member lines
/// (member id → (client id, assignment)), partition rows of `topic`.
struct Described {
    header: String,
    members: BTreeMap<String, MemberLine>,
    rows: BTreeMap<i32, Row>,
}

fn parse_describe(text: &str, topic: &str) -> Described {
    let header = text.lines().next().unwrap_or_default().to_owned();
    let mut members = BTreeMap::new();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"member") {
            let field = |name: &str| {
                let at = words.iter().position(|w| *w == name).expect("field");
                words[at + 1]
            };
            let (client_id, host) = (field("client-id"), field("host"));
            let assignment = line
                .split("assignment [")
                .nth(1)
                .and_then(|rest| rest.strip_suffix(']'))
                .unwrap_or_default();
            let partitions: BTreeSet<String> = assignment
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            members.insert(
                words[1].to_owned(),
                MemberLine {
                    client_id: client_id.to_owned(),
                    host: host.to_owned(),
                    partitions,
                },
            );
        } else if words.len() == 6 && words[0] == topic {
            rows.insert(
                words[1].parse().expect("partition number"),
                Row {
                    committed: words[2].to_owned(),
                    log_end: words[3].to_owned(),
                    lag: words[4].to_owned(),
                    member: words[5].to_owned(),
                },
            );
        }
    }
    Described {
        header,
        members,
        rows,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rill_group_describes_an_rdkafka_group_resets_its_offsets_and_deletes_it() {
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let b = broker.bootstrap();
    let (topic, group) = ("orders", "billing");
    rill_ok(&b, &["topic", "create", topic, "--partitions", "4"]);
    let mut produced = produce(&b, topic, "first", 10).await;

    // Two librdkafka members split the partitions, read everything and commit.
    let seen: Seen = Arc::default();
    let team: Vec<Member> = (0..2)
        .map(|_| spawn_member(&b, group, &[topic], Arc::clone(&seen)))
        .collect();
    wait_until(
        "both members to hold partitions and read every record",
        || {
            team.iter().all(|m| m.assigned.load(Ordering::Acquire) > 0)
                && team
                    .iter()
                    .map(|m| m.assigned.load(Ordering::Acquire))
                    .sum::<usize>()
                    == PARTITIONS as usize
                && seen.lock().unwrap().len() >= produced.len()
        },
    );
    for m in &team {
        m.commit.store(true, Ordering::Release);
    }
    wait_until("both members to commit", || {
        team.iter()
            .all(|m| m.commits_done.load(Ordering::Acquire) > 0)
    });
    let committed_ends = log_ends(&b, topic);
    // Records after the commit: the members read them but do not commit, so the lag of
    // each partition is 3.
    produced.extend(produce(&b, topic, "second", 3).await);
    let ends = log_ends(&b, topic);

    let text = rill_ok(&b, &["group", "describe", group]);
    println!("{text}");
    let described = parse_describe(&text, topic);
    assert!(
        described.header.contains("state Stable") && described.header.contains("protocol range"),
        "{text}"
    );
    assert_eq!(described.members.len(), 2, "{text}");
    let mut all_assigned = BTreeSet::new();
    for m in described.members.values() {
        assert_eq!(m.client_id, format!("{group}-client"), "{text}");
        // Kafka's form of the member's address (Java's InetAddress.toString).
        assert_eq!(m.host, "/127.0.0.1", "{text}");
        assert!(
            !m.partitions.is_empty(),
            "a member without partitions: {text}"
        );
        all_assigned.extend(m.partitions.iter().cloned());
    }
    let expected: BTreeSet<String> = (0..PARTITIONS).map(|p| format!("{topic}-{p}")).collect();
    assert_eq!(all_assigned, expected, "{text}");
    for p in 0..PARTITIONS {
        let row = &described.rows[&p];
        assert_eq!(row.committed, committed_ends[&p].to_string(), "{text}");
        assert_eq!(row.log_end, ends[&p].to_string(), "{text}");
        assert_eq!(
            row.lag,
            (ends[&p] - committed_ends[&p]).to_string(),
            "{text}"
        );
        assert_eq!(ends[&p] - committed_ends[&p], 3);
        let owner = &described.members[&row.member];
        assert!(owner.partitions.contains(&format!("{topic}-{p}")), "{text}");
    }

    // ListGroups' state filter.
    let listed = rill_ok(&b, &["group", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [group, "Stable", "consumer"]),
        "{listed}"
    );
    let stable = rill_ok(&b, &["group", "list", "--state", "stable"]);
    assert!(stable.contains(group), "{stable}");
    let empty = rill_ok(&b, &["group", "list", "--state", "Empty"]);
    assert!(!empty.contains(group), "{empty}");

    // Offsets of a group with members are not reset.
    let refused = rill(
        &b,
        &[
            "group",
            "reset-offsets",
            group,
            "--to-earliest",
            "--execute",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("member"), "{stderr}");

    for m in team {
        m.close();
    }
    let admin = admin(&b);
    wait_for_state(&admin, group, "Empty").await;

    // A dry run changes nothing; --execute commits offset 0 everywhere.
    let before = admin
        .list_consumer_group_offsets(group)
        .await
        .expect("offsets");
    let plan = rill_ok(
        &b,
        &[
            "group",
            "reset-offsets",
            group,
            "--to-earliest",
            "--topic",
            topic,
        ],
    );
    println!("{plan}");
    assert!(plan.contains("dry run"), "{plan}");
    assert_eq!(
        admin
            .list_consumer_group_offsets(group)
            .await
            .expect("offsets"),
        before,
        "a dry run changed offsets"
    );
    let executed = rill_ok(
        &b,
        &[
            "group",
            "reset-offsets",
            group,
            "--to-earliest",
            "--topic",
            topic,
            "--execute",
        ],
    );
    assert!(executed.contains("committed 4 offset(s)"), "{executed}");
    let reset = admin
        .list_consumer_group_offsets(group)
        .await
        .expect("offsets");
    let zeros: BTreeMap<TopicPartition, i64> = (0..PARTITIONS)
        .map(|p| (TopicPartition::new(topic, p), 0))
        .collect();
    assert_eq!(reset, zeros);

    // A new member of the group reads everything again from offset 0.
    let reread: Seen = Arc::default();
    let member = spawn_member(&b, group, &[topic], Arc::clone(&reread));
    wait_until("the new member to re-read every record", || {
        reread.lock().unwrap().len() >= produced.len()
    });
    member.close();
    let values: BTreeSet<String> = reread.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        values, produced,
        "the new member must re-read from offset 0"
    );

    // Deleted: gone from list and describe.
    wait_for_state(&admin, group, "Empty").await;
    let deleted = rill_ok(&b, &["group", "delete", group]);
    assert!(
        deleted.contains(&format!("deleted group {group}")),
        "{deleted}"
    );
    let listed = rill_ok(&b, &["group", "list"]);
    assert!(!listed.contains(group), "{listed}");
    let gone = rill_ok(&b, &["group", "describe", group]);
    assert!(gone.contains("does not exist"), "{gone}");
    assert!(admin
        .list_consumer_group_offsets(group)
        .await
        .expect("offsets")
        .is_empty());
}

fn broker_code(result: &Result<(), Error>) -> Option<ResponseError> {
    match result {
        Ok(()) => None,
        Err(Error::Broker { code, .. }) => Some(*code),
        Err(e) => panic!("not a broker error: {e}"),
    }
}

/// Commits `offsets` through a live librdkafka member (generation and member id checked
/// by the coordinator), including a topic it does not subscribe to.
fn commit_through(consumer: &BaseConsumer, offsets: &[(&str, i32, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .expect("offset");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_delete_spares_subscribed_topics_and_survives_a_sigkill() {
    let mut broker = RilldProcess::start_with(BROKER_ARGS);
    let b = broker.bootstrap();
    let group = "pruned";
    for topic in ["watched", "abandoned"] {
        rill_ok(&b, &["topic", "create", topic, "--partitions", "2"]);
    }
    // A live member subscribed to "watched" commits offsets of both topics.
    let consumer: BaseConsumer = consumer_config(&b, group).create().expect("consumer");
    consumer.subscribe(&["watched"]).expect("subscribe");
    wait_until("the member to be assigned", || {
        let _ = consumer.poll(Duration::from_millis(50));
        consumer.assignment().map(|a| a.count()).unwrap_or(0) == 2
    });
    commit_through(
        &consumer,
        &[
            ("watched", 0, 0),
            ("watched", 1, 0),
            ("abandoned", 0, 5),
            ("abandoned", 1, 6),
        ],
    );
    let admin = admin(&b);
    let results = admin
        .delete_consumer_group_offsets(
            group,
            &[
                TopicPartition::new("watched", 0),
                TopicPartition::new("abandoned", 0),
                TopicPartition::new("abandoned", 9),
            ],
        )
        .await
        .expect("offset delete");
    let codes: BTreeMap<TopicPartition, Option<ResponseError>> = results
        .iter()
        .map(|(tp, r)| (tp.clone(), broker_code(r)))
        .collect();
    println!("OffsetDelete answers with a live member: {codes:?}");
    assert_eq!(
        codes,
        BTreeMap::from([
            (TopicPartition::new("abandoned", 0), None),
            (
                TopicPartition::new("abandoned", 9),
                Some(ResponseError::UnknownTopicOrPartition)
            ),
            (
                TopicPartition::new("watched", 0),
                Some(ResponseError::GroupSubscribedToTopic)
            ),
        ])
    );
    // The member leaves; in an empty group any offset can go.
    drop(consumer);
    wait_for_state(&admin, group, "Empty").await;
    // (through the CLI this time)
    let deleted = rill_ok(
        &b,
        &["group", "delete-offsets", group, "--topic", "watched:1"],
    );
    assert_eq!(deleted.trim(), "deleted offset watched/1");
    let unknown = admin
        .delete_consumer_group_offsets("no-such-group", &[TopicPartition::new("watched", 1)])
        .await;
    assert!(
        matches!(
            unknown,
            Err(Error::Broker {
                code: ResponseError::GroupIdNotFound,
                ..
            })
        ),
        "{unknown:?}"
    );
    let remaining = BTreeMap::from([
        (TopicPartition::new("abandoned", 1), 6),
        (TopicPartition::new("watched", 0), 0),
    ]);
    assert_eq!(
        admin
            .list_consumer_group_offsets(group)
            .await
            .expect("offsets"),
        remaining
    );

    // The tombstones are replayed by the restarted coordinator.
    broker.kill();
    broker.restart();
    let admin = self::admin(&broker.bootstrap());
    let after = admin
        .list_consumer_group_offsets(group)
        .await
        .expect("offsets after the restart");
    assert_eq!(after, remaining, "offsets after a SIGKILL and restart");
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

#[test]
fn clients_cannot_delete_grow_or_produce_to_consumer_offsets() {
    const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    const INVALID_TOPIC_EXCEPTION: i16 = 17;
    let broker = RilldProcess::start_with(BROKER_ARGS);
    let mut conn = RawConn::connect(broker.addr());
    // The first group request creates the topic.
    let found = conn.call(2, &FindCoordinatorRequest::default().with_key(s("any")));
    assert_eq!(found.error_code, 0);
    let offsets_topic = TopicName(s("__consumer_offsets"));

    let deleted = conn.call(
        4,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![offsets_topic.clone()])
            .with_timeout_ms(10_000),
    );
    assert_eq!(
        deleted.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "{deleted:?}"
    );
    let grown = conn.call(
        3,
        &CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(offsets_topic.clone())
                .with_count(10)])
            .with_timeout_ms(10_000),
    );
    assert_eq!(
        grown.results[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "{grown:?}"
    );
    let batch = rill_tests::raw::record_batch(&[&b"forged"[..]], 0);
    let produced = conn.call(9, &requests::produce("__consumer_offsets", 0, batch, -1));
    assert_eq!(
        produced.responses[0].partition_responses[0].error_code,
        INVALID_TOPIC_EXCEPTION
    );
    // Still there, internal, with its 5 partitions.
    let metadata = conn.call(
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(offsets_topic)),
        ])),
    );
    let topic = &metadata.topics[0];
    assert_eq!(topic.error_code, 0);
    assert!(topic.is_internal);
    assert_eq!(topic.partitions.len(), 5);
    // The CLI reports the refusal.
    let refused = rill(
        &broker.bootstrap(),
        &["topic", "delete", "__consumer_offsets"],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    println!("rill topic delete __consumer_offsets: {stderr}");
    assert!(stderr.contains("TopicAuthorizationFailed"), "{stderr}");
}

/// Three brokers: groups are coordinated by the leaders of their `__consumer_offsets`
/// partitions, spread over the brokers. `rill group list` gathers every broker's groups;
/// OffsetDelete at a broker that does not coordinate the group is NOT_COORDINATOR, and
/// through `Admin` (which finds the coordinator) it succeeds. With one broker killed,
/// `rill group list` still lists the others' groups, names the broker it could not ask,
/// and exits non-zero (the list is incomplete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_every_coordinator_are_listed_and_offset_delete_elsewhere_is_not_coordinator() {
    const NOT_COORDINATOR: i16 = 16;
    let test_started = Instant::now();
    let mut cluster = cluster_common::Cluster::start_with(BROKER_ARGS);
    cluster_common::wait_registered(&cluster, 3).await;
    let b = cluster.bootstrap();
    println!("cluster registered at {:?}", test_started.elapsed());
    let admin = admin(&b);
    admin
        .create_topics(&[rill_client::NewTopic::new("spread", 1)])
        .await
        .expect("create topic");
    // Ten groups with an offset each (administrative commits create them); their ids hash
    // to all five __consumer_offsets partitions. The first one's FindCoordinator creates
    // __consumer_offsets: Admin asks the controller, the only broker that can.
    let groups: Vec<String> = (0..10).map(|i| format!("g{i}")).collect();
    for g in &groups {
        admin
            .alter_consumer_group_offsets(
                g,
                &BTreeMap::from([(TopicPartition::new("spread", 0), 1)]),
            )
            .await
            .unwrap_or_else(|e| panic!("commit for {g}: {e}\n{}", cluster.logs()));
    }
    println!("ten groups committed at {:?}", test_started.elapsed());
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    // The leaders of __consumer_offsets' partitions (the coordinators) spread over the
    // brokers, at once or once the leader balancer has moved them.
    let coordinators: BTreeMap<String, i32> = loop {
        let described = admin.describe_groups(&refs).await.expect("describe");
        let coordinators: BTreeMap<String, i32> = described
            .iter()
            .map(|d| (d.group_id.clone(), d.coordinator_id))
            .collect();
        let distinct: BTreeSet<i32> = coordinators.values().copied().collect();
        if distinct.len() >= 2 {
            break coordinators;
        }
        println!(
            "at {:?} every group is on broker {distinct:?}",
            test_started.elapsed()
        );
        assert!(
            test_started.elapsed() < TIMEOUT * 2,
            "every group still on one coordinator: {coordinators:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "coordinators at {:?}: {coordinators:?}",
        test_started.elapsed()
    );

    // Each broker lists the groups it coordinates, and only those.
    for broker_id in 1..=3 {
        let mut conn = RawConn::connect(cluster.broker(broker_id).addr());
        let own: BTreeSet<String> = conn
            .call(4, &ListGroupsRequest::default())
            .groups
            .iter()
            .map(|g| g.group_id.to_string())
            .collect();
        let expected: BTreeSet<String> = coordinators
            .iter()
            .filter(|(_, c)| **c == broker_id)
            .map(|(g, _)| g.clone())
            .collect();
        assert_eq!(own, expected, "groups listed by broker {broker_id}");
    }
    let listed = rill_ok(&b, &["group", "list"]);
    let listed: BTreeSet<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, refs.iter().copied().collect::<BTreeSet<_>>());

    let (group, coordinator) = ("g0", coordinators["g0"]);
    let elsewhere = (1..=3)
        .find(|id| *id != coordinator)
        .expect("another broker");
    let mut conn = RawConn::connect(cluster.broker(elsewhere).addr());
    let request = OffsetDeleteRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(vec![
            kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s("spread")))
                .with_partitions(vec![
                    kafka_protocol::messages::offset_delete_request::OffsetDeleteRequestPartition::default()
                        .with_partition_index(0),
                ]),
        ]);
    let answer = conn.call(0, &request);
    assert_eq!(answer.error_code, NOT_COORDINATOR, "{answer:?}");
    let deleted = admin
        .delete_consumer_group_offsets(group, &[TopicPartition::new("spread", 0)])
        .await
        .expect("offset delete at the coordinator");
    assert_eq!(broker_code(&deleted[0].1), None);
    assert!(admin
        .list_consumer_group_offsets(group)
        .await
        .expect("offsets")
        .is_empty());

    // A broker down: the survivors' groups are still listed, the gap is named.
    let killed = coordinator;
    cluster.brokers[(killed - 1) as usize].kill();
    let survivors_groups: BTreeSet<&str> = coordinators
        .iter()
        .filter(|(_, c)| **c != killed)
        .map(|(g, _)| g.as_str())
        .collect();
    let partial = rill(&cluster.bootstrap_without(&[killed]), &["group", "list"]);
    let stdout = String::from_utf8_lossy(&partial.stdout);
    let stderr = String::from_utf8_lossy(&partial.stderr);
    println!("rill group list with broker {killed} down:\n{stdout}{stderr}");
    assert!(!partial.status.success(), "a partial list must fail");
    assert!(
        stderr.contains(&format!("broker {killed} could not be asked")),
        "{stderr}"
    );
    let listed: BTreeSet<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        listed.is_superset(&survivors_groups),
        "listed {listed:?}, survivors coordinate {survivors_groups:?}"
    );
}
