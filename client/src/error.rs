//! The crate's one error type.

use std::sync::Arc;

pub use kafka_protocol::error::ResponseError;

/// Everything that can go wrong in `rill-client`, one variant per cause.
///
/// `Error` is `Clone` because one failure (a batch the broker refused, a connection
/// that dropped) is reported to every record or request that shared it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// No bootstrap server could be reached or none was given.
    #[error("no broker reachable (tried {tried}): {last_error}")]
    NoBrokerReachable {
        /// The addresses that were tried.
        tried: String,
        /// The error of the last attempt.
        last_error: String,
    },

    /// A socket operation failed (connect, read, write).
    #[error("i/o error talking to {addr}: {source}")]
    Io {
        /// The broker address.
        addr: String,
        /// The underlying error.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The connection closed while a request was waiting for its response.
    #[error("connection to {addr} closed")]
    Disconnected {
        /// The broker address.
        addr: String,
    },

    /// A request got no response within `request_timeout_ms`.
    #[error("request {api} to {addr} timed out after {timeout_ms} ms")]
    Timeout {
        /// The API name (e.g. `Produce`).
        api: &'static str,
        /// The broker address.
        addr: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },

    /// The broker does not support any version of an API this client speaks.
    #[error("broker {addr} supports no common version of {api}")]
    UnsupportedVersion {
        /// The API name.
        api: &'static str,
        /// The broker address.
        addr: String,
    },

    /// Bytes from the broker could not be decoded, or a request could not be encoded.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The broker answered with a Kafka error code.
    #[error("broker error {code:?}{}", .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker {
        /// The Kafka error code.
        code: ResponseError,
        /// The broker's error message, if it sent one.
        message: Option<String>,
    },

    /// The topic does not exist (after waiting `metadata_wait_ms_max` for it to appear).
    #[error("unknown topic {0}")]
    UnknownTopic(String),

    /// The partition does not exist in the topic.
    #[error("unknown partition {topic}/{partition}")]
    UnknownPartition {
        /// The topic name.
        topic: String,
        /// The partition index.
        partition: i32,
    },

    /// A record is larger than `batch_bytes_max` or `buffer_bytes_max` allows.
    #[error("record of {record_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    RecordTooLarge {
        /// The record's encoded size estimate.
        record_bytes: usize,
        /// The limit it exceeds.
        limit_bytes: usize,
    },

    /// A record could not be delivered before `delivery_timeout_ms` or `retries_max`
    /// ran out; `last_error` is the last failure.
    #[error("delivery failed after {attempts} attempt(s): {last_error}")]
    DeliveryFailed {
        /// How many times the batch was sent.
        attempts: u32,
        /// The error of the last attempt.
        last_error: Box<Error>,
    },

    /// The fetch position of a partition is out of range and `auto_offset_reset` is `None`.
    #[error("offset {offset} out of range for {topic}/{partition}")]
    OffsetOutOfRange {
        /// The topic name.
        topic: String,
        /// The partition index.
        partition: i32,
        /// The position that was out of range.
        offset: i64,
    },

    /// The partition is not assigned to this consumer.
    #[error("partition {topic}/{partition} is not assigned")]
    NotAssigned {
        /// The topic name.
        topic: String,
        /// The partition index.
        partition: i32,
    },

    /// A subscribed consumer was assigned a partition the group has no committed offset
    /// for, and `auto_offset_reset` is `None`.
    #[error("no committed offset for {topic}/{partition} and auto_offset_reset is none")]
    NoCommittedOffset {
        /// The topic name.
        topic: String,
        /// The partition index.
        partition: i32,
    },

    /// The producer or consumer was closed.
    #[error("client closed")]
    Closed,
}

impl Error {
    /// Whether a retry of the same request may succeed (after a metadata refresh and a
    /// backoff): connection problems, timeouts and the Kafka errors Kafka marks retriable.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Disconnected { .. } | Error::Timeout { .. } => true,
            Error::NoBrokerReachable { .. } => true,
            Error::Broker { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// Whether this error means the client's metadata (leaders, partitions) may be stale.
    pub fn invalidates_metadata(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Disconnected { .. } | Error::Timeout { .. } => true,
            Error::NoBrokerReachable { .. } => true,
            Error::Broker { code, .. } => matches!(
                code,
                ResponseError::NotLeaderOrFollower
                    | ResponseError::UnknownTopicOrPartition
                    | ResponseError::LeaderNotAvailable
                    | ResponseError::FencedLeaderEpoch
                    | ResponseError::UnknownLeaderEpoch
                    | ResponseError::NotController
                    | ResponseError::KafkaStorageError
            ),
            _ => false,
        }
    }

    /// The Kafka error code for a non-zero `code`, or `None` for success.
    pub(crate) fn from_code(code: i16, message: Option<&str>) -> Option<Error> {
        ResponseError::try_from_code(code).map(|code| Error::Broker {
            code,
            message: message.map(str::to_owned),
        })
    }

    pub(crate) fn io(addr: &str, source: std::io::Error) -> Error {
        Error::Io {
            addr: addr.to_owned(),
            source: Arc::new(source),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
