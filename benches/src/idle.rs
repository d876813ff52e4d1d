//! What idle replication costs (formerly `rill bench cluster`'s second phase): a fresh
//! 3-broker cluster gets `partitions` RF=3 partitions; once every one has a leader and
//! the Raft groups have gone quiet, each broker's CPU (user + system, from `/proc`) is
//! measured over a window.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use rill_client::{Admin, ClientConfig, NewTopic, ResponseError};
use serde_json::{json, Value};

use crate::brokers::{start_cluster, LocalBroker};
use crate::scenarios::wait_registered;
use crate::Error;

/// Partitions per idle topic.
const TOPIC_PARTITIONS: u32 = 100;
/// How long the partitions may take to all have leaders.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(600);
/// Target: idle RF=3 partitions cost each broker under this share of one core.
const IDLE_CPU_TARGET_PCT: f64 = 5.0;

/// Runs the measurement; returns the printed text and its JSON.
pub(crate) fn run(
    runtime: &tokio::runtime::Runtime,
    rilld: &Path,
    dir: &Path,
    rilld_args: &[String],
    partitions: u32,
    settle: Duration,
    window: Duration,
) -> Result<(String, Value), Error> {
    let cluster = start_cluster(rilld, dir, 3, rilld_args)?;
    let bootstrap = cluster
        .iter()
        .map(|b| b.client_addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    runtime.block_on(wait_registered(&bootstrap, 3))?;
    let created_s = runtime.block_on(create_and_wait(&bootstrap, partitions))?;
    std::thread::sleep(settle);
    let before: Vec<Option<f64>> = cluster.iter().map(LocalBroker::cpu_seconds).collect();
    let started = Instant::now();
    std::thread::sleep(window);
    let window_s = started.elapsed().as_secs_f64();
    let mut text = format!(
        "idle: {partitions} RF=3 partitions on 3 brokers (all led {created_s:.1} s after the first create)\n"
    );
    let _ = writeln!(
        text,
        "  {:<8} {:>14} {:>13} {:>13} {:>10}",
        "broker", "CPU % of core", "quiet groups", "ticking", "RSS MiB"
    );
    let mut brokers = Vec::new();
    let mut worst: f64 = 0.0;
    for (broker, before) in cluster.iter().zip(before) {
        let cpu_pct = match (before, broker.cpu_seconds()) {
            (Some(a), Some(b)) => (b - a) / window_s * 100.0,
            _ => f64::NAN,
        };
        worst = worst.max(cpu_pct);
        let quiet = broker.metric("rill_raft_quiet_groups");
        let ticking = broker.metric("rill_raft_ticking_groups");
        let rss_mib = broker.rss_kib().unwrap_or(0) as f64 / 1024.0;
        let show = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
        let _ = writeln!(
            text,
            "  {:<8} {:>14.2} {:>13} {:>13} {:>10.1}",
            broker.node_id,
            cpu_pct,
            show(quiet),
            show(ticking),
            rss_mib
        );
        brokers.push(json!({
            "node_id": broker.node_id, "cpu_pct": cpu_pct, "quiet_groups": quiet,
            "ticking_groups": ticking, "rss_mib": rss_mib,
        }));
    }
    let _ = writeln!(
        text,
        "  worst {worst:.2} % of a core over {window_s:.0} s (target < {IDLE_CPU_TARGET_PCT:.0} %: {})",
        if worst < IDLE_CPU_TARGET_PCT { "met" } else { "NOT met" }
    );
    let value = json!({
        "partitions": partitions, "leaders_after_s": created_s, "window_s": window_s,
        "brokers": brokers, "worst_cpu_pct": worst, "target_cpu_pct": IDLE_CPU_TARGET_PCT,
    });
    Ok((text, value))
}

/// Creates the partitions in topics of [`TOPIC_PARTITIONS`] and waits until every one
/// has a leader; returns the seconds that took.
async fn create_and_wait(bootstrap: &str, partitions: u32) -> Result<f64, Error> {
    let per_topic = TOPIC_PARTITIONS.clamp(1, partitions.max(1));
    let topics: Vec<(String, u32)> = (0..partitions.div_ceil(per_topic))
        .map(|i| {
            let n = per_topic.min(partitions - i * per_topic);
            (format!("bench-idle-{i}"), n)
        })
        .collect();
    let admin = Admin::new(ClientConfig::new(bootstrap))?;
    let started = Instant::now();
    for (name, n) in &topics {
        let topic = NewTopic {
            replication_factor: 3,
            ..NewTopic::new(name.clone(), *n as i32)
        };
        match admin.create_topics(&[topic]).await {
            Ok(())
            | Err(rill_client::Error::Broker {
                code: ResponseError::TopicAlreadyExists,
                ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
    }
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
            return Ok(started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            return Err(Error::Config(format!(
                "{leaderless} idle partitions without a leader after {} s",
                LEADERS_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
