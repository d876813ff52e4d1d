//! Where partition leadership goes on purpose, in a cluster (the mechanism, Raft's
//! leadership transfer, is in `replica/leadership.rs`):
//!
//! * The leader balancer: every `leader_balance_interval_ms`, each broker hands every
//!   partition it leads but is not the preferred leader of (the first replica of its
//!   assignment, which placement spreads evenly) back to that replica, when its broker
//!   is live on the transport and its log matches the leader's. After a broker died and
//!   came back, its partitions return to it, so leaders stay spread. Like Kafka's
//!   `auto.leader.rebalance.enable`, but decided by each leader from its own
//!   replication state rather than by the controller.
//! * Controlled shutdown: a broker stopping on SIGTERM/SIGINT first hands every
//!   group it leads (partitions and the metadata group) to a caught-up replica on a
//!   live broker, preferring the preferred leader, and waits (bounded) until they
//!   moved. Clients see NOT_LEADER_OR_FOLLOWER for one round trip instead of an
//!   election timeout without a leader.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::replica::Partition;
use crate::state::PartitionManager;
use crate::transport::Transport;

/// A peer broker silent on the transport for this long is not given leadership.
const PEER_SILENCE: Duration = Duration::from_secs(1);
/// How often controlled shutdown checks whether its leaderships have moved.
const HAND_OFF_POLL: Duration = Duration::from_millis(20);

/// The leader balancer's loop (see the module docs); runs until the runtime stops.
pub async fn balance_loop(
    manager: Arc<PartitionManager>,
    transport: Arc<Transport>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let silent = transport.silent_peers(PEER_SILENCE);
        let mut moved = 0usize;
        for (_, partition) in manager.all_partitions() {
            let preferred = partition.preferred_leader();
            if !partition.leads_a_group()
                || silent.contains(&preferred)
                || !partition.caught_up_followers().contains(&preferred)
            {
                continue;
            }
            if partition.transfer_leadership(preferred).is_ok() {
                moved += 1;
            }
        }
        if moved > 0 {
            tracing::info!(
                moved,
                "leader balancer: partitions handed back to their preferred leaders"
            );
        }
    }
}

/// Controlled shutdown (see the module docs): hands every group in `groups` this
/// broker leads to a caught-up replica on a live broker and waits until they moved,
/// at most `within`. Returns how many still lead here at the end.
pub async fn hand_off(groups: &[Arc<Partition>], transport: &Transport, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let silent: HashSet<i32> = transport.silent_peers(PEER_SILENCE);
    let mut leading: Vec<&Arc<Partition>> = groups.iter().filter(|p| p.leads_a_group()).collect();
    for partition in &leading {
        hand_over(partition, &silent);
    }
    let total = leading.len();
    loop {
        // Done once the group follows a leader it has heard from: a replica that
        // stepped down for the transfer's vote request knows no leader until the new
        // one's first append, which reaches the other followers at the same time; an
        // exit before that leaves them (and their Metadata answers) leaderless.
        leading.retain(|p| p.leads_a_group() || p.status().leader.is_none());
        if leading.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(HAND_OFF_POLL).await;
        // Again for groups still led here: a transfer refused while the persist loop
        // held the group, or abandoned after an election timeout, starts over (one in
        // progress to the same target is left alone).
        for partition in leading.iter().filter(|p| p.leads_a_group()) {
            hand_over(partition, &silent);
        }
    }
    tracing::info!(
        handed_off = total - leading.len(),
        still_leading = leading.len(),
        "controlled shutdown: leaderships handed off"
    );
    leading.len()
}

/// Starts handing `partition`'s leadership to a replica on a broker not in `silent`:
/// its preferred replica if caught up, else any caught-up replica, else any live one
/// (Raft catches the target up before it takes over).
fn hand_over(partition: &Partition, silent: &HashSet<i32>) {
    let caught_up: Vec<i32> = partition
        .caught_up_followers()
        .into_iter()
        .filter(|b| !silent.contains(b))
        .collect();
    let preferred = partition.preferred_leader();
    let target = if caught_up.contains(&preferred) {
        Some(preferred)
    } else {
        caught_up.first().copied().or_else(|| {
            partition
                .other_voters()
                .into_iter()
                .find(|b| !silent.contains(b))
        })
    };
    if let Some(to) = target {
        let _ = partition.transfer_leadership(to);
    }
}
