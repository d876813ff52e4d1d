//! DescribeConfigs: every topic config Kafka defines, under Kafka's key names, with its
//! source (TOPIC_CONFIG, STATIC_BROKER_CONFIG, DEFAULT_CONFIG), synonyms on request and
//! its type and documentation (v3+); and the broker's own keys (read-only). Which topic
//! keys Rill acts on is in [`crate::state::topic_config`]; the documentation of the
//! others says they are stored only. `cleanup.policy=compact` topics are compacted by
//! the broker's log cleaner (`broker/src/cleaner.rs`).

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::str_bytes;
use crate::context::Broker;
use crate::error::BrokerError;
use crate::state::topic_config::{
    TopicConfig, SOURCE_DEFAULT, SOURCE_STATIC_BROKER, SOURCE_TOPIC, TOPIC_CONFIGS,
};

/// Kafka's ConfigResource types.
pub const RESOURCE_TOPIC: i8 = 2;
/// Kafka's ConfigResource type of a broker.
pub const RESOURCE_BROKER: i8 = 4;
/// Kafka's ConfigType of text.
const TYPE_STRING: i8 = 2;

/// Answers every requested resource.
pub fn handle(
    broker: &Broker,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let keys = resource.configuration_keys.clone();
            let wanted = |key: &str| {
                keys.as_ref()
                    .is_none_or(|k| k.iter().any(|w| w.as_str() == key))
            };
            let configs = match resource.resource_type {
                RESOURCE_TOPIC => broker
                    .manager
                    .topic(resource.resource_name.as_str())
                    .ok_or(BrokerError::UnknownTopicOrPartition)
                    .map(|topic| describe_topic(&topic.config, &wanted, &request, version)),
                RESOURCE_BROKER => {
                    let name = resource.resource_name.as_str();
                    if name.is_empty() || name == broker.config.node_id.to_string() {
                        Ok(describe_broker(broker, &wanted, &request, version))
                    } else {
                        Err(BrokerError::InvalidRequest(format!(
                            "unknown broker `{name}`"
                        )))
                    }
                }
                other => Err(BrokerError::InvalidRequest(format!(
                    "resource type {other} is not supported"
                ))),
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match configs {
                Ok(configs) => result.with_configs(configs),
                Err(e) => result
                    .with_error_code(e.code())
                    .with_error_message(Some(str_bytes(e.to_string()))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe_topic(
    config: &TopicConfig,
    wanted: &dyn Fn(&str) -> bool,
    request: &DescribeConfigsRequest,
    version: i16,
) -> Vec<DescribeConfigsResourceResult> {
    TOPIC_CONFIGS
        .iter()
        .filter(|def| wanted(def.name))
        .map(|def| {
            let key = def.name;
            let value = config.value(key).map(str_bytes);
            let mut entry = DescribeConfigsResourceResult::default()
                .with_name(str_bytes(key))
                .with_value(value.clone())
                .with_config_source(config.source(key));
            if request.include_synonyms {
                // Kafka's order: the most specific source first.
                let mut synonyms = Vec::new();
                if config.is_override(key) {
                    synonyms.push(
                        DescribeConfigsSynonym::default()
                            .with_name(str_bytes(key))
                            .with_value(value)
                            .with_source(SOURCE_TOPIC),
                    );
                }
                let broker_key = def.broker_key.unwrap_or(key);
                if def.set_by_broker(config.defaults()) {
                    synonyms.push(
                        DescribeConfigsSynonym::default()
                            .with_name(str_bytes(broker_key))
                            .with_value(Some(str_bytes(def.default_value(config.defaults()))))
                            .with_source(SOURCE_STATIC_BROKER),
                    );
                }
                synonyms.push(
                    DescribeConfigsSynonym::default()
                        .with_name(str_bytes(broker_key))
                        .with_value(Some(str_bytes(
                            def.default_value(&crate::config::TopicDefaults::default()),
                        )))
                        .with_source(SOURCE_DEFAULT),
                );
                entry = entry.with_synonyms(synonyms);
            }
            if version >= 3 {
                entry = entry.with_config_type(def.config_type as i8);
                if request.include_documentation {
                    entry = entry.with_documentation(Some(str_bytes(def.doc)));
                }
            }
            entry
        })
        .collect()
}

fn describe_broker(
    broker: &Broker,
    wanted: &dyn Fn(&str) -> bool,
    request: &DescribeConfigsRequest,
    version: i16,
) -> Vec<DescribeConfigsResourceResult> {
    let c = &broker.config;
    let t = &c.topic_defaults;
    let built_in = crate::config::Config::default();
    // Broker-level keys: (name, value, set away from the built-in default).
    macro_rules! broker_entry {
        ($key:ident) => {
            (
                stringify!($key),
                c.$key.to_string(),
                c.$key != built_in.$key,
            )
        };
    }
    let entries: [(&str, String, bool); 15] = [
        (
            "log_retention_ms",
            t.retention_ms.to_string(),
            t.retention_ms != built_in.topic_defaults.retention_ms,
        ),
        (
            "log_retention_bytes",
            t.retention_bytes.to_string(),
            t.retention_bytes != built_in.topic_defaults.retention_bytes,
        ),
        (
            "log_segment_bytes",
            t.segment_bytes.to_string(),
            t.segment_bytes != built_in.topic_defaults.segment_bytes,
        ),
        (
            "log_segment_ms",
            t.segment_ms.to_string(),
            t.segment_ms != built_in.topic_defaults.segment_ms,
        ),
        (
            "message_max_bytes",
            t.max_message_bytes.to_string(),
            t.max_message_bytes != built_in.topic_defaults.max_message_bytes,
        ),
        (
            "auto_create_topics",
            c.auto_create_topics.to_string(),
            c.auto_create_topics != built_in.auto_create_topics,
        ),
        (
            "default_partitions",
            c.default_partitions.to_string(),
            c.default_partitions != built_in.default_partitions,
        ),
        (
            "socket_request_max_bytes",
            c.socket_request_max_bytes.to_string(),
            c.socket_request_max_bytes != built_in.socket_request_max_bytes,
        ),
        (
            "non_produce_request_max_bytes",
            c.non_produce_request_max_bytes.to_string(),
            c.non_produce_request_max_bytes != built_in.non_produce_request_max_bytes,
        ),
        (
            "durability",
            c.durability.to_string(),
            c.durability != built_in.durability,
        ),
        broker_entry!(queued_request_max_bytes),
        broker_entry!(connections_max_per_ip),
        broker_entry!(connections_max_idle_ms),
        broker_entry!(request_read_timeout_ms),
        broker_entry!(log_dir_free_bytes_min),
    ];
    entries
        .into_iter()
        .filter(|(key, _, _)| wanted(key))
        .map(|(key, value, set)| {
            let mut entry = DescribeConfigsResourceResult::default()
                .with_name(str_bytes(key))
                .with_value(Some(str_bytes(value)))
                .with_read_only(true)
                .with_config_source(if set {
                    SOURCE_STATIC_BROKER
                } else {
                    SOURCE_DEFAULT
                });
            if version >= 3 {
                entry = entry.with_config_type(TYPE_STRING);
                if request.include_documentation {
                    entry = entry.with_documentation(Some(str_bytes(
                        "Broker key; see the rilld configuration reference.",
                    )));
                }
            }
            entry
        })
        .collect()
}
