//! [`assign_replicas`]: which brokers host the replicas of new partitions.
//!
//! Greedy and deterministic, one partition at a time:
//!
//! 1. the preferred leader (first replica) is the broker leading the fewest partitions
//!    among those a fewest-replicas choice could include (replica count at most the
//!    `replication_factor`-th smallest);
//! 2. each further replica is a broker with the fewest replicas among those not chosen
//!    yet — and, when racks are set, among those on a rack this partition does not use
//!    yet, as long as there is such a rack.
//!
//! Counts start from the existing assignments, so partitions added later
//! (CreatePartitions, or a new topic) go where the load is lowest. Picking the fewest
//! replicas first keeps every broker's replica count within one of the others' when the
//! cluster started balanced and racks do not force otherwise. Ties are broken by a
//! rotation keyed on the partition number (`start_partition + i`), so equal brokers take
//! turns instead of the lowest id always winning; followers rotate from their leader, so
//! one broker's partitions have their followers spread over the others.
//!
//! A last pass (`balance_leaders`) reorders replica lists so preferred leaders are
//! balanced too, which greedy choice alone does not achieve.
//!
//! Cost: O(partitions × brokers × log brokers) for the greedy part, plus the leader pass;
//! 10,000 partitions (the most a topic may have) on 200 brokers took 2.9 s in a debug
//! build, 1.2 s of it in the leader pass (release not measured). A driver should run it
//! off the metadata group's event loop, or bound the partitions per request lower.
//!
//! Rack diversity wins over balance: with racks of unequal size, the brokers of the
//! smaller racks take more replicas (as with Kafka's rack-aware assignment).

use std::collections::{BTreeMap, BTreeSet};

use super::REPLICAS_PER_PARTITION_MAX;
use crate::state::PARTITIONS_MAX;

/// A broker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// The broker's id.
    pub id: i32,
    /// Its rack, if configured.
    pub rack: Option<String>,
}

/// Why replicas could not be placed; each maps to the Kafka error of the same name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The replication factor is below 1, above the number of brokers, or above
    /// [`REPLICAS_PER_PARTITION_MAX`] (Kafka's INVALID_REPLICATION_FACTOR).
    #[error("replication factor {replication_factor} with {brokers} brokers available")]
    InvalidReplicationFactor {
        /// The replication factor asked for.
        replication_factor: i16,
        /// Brokers available.
        brokers: usize,
    },
    /// A partition count below 1 or above [`PARTITIONS_MAX`] (INVALID_PARTITIONS).
    #[error("{partitions} partitions, 1..={PARTITIONS_MAX} allowed")]
    InvalidPartitions {
        /// The count asked for.
        partitions: i32,
    },
    /// The same broker id twice in the broker list (a caller bug; refused rather than
    /// counted twice).
    #[error("broker {broker_id} listed twice")]
    DuplicateBroker {
        /// The id.
        broker_id: i32,
    },
    /// Some brokers have a rack and some do not, so rack-aware placement cannot tell where
    /// the rackless ones are (Kafka refuses this too).
    #[error("brokers {without_rack:?} have no rack while others do")]
    MixedRackInfo {
        /// The brokers without a rack.
        without_rack: Vec<i32>,
    },
}

/// Places the replicas of `partitions` new partitions, numbered from `start_partition`
/// (0 for a new topic, the topic's partition count for CreatePartitions), with
/// `replication_factor` replicas each, on `brokers`, balancing against the replica lists
/// in `existing` (every partition of the cluster; brokers not in `brokers` are ignored).
///
/// Returns one replica list per new partition, preferred leader first. The result depends
/// only on the arguments — not on the order of `brokers` — so every controller computes
/// the same one.
pub fn assign_replicas(
    brokers: &[BrokerInfo],
    partitions: i32,
    replication_factor: i16,
    start_partition: i32,
    existing: &[Vec<i32>],
) -> Result<Vec<Vec<i32>>, PlacementError> {
    if !(1..=PARTITIONS_MAX).contains(&partitions) {
        return Err(PlacementError::InvalidPartitions { partitions });
    }
    let replication_factor_ok = replication_factor >= 1
        && replication_factor as usize <= brokers.len()
        && replication_factor as usize <= REPLICAS_PER_PARTITION_MAX;
    if !replication_factor_ok {
        return Err(PlacementError::InvalidReplicationFactor {
            replication_factor,
            brokers: brokers.len(),
        });
    }
    let mut sorted: Vec<&BrokerInfo> = brokers.iter().collect();
    sorted.sort_by_key(|b| b.id);
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].id == pair[1].id) {
        return Err(PlacementError::DuplicateBroker {
            broker_id: pair[0].id,
        });
    }
    let racks = rack_indexes(&sorted)?;
    let index_of: BTreeMap<i32, usize> =
        sorted.iter().enumerate().map(|(i, b)| (b.id, i)).collect();

    let broker_count = sorted.len();
    let mut replica_counts = vec![0u64; broker_count];
    let mut leader_counts = vec![0u64; broker_count];
    for replicas in existing {
        for (position, broker_id) in replicas.iter().enumerate() {
            if let Some(&i) = index_of.get(broker_id) {
                replica_counts[i] += 1;
                if position == 0 {
                    leader_counts[i] += 1;
                }
            }
        }
    }

    let mut assignments = Vec::with_capacity(partitions as usize);
    for k in 0..partitions {
        // Rank of broker i when broker `first` should win a tie: first, first+1, … wrapping.
        let rank = |i: usize, first: usize| (i + broker_count - first) % broker_count;
        let rotation =
            (i64::from(start_partition) + i64::from(k)).rem_euclid(broker_count as i64) as usize;

        // Any broker that some fewest-replicas choice of `replication_factor` brokers
        // includes may lead: those with at most the replication_factor-th smallest count.
        let mut by_count = replica_counts.clone();
        by_count.sort_unstable();
        let eligible_count_max = by_count[replication_factor as usize - 1];
        let leader = (0..broker_count)
            .filter(|&i| replica_counts[i] <= eligible_count_max)
            .min_by_key(|&i| (leader_counts[i], replica_counts[i], rank(i, rotation)))
            .expect("broker_count >= replication_factor >= 1");
        let mut chosen = vec![leader];
        let mut used_racks = BTreeSet::new();
        if let Some(racks) = &racks {
            used_racks.insert(racks[leader]);
        }
        while chosen.len() < replication_factor as usize {
            let free = |i: &usize| !chosen.contains(i);
            let on_new_rack =
                |i: &usize| racks.as_ref().is_some_and(|r| !used_racks.contains(&r[*i]));
            let prefer_new_rack = (0..broker_count).filter(free).any(|i| on_new_rack(&i));
            let follower = (0..broker_count)
                .filter(free)
                .filter(|i| !prefer_new_rack || on_new_rack(i))
                .min_by_key(|&i| (replica_counts[i], rank(i, (leader + 1) % broker_count)))
                .expect("chosen.len() < replication_factor <= broker_count");
            if let Some(racks) = &racks {
                used_racks.insert(racks[follower]);
            }
            chosen.push(follower);
        }
        leader_counts[leader] += 1;
        for &i in &chosen {
            replica_counts[i] += 1;
        }
        assignments.push(chosen);
    }
    balance_leaders(&mut assignments, &mut leader_counts);
    Ok(assignments
        .into_iter()
        .map(|chosen| chosen.into_iter().map(|i| sorted[i].id).collect())
        .collect())
}

/// Moves preferred leadership among the replicas of the new partitions (`assignments`,
/// broker indexes, leader first) until no broker leads two more partitions than another
/// one it could hand leadership to, directly or along a chain.
///
/// Greedy choice alone can leave leaders unbalanced (the broker leading fewest may not
/// be among those with the fewest replicas), so this pass looks for augmenting paths:
/// from a broker leading the most, through a partition it leads to one of its followers,
/// which may in turn lead a partition whose follower …, until a broker leading at least
/// two fewer. Making each follower on the path the leader of that partition moves one
/// leadership from the first broker to the last and leaves the brokers between unchanged.
/// Only the order within a replica list changes, never its brokers, so replica balance and
/// rack spread stay as they were. Every move lowers the sum of squared leader counts, so
/// the loop ends; each round is a breadth-first search over the new partitions.
fn balance_leaders(assignments: &mut [Vec<usize>], leader_counts: &mut [u64]) {
    let broker_count = leader_counts.len();
    loop {
        let count_max = leader_counts.iter().copied().max().unwrap_or_default();
        let mut moved = false;
        for start in (0..broker_count).filter(|&b| leader_counts[b] == count_max) {
            if let Some(path) = augmenting_path(assignments, leader_counts, start, count_max) {
                for &(partition, position) in &path {
                    assignments[partition].swap(0, position);
                }
                leader_counts[start] -= 1;
                let end = assignments[path[path.len() - 1].0][0];
                leader_counts[end] += 1;
                moved = true;
                break;
            }
        }
        if !moved {
            return;
        }
    }
}

/// A chain of leadership moves, each `(partition, position of the new leader)`, from
/// broker `start` to a broker leading at most `count_max - 2` partitions; `None` when no
/// broker reachable from `start` leads that few.
fn augmenting_path(
    assignments: &[Vec<usize>],
    leader_counts: &[u64],
    start: usize,
    count_max: u64,
) -> Option<Vec<(usize, usize)>> {
    if count_max < 2 {
        return None;
    }
    // came_from[b] = (partition, position) by which broker b was reached.
    let mut came_from: Vec<Option<(usize, usize)>> = vec![None; leader_counts.len()];
    let mut visited = vec![false; leader_counts.len()];
    visited[start] = true;
    // Partitions by leader, so the search costs O(partitions × replication factor).
    let mut led_by: Vec<Vec<usize>> = vec![Vec::new(); leader_counts.len()];
    for (partition, replicas) in assignments.iter().enumerate() {
        led_by[replicas[0]].push(partition);
    }
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(broker) = queue.pop_front() {
        for &partition in &led_by[broker] {
            let replicas = &assignments[partition];
            for (position, &follower) in replicas.iter().enumerate().skip(1) {
                if visited[follower] {
                    continue;
                }
                visited[follower] = true;
                came_from[follower] = Some((partition, position));
                if leader_counts[follower] + 2 <= count_max {
                    // Walk back to `start`, then apply the moves from the start's end.
                    let mut path = Vec::new();
                    let mut at = follower;
                    while let Some((partition, position)) = came_from[at] {
                        path.push((partition, position));
                        at = assignments[partition][0];
                    }
                    path.reverse();
                    return Some(path);
                }
                queue.push_back(follower);
            }
        }
    }
    None
}

/// Each broker's rack as a small index, or `None` when no broker has a rack.
fn rack_indexes(sorted: &[&BrokerInfo]) -> Result<Option<Vec<usize>>, PlacementError> {
    let without_rack: Vec<i32> = sorted
        .iter()
        .filter(|b| b.rack.is_none())
        .map(|b| b.id)
        .collect();
    if without_rack.len() == sorted.len() {
        return Ok(None);
    }
    if !without_rack.is_empty() {
        return Err(PlacementError::MixedRackInfo { without_rack });
    }
    let names: BTreeSet<&str> = sorted.iter().filter_map(|b| b.rack.as_deref()).collect();
    let index: BTreeMap<&str, usize> = names.into_iter().enumerate().map(|(i, r)| (r, i)).collect();
    Ok(Some(
        sorted
            .iter()
            .map(|b| b.rack.as_deref().map_or(0, |r| index[r]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn brokers(count: i32) -> Vec<BrokerInfo> {
        (0..count).map(|id| BrokerInfo { id, rack: None }).collect()
    }

    fn racked(racks: &[&str]) -> Vec<BrokerInfo> {
        racks
            .iter()
            .enumerate()
            .map(|(id, rack)| BrokerInfo {
                id: id as i32,
                rack: Some(rack.to_string()),
            })
            .collect()
    }

    /// Replicas and preferred leaders per broker id in `lists` (brokers of `all` only).
    fn counts(all: &[BrokerInfo], lists: &[Vec<i32>]) -> (Vec<usize>, Vec<usize>) {
        let replicas = all
            .iter()
            .map(|b| lists.iter().filter(|l| l.contains(&b.id)).count())
            .collect();
        let leaders = all
            .iter()
            .map(|b| lists.iter().filter(|l| l[0] == b.id).count())
            .collect();
        (replicas, leaders)
    }

    fn spread(counts: &[usize]) -> usize {
        counts.iter().max().unwrap() - counts.iter().min().unwrap()
    }

    #[test]
    fn replication_factor_out_of_range_is_invalid() {
        for replication_factor in [0, -1, 4] {
            assert_eq!(
                assign_replicas(&brokers(3), 1, replication_factor, 0, &[]),
                Err(PlacementError::InvalidReplicationFactor {
                    replication_factor,
                    brokers: 3
                })
            );
        }
        assert!(matches!(
            assign_replicas(&[], 1, 1, 0, &[]),
            Err(PlacementError::InvalidReplicationFactor { brokers: 0, .. })
        ));
    }

    #[test]
    fn partition_counts_out_of_range_are_invalid() {
        for partitions in [0, -1, PARTITIONS_MAX + 1] {
            assert_eq!(
                assign_replicas(&brokers(3), partitions, 1, 0, &[]),
                Err(PlacementError::InvalidPartitions { partitions })
            );
        }
    }

    #[test]
    fn duplicate_brokers_and_mixed_rack_info_are_refused() {
        let mut twice = brokers(2);
        twice.push(BrokerInfo { id: 1, rack: None });
        assert_eq!(
            assign_replicas(&twice, 1, 1, 0, &[]),
            Err(PlacementError::DuplicateBroker { broker_id: 1 })
        );
        let mut mixed = racked(&["a", "b"]);
        mixed.push(BrokerInfo { id: 7, rack: None });
        assert_eq!(
            assign_replicas(&mixed, 1, 1, 0, &[]),
            Err(PlacementError::MixedRackInfo {
                without_rack: vec![7]
            })
        );
    }

    #[test]
    fn three_brokers_three_partitions_rf3_rotate_leaders() {
        let lists = assign_replicas(&brokers(3), 3, 3, 0, &[]).unwrap();
        assert_eq!(
            lists.iter().map(|l| l[0]).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn one_partition_topics_go_to_the_least_loaded_broker() {
        let all = brokers(3);
        let mut existing = Vec::new();
        for _ in 0..6 {
            existing.extend(assign_replicas(&all, 1, 1, 0, &existing).unwrap());
        }
        assert_eq!(counts(&all, &existing).0, vec![2, 2, 2]);
    }

    #[test]
    fn racks_are_spread_before_balance() {
        // Rack "a" has one broker, "b" three: every partition puts a replica on broker 0.
        let all = racked(&["a", "b", "b", "b"]);
        let lists = assign_replicas(&all, 6, 2, 0, &[]).unwrap();
        assert!(lists.iter().all(|l| l.contains(&0)), "{lists:?}");
    }

    fn cluster() -> impl Strategy<Value = (i32, i16, i32)> {
        (1i32..12).prop_flat_map(|brokers| (Just(brokers), 1..=brokers.min(5) as i16, 1i32..60))
    }

    proptest! {
        #[test]
        fn every_partition_has_rf_distinct_known_brokers(
            (broker_count, replication_factor, partitions) in cluster(),
            start_partition in 0i32..100,
        ) {
            let all = brokers(broker_count);
            let lists = assign_replicas(&all, partitions, replication_factor, start_partition, &[]).unwrap();
            prop_assert_eq!(lists.len(), partitions as usize);
            for list in &lists {
                prop_assert_eq!(list.len(), replication_factor as usize);
                let distinct: BTreeSet<_> = list.iter().collect();
                prop_assert_eq!(distinct.len(), list.len());
                prop_assert!(list.iter().all(|id| (0..broker_count).contains(id)));
            }
        }

        #[test]
        fn a_fresh_cluster_is_balanced_within_one(
            (broker_count, replication_factor, partitions) in cluster(),
        ) {
            let all = brokers(broker_count);
            let lists = assign_replicas(&all, partitions, replication_factor, 0, &[]).unwrap();
            let (replicas, leaders) = counts(&all, &lists);
            prop_assert!(spread(&replicas) <= 1, "replicas {:?}", replicas);
            prop_assert!(spread(&leaders) <= 1, "leaders {:?}", leaders);
        }

        #[test]
        fn growing_topics_keeps_the_balance(
            (broker_count, replication_factor, _) in cluster(),
            steps in proptest::collection::vec(1i32..20, 1..6),
        ) {
            let all = brokers(broker_count);
            let mut existing: Vec<Vec<i32>> = Vec::new();
            for partitions in steps {
                let start_partition = existing.len() as i32;
                let lists = assign_replicas(&all, partitions, replication_factor, start_partition, &existing).unwrap();
                existing.extend(lists);
                let (replicas, leaders) = counts(&all, &existing);
                prop_assert!(spread(&replicas) <= 1, "replicas {:?}", replicas);
                // Existing leaders stay where they are, and replica balance comes first:
                // a broker at the most replicas may lead none while the few with room
                // lead one each (11 brokers, RF 3: 10 partitions, then 1 more).
                prop_assert!(spread(&leaders) <= 2, "leaders {:?}", leaders);
            }
        }

        #[test]
        fn a_new_broker_takes_the_new_partitions_first(
            (broker_count, replication_factor, partitions) in cluster(),
        ) {
            let all = brokers(broker_count);
            let existing = assign_replicas(&all, partitions, replication_factor, 0, &[]).unwrap();
            let mut grown = all.clone();
            grown.push(BrokerInfo { id: 100, rack: None });
            let lists = assign_replicas(&grown, 1, replication_factor, 0, &existing).unwrap();
            // Every old broker hosts a replica: the empty one is among the fewest.
            if counts(&all, &existing).0.iter().all(|&c| c > 0) {
                prop_assert!(lists[0].contains(&100), "{:?}", lists);
            }
        }

        #[test]
        fn partitions_use_as_many_racks_as_they_can(
            racks in proptest::collection::vec(0u8..4, 1..12),
            replication_factor in 1i16..5,
            partitions in 1i32..40,
        ) {
            prop_assume!(replication_factor as usize <= racks.len());
            let names: Vec<String> = racks.iter().map(|r| format!("rack{r}")).collect();
            let all = racked(&names.iter().map(String::as_str).collect::<Vec<_>>());
            let rack_count = racks.iter().collect::<BTreeSet<_>>().len();
            let lists = assign_replicas(&all, partitions, replication_factor, 0, &[]).unwrap();
            for list in &lists {
                let used: BTreeSet<_> = list.iter().map(|&id| &racks[id as usize]).collect();
                prop_assert_eq!(used.len(), rack_count.min(replication_factor as usize), "{:?}", list);
            }
        }

        #[test]
        fn equal_racks_are_balanced_within_one(
            rack_count in 2usize..4,
            per_rack in 1usize..4,
            replication_factor in 1i16..4,
            partitions in 1i32..40,
        ) {
            prop_assume!(replication_factor as usize <= rack_count * per_rack);
            let names: Vec<String> = (0..rack_count * per_rack).map(|i| format!("rack{}", i % rack_count)).collect();
            let all = racked(&names.iter().map(String::as_str).collect::<Vec<_>>());
            let lists = assign_replicas(&all, partitions, replication_factor, 0, &[]).unwrap();
            let (replicas, leaders) = counts(&all, &lists);
            prop_assert!(spread(&replicas) <= 1, "replicas {:?}", replicas);
            prop_assert!(spread(&leaders) <= 1, "leaders {:?}", leaders);
        }

        #[test]
        fn the_order_brokers_are_listed_in_does_not_matter(
            (broker_count, replication_factor, partitions) in cluster(),
            seed in any::<u64>(),
            start_partition in 0i32..50,
        ) {
            let all = brokers(broker_count);
            let mut shuffled = all.clone();
            // A deterministic shuffle from the seed (no RNG dependency needed).
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(
                assign_replicas(&all, partitions, replication_factor, start_partition, &[]),
                assign_replicas(&shuffled, partitions, replication_factor, start_partition, &[])
            );
        }
    }
}
