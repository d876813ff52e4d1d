//! AlterConfigs (api key 33: replaces a topic's whole set of overrides) and
//! IncrementalAlterConfigs (api key 44: SET, DELETE, APPEND, SUBTRACT per key) for
//! topics. Every key and value is checked as CreateTopics checks them (an unknown key is
//! INVALID_CONFIG naming it), then the new set is stored through the controller in a
//! cluster and applied on every replica. `validate_only` checks without storing. Broker
//! resources are read-only here: rilld's own keys come from its config file.
//!
//! In a cluster, a broker that is not the controller forwards the request to the
//! controller over the client protocol and relays its answer (kafka-python sends
//! AlterConfigs to any broker, unlike CreateTopics); a forwarded request is never
//! forwarded again, and if the controller cannot be reached the broker answers
//! NOT_CONTROLLER itself, as for CreateTopics.

use std::collections::BTreeMap;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::{Encodable, Request};
use rill_protocol::decode::Decode;

use super::create_topics::request_configs;
use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use super::error_parts;
use crate::context::Broker;
use crate::error::BrokerError;
use crate::state::topic_config::{self, list_items, ConfigType, TopicConfig};

/// IncrementalAlterConfigs' operations (Kafka's `AlterConfigOp.OpType`).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Client id of a request a broker forwards to the controller: a broker that receives
/// one answers it itself, never forwarding it again.
pub const FORWARDED_CLIENT_ID: &str = "rill-forwarded-admin";
/// How long a forwarded request may take, connection included.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest answer a forwarded request may get (a few bytes per resource in practice).
const FORWARD_RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Sends `request` (at `version`) to the controller and returns its answer, when this
/// broker is in a cluster, is not the controller, knows the controller's address, and the
/// request was not forwarded to it already. `None`: answer locally.
async fn forward<R>(
    broker: &Broker,
    request: &R,
    version: i16,
    client_id: Option<&str>,
) -> Option<R::Response>
where
    R: Request + Encodable,
    R::Response: Decode,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if client_id == Some(FORWARDED_CLIENT_ID) {
        return None;
    }
    let cluster = broker.manager.cluster()?;
    let controller = cluster.controller_id()?;
    if controller == broker.config.node_id {
        return None;
    }
    let (host, port, _) = cluster.endpoint(controller)?;
    let header = rill_protocol::header::RequestHeader {
        api_key: R::KEY,
        api_version: version,
        correlation_id: 1,
        client_id: Some(FORWARDED_CLIENT_ID.to_string()),
    };
    let frame = rill_protocol::codec::encode_request(&header, request).ok()?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        stream.write_all(&frame).await.ok()?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.ok()?;
        let len = u32::from_be_bytes(len) as usize;
        if len > FORWARD_RESPONSE_BYTES_MAX {
            return None;
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.ok()?;
        rill_protocol::codec::decode_response::<R::Response>(
            bytes::Bytes::from(body),
            R::KEY,
            version,
        )
        .ok()
        .map(|(_, response)| response)
    };
    let answer = tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .ok()
        .flatten();
    if answer.is_none() {
        tracing::warn!(
            controller,
            "could not forward a config change to the controller"
        );
    }
    answer
}

/// One requested change of a topic's overrides.
enum Change {
    /// AlterConfigs: these are the topic's overrides from now on.
    Replace(BTreeMap<String, String>),
    /// IncrementalAlterConfigs: (key, operation, value), each key at most once.
    Incremental(Vec<(String, i8, Option<String>)>),
}

/// Answers AlterConfigs.
pub async fn handle_alter(
    broker: &Broker,
    request: AlterConfigsRequest,
    version: i16,
    client_id: Option<&str>,
) -> AlterConfigsResponse {
    if let Some(answer) = forward(broker, &request, version, client_id).await {
        return answer;
    }
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let change = request_configs(
            resource
                .configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
        )
        .map(Change::Replace)
        .map_err(|e| BrokerError::InvalidConfig(e.to_string()));
        let result = match change {
            Ok(change) => {
                alter(
                    broker,
                    resource.resource_type,
                    resource.resource_name.as_str(),
                    change,
                    request.validate_only,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let (error_code, error_message) = error_parts(&result);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(error_code)
                .with_error_message(error_message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone()),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// Answers IncrementalAlterConfigs.
pub async fn handle_incremental(
    broker: &Broker,
    request: IncrementalAlterConfigsRequest,
    version: i16,
    client_id: Option<&str>,
) -> IncrementalAlterConfigsResponse {
    if let Some(answer) = forward(broker, &request, version, client_id).await {
        return answer;
    }
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let mut ops = Vec::with_capacity(
            resource
                .configs
                .len()
                .min(topic_config::TOPIC_CONFIGS.len()),
        );
        let mut bad = None;
        // Keys are topic keys only for a topic; other resources are refused whole below.
        let configs = if resource.resource_type == RESOURCE_TOPIC {
            &resource.configs[..]
        } else {
            &[]
        };
        for c in configs {
            let key = c.name.as_str();
            if ops
                .iter()
                .any(|(k, _, _): &(String, i8, Option<String>)| k == key)
            {
                // Kafka refuses a key given twice (the order of two changes is undefined).
                bad = Some(BrokerError::InvalidRequest(format!(
                    "config `{}` is given twice",
                    key.chars().take(256).collect::<String>()
                )));
                break;
            }
            // Known keys only: with no duplicates either, the loop ends within the
            // number of known keys however many configs the request holds.
            if let Err(e) = topic_config::check_key(key) {
                bad = Some(BrokerError::InvalidConfig(e.to_string()));
                break;
            }
            ops.push((
                key.to_string(),
                c.config_operation,
                c.value.as_ref().map(|v| v.to_string()),
            ));
        }
        let result = match bad {
            Some(e) => Err(e),
            None => {
                alter(
                    broker,
                    resource.resource_type,
                    resource.resource_name.as_str(),
                    Change::Incremental(ops),
                    request.validate_only,
                )
                .await
            }
        };
        let (error_code, error_message) = error_parts(&result);
        responses.push(
            IncrementalResourceResponse::default()
                .with_error_code(error_code)
                .with_error_message(error_message)
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone()),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// Applies `change` to one resource.
async fn alter(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    change: Change,
    validate_only: bool,
) -> Result<(), BrokerError> {
    match resource_type {
        RESOURCE_TOPIC => {
            broker
                .manager
                .alter_topic_configs(name, |current| apply(current, change), validate_only)
                .await
        }
        RESOURCE_BROKER => Err(BrokerError::InvalidRequest(
            "broker configs are read-only: set them in rilld's config file or flags".into(),
        )),
        other => Err(BrokerError::InvalidRequest(format!(
            "resource type {other} is not supported"
        ))),
    }
}

/// The topic's overrides after `change` (checked again as a whole by the caller).
fn apply(current: &TopicConfig, change: Change) -> Result<BTreeMap<String, String>, BrokerError> {
    let ops = match change {
        Change::Replace(configs) => return Ok(configs),
        Change::Incremental(ops) => ops,
    };
    let invalid =
        |key: &str, message: &str| BrokerError::InvalidConfig(format!("config `{key}`: {message}"));
    let mut overrides = current.overrides.clone();
    for (key, op, value) in ops {
        let Some(def) = topic_config::definition(&key) else {
            return Err(invalid(&key, "unknown topic config"));
        };
        match op {
            OP_SET => {
                let value = value.ok_or_else(|| {
                    BrokerError::InvalidRequest(format!("config `{key}`: SET with a null value"))
                })?;
                topic_config::check(&key, &value)
                    .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
                overrides.insert(key, value);
            }
            OP_DELETE => {
                overrides.remove(&key);
            }
            OP_APPEND | OP_SUBTRACT => {
                if def.config_type != ConfigType::List {
                    return Err(invalid(
                        &key,
                        "APPEND and SUBTRACT apply to list configs only",
                    ));
                }
                let value = value.unwrap_or_default();
                let given = list_items(&value);
                let now = current.value(&key).unwrap_or_default();
                let mut items: Vec<&str> = list_items(&now);
                if op == OP_APPEND {
                    for item in given {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    }
                } else {
                    items.retain(|item| !given.contains(item));
                }
                let joined = items.join(",");
                topic_config::check(&key, &joined)
                    .map_err(|e| BrokerError::InvalidConfig(e.to_string()))?;
                overrides.insert(key, joined);
            }
            other => {
                return Err(BrokerError::InvalidRequest(format!(
                    "config `{key}`: unknown operation {other}"
                )))
            }
        }
    }
    Ok(overrides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicDefaults;

    fn config(pairs: &[(&str, &str)]) -> TopicConfig {
        let overrides = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TopicConfig::new(&TopicDefaults::default(), overrides).unwrap()
    }

    fn op(key: &str, op: i8, value: Option<&str>) -> (String, i8, Option<String>) {
        (key.to_string(), op, value.map(str::to_string))
    }

    #[test]
    fn incremental_operations_set_delete_append_and_subtract() {
        let current = config(&[("retention.ms", "1000"), ("segment.ms", "5000")]);
        let after = apply(
            &current,
            Change::Incremental(vec![
                op("retention.ms", OP_DELETE, None),
                op("compression.type", OP_SET, Some("lz4")),
                op("cleanup.policy", OP_APPEND, Some("compact")),
                op(
                    "leader.replication.throttled.replicas",
                    OP_APPEND,
                    Some("0:1,1:2"),
                ),
            ]),
        )
        .unwrap();
        assert!(!after.contains_key("retention.ms"));
        assert_eq!(after["segment.ms"], "5000");
        assert_eq!(after["compression.type"], "lz4");
        // Appended to the default `delete`.
        assert_eq!(after["cleanup.policy"], "delete,compact");
        let current = config(&[("cleanup.policy", "delete,compact")]);
        let after = apply(
            &current,
            Change::Incremental(vec![op("cleanup.policy", OP_SUBTRACT, Some("delete"))]),
        )
        .unwrap();
        assert_eq!(after["cleanup.policy"], "compact");
    }

    #[test]
    fn append_to_a_non_list_and_bad_values_are_invalid_config() {
        let current = config(&[]);
        for ops in [
            vec![op("retention.ms", OP_APPEND, Some("1"))],
            vec![op("retention.ms", OP_SET, Some("soon"))],
            vec![op("no.such.key", OP_SET, Some("1"))],
        ] {
            let err = apply(&current, Change::Incremental(ops)).unwrap_err();
            assert_eq!(err.code(), 40, "INVALID_CONFIG: {err}");
        }
        let err = apply(
            &current,
            Change::Incremental(vec![op("retention.ms", 9, Some("1"))]),
        )
        .unwrap_err();
        assert_eq!(err.code(), 42, "INVALID_REQUEST: {err}");
    }
}
