//! `rill bench cluster`: what replication costs, measured in one run on one machine.
//!
//! 1. A single broker: a produce run at acks=1 (the fastest a Rill node goes).
//! 2. Three brokers forming a cluster: the same run at acks=all to an RF=3 topic, so
//!    every record is on a majority of replicas before it is acknowledged.
//! 3. The ratio of the two, and then the idle cost of replication: `--idle-partitions`
//!    RF=3 partitions are created on the cluster and, once every one has a leader and
//!    the groups have gone quiet, each broker's CPU (user + system, from `/proc`) is
//!    measured over `--idle-measure-s`.
//!
//! Brokers are started with the `rilld` next to this `rill` (or `--rilld`), with data
//! under `--dir` (default: the system's temporary directory), and stopped and removed
//! at the end. Both runs share the machine with the bench client itself, so the ratio
//! is what one machine shows, not what three machines would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rill_client::{Admin, ClientConfig, Error, NewTopic, ResponseError};

use super::brokers::{cpu_seconds_of, rilld_path, start_cluster, LocalBroker};
use super::{produce_run, ProduceBench, ProduceOutcome};
use crate::ProducerOptions;

/// Replication factor of the cluster's topics.
const REPLICATION_FACTOR: i16 = 3;
/// Brokers of the cluster.
const CLUSTER_BROKERS: i32 = 3;
/// Target from the issue: RF=3 acks=all at least this share of single-node acks=1.
const RATIO_TARGET: f64 = 0.40;
/// Target: idle RF=3 partitions cost each broker under this share of one core.
const IDLE_CPU_TARGET_PCT: f64 = 5.0;
/// How long the idle phase waits for all partitions to have leaders.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Args, Debug)]
pub(crate) struct ClusterBench {
    /// Records per produce run.
    #[arg(short, long, default_value_t = 500_000)]
    count: u64,
    /// Value size in bytes.
    #[arg(short, long, default_value_t = 1024)]
    size: usize,
    /// Partitions of each produce run's topic.
    #[arg(short, long, default_value_t = 1)]
    partitions: i32,
    /// Idle RF=3 partitions created for the CPU measurement (0: skip it). Each
    /// replica reserves about 1 MiB of disk: 10,000 take about 30 GB on one machine.
    #[arg(long, default_value_t = 10_000)]
    idle_partitions: u32,
    /// Partitions per idle topic.
    #[arg(long, default_value_t = 100)]
    idle_topic_partitions: u32,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 30)]
    idle_measure_s: u64,
    /// Seconds the idle cluster settles (groups go quiet) before the measurement.
    #[arg(long, default_value_t = 10)]
    idle_settle_s: u64,
    /// The rilld binary (default: the one next to this `rill`).
    #[arg(long)]
    rilld: Option<PathBuf>,
    /// Directory for the brokers' data (a fresh subdirectory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Extra flag for every rilld, repeatable (e.g. `--rilld-arg=--durability=fsync`).
    #[arg(long = "rilld-arg", allow_hyphen_values = true)]
    rilld_args: Vec<String>,
    /// Batches of one partition in flight at once, in both runs (Kafka's producer
    /// default is 5).
    #[arg(long, default_value_t = 5)]
    in_flight_per_partition: usize,
    /// Hide the progress bars.
    #[arg(long)]
    quiet: bool,
}

impl ClusterBench {
    fn produce_bench(&self, topic: &str, acks: &str) -> ProduceBench {
        ProduceBench {
            topic: topic.to_owned(),
            size: self.size,
            count: self.count,
            partitions: self.partitions,
            keyed: false,
            rate: 0,
            quiet: self.quiet,
            producer: ProducerOptions {
                acks: acks.to_owned(),
                compression: "none".to_owned(),
                linger_ms: 5,
                batch_bytes_max: 1 << 20,
                buffer_bytes_max: 64 << 20,
                in_flight_per_partition: self.in_flight_per_partition,
                no_idempotence: false,
            },
        }
    }
}

fn client_config(brokers: &[LocalBroker]) -> ClientConfig {
    let bootstrap = brokers
        .iter()
        .map(|b| b.client_addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut config = ClientConfig::new(&bootstrap);
    config.client_id = "rill-bench-cluster".to_owned();
    config
}

pub(crate) async fn run(b: ClusterBench) -> Result<(), Error> {
    let rilld = rilld_path(b.rilld.clone())?;
    let dir = b
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("rill-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Config(format!("create {}: {e}", dir.display())))?;
    println!(
        "brokers: {} (data and logs under {})",
        rilld.display(),
        dir.display()
    );
    let outcome = run_in(&b, &rilld, &dir).await;
    // The brokers are stopped by now (dropped inside `run_in`); their logs go too.
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn run_in(
    b: &ClusterBench,
    rilld: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(), Error> {
    println!("== 1 node, acks=1 ==");
    let (single, single_cpu) = {
        let broker = LocalBroker::start(rilld, &dir.join("single"), 1, &b.rilld_args)?;
        let brokers = [broker];
        let cpu = CpuMeter::start(&brokers);
        let outcome = produce_run(
            client_config(&brokers),
            &b.produce_bench("bench-single", "1"),
            1,
        )
        .await?;
        let cpu = cpu.stop(&brokers);
        (outcome, cpu)
    };
    print_row("1 node, acks=1", &single);

    println!("== {CLUSTER_BROKERS} nodes, RF={REPLICATION_FACTOR}, acks=all ==");
    let cluster = start_cluster(rilld, &dir.join("cluster"), CLUSTER_BROKERS, &b.rilld_args)?;
    let client = client_config(&cluster);
    wait_registered(&client, CLUSTER_BROKERS as usize).await?;
    let cpu = CpuMeter::start(&cluster);
    let replicated = produce_run(
        client.clone(),
        &b.produce_bench("bench-rf3", "all"),
        REPLICATION_FACTOR,
    )
    .await?;
    let replicated_cpu = cpu.stop(&cluster);

    println!();
    println!(
        "{:<32} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "MB/s", "records/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    print_row("1 node, acks=1", &single);
    print_row("3 nodes, RF=3, acks=all", &replicated);
    let ratio = replicated.mb_per_s() / single.mb_per_s().max(1e-9);
    println!(
        "RF=3 acks=all / 1-node acks=1 throughput: {:.2} (target >= {RATIO_TARGET:.2}: {})",
        ratio,
        if ratio >= RATIO_TARGET {
            "met"
        } else {
            "NOT met"
        }
    );
    println!();
    println!("CPU-seconds per GB produced (each broker, this client) and cores busy:");
    single_cpu.print("1 node, acks=1", &single);
    replicated_cpu.print("3 nodes, RF=3, acks=all", &replicated);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let single_demand = single_cpu.per_gb(&single);
    let replicated_demand = replicated_cpu.per_gb(&replicated);
    println!(
        "all processes: {single_demand:.2} vs {replicated_demand:.2} CPU-s/GB ({:.2}x); \
         if the {cores} cores are the limit, CPU alone allows a ratio of about {:.2}",
        replicated_demand / single_demand.max(1e-9),
        single_demand / replicated_demand.max(1e-9)
    );

    if b.idle_partitions > 0 {
        idle_cpu(b, &client, &cluster).await?;
    }
    Ok(())
}

/// CPU seconds used by the brokers and this process over a run.
struct CpuMeter {
    brokers: Vec<Option<f64>>,
    client: Option<f64>,
    started: Instant,
}

/// What a [`CpuMeter`] measured.
struct CpuUse {
    brokers_s: Vec<f64>,
    client_s: f64,
    wall_s: f64,
}

impl CpuMeter {
    fn start(brokers: &[LocalBroker]) -> CpuMeter {
        CpuMeter {
            brokers: brokers.iter().map(LocalBroker::cpu_seconds).collect(),
            client: cpu_seconds_of("self"),
            started: Instant::now(),
        }
    }

    fn stop(self, brokers: &[LocalBroker]) -> CpuUse {
        let delta = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        CpuUse {
            brokers_s: brokers
                .iter()
                .zip(self.brokers)
                .map(|(b, before)| delta(before, b.cpu_seconds()))
                .collect(),
            client_s: delta(self.client, cpu_seconds_of("self")),
            wall_s: self.started.elapsed().as_secs_f64(),
        }
    }
}

impl CpuUse {
    fn total_s(&self) -> f64 {
        self.brokers_s.iter().sum::<f64>() + self.client_s
    }

    /// CPU seconds of every process per GB the run produced.
    fn per_gb(&self, o: &ProduceOutcome) -> f64 {
        self.total_s() / (o.bytes as f64 / 1e9).max(1e-9)
    }

    fn print(&self, name: &str, o: &ProduceOutcome) {
        let gb = (o.bytes as f64 / 1e9).max(1e-9);
        let brokers: Vec<String> = self
            .brokers_s
            .iter()
            .map(|s| format!("{:.2}", s / gb))
            .collect();
        println!(
            "{:<32} brokers [{}]  client {:.2}  cores busy {:.2}",
            name,
            brokers.join(", "),
            self.client_s / gb,
            self.total_s() / self.wall_s.max(1e-9)
        );
    }
}

fn print_row(name: &str, o: &ProduceOutcome) {
    println!(
        "{:<32} {:>9.1} {:>11.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        name,
        o.mb_per_s(),
        o.records_per_s(),
        o.latency_ms(0.50),
        o.latency_ms(0.99),
        o.latency_ms(0.999),
        o.latency_us.max() as f64 / 1000.0
    );
}

/// Waits until the cluster lists `count` brokers and a controller.
async fn wait_registered(client: &ClientConfig, count: usize) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let admin = Admin::new(client.clone())?;
        match admin.describe_cluster().await {
            Ok(d) if d.brokers.len() == count && d.controller_id >= 0 => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(Error::Config(format!(
                    "the cluster did not register {count} brokers within 60 s"
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Creates the idle partitions, waits for their leaders and quiet, and prints each
/// broker's CPU over the measurement window.
async fn idle_cpu(
    b: &ClusterBench,
    client: &ClientConfig,
    cluster: &[LocalBroker],
) -> Result<(), Error> {
    let per_topic = b.idle_topic_partitions.clamp(1, b.idle_partitions);
    // (name, partitions): the last topic takes what is left.
    let topics: Vec<(String, u32)> = (0..b.idle_partitions.div_ceil(per_topic))
        .map(|i| {
            let partitions = per_topic.min(b.idle_partitions - i * per_topic);
            (format!("bench-idle-{i}"), partitions)
        })
        .collect();
    println!();
    println!(
        "== idle: {} RF={REPLICATION_FACTOR} partitions in {} topics ==",
        b.idle_partitions,
        topics.len()
    );
    let admin = Admin::new(client.clone())?;
    let started = Instant::now();
    for (name, partitions) in &topics {
        let topic = NewTopic {
            replication_factor: REPLICATION_FACTOR,
            ..NewTopic::new(name.clone(), *partitions as i32)
        };
        match admin.create_topics(&[topic]).await {
            Ok(()) => {}
            Err(Error::Broker {
                code: ResponseError::TopicAlreadyExists,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    println!("created in {:.1} s", started.elapsed().as_secs_f64());
    let deadline = Instant::now() + LEADERS_TIMEOUT;
    loop {
        let mut leaderless = 0usize;
        for chunk in topics.chunks(20) {
            let names: Vec<&str> = chunk.iter().map(|(name, _)| name.as_str()).collect();
            let expected: usize = chunk.iter().map(|(_, n)| *n as usize).sum();
            let led = match admin.describe_topics(&names).await {
                Ok(infos) => infos
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .filter(|p| p.leader >= 0)
                    .count(),
                Err(_) => 0,
            };
            leaderless += expected.saturating_sub(led);
        }
        if leaderless == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Config(format!(
                "{leaderless} idle partitions without a leader after {} s",
                LEADERS_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "every partition has a leader {:.1} s after the first create; settling {} s",
        started.elapsed().as_secs_f64(),
        b.idle_settle_s
    );
    tokio::time::sleep(Duration::from_secs(b.idle_settle_s)).await;
    let before: Vec<Option<f64>> = cluster.iter().map(LocalBroker::cpu_seconds).collect();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(b.idle_measure_s)).await;
    let window_s = window.elapsed().as_secs_f64();
    println!(
        "{:<8} {:>8} {:>14} {:>13} {:>13} {:>10}",
        "broker", "pid", "CPU % of core", "quiet groups", "ticking", "RSS MiB"
    );
    let mut worst: f64 = 0.0;
    for (broker, before) in cluster.iter().zip(before) {
        let cpu_pct = match (before, broker.cpu_seconds()) {
            (Some(a), Some(b)) => (b - a) / window_s * 100.0,
            _ => f64::NAN,
        };
        worst = worst.max(cpu_pct);
        let gauge = |name| {
            broker
                .metric(name)
                .map_or("?".to_owned(), |v| v.to_string())
        };
        println!(
            "{:<8} {:>8} {:>14.2} {:>13} {:>13} {:>10.1}",
            broker.node_id,
            broker.pid(),
            cpu_pct,
            gauge("rill_raft_quiet_groups"),
            gauge("rill_raft_ticking_groups"),
            broker.rss_kib().unwrap_or(0) as f64 / 1024.0
        );
    }
    println!(
        "idle CPU per broker over {window_s:.0} s, worst {worst:.2} % of a core (target < {IDLE_CPU_TARGET_PCT:.0} %: {})",
        if worst < IDLE_CPU_TARGET_PCT { "met" } else { "NOT met" }
    );
    Ok(())
}
