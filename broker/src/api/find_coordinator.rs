//! FindCoordinator: the broker that coordinates a group (the leader of its
//! `__consumer_offsets` partition). v4+ batch keys; transaction coordinators are refused
//! (no transactions yet).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::context::Broker;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Most keys one request may ask for (each may create work); more are refused.
const KEYS_MAX: usize = 1000;

/// Where a coordinator is, or why it cannot be named.
struct Found {
    node_id: i32,
    host: String,
    port: i32,
    error: Option<(ResponseError, String)>,
}

async fn find(broker: &Broker, key_type: i8, key: &str) -> Found {
    let error = |e: ResponseError, message: &str| Found {
        node_id: -1,
        host: String::new(),
        port: -1,
        error: Some((e, message.to_string())),
    };
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => {
            return error(
                ResponseError::CoordinatorNotAvailable,
                "transactions are not supported yet",
            )
        }
        _ => return error(ResponseError::InvalidRequest, "unknown key type"),
    }
    let node_id = match broker.groups.find_coordinator(key).await {
        Ok(node_id) => node_id,
        Err(e) => return error(e, "no coordinator for this group"),
    };
    if node_id == broker.config.node_id {
        return Found {
            node_id,
            host: broker.advertised_host.clone(),
            port: broker.advertised_port,
            error: None,
        };
    }
    let address = broker.manager.cluster().and_then(|cluster| {
        cluster
            .brokers()
            .into_iter()
            .find(|(id, _, _)| *id == node_id)
    });
    match address {
        Some((_, host, port)) => Found {
            node_id,
            host,
            port: i32::from(port),
            error: None,
        },
        None => error(
            ResponseError::CoordinatorNotAvailable,
            "the coordinator's address is not known",
        ),
    }
}

fn message(found: &Found) -> Option<StrBytes> {
    found.error.as_ref().map(|(_, m)| str_bytes(m.clone()))
}

/// Answers a FindCoordinator request.
pub async fn handle(
    broker: &Broker,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    if version < 4 {
        let found = find(broker, request.key_type, &request.key).await;
        let mut response = FindCoordinatorResponse::default()
            .with_error_code(found.error.as_ref().map_or(0, |(e, _)| e.code()))
            .with_node_id(BrokerId(found.node_id))
            .with_host(str_bytes(found.host.clone()))
            .with_port(found.port);
        if version >= 1 {
            response = response.with_error_message(message(&found));
        }
        return response;
    }
    let mut coordinators = Vec::with_capacity(request.coordinator_keys.len().min(KEYS_MAX));
    for (i, key) in request.coordinator_keys.into_iter().enumerate() {
        let found = if i < KEYS_MAX {
            find(broker, request.key_type, &key).await
        } else {
            Found {
                node_id: -1,
                host: String::new(),
                port: -1,
                error: Some((
                    ResponseError::InvalidRequest,
                    format!("more than {KEYS_MAX} keys"),
                )),
            }
        };
        coordinators.push(
            Coordinator::default()
                .with_key(key)
                .with_node_id(BrokerId(found.node_id))
                .with_host(str_bytes(found.host.clone()))
                .with_port(found.port)
                .with_error_code(found.error.as_ref().map_or(0, |(e, _)| e.code()))
                .with_error_message(message(&found)),
        );
    }
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}
