//! InitProducerId (v0–v5): producer ids for idempotent producers.
//!
//! * No transactional id: a new producer id from this broker's blocks
//!   ([`crate::producer_ids`]), epoch 0. Any broker answers (clients ask the least loaded
//!   one), as Kafka does for idempotent producers.
//! * KIP-360 (v3+): a producer that names its current id and epoch (it saw
//!   OUT_OF_ORDER_SEQUENCE_NUMBER or UNKNOWN_PRODUCER_ID and resets) gets the same id
//!   with the epoch one higher, so its partitions accept its sequences from 0 again and
//!   fence the old epoch's stragglers. No transactional id owns an idempotent producer's
//!   id, so the one naming it is its owner; the id must have been handed out by this
//!   cluster, else (and when the epoch is exhausted) a new id is given.
//! * A transactional id: transactions are not implemented, so the answer is
//!   TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which librdkafka, kafka-python and the Java
//!   client treat as fatal and report with its message, instead of retrying
//!   COORDINATOR_NOT_AVAILABLE until they time out.
//! * No block available within 5 s (a cluster without a controller):
//!   COORDINATOR_NOT_AVAILABLE, which clients retry.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::context::Broker;
use crate::error::BrokerError;

/// Handles an InitProducerId request.
pub async fn handle(broker: &Broker, request: InitProducerIdRequest) -> InitProducerIdResponse {
    match init(broker, &request).await {
        Ok((producer_id, producer_epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch),
        Err(e) => {
            tracing::debug!(error = %e, "InitProducerId refused");
            InitProducerIdResponse::default()
                .with_error_code(e.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

async fn init(broker: &Broker, request: &InitProducerIdRequest) -> Result<(i64, i16), BrokerError> {
    if let Some(id) = &request.transactional_id {
        if id.0.is_empty() {
            // Kafka's answer to an empty transactional id (null means idempotent only).
            return Err(BrokerError::InvalidRequest(
                "empty transactional id: send null for an idempotent producer".into(),
            ));
        }
        return Err(BrokerError::TransactionsUnsupported(format!(
            "transactional id `{}`: only idempotent producers are supported",
            id.0.as_str()
        )));
    }
    let cluster = broker.manager.cluster();
    let ids = &broker.manager.producer_ids;
    let (producer_id, epoch) = (request.producer_id.0, request.producer_epoch);
    if producer_id >= 0 && epoch >= 0 {
        // Kafka gives a new id once the epoch would reach i16::MAX.
        if epoch < i16::MAX - 1 && ids.was_issued(producer_id, cluster).await? {
            return Ok((producer_id, epoch + 1));
        }
    }
    Ok((ids.next_id(cluster).await?, 0))
}
