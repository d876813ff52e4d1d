//! Partition assignors, run by the group leader over every member's subscription: Kafka's
//! `range`, `roundrobin` and `cooperative-sticky` (KIP-429), under those protocol names,
//! so members of other clients (librdkafka, Java) that chose the same name interoperate.
//!
//! Sans-I/O and deterministic: the same subscriptions and partition counts always give
//! the same assignment (members are ordered by group instance id, then member id, as
//! Kafka's assignors order them).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::record::TopicPartition;

/// A partition assignment strategy (`partition.assignment.strategy`), by Kafka protocol
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentStrategy {
    /// `range`: per topic, consecutive partition ranges to the members subscribed to it.
    Range,
    /// `roundrobin`: all partitions, in topic/partition order, dealt to members in turn.
    RoundRobin,
    /// `cooperative-sticky`: balanced, keeps owned partitions, and moves a partition only
    /// after its owner revoked it (incremental cooperative rebalancing, KIP-429).
    CooperativeSticky,
}

impl AssignmentStrategy {
    /// The protocol name sent in JoinGroup.
    pub fn protocol_name(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// Whether the strategy supports the cooperative rebalance protocol.
    pub fn is_cooperative(self) -> bool {
        self == AssignmentStrategy::CooperativeSticky
    }

    /// The strategy a protocol name stands for, if this client implements it.
    pub fn from_protocol_name(name: &str) -> Option<AssignmentStrategy> {
        match name {
            "range" => Some(AssignmentStrategy::Range),
            "roundrobin" => Some(AssignmentStrategy::RoundRobin),
            "cooperative-sticky" => Some(AssignmentStrategy::CooperativeSticky),
            _ => None,
        }
    }

    /// Assigns the partitions of `partitions_per_topic` to `members`. Every member gets
    /// an entry (possibly empty).
    pub(crate) fn assign(
        self,
        members: &[MemberSubscription],
        partitions_per_topic: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut ordered: Vec<&MemberSubscription> = members.iter().collect();
        ordered.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let mut out: BTreeMap<String, Vec<TopicPartition>> = members
            .iter()
            .map(|m| (m.member_id.clone(), Vec::new()))
            .collect();
        match self {
            AssignmentStrategy::Range => range(&ordered, partitions_per_topic, &mut out),
            AssignmentStrategy::RoundRobin => round_robin(&ordered, partitions_per_topic, &mut out),
            AssignmentStrategy::CooperativeSticky => {
                cooperative_sticky(&ordered, partitions_per_topic, &mut out)
            }
        }
        for v in out.values_mut() {
            v.sort();
        }
        out
    }
}

impl std::str::FromStr for AssignmentStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AssignmentStrategy::from_protocol_name(s).ok_or_else(|| {
            Error::Config(format!(
                "assignment_strategies: unknown strategy {s:?} (range, roundrobin, cooperative-sticky)"
            ))
        })
    }
}

/// What the leader knows of one member from its JoinGroup metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberSubscription {
    pub(crate) member_id: String,
    pub(crate) group_instance_id: Option<String>,
    /// Subscribed topics.
    pub(crate) topics: BTreeSet<String>,
    /// Partitions the member owns now (cooperative protocol; empty under eager).
    pub(crate) owned: Vec<TopicPartition>,
    /// The generation the member's `owned` partitions are from (-1 if unknown).
    pub(crate) generation: i32,
}

impl MemberSubscription {
    /// Kafka orders members by group instance id when both have one, then member id.
    fn sort_key(&self) -> (Option<&str>, &str) {
        (self.group_instance_id.as_deref(), self.member_id.as_str())
    }
}

fn range(
    members: &[&MemberSubscription],
    partitions_per_topic: &BTreeMap<String, i32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    for (topic, &count) in partitions_per_topic {
        let subscribed: Vec<&&MemberSubscription> = members
            .iter()
            .filter(|m| m.topics.contains(topic))
            .collect();
        if subscribed.is_empty() || count <= 0 {
            continue;
        }
        let n = subscribed.len() as i32;
        let (per_member, extra) = (count / n, count % n);
        for (i, m) in subscribed.iter().enumerate() {
            let i = i as i32;
            let start = i * per_member + i.min(extra);
            let len = per_member + i32::from(i < extra);
            if let Some(v) = out.get_mut(&m.member_id) {
                v.extend((start..start + len).map(|p| TopicPartition::new(topic.clone(), p)));
            }
        }
    }
}

fn round_robin(
    members: &[&MemberSubscription],
    partitions_per_topic: &BTreeMap<String, i32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    if members.is_empty() {
        return;
    }
    let mut next = 0usize;
    for (topic, &count) in partitions_per_topic {
        if !members.iter().any(|m| m.topics.contains(topic)) {
            continue;
        }
        for p in 0..count {
            // The next member in the circle that is subscribed to the topic.
            while !members[next % members.len()].topics.contains(topic) {
                next += 1;
            }
            let m = members[next % members.len()];
            next += 1;
            if let Some(v) = out.get_mut(&m.member_id) {
                v.push(TopicPartition::new(topic.clone(), p));
            }
        }
    }
}

/// Sticky and balanced, then made cooperative: a partition that would move from one
/// member to another is left unassigned this round (its owner revokes it and rejoins,
/// and the next round gives it to its new member).
fn cooperative_sticky(
    members: &[&MemberSubscription],
    partitions_per_topic: &BTreeMap<String, i32>,
    out: &mut BTreeMap<String, Vec<TopicPartition>>,
) {
    if members.is_empty() {
        return;
    }
    let all: BTreeSet<TopicPartition> = partitions_per_topic
        .iter()
        .filter(|(t, _)| members.iter().any(|m| m.topics.contains(*t)))
        .flat_map(|(t, &n)| (0..n.max(0)).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect();
    // Who owns what now: a partition claimed by two members (one kept it from an old
    // generation) belongs to the claim of the highest generation.
    let mut owner: BTreeMap<&TopicPartition, (i32, &str)> = BTreeMap::new();
    for m in members {
        for tp in &m.owned {
            if !all.contains(tp) || !m.topics.contains(&tp.topic) {
                continue;
            }
            let claim = (m.generation, m.member_id.as_str());
            match owner.get(tp) {
                Some((g, _)) if *g >= m.generation => {}
                _ => {
                    owner.insert(tp, claim);
                }
            }
        }
    }
    let total = all.len();
    let n = members.len();
    let (quota_min, mut above_min_slots) = (total / n, total % n);
    let mut target: BTreeMap<&str, Vec<TopicPartition>> = BTreeMap::new();
    let mut unassigned: BTreeSet<TopicPartition> = all.clone();
    // Keep owned partitions up to the quota; the members owning most go first so the
    // few slots above the minimum go to those that already hold the partitions.
    let mut by_owned: Vec<&&MemberSubscription> = members.iter().collect();
    by_owned.sort_by_key(|m| {
        let held = owner.values().filter(|(_, id)| *id == m.member_id).count();
        std::cmp::Reverse(held)
    });
    for m in by_owned {
        let mut kept: Vec<TopicPartition> = m
            .owned
            .iter()
            .filter(|tp| owner.get(tp).is_some_and(|(_, id)| *id == m.member_id))
            .cloned()
            .collect();
        kept.sort();
        kept.dedup();
        let quota = if kept.len() > quota_min && above_min_slots > 0 {
            above_min_slots -= 1;
            quota_min + 1
        } else {
            quota_min
        };
        kept.truncate(quota);
        for tp in &kept {
            unassigned.remove(tp);
        }
        target.insert(m.member_id.as_str(), kept);
    }
    // Deal the rest, each to the subscribed member holding fewest (then member order),
    // never past a member's quota while another subscribed member is below it.
    for tp in unassigned {
        let best = members
            .iter()
            .filter(|m| m.topics.contains(&tp.topic))
            .min_by_key(|m| target.get(m.member_id.as_str()).map_or(0, Vec::len));
        if let Some(m) = best {
            target.entry(m.member_id.as_str()).or_default().push(tp);
        }
    }
    // Cooperative: withhold what another member still owns.
    for (member, partitions) in target {
        let given: Vec<TopicPartition> = partitions
            .into_iter()
            .filter(|tp| owner.get(tp).is_none_or(|(_, id)| *id == member))
            .collect();
        if let Some(v) = out.get_mut(member) {
            *v = given;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str], owned: &[(&str, i32)]) -> MemberSubscription {
        MemberSubscription {
            member_id: id.to_string(),
            group_instance_id: None,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned
                .iter()
                .map(|(t, p)| TopicPartition::new(*t, *p))
                .collect(),
            generation: 1,
        }
    }

    fn counts(topics: &[(&str, i32)]) -> BTreeMap<String, i32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn names(a: &BTreeMap<String, Vec<TopicPartition>>, id: &str) -> Vec<String> {
        a[id].iter().map(|tp| tp.to_string()).collect()
    }

    /// Every partition of the topics is assigned exactly once.
    fn assert_complete(a: &BTreeMap<String, Vec<TopicPartition>>, topics: &[(&str, i32)]) {
        let mut seen: Vec<TopicPartition> = a.values().flatten().cloned().collect();
        seen.sort();
        let mut want: Vec<TopicPartition> = topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(|p| TopicPartition::new(*t, p)))
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn range_gives_consecutive_ranges_with_the_extra_partitions_to_the_first_members() {
        let members = [member("b", &["t"], &[]), member("a", &["t"], &[])];
        let a = AssignmentStrategy::Range.assign(&members, &counts(&[("t", 5)]));
        assert_eq!(names(&a, "a"), ["t/0", "t/1", "t/2"]);
        assert_eq!(names(&a, "b"), ["t/3", "t/4"]);
    }

    #[test]
    fn range_assigns_each_topic_only_to_its_subscribers() {
        let members = [member("a", &["x", "y"], &[]), member("b", &["y"], &[])];
        let topics = [("x", 2), ("y", 2)];
        let a = AssignmentStrategy::Range.assign(&members, &counts(&topics));
        assert_eq!(names(&a, "a"), ["x/0", "x/1", "y/0"]);
        assert_eq!(names(&a, "b"), ["y/1"]);
        assert_complete(&a, &topics);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn_skipping_unsubscribed_members() {
        let members = [
            member("a", &["x", "y"], &[]),
            member("b", &["x"], &[]),
            member("c", &["x", "y"], &[]),
        ];
        let topics = [("x", 3), ("y", 3)];
        let a = AssignmentStrategy::RoundRobin.assign(&members, &counts(&topics));
        assert_eq!(names(&a, "a"), ["x/0", "y/0", "y/2"]);
        assert_eq!(names(&a, "b"), ["x/1"]);
        assert_eq!(names(&a, "c"), ["x/2", "y/1"]);
        assert_complete(&a, &topics);
    }

    #[test]
    fn every_assignor_is_deterministic_and_balanced_for_equal_subscriptions() {
        for strategy in [
            AssignmentStrategy::Range,
            AssignmentStrategy::RoundRobin,
            AssignmentStrategy::CooperativeSticky,
        ] {
            for members_count in 1..=5 {
                let members: Vec<MemberSubscription> = (0..members_count)
                    .map(|i| member(&format!("m{i}"), &["t"], &[]))
                    .collect();
                let topics = [("t", 7)];
                let first = strategy.assign(&members, &counts(&topics));
                let mut reversed = members.clone();
                reversed.reverse();
                assert_eq!(
                    first,
                    strategy.assign(&reversed, &counts(&topics)),
                    "{strategy:?}"
                );
                assert_complete(&first, &topics);
                let sizes: Vec<usize> = first.values().map(Vec::len).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{strategy:?} with {members_count}: {sizes:?}");
            }
        }
    }

    #[test]
    fn cooperative_sticky_keeps_owned_partitions_and_withholds_the_ones_that_move() {
        // "a" owned all four; "b" joins. "a" keeps two of its own, gives up the other two,
        // which nobody gets this round (a still owns them until it revokes).
        let members = [
            member("a", &["t"], &[("t", 0), ("t", 1), ("t", 2), ("t", 3)]),
            member("b", &["t"], &[]),
        ];
        let topics = counts(&[("t", 4)]);
        let round1 = AssignmentStrategy::CooperativeSticky.assign(&members, &topics);
        assert_eq!(names(&round1, "a"), ["t/0", "t/1"]);
        assert!(round1["b"].is_empty());
        // After "a" revoked t/2 and t/3 and rejoined, "b" gets them.
        let members = [
            member("a", &["t"], &[("t", 0), ("t", 1)]),
            member("b", &["t"], &[]),
        ];
        let round2 = AssignmentStrategy::CooperativeSticky.assign(&members, &topics);
        assert_eq!(names(&round2, "a"), ["t/0", "t/1"]);
        assert_eq!(names(&round2, "b"), ["t/2", "t/3"]);
    }

    #[test]
    fn cooperative_sticky_moves_nothing_when_the_assignment_is_already_balanced() {
        let members = [
            member("a", &["t"], &[("t", 3), ("t", 0)]),
            member("b", &["t"], &[("t", 1)]),
            member("c", &["t"], &[("t", 2)]),
        ];
        let topics = counts(&[("t", 4)]);
        let a = AssignmentStrategy::CooperativeSticky.assign(&members, &topics);
        assert_eq!(names(&a, "a"), ["t/0", "t/3"]);
        assert_eq!(names(&a, "b"), ["t/1"]);
        assert_eq!(names(&a, "c"), ["t/2"]);
    }

    #[test]
    fn cooperative_sticky_gives_a_departed_members_partitions_to_the_rest() {
        // "c" left: its partition (t/2) is unowned and goes to the member holding fewest.
        let members = [
            member("a", &["t"], &[("t", 0), ("t", 3)]),
            member("b", &["t"], &[("t", 1)]),
        ];
        let topics = counts(&[("t", 4)]);
        let a = AssignmentStrategy::CooperativeSticky.assign(&members, &topics);
        assert_eq!(names(&a, "a"), ["t/0", "t/3"]);
        assert_eq!(names(&a, "b"), ["t/1", "t/2"]);
    }

    #[test]
    fn strategies_parse_from_kafka_protocol_names() {
        for s in ["range", "roundrobin", "cooperative-sticky"] {
            let parsed: AssignmentStrategy = s.parse().expect(s);
            assert_eq!(parsed.protocol_name(), s);
        }
        assert!("sticky".parse::<AssignmentStrategy>().is_err());
    }
}
