//! Metadata (api key 3): request v0–v13, response v0–v13. Flexible from v9.

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::source::{array, no_known_tags, nullable_array};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know (older ones lay fields out differently).
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=13;

const FLEXIBLE_VERSION: i16 = 9;

impl Decode for MetadataRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = MetadataRequest::default();
        // v0 has no null: an empty array means "all topics" there.
        let topic = |s: &mut S| MetadataRequestTopic::decode(s, v);
        m.topics = if v >= 1 {
            nullable_array(s, flexible, 1, topic)?
        } else {
            Some(array(s, flexible, 2, topic)?)
        };
        if v >= 4 {
            m.allow_auto_topic_creation = s.boolean()?;
        }
        if (8..=10).contains(&v) {
            m.include_cluster_authorized_operations = s.boolean()?;
        }
        if v >= 8 {
            m.include_topic_authorized_operations = s.boolean()?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for MetadataRequestTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = MetadataRequestTopic::default();
        if v >= 10 {
            t.topic_id = s.uuid()?;
            t.name = s.nullable_string(flexible)?.map(TopicName);
        } else {
            t.name = Some(TopicName(s.string(flexible)?));
        }
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for MetadataResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = MetadataResponse::default();
        if v >= 3 {
            m.throttle_time_ms = s.int32()?;
        }
        m.brokers = array(s, flexible, 10, |s| MetadataResponseBroker::decode(s, v))?;
        if v >= 2 {
            m.cluster_id = s.nullable_string(flexible)?;
        }
        if v >= 1 {
            m.controller_id = BrokerId(s.int32()?);
        }
        m.topics = array(s, flexible, 7, |s| MetadataResponseTopic::decode(s, v))?;
        if (8..=10).contains(&v) {
            m.cluster_authorized_operations = s.int32()?;
        }
        if v >= 13 {
            m.error_code = s.int16()?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for MetadataResponseBroker {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut b = MetadataResponseBroker::default();
        b.node_id = BrokerId(s.int32()?);
        b.host = s.string(flexible)?;
        b.port = s.int32()?;
        if v >= 1 {
            b.rack = s.nullable_string(flexible)?;
        }
        no_known_tags(s, flexible, &mut b.unknown_tagged_fields)?;
        Ok(b)
    }
}

impl Decode for MetadataResponseTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = MetadataResponseTopic::default();
        t.error_code = s.int16()?;
        t.name = if v >= 12 {
            s.nullable_string(flexible)?.map(TopicName)
        } else {
            Some(TopicName(s.string(flexible)?))
        };
        if v >= 10 {
            t.topic_id = s.uuid()?;
        }
        if v >= 1 {
            t.is_internal = s.boolean()?;
        }
        t.partitions = array(s, flexible, 14, |s| MetadataResponsePartition::decode(s, v))?;
        if v >= 8 {
            t.topic_authorized_operations = s.int32()?;
        }
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for MetadataResponsePartition {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let broker_id = |s: &mut S| s.int32().map(BrokerId);
        let mut p = MetadataResponsePartition::default();
        p.error_code = s.int16()?;
        p.partition_index = s.int32()?;
        p.leader_id = BrokerId(s.int32()?);
        if v >= 7 {
            p.leader_epoch = s.int32()?;
        }
        p.replica_nodes = array(s, flexible, 4, broker_id)?;
        p.isr_nodes = array(s, flexible, 4, broker_id)?;
        if v >= 5 {
            p.offline_replicas = array(s, flexible, 4, broker_id)?;
        }
        no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
        Ok(p)
    }
}
