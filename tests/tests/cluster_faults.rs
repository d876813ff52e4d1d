//! Network faults between the brokers of a three-broker cluster (issue 10, acceptance
//! criterion 2): every broker reaches each peer through a fault-injecting proxy of its
//! own (six proxies, one per ordered pair), so a link can be cut in one direction or
//! both, delayed, or made to flap, while acks=all producers (rill-client, and librdkafka
//! every few rounds) keep producing. Clients reach the brokers directly: only the
//! brokers' traffic (partition groups and the metadata group alike) crosses the faults.
//!
//! Each round picks a scenario from a seeded sequence:
//!
//! | scenario | fault |
//! |---|---|
//! | isolate leader | the leader's four links cut (bytes held) or severed (connections closed, new ones refused): the majority elects a new leader; the old one must not acknowledge, and its uncommitted suffix is truncated after the heal |
//! | split 2/1 | a follower of partition 0 cut off from both others: the leader keeps committing with the remaining follower; the isolated one catches up after the heal |
//! | mute leader | only the leader's outbound links cut (it still hears the followers): they elect a new leader; the old one learns of it at once and follows without being able to answer |
//! | deaf leader | only the leader's inbound links cut (the followers still hear it): it steps down for want of a quorum (check-quorum), then the followers elect a new leader |
//! | quiet leader | the producers pause until every group is quiet (Raft quiescence: no ticks, no heartbeats), then the leader is isolated, muted or made deaf: the followers must wake up (the transport's silence detector, or the old leader's messages) and elect a new leader |
//! | flapping link | the link between the leader and one follower (a third of the time: both followers) flaps, cut half of every 200-600 ms; connections through it dropped once midway |
//! | delayed follower | everything from the leader to one follower delayed 50-200 ms |
//!
//! After the heal, each round checks that a leader serves (fresh acks=all records are
//! acknowledged) and that the three replicas of every partition converge (same log end
//! offset, all of it committed); it prints the time to a new leader, the records
//! acknowledged and the time to converge. After the last round the history checker
//! reads every partition back: no acknowledged record lost, no offset holding two
//! records; then the brokers stop and every replica's segment files must be
//! byte-identical.
//!
//! A second test cuts a leader off and checks that an acks=all produce it took just
//! before is answered NOT_LEADER_OR_FOLLOWER once it steps down, not held.
//!
//! `RILL_FAULT_ROUNDS=N` runs N rounds (default 20; the long mode is e.g. 500),
//! `RILL_FAULT_MS_MAX=T` holds faults up to T ms (default 2500), and
//! `RILL_FAULT_SEED=S` replays a sequence of scenarios (the test prints its seed).

mod cluster_common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_common::*;
use rill_client::{Producer, ProducerConfig};
use rill_tests::history::{Duplicates, History};
use rill_tests::proxy::{Direction, FaultControl, FaultProxy};

const ROUNDS_DEFAULT: u32 = 20;
/// Shortest time a fault is held (a leader-losing one: at least until a new leader is
/// elected, and 300 ms more).
const FAULT_MS_MIN: u64 = 1000;
/// Longest time a fault is held by default: short rounds keep 20 of them near a minute.
/// `RILL_FAULT_MS_MAX` raises it (e.g. 40000: longer than the transport's 30 s
/// write-stall timeout, which tears down a cut connection whose socket buffers filled).
const FAULT_MS_MAX_DEFAULT: u64 = 2500;
/// Broker ids of the cluster.
const BROKERS: [i32; 3] = [1, 2, 3];
/// The cluster id every broker is given: each sees its peers at proxy addresses of
/// its own, so the id derived from the voters' text would differ per broker.
const CLUSTER_ID: &str = "fault-proxy-cluster";
/// Longest a partition may go without a new leader once its leader is cut off. An
/// election takes 1-2 s (10-20 ticks of 100 ms) after the last heartbeat, up to 3 s
/// for a deaf leader (its check-quorum step-down comes first); the bound is for a
/// loaded CI machine and catches an election that does not happen. 15 s was once
/// exceeded in round 0 with the machine at load 8-11 (two builds and a benchmark
/// beside the tests); the same seed passed at once when rerun, so 30 s.
const ELECTION_MAX: Duration = Duration::from_secs(30);
/// Longest the groups may take to go quiet once producing stops (every group of
/// every broker idle: all replicas match the leader's log and commit).
const QUIET_MAX: Duration = Duration::from_secs(30);
/// Longest the replicas may take to agree after a heal (same log end, all committed).
const CONVERGE_MAX: Duration = Duration::from_secs(30);
/// Records produced (and required to be acknowledged) after each heal.
const RECORDS_AFTER_HEAL: usize = 100;

/// The network faults a round can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    IsolateLeader,
    SplitFollower,
    MuteLeader,
    DeafLeader,
    QuietLeader,
    FlappingLink,
    DelayedFollower,
}

impl Scenario {
    const ALL: [Scenario; 7] = [
        Scenario::IsolateLeader,
        Scenario::SplitFollower,
        Scenario::MuteLeader,
        Scenario::DeafLeader,
        Scenario::QuietLeader,
        Scenario::FlappingLink,
        Scenario::DelayedFollower,
    ];

    /// Whether the fault cuts partition 0's leader off from its followers.
    fn forces_new_leader(self) -> bool {
        matches!(
            self,
            Scenario::IsolateLeader
                | Scenario::MuteLeader
                | Scenario::DeafLeader
                | Scenario::QuietLeader
        )
    }
}

/// splitmix64: a few lines instead of a dependency, and the sequence of a seed is
/// the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// One proxy per ordered pair of brokers: broker `from` reaches broker `to` only
/// through `proxy(from, to)`. The transport sends each direction of a pair on the
/// connection its sender dialed (outbound connections only write, inbound ones only
/// read after the handshake), so all of `from`'s messages to `to` cross this proxy's
/// forward direction and none of `to`'s messages to `from` do: cutting one proxy is a
/// one-way cut, cutting both of a pair's proxies cuts the link.
///
/// The proxies run on a runtime of their own, so producers busy on the test's runtime
/// do not delay the bytes they forward (or the faults' timing).
struct Links {
    proxies: HashMap<(i32, i32), FaultProxy>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Links {
    /// Proxies to the brokers' inter-broker ports (`ports[id - 1]`), started before the
    /// brokers (the brokers' transports retry until the upstream listens).
    fn start(ports: &[u16]) -> Links {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let mut proxies = HashMap::new();
        for from in BROKERS {
            for to in BROKERS.into_iter().filter(|to| *to != from) {
                let upstream: SocketAddr = ([127, 0, 0, 1], ports[(to - 1) as usize]).into();
                let proxy = std::thread::scope(|s| {
                    s.spawn(|| runtime.block_on(FaultProxy::start(upstream)))
                        .join()
                        .expect("proxy start thread")
                })
                .expect("start proxy");
                proxies.insert((from, to), proxy);
            }
        }
        Links {
            proxies,
            runtime: Some(runtime),
        }
    }

    /// Broker `id`'s `--controller-voters`: itself at its own port, each peer at the
    /// proxy from `id` to it.
    fn voters_for(&self, id: i32, ports: &[u16]) -> String {
        BROKERS
            .iter()
            .map(|&peer| {
                if peer == id {
                    format!("{peer}@127.0.0.1:{}", ports[(peer - 1) as usize])
                } else {
                    format!("{peer}@{}", self.proxies[&(id, peer)].listen_addr())
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The proxy carrying `from`'s messages to `to`.
    fn link(&self, from: i32, to: i32) -> &FaultControl {
        self.proxies[&(from, to)].control()
    }

    /// Cuts both directions between `a` and `b`.
    fn cut_pair(&self, a: i32, b: i32) {
        self.link(a, b).cut_both();
        self.link(b, a).cut_both();
    }

    /// Cuts `id` off from every other broker, both ways.
    fn isolate(&self, id: i32) {
        for peer in BROKERS.into_iter().filter(|p| *p != id) {
            self.cut_pair(id, peer);
        }
    }

    /// Closes every connection between `id` and the other brokers, and each new one
    /// as soon as it is accepted, both ways.
    fn sever(&self, id: i32) {
        for peer in BROKERS.into_iter().filter(|p| *p != id) {
            self.link(id, peer).sever();
            self.link(peer, id).sever();
        }
    }

    /// Ends every fault of every proxy (cuts, flapping and delays).
    fn heal_all(&self) {
        for proxy in self.proxies.values() {
            let control = proxy.control();
            control.heal();
            for direction in Direction::BOTH {
                control.delay(direction, Duration::ZERO);
            }
        }
    }

    /// Bytes forwarded over all proxies, for the report.
    fn bytes_forwarded(&self) -> u64 {
        self.proxies
            .values()
            .map(|p| p.control().bytes_forwarded(Direction::Forward))
            .sum()
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        // Dropping the proxies aborts their tasks; the runtime must not be dropped
        // inside the test's runtime (it would block), so it is let go in the background.
        self.proxies.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What one broker's replica of a partition reports on its admin port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReplicaView {
    log_end_offset: i64,
    high_watermark: i64,
    leader_epoch: u64,
    leader: Option<i32>,
}

/// Broker `id`'s view of TOPIC's partitions (`GET /partitions` on its admin port),
/// by partition; `None` if the broker does not answer.
async fn replica_views(cluster: &Cluster, id: i32) -> Option<HashMap<i32, ReplicaView>> {
    let admin_addr = cluster.broker(id).admin_addr();
    let body = tokio::task::spawn_blocking(move || http_get(admin_addr, "/partitions"))
        .await
        .ok()??;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut views = HashMap::new();
    for p in json["partitions"].as_array()? {
        if p["topic"].as_str() != Some(TOPIC) {
            continue;
        }
        views.insert(
            i32::try_from(p["partition"].as_i64()?).ok()?,
            ReplicaView {
                log_end_offset: p["log_end_offset"].as_i64()?,
                high_watermark: p["high_watermark"].as_i64()?,
                leader_epoch: p["leader_epoch"].as_u64()?,
                leader: p["leader"].as_i64().and_then(|l| i32::try_from(l).ok()),
            },
        );
    }
    Some(views)
}

/// `GET path` over HTTP/1.0; the body, or `None` on any failure (a broker that is
/// busy or restarting is asked again by the caller).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: rilld\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

/// Waits until one of `voters` (brokers that can still form a majority) sees a leader
/// of partition 0 other than `old_leader` with a later epoch; returns it.
async fn wait_new_leader(
    cluster: &Cluster,
    voters: &[i32],
    old_leader: i32,
    old_epoch: u64,
    started: Instant,
    round: u32,
) -> i32 {
    loop {
        for &id in voters {
            if let Some(view) = replica_views(cluster, id)
                .await
                .and_then(|v| v.get(&0).copied())
            {
                if let Some(leader) = view.leader {
                    if leader != old_leader && view.leader_epoch > old_epoch {
                        return leader;
                    }
                }
            }
        }
        assert!(
            started.elapsed() < ELECTION_MAX,
            "round {round}: brokers {voters:?} elected no new leader of partition 0 within \
             {ELECTION_MAX:?} of cutting off broker {old_leader}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Partition 0's leader and epoch as the brokers report them: the leader a majority of
/// the brokers agree on, waiting for one.
async fn current_leader(cluster: &Cluster, round: u32) -> (i32, u64) {
    let deadline = Instant::now() + ELECTION_MAX;
    loop {
        let mut votes: HashMap<(i32, u64), usize> = HashMap::new();
        for id in BROKERS {
            if let Some(view) = replica_views(cluster, id)
                .await
                .and_then(|v| v.get(&0).copied())
            {
                if let Some(leader) = view.leader {
                    *votes.entry((leader, view.leader_epoch)).or_default() += 1;
                }
            }
        }
        if let Some((&found, _)) = votes.iter().find(|(_, n)| **n >= 2) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: no leader of partition 0 that two brokers agree on: {votes:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every broker's replica of every partition has the same log end offset,
/// all of it committed, and the same leader; returns how long after `since` that was.
async fn wait_converged(cluster: &Cluster, round: u32, since: Instant) -> Duration {
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for id in BROKERS {
            views.push(replica_views(cluster, id).await);
        }
        let converged = (0..PARTITIONS).all(|partition| {
            let first = views[0].as_ref().and_then(|v| v.get(&partition));
            first.is_some_and(|first| {
                first.leader.is_some()
                    && first.high_watermark == first.log_end_offset
                    && views.iter().all(|v| {
                        v.as_ref()
                            .and_then(|v| v.get(&partition))
                            .is_some_and(|view| {
                                view.log_end_offset == first.log_end_offset
                                    && view.high_watermark == first.high_watermark
                                    && view.leader == first.leader
                            })
                    })
            })
        });
        if converged {
            return since.elapsed();
        }
        assert!(
            started.elapsed() < CONVERGE_MAX,
            "round {round}: replicas did not converge within {CONVERGE_MAX:?} of the heal: \
             {views:#?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three brokers that reach each other only through [`Links`], registered, with
/// TOPIC created (RF=3).
async fn start_behind_proxies() -> (Links, Cluster) {
    let ports: Vec<u16> = BROKERS.iter().map(|_| free_port()).collect();
    let links = Links::start(&ports);
    let voters: Vec<String> = BROKERS
        .iter()
        .map(|&id| links.voters_for(id, &ports))
        .collect();
    let cluster = Cluster::start_with_voters(&ports, &voters, &["--cluster-id", CLUSTER_ID]);
    wait_registered(&cluster, BROKERS.len()).await;
    create_replicated_topic(&cluster).await;
    (links, cluster)
}

/// Waits until every broker reports each of its groups (the topic's partitions and
/// the metadata group) quiet; returns how long that took.
async fn wait_quiet(cluster: &Cluster, round: u32) -> Duration {
    let groups = PARTITIONS as u64 + 1;
    let started = Instant::now();
    loop {
        let quiet: Vec<u64> = BROKERS
            .iter()
            .map(|&id| cluster.broker(id).metric("rill_raft_quiet_groups"))
            .collect();
        if quiet.iter().all(|q| *q >= groups) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < QUIET_MAX,
            "round {round}: groups not quiet within {QUIET_MAX:?} of the last write: \
             {quiet:?} of {groups} per broker\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Figures of one round, printed as it ends and summed up at the end.
struct RoundReport {
    scenario: Scenario,
    time_to_new_leader: Option<Duration>,
    acked: usize,
    converged_after: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_network_faults_and_replicas_converge() {
    let rounds: u32 = env_number("RILL_FAULT_ROUNDS").unwrap_or(ROUNDS_DEFAULT);
    let fault_ms_max: u64 = env_number("RILL_FAULT_MS_MAX").unwrap_or(FAULT_MS_MAX_DEFAULT);
    let seed: u64 = env_number("RILL_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    });
    println!("RILL_FAULT_SEED={seed} RILL_FAULT_ROUNDS={rounds} RILL_FAULT_MS_MAX={fault_ms_max}");
    let mut rng = Rng(seed);

    let (links, mut cluster) = start_behind_proxies().await;

    let test_started = Instant::now();
    let mut history = History::default();
    let mut reports = Vec::new();
    for round in 0..rounds {
        let scenario = rng.pick(&Scenario::ALL);
        // A quiet leader is cut off after every group went quiet (no producers yet).
        let quiet_after = if scenario == Scenario::QuietLeader {
            Some(wait_quiet(&cluster, round).await)
        } else {
            None
        };
        let (leader, epoch) = current_leader(&cluster, round).await;
        let followers: Vec<i32> = BROKERS.into_iter().filter(|b| *b != leader).collect();
        let follower = rng.pick(&followers);
        let fault_ms = rng.between(FAULT_MS_MIN, fault_ms_max.max(FAULT_MS_MIN));
        let bootstrap = cluster.bootstrap();

        // Producers run across the fault and past the heal, so sends are in flight
        // at both edges.
        let produce_window = Duration::from_millis(300 + fault_ms + 300);
        let start_producers = || {
            let live = produce_for(
                Producer::new(ProducerConfig::new(&bootstrap)).expect("producer"),
                round,
                produce_window,
            );
            let rdkafka_live = (round % 4 == 0).then(|| {
                rdkafka_produce_with(
                    &bootstrap,
                    round,
                    produce_window,
                    &[("enable.idempotence", "true")],
                )
            });
            (live, rdkafka_live)
        };
        let mut producers = None;
        if quiet_after.is_none() {
            producers = Some(start_producers());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        let fault_started = Instant::now();
        let mut time_to_new_leader = None;
        let what = match scenario {
            Scenario::IsolateLeader => {
                // Held bytes (a silent partition) or closed connections that cannot
                // reopen (the transport's reconnect and backoff after the heal).
                if rng.next() % 2 == 0 {
                    links.sever(leader);
                    format!("leader {leader} severed")
                } else {
                    links.isolate(leader);
                    format!("leader {leader} isolated")
                }
            }
            Scenario::MuteLeader => {
                for &f in &followers {
                    links.link(leader, f).cut_both();
                }
                format!("leader {leader}'s outbound links cut")
            }
            Scenario::DeafLeader => {
                for &f in &followers {
                    links.link(f, leader).cut_both();
                }
                format!("leader {leader}'s inbound links cut")
            }
            Scenario::QuietLeader => {
                let quiet_ms = quiet_after.unwrap_or_default().as_millis();
                match rng.next() % 3 {
                    0 => {
                        links.isolate(leader);
                        format!("quiet (after {quiet_ms} ms) leader {leader} isolated")
                    }
                    1 => {
                        for &f in &followers {
                            links.link(leader, f).cut_both();
                        }
                        format!("quiet (after {quiet_ms} ms) leader {leader}'s outbound links cut")
                    }
                    _ => {
                        for &f in &followers {
                            links.link(f, leader).cut_both();
                        }
                        format!("quiet (after {quiet_ms} ms) leader {leader}'s inbound links cut")
                    }
                }
            }
            Scenario::SplitFollower => {
                links.isolate(follower);
                format!("follower {follower} split from the other two")
            }
            Scenario::FlappingLink => {
                let period = Duration::from_millis(rng.between(200, 600));
                // Now and then both of the leader's links flap: it keeps losing and
                // regaining its majority.
                let peers = if rng.next() % 3 == 0 {
                    followers.clone()
                } else {
                    vec![follower]
                };
                for &peer in &peers {
                    for (a, b) in [(leader, peer), (peer, leader)] {
                        links.link(a, b).flap(period, 0.5);
                    }
                }
                format!("links {leader}<->{peers:?} flapping every {period:?}")
            }
            Scenario::DelayedFollower => {
                let delay = Duration::from_millis(rng.between(50, 200));
                links
                    .link(leader, follower)
                    .delay(Direction::Forward, delay);
                format!("{leader}->{follower} delayed {delay:?}")
            }
        };
        // The quiet round's producers start once the fault is in place: their first
        // sends reach the cut-off leader, and wake its group.
        let (live, rdkafka_live) = producers.unwrap_or_else(start_producers);
        let what = if scenario.forces_new_leader() {
            let new =
                wait_new_leader(&cluster, &followers, leader, epoch, fault_started, round).await;
            time_to_new_leader = Some(fault_started.elapsed());
            format!("{what}; {new} elected")
        } else {
            what
        };
        // Hold the fault for its time (an election may have used part of it already;
        // the new leader gets at least a moment to serve under the fault).
        let hold = Duration::from_millis(fault_ms).saturating_sub(fault_started.elapsed());
        if scenario == Scenario::FlappingLink {
            tokio::time::sleep(hold / 2).await;
            for peer in followers.iter().copied() {
                links.link(leader, peer).drop_connections();
                links.link(peer, leader).drop_connections();
            }
            tokio::time::sleep(hold / 2).await;
        } else {
            tokio::time::sleep(hold.max(Duration::from_millis(300))).await;
        }
        // What the cut-off leader wrote that its majority never had: the suffix the
        // heal must truncate (it must not have acknowledged any of it).
        let stale_suffix = if scenario.forces_new_leader() {
            replica_views(&cluster, leader)
                .await
                .and_then(|v| v.get(&0).copied())
                .map(|v| v.log_end_offset - v.high_watermark)
        } else {
            None
        };
        links.heal_all();
        let healed_at = Instant::now();

        let mut outcomes = vec![live.await.expect("producer task")];
        if let Some(task) = rdkafka_live {
            outcomes.push(task.await.expect("rdkafka producer task"));
        }
        let indeterminate = outcomes
            .iter()
            .flatten()
            .filter(|(_, o)| o.is_none())
            .count();
        // Each producer's own send order (both are idempotent).
        let acked: usize = outcomes
            .into_iter()
            .map(|o| record_with_order(&mut history, o))
            .sum();
        // A leader serves after the heal: every one of these is acknowledged.
        let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
        let healed_acked =
            produce(&producer, &mut history, round, "healed", RECORDS_AFTER_HEAL).await;
        assert_eq!(
            healed_acked,
            RECORDS_AFTER_HEAL,
            "round {round} ({what}): only {healed_acked} of {RECORDS_AFTER_HEAL} records \
             produced after the heal were acknowledged\n{}",
            cluster.logs()
        );
        drop(producer);
        let converged_after = wait_converged(&cluster, round, healed_at).await;

        println!(
            "round {round:>3} {:<16} {what}, held {:.1} s: new leader after {}; {acked} \
             acknowledged around the fault, {indeterminate} indeterminate; {}converged \
             {:.2} s after the heal",
            format!("{scenario:?}"),
            (healed_at - fault_started).as_secs_f64(),
            time_to_new_leader.map_or("-".to_string(), |t| format!("{:.2} s", t.as_secs_f64())),
            stale_suffix.map_or(String::new(), |n| format!(
                "old leader's uncommitted suffix {n} offsets; "
            )),
            converged_after.as_secs_f64(),
        );
        reports.push(RoundReport {
            scenario,
            time_to_new_leader,
            acked,
            converged_after,
        });
    }

    // Nothing acknowledged is lost and no offset holds two records, over all rounds.
    // Both producers are idempotent: no record twice, each in its send order.
    read_back(&cluster, &mut history).await;
    let report = history.check(Duplicates::Forbidden);
    println!("{report}");
    for scenario in Scenario::ALL {
        let of: Vec<&RoundReport> = reports.iter().filter(|r| r.scenario == scenario).collect();
        let mut elections: Vec<Duration> = of.iter().filter_map(|r| r.time_to_new_leader).collect();
        elections.sort();
        let converge_max = of
            .iter()
            .map(|r| r.converged_after)
            .max()
            .unwrap_or_default();
        println!(
            "{scenario:?}: {} rounds, {} acknowledged during faults, new leader median {}, \
             converged within {:.2} s",
            of.len(),
            of.iter().map(|r| r.acked).sum::<usize>(),
            elections
                .get(elections.len() / 2)
                .map_or("-".to_string(), |t| format!("{:.2} s", t.as_secs_f64())),
            converge_max.as_secs_f64(),
        );
    }
    println!(
        "{rounds} rounds in {:.1} s; {} MiB crossed the proxies",
        test_started.elapsed().as_secs_f64(),
        links.bytes_forwarded() >> 20
    );
    report.assert_ok();

    // Converged once more (nothing is produced now), then every broker killed at once
    // and the files compared.
    wait_converged(&cluster, rounds, Instant::now()).await;
    kill_all(&mut cluster);
    assert_replicas_identical(&cluster);
}

/// A leader cut off from both followers steps down once it misses their answers for
/// an election timeout (check-quorum); an acks=all produce it took just before must
/// then be answered NOT_LEADER_OR_FOLLOWER, so the producer looks for the new leader,
/// not held until the partition heals or the request times out. (Answering it is
/// safe either way: the producer treats it as not written, and retries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_answers_its_waiting_produces_not_leader() {
    use kafka_protocol::messages::ProduceRequest;
    use rill_tests::raw::{record_batch, requests, RawConn};
    const NOT_LEADER_OR_FOLLOWER: i16 = 6;

    let (links, cluster) = start_behind_proxies().await;
    let (leader, _) = current_leader(&cluster, 0).await;
    let leader_addr = cluster.broker(leader).addr();
    // Connected before the cut: clients reach brokers directly, only broker links
    // cross the proxies.
    let mut conn = RawConn::connect(leader_addr);
    links.isolate(leader);
    let cut_at = Instant::now();
    // Sent at once, well within the election timeout (1 s) that check-quorum waits,
    // so the leader still leads when it appends; the request's own timeout (30 s) is
    // longer than RawConn's read timeout (10 s), which fails the test if no answer comes.
    let request =
        requests::produce(TOPIC, 0, record_batch(&[b"cut off"], 0), -1).with_timeout_ms(30_000);
    let response =
        tokio::task::spawn_blocking(move || conn.call::<ProduceRequest>(9, &request)).await;
    let answered_after = cut_at.elapsed();
    links.heal_all();
    let response = response.unwrap_or_else(|e| {
        panic!(
            "the isolated leader {leader} did not answer an acks=all produce within \
             RawConn's 10 s read timeout ({e})\n{}",
            cluster.logs()
        )
    });
    let code = response.responses[0].partition_responses[0].error_code;
    println!(
        "isolated leader {leader} answered error {code} after {:.2} s",
        answered_after.as_secs_f64()
    );
    assert_eq!(
        code, NOT_LEADER_OR_FOLLOWER,
        "the isolated leader answered error {code}, not NOT_LEADER_OR_FOLLOWER"
    );
}
