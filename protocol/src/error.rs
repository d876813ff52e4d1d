//! The one error type of this crate.

use kafka_protocol::ResponseError;

/// Everything that can go wrong while framing, parsing or encoding Kafka messages.
///
/// Incomplete input is *not* an error: [`crate::frame::FrameCodec`] answers `Ok(None)` for a
/// partial frame. Every variant here means the peer sent something we refuse (or, for
/// [`ProtocolError::Encode`], that we were asked to encode something the protocol cannot carry).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A frame's 4-byte size prefix is negative or above the configured maximum. Raised from the
    /// prefix alone, before any of the body is buffered; the connection should be closed.
    #[error("frame of {size} bytes refused (maximum {max} bytes)")]
    FrameTooLarge {
        /// The size the peer announced (may be negative).
        size: i64,
        /// The configured maximum (`socket_request_max_bytes`).
        max: usize,
    },

    /// A complete frame handed to the encoder does not start with its own length.
    #[error("outgoing frame of {len} bytes has a size prefix of {prefix}")]
    FramePrefixMismatch {
        /// Total bytes handed to the encoder, prefix included.
        len: usize,
        /// The prefix found in its first four bytes (or -1 if shorter than four bytes).
        prefix: i64,
    },

    /// A request or response header ended before the field named here.
    #[error("header truncated before {field}")]
    TruncatedHeader {
        /// The header field that could not be read.
        field: &'static str,
    },

    /// A header string (client id) has a length below -1.
    #[error("header field {field} has an invalid length {len}")]
    InvalidHeaderLength {
        /// The header field.
        field: &'static str,
        /// The length read off the wire.
        len: i64,
    },

    /// A header string is not UTF-8.
    #[error("header field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The header field.
        field: &'static str,
    },

    /// The api key is unknown, or the version is outside what Rill (or the codec) supports.
    /// Kafka answers this with UNSUPPORTED_VERSION (ApiVersions answers it with a v0 body).
    #[error("unsupported api key {api_key} version {api_version}")]
    UnsupportedVersion {
        /// The api key of the request.
        api_key: i16,
        /// The version of the request.
        api_version: i16,
    },

    /// A message body could not be decoded (truncated, bad length or count, bad UTF-8,
    /// trailing bytes, ...).
    #[error("malformed body for api key {api_key} version {api_version}: {error}")]
    MalformedBody {
        /// The api key of the message.
        api_key: i16,
        /// The version of the message.
        api_version: i16,
        /// What the decoder refused.
        #[source]
        error: crate::decode::DecodeError,
    },

    /// A response's correlation id does not match the request it should answer.
    #[error("response correlation id {got} does not match request {expected}")]
    CorrelationMismatch {
        /// The correlation id of the request we sent.
        expected: i32,
        /// The correlation id in the response.
        got: i32,
    },

    /// A message could not be encoded (a field not available in the chosen version, a string
    /// or array too long for its length prefix, ...).
    #[error("cannot encode api key {api_key} version {api_version}: {reason}")]
    Encode {
        /// The api key of the message.
        api_key: i16,
        /// The version of the message.
        api_version: i16,
        /// What the encoder complained about.
        reason: String,
    },

    /// A record batch's header is inconsistent (too short, bad length, unknown magic, unknown
    /// compression codec, negative counts). Kafka answers CORRUPT_MESSAGE.
    #[error("corrupt record batch: {reason}")]
    CorruptBatch {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A record batch's CRC32C does not match its contents. Kafka answers CORRUPT_MESSAGE.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC stored in the batch header.
        stored: u32,
        /// The CRC32C of the batch's bytes after the CRC field.
        computed: u32,
    },

    /// The batch uses a message format other than v2 (magic 2); v0/v1 message sets are not
    /// supported (produce v3+, the only versions we accept, require v2). Answered as
    /// CORRUPT_MESSAGE.
    #[error("record batch magic {magic} is not supported (only v2)")]
    UnsupportedMagic {
        /// The magic byte found.
        magic: i8,
    },

    /// A record inside a batch could not be decoded.
    #[error("corrupt record: {reason}")]
    CorruptRecord {
        /// What is wrong with it.
        reason: String,
    },

    /// The batch is compressed with a codec this build cannot handle (the `compression`
    /// feature is off, or the codec id is unknown).
    #[error("compression codec {codec} is not available in this build")]
    CompressionUnavailable {
        /// The codec id from the batch attributes (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
        codec: i16,
    },

    /// Decompressed records would exceed the caller's cap (a decompression bomb, or a batch
    /// larger than the consumer accepts).
    #[error("decompressed records exceed {limit} bytes")]
    DecompressedTooLarge {
        /// The cap, in bytes.
        limit: usize,
    },

    /// Compressing or decompressing records failed.
    #[error("compression failed: {reason}")]
    Compression {
        /// The codec's complaint.
        reason: String,
    },

    /// The socket failed underneath the codec.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rill_record::RecordError> for ProtocolError {
    /// Keeps the variants clients already match on: magic, CRC and record errors map to their
    /// own variants, the other batch errors to [`ProtocolError::CorruptBatch`].
    fn from(e: rill_record::RecordError) -> ProtocolError {
        use rill_record::RecordError as R;
        match e {
            R::UnsupportedMagic { magic } => ProtocolError::UnsupportedMagic { magic },
            R::CrcMismatch { stored, computed } => ProtocolError::CrcMismatch { stored, computed },
            R::CorruptRecord { reason } => ProtocolError::CorruptRecord {
                reason: reason.to_owned(),
            },
            other => ProtocolError::CorruptBatch {
                reason: other.reason(),
            },
        }
    }
}

impl ProtocolError {
    /// The Kafka error code a broker should answer this error with, if it is answered at all.
    ///
    /// `None` means the request cannot be answered meaningfully and the connection should be
    /// closed (framing and header errors: we may not even know the correlation id).
    pub fn kafka_error_code(&self) -> Option<i16> {
        let error = match self {
            ProtocolError::UnsupportedVersion { .. } => ResponseError::UnsupportedVersion,
            ProtocolError::CorruptBatch { .. }
            | ProtocolError::CrcMismatch { .. }
            | ProtocolError::UnsupportedMagic { .. }
            | ProtocolError::CorruptRecord { .. }
            | ProtocolError::DecompressedTooLarge { .. } => ResponseError::CorruptMessage,
            ProtocolError::CompressionUnavailable { .. } => {
                ResponseError::UnsupportedCompressionType
            }
            ProtocolError::MalformedBody { .. } => ResponseError::InvalidRequest,
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::FramePrefixMismatch { .. }
            | ProtocolError::TruncatedHeader { .. }
            | ProtocolError::InvalidHeaderLength { .. }
            | ProtocolError::InvalidUtf8 { .. }
            | ProtocolError::CorrelationMismatch { .. }
            | ProtocolError::Encode { .. }
            | ProtocolError::Compression { .. }
            | ProtocolError::Io(_) => return None,
        };
        Some(error.code())
    }
}
