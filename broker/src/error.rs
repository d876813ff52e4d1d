//! The broker's error type: one variant per cause, each ending as a Kafka error code
//! at the protocol boundary ([`BrokerError::code`]).

use kafka_protocol::messages::produce_response::BatchIndexAndErrorMessage;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The topic or partition does not exist.
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// A Fetch (v13+) named a topic id that does not exist.
    #[error("unknown topic id")]
    UnknownTopicId,
    /// The topic name is not a legal Kafka topic name.
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    /// CreateTopics named a topic that exists.
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    /// A partition count was out of range.
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    /// A replication factor other than 1 (or -1) on a single node.
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    /// Manual replica assignments are not supported on a single node beyond broker 1.
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    /// A topic config key or value was rejected.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The record batch failed validation (size fields, magic, CRC).
    #[error("corrupt record batch: {0}")]
    CorruptMessage(String),
    /// A well-formed batch breaks a rule for what clients may write (Kafka's log validator:
    /// magic other than 2, offsets inconsistent with the records count, more records than
    /// bytes, a control batch, a transactional batch while transactions are unsupported).
    /// Nothing of the partition's records is appended.
    #[error("{message}")]
    InvalidRecord {
        /// What is wrong, in Kafka's wording where Kafka has one.
        message: String,
    },
    /// The record batch is larger than the topic's max.message.bytes.
    #[error("record batch of {size_bytes} bytes exceeds max.message.bytes {max_bytes}")]
    MessageTooLarge {
        /// The batch size.
        size_bytes: usize,
        /// The topic's limit.
        max_bytes: i64,
    },
    /// The requested offset is outside the log.
    #[error("offset {offset} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// First offset in the log.
        log_start_offset: i64,
        /// Offset after the last readable record.
        log_end_offset: i64,
    },
    /// An acks value other than -1, 0 or 1.
    #[error("invalid required acks {0}")]
    InvalidRequiredAcks(i16),
    /// The request is malformed in a way the codec accepted.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An acks=-1 produce's flush did not complete within the request's timeout_ms
    /// (the batch is appended and will become durable; the client may retry).
    #[error("flush did not complete within the request timeout")]
    RequestTimedOut,
    /// The client's current_leader_epoch is newer than ours.
    #[error("unknown leader epoch")]
    UnknownLeaderEpoch,
    /// The client's current_leader_epoch is older than ours.
    #[error("fenced leader epoch")]
    FencedLeaderEpoch,
    /// A disk or storage error.
    #[error("storage error: {0}")]
    Storage(String),
    /// This replica does not lead the partition (it lost leadership, or its Raft group
    /// has not elected it yet); the client refreshes metadata and retries.
    #[error("not the leader of this partition")]
    NotLeaderOrFollower,
    /// The partition's replication layer cannot take more right now (too many bytes
    /// proposed and not yet committed); retriable.
    #[error("partition is busy: {0}")]
    Busy(String),
    /// The partition's group already holds its limit of appended but uncommitted
    /// bytes (its disk sync or its followers are behind). Nothing was written; the
    /// produce handler waits for the commit to move and tries again, until the
    /// request's timeout. Retriable.
    #[error("the partition's uncommitted appends are at their limit")]
    Backlogged,

    /// A client asked to delete or grow an internal topic (`__consumer_offsets`), which
    /// only the broker manages. Kafka's broker guards its internal topics with the
    /// authorizer (kafka-topics.sh refuses on the client side), so a client that may not
    /// touch it is answered TOPIC_AUTHORIZATION_FAILED: the code a Kafka client sees.
    #[error("{topic} is an internal topic: clients cannot {operation} it")]
    InternalTopic {
        /// The topic.
        topic: String,
        /// What was refused ("delete", "add partitions to").
        operation: &'static str,
    },

    /// A cluster change (CreateTopics, DeleteTopics) sent to a broker that is not the
    /// controller (the metadata group's leader): clients retry at the controller that
    /// Metadata names.
    #[error("this broker is not the controller")]
    NotController,

    /// An idempotent producer's batch does not follow the last one this partition holds
    /// from it (a gap, or a sequence older than the five batches kept): the producer bumps
    /// its epoch and resends (KIP-360).
    #[error("out of order sequence number: {0}")]
    OutOfOrderSequence(String),
    /// An idempotent producer's batch carries an epoch older than the partition's for its
    /// producer id: a newer incarnation of the producer wrote since.
    #[error("invalid producer epoch: {0}")]
    InvalidProducerEpoch(String),
    /// A batch with a sequence other than 0 from a producer id the partition holds no
    /// state of (never seen, or expired after `producer_id_expiration_ms`).
    #[error("unknown producer id: {0}")]
    UnknownProducerId(String),
    /// InitProducerId could not get a producer id yet (no block from the controller);
    /// retriable.
    #[error("no producer id available: {0}")]
    ProducerIdUnavailable(String),
    /// InitProducerId with a transactional id: transactions are not implemented.
    #[error("transactions are not supported: {0}")]
    TransactionsUnsupported(String),
}

impl BrokerError {
    /// The Kafka error this becomes on the wire.
    pub fn response_error(&self) -> ResponseError {
        match self {
            BrokerError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
            BrokerError::UnknownTopicId => ResponseError::UnknownTopicId,
            BrokerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
            BrokerError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
            BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            BrokerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
            BrokerError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            BrokerError::InvalidConfig(_) => ResponseError::InvalidConfig,
            BrokerError::CorruptMessage(_) => ResponseError::CorruptMessage,
            BrokerError::InvalidRecord { .. } => ResponseError::InvalidRecord,
            BrokerError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
            BrokerError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            BrokerError::InvalidRequiredAcks(_) => ResponseError::InvalidRequiredAcks,
            BrokerError::InvalidRequest(_) => ResponseError::InvalidRequest,
            BrokerError::RequestTimedOut => ResponseError::RequestTimedOut,
            BrokerError::UnknownLeaderEpoch => ResponseError::UnknownLeaderEpoch,
            BrokerError::FencedLeaderEpoch => ResponseError::FencedLeaderEpoch,
            BrokerError::Storage(_) => ResponseError::KafkaStorageError,
            BrokerError::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower,
            // Kafka's retriable "wait and send again" for a leader that cannot take
            // the write yet.
            BrokerError::Busy(_) | BrokerError::Backlogged => ResponseError::NotEnoughReplicas,
            BrokerError::NotController => ResponseError::NotController,
            BrokerError::InternalTopic { .. } => ResponseError::TopicAuthorizationFailed,
            BrokerError::OutOfOrderSequence(_) => ResponseError::OutOfOrderSequenceNumber,
            BrokerError::InvalidProducerEpoch(_) => ResponseError::InvalidProducerEpoch,
            BrokerError::UnknownProducerId(_) => ResponseError::UnknownProducerId,
            // Retriable: librdkafka and kafka-python send InitProducerId again after their
            // retry backoff.
            BrokerError::ProducerIdUnavailable(_) => ResponseError::CoordinatorNotAvailable,
            // What a Kafka broker answers a client that may not use a transactional id;
            // fatal for the producer, which names the cause, instead of a retry loop.
            BrokerError::TransactionsUnsupported(_) => {
                ResponseError::TransactionalIdAuthorizationFailed
            }
        }
    }

    /// The Kafka error code.
    pub fn code(&self) -> i16 {
        self.response_error().code()
    }

    /// Produce v8+ `record_errors` (KIP-467) for this error: one entry for an
    /// [`BrokerError::InvalidRecord`], none otherwise. Our rules are about whole batches, not
    /// single records, so the entry names index 0 (the batch from its first record) and
    /// repeats the message; the encoder leaves the field out below v8.
    pub fn record_errors(&self) -> Vec<BatchIndexAndErrorMessage> {
        match self {
            BrokerError::InvalidRecord { message } => vec![BatchIndexAndErrorMessage::default()
                .with_batch_index(0)
                .with_batch_index_error_message(Some(StrBytes::from_string(message.clone())))],
            _ => Vec::new(),
        }
    }
}
