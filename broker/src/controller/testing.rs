//! Proptest strategies shared by the controller's tests: records drawn from small domains
//! (so random sequences often build on each other: a topic over registered brokers, a
//! deletion of a topic that exists) mixed with arbitrary values (so encodings see extremes).

use std::collections::BTreeMap;

use proptest::prelude::*;
use uuid::Uuid;

use super::image::MetadataImage;
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
            broker_id(),
            prop_oneof![4 => 0i64..200, 1 => any::<i64>()],
            prop_oneof![4 => -1i32..100, 1 => any::<i32>()],
        )
            .prop_map(|(broker_id, first_producer_id, size)| {
                MetadataRecord::ProducerIdBlock {
                    broker_id,
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

/// Registrations of brokers 0..4 (racks `r0`, `r1`) followed by arbitrary records: the
/// prefix makes many of the random records valid.
pub(super) fn arb_log() -> impl Strategy<Value = Vec<MetadataRecord>> {
    proptest::collection::vec(arb_record(), 0..80).prop_map(|tail| {
        let mut log: Vec<MetadataRecord> = (0..4)
            .map(|broker_id| MetadataRecord::RegisterBroker {
                broker_id,
                incarnation_id: Uuid::from_u128(1),
                client_host: format!("b{broker_id}"),
                client_port: 9092,
                inter_broker_host: format!("b{broker_id}"),
                inter_broker_port: 9093,
                rack: Some(format!("r{}", broker_id % 2)),
            })
            .collect();
        log.extend(tail);
        log
    })
}

/// The image after applying `log` at offsets 0, 2, 4, … (gaps, as control batches leave).
pub(super) fn image_of(log: &[MetadataRecord]) -> MetadataImage {
    let mut image = MetadataImage::default();
    for (i, record) in log.iter().enumerate() {
        let _ = image.apply(2 * i as u64, record);
    }
    image
}
