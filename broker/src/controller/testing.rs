//! Proptest strategies shared by the controller's tests: records drawn from small domains
//! (so random sequences often build on each other: a topic over registered brokers, a
//! deletion of a topic that exists) mixed with arbitrary values (so encodings see extremes).

use std::collections::BTreeMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::image::{MetadataImage, TopicImage};
use super::record::{MetadataRecord, PartitionAssignment};

/// Mostly ids 0..5 (brokers a test registers), sometimes -1 or anything.
pub(super) fn broker_id() -> impl Strategy<Value = i32> {
    prop_oneof![8 => 0..5i32, 1 => Just(-1), 1 => any::<i32>()]
}

/// Mostly one of five topic ids (0 is the nil id, which the image refuses).
pub(super) fn topic_id() -> impl Strategy<Value = Uuid> {
    prop_oneof![
        8 => (0u128..5).prop_map(Uuid::from_u128),
        1 => any::<u128>().prop_map(Uuid::from_u128),
    ]
}

fn small_string() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z0-9.-]{0,12}", 1 => ".{0,8}"]
}

fn assignments() -> impl Strategy<Value = Vec<PartitionAssignment>> {
    proptest::collection::vec(
        proptest::collection::vec(broker_id(), 0..4)
            .prop_map(|replicas| PartitionAssignment { replicas }),
        0..5,
    )
}

/// Any metadata record, valid or not against any image.
pub(super) fn arb_record() -> impl Strategy<Value = MetadataRecord> {
    prop_oneof![
        3 => (
            broker_id(),
            (0u128..3).prop_map(Uuid::from_u128),
            small_string(),
            any::<u16>(),
            small_string(),
            any::<u16>(),
            proptest::option::of(prop_oneof!["r[0-2]", ".{0,8}"]),
        )
            .prop_map(
                |(broker_id, incarnation_id, client_host, client_port, inter_broker_host, inter_broker_port, rack)| {
                    MetadataRecord::RegisterBroker {
                        broker_id,
                        incarnation_id,
                        client_host,
                        client_port,
                        inter_broker_host,
                        inter_broker_port,
                        rack,
                    }
                }
            ),
        1 => (broker_id(), (0u128..3).prop_map(Uuid::from_u128)).prop_map(
            |(broker_id, incarnation_id)| MetadataRecord::UnregisterBroker {
                broker_id,
                incarnation_id,
            }
        ),
        3 => (
            prop_oneof![4 => "t[0-3]", 1 => small_string()],
            topic_id(),
            proptest::collection::btree_map("[a-z.]{1,10}", ".{0,10}", 0..4),
            assignments(),
        )
            .prop_map(|(name, topic_id, configs, partitions)| {
                MetadataRecord::CreateTopic {
                    name,
                    topic_id,
                    configs: configs.into_iter().collect::<BTreeMap<_, _>>(),
                    partitions,
                }
            }),
        2 => (topic_id(), assignments()).prop_map(|(topic_id, new_partitions)| {
            MetadataRecord::CreatePartitions {
                topic_id,
                new_partitions,
            }
        }),
        1 => topic_id().prop_map(|topic_id| MetadataRecord::DeleteTopic { topic_id }),
        1 => (
            topic_id(),
            proptest::collection::btree_map("[a-z.]{1,10}", ".{0,10}", 0..4),
        )
            .prop_map(|(topic_id, configs)| MetadataRecord::AlterTopicConfigs {
                topic_id,
                configs: configs.into_iter().collect::<BTreeMap<_, _>>(),
            }),
        1 => (
            broker_id(),
            prop_oneof![4 => 0i64..200, 1 => any::<i64>()],
            prop_oneof![4 => -1i32..100, 1 => any::<i32>()],
        )
            .prop_map(|(broker_id, first_producer_id, size)| {
                MetadataRecord::ProducerIdBlock {
                    broker_id,
                    incarnation_id: Uuid::from_u128(first_producer_id as u128),
                    first_producer_id,
                    size,
                }
            }),
        2 => (
            topic_id(),
            prop_oneof![4 => -1i32..5, 1 => any::<i32>()],
            broker_id(),
            prop_oneof![4 => -1i32..10, 1 => any::<i32>()],
        )
            .prop_map(|(topic_id, partition, leader, leader_epoch)| {
                MetadataRecord::LeaderHint {
                    topic_id,
                    partition,
                    leader,
                    leader_epoch,
                }
            }),
    ]
}

/// Registrations of brokers 0..4 (racks `r0`, `r1`), then a mix of records aimed at the
/// image built so far (a topic over registered brokers, a hint naming a replica, the next
/// producer-id block, each sometimes off by one) and arbitrary ones, so random logs both
/// build up state and keep hitting every validation rule.
pub(super) fn arb_log() -> impl Strategy<Value = Vec<MetadataRecord>> {
    let op = prop_oneof![
        1 => arb_record().prop_map(Op::Raw),
        3 => (0u8..7, any::<[u32; 6]>()).prop_map(|(kind, picks)| Op::Aimed { kind, picks }),
    ];
    proptest::collection::vec(op, 0..80).prop_map(|ops| {
        let mut log: Vec<MetadataRecord> = (0..4).map(|id| register(id, 1)).collect();
        let mut image = MetadataImage::default();
        for (offset, record) in log.iter().enumerate() {
            let _ = image.apply(offset as u64, record);
        }
        for op in ops {
            let record = match op {
                Op::Raw(record) => record,
                Op::Aimed { kind, picks } => aimed(&image, kind, picks),
            };
            let _ = image.apply(log.len() as u64, &record);
            log.push(record);
        }
        log
    })
}

#[derive(Debug, Clone)]
enum Op {
    Raw(MetadataRecord),
    Aimed { kind: u8, picks: [u32; 6] },
}

fn register(broker_id: i32, incarnation: u128) -> MetadataRecord {
    MetadataRecord::RegisterBroker {
        broker_id,
        incarnation_id: Uuid::from_u128(incarnation),
        client_host: format!("b{broker_id}"),
        client_port: 9092,
        inter_broker_host: format!("b{broker_id}"),
        inter_broker_port: 9093,
        rack: Some(format!("r{}", broker_id % 2)),
    }
}

/// A record of kind `kind` that is mostly valid against `image`; `picks` choose among
/// what the image holds.
fn aimed(image: &MetadataImage, kind: u8, picks: [u32; 6]) -> MetadataRecord {
    let pick = |i: usize, n: usize| picks[i] as usize % n.max(1);
    // One in eight aimed records is deliberately off by one somewhere.
    let off = picks[5] % 8 == 0;
    let brokers: Vec<i32> = image.brokers().map(|b| b.broker_id).collect();
    let topics: Vec<&TopicImage> = image.topics().collect();
    let lists = |partitions: usize, replication_factor: usize| -> Vec<PartitionAssignment> {
        (0..partitions)
            .map(|p| PartitionAssignment {
                replicas: (0..replication_factor)
                    .filter_map(|r| {
                        brokers
                            .get((pick(4, brokers.len()) + p + r) % brokers.len().max(1))
                            .copied()
                    })
                    .collect(),
            })
            .collect()
    };
    match (kind, topics.get(pick(0, topics.len()))) {
        (1, Some(topic)) => {
            let replication_factor = topic.partitions[0].replicas.len() + usize::from(off);
            MetadataRecord::CreatePartitions {
                topic_id: topic.topic_id,
                new_partitions: lists(1 + pick(2, 3), replication_factor.min(brokers.len())),
            }
        }
        (2, Some(topic)) => MetadataRecord::DeleteTopic {
            topic_id: topic.topic_id,
        },
        (3, Some(topic)) => {
            let partition = pick(1, topic.partitions.len());
            let replicas = &topic.partitions[partition].replicas;
            let hinted = image.leader_hint(topic.topic_id, partition as i32);
            MetadataRecord::LeaderHint {
                topic_id: topic.topic_id,
                partition: partition as i32,
                leader: replicas[pick(2, replicas.len())],
                leader_epoch: hinted.map_or(0, |h| h.leader_epoch + 1) - i32::from(off),
            }
        }
        (4, _) => MetadataRecord::ProducerIdBlock {
            broker_id: brokers.get(pick(1, brokers.len())).copied().unwrap_or(0),
            incarnation_id: Uuid::from_u128(u128::from(off)),
            first_producer_id: image.next_producer_id() + i64::from(off),
            size: 1 + pick(2, 1000) as i32,
        },
        (5, _) => {
            let broker = image.brokers().nth(pick(1, brokers.len()));
            MetadataRecord::UnregisterBroker {
                broker_id: broker.map_or(0, |b| b.broker_id),
                incarnation_id: Uuid::from_u128(
                    broker.map_or(0, |b| b.incarnation_id.as_u128()) + u128::from(off),
                ),
            }
        }
        (6, _) => register(pick(1, 6) as i32, pick(2, 3) as u128),
        _ => MetadataRecord::CreateTopic {
            name: format!("t{}", pick(1, 6)),
            topic_id: Uuid::from_u128(1 + pick(2, 8) as u128),
            configs: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
            partitions: lists(
                1 + pick(3, 4),
                1 + pick(0, brokers.len().min(3)) + usize::from(off),
            ),
        },
    }
}

/// The image after applying `log` at offsets 0, 2, 4, … (gaps, as control batches leave).
pub(super) fn image_of(log: &[MetadataRecord]) -> MetadataImage {
    let mut image = MetadataImage::default();
    for (i, record) in log.iter().enumerate() {
        let _ = image.apply(2 * i as u64, record);
    }
    image
}
