//! Errors of the SPDY/3.1 codec.

/// A frame or header block that cannot be decoded or encoded.
///
/// Errors found in the 8-byte frame header ([`SpdyError::UnsupportedVersion`],
/// [`SpdyError::FrameTooLarge`]) leave the buffer untouched: the byte stream cannot be
/// resynchronised. Errors found in a complete frame consume it, and the decoder stays usable
/// unless zlib itself failed ([`SpdyError::Decompress`], [`SpdyError::WrongDictionary`],
/// [`SpdyError::TrailingCompressedBytes`], [`SpdyError::HeaderBlockTooLarge`]), which leaves
/// the direction's compression context out of step. A server should treat every error as a
/// session error: send GOAWAY with PROTOCOL_ERROR and close the connection.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A control frame with a version other than 3.
    #[error("unsupported spdy version {0}")]
    UnsupportedVersion(u16),
    /// The 24-bit length field is larger than the decoder accepts.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared payload length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A control frame whose length does not fit its type.
    #[error("{frame} frame has invalid length {len}")]
    InvalidLength {
        /// Frame type name.
        frame: &'static str,
        /// Declared payload length.
        len: usize,
    },
    /// A frame that needs a stream id carries 0, or an id does not fit 31 bits on encode.
    #[error("{frame} frame has invalid stream id {stream_id}")]
    InvalidStreamId {
        /// Frame type name.
        frame: &'static str,
        /// The offending id.
        stream_id: u32,
    },
    /// WINDOW_UPDATE with a delta of 0 (the draft allows 1 to 2^31-1).
    #[error("window update on stream {0} has a delta of 0")]
    ZeroWindowDelta(u32),
    /// The number of SETTINGS entries does not match the frame length.
    #[error("settings frame declares {declared} entries but its length {len} does not match")]
    SettingsCount {
        /// Entry count in the frame.
        declared: u32,
        /// Declared payload length.
        len: usize,
    },
    /// zlib rejected a header block; the session's decompression context is now unusable.
    #[error("header block decompression failed")]
    Decompress(#[source] flate2::DecompressError),
    /// zlib failed to compress a header block.
    #[error("header block compression failed")]
    Compress(#[source] flate2::CompressError),
    /// The header block's zlib stream asks for a preset dictionary that is not SPDY/3's.
    #[error(
        "header block needs dictionary {found:#010x}, not the spdy/3 dictionary {expected:#010x}"
    )]
    WrongDictionary {
        /// Dictionary id in the zlib header.
        found: u32,
        /// Adler-32 of the SPDY/3 dictionary.
        expected: u32,
    },
    /// The compressed block was not fully consumed (stream ended inside the block).
    #[error("header block has {0} compressed bytes after the end of the zlib stream")]
    TrailingCompressedBytes(usize),
    /// A decompressed header block larger than the decoder accepts (zlib bomb guard).
    #[error("decompressed header block exceeds {max} bytes")]
    HeaderBlockTooLarge {
        /// Configured maximum.
        max: usize,
    },
    /// The decompressed name/value block ends in the middle of a field.
    #[error("header block is truncated while reading {0}")]
    TruncatedHeaderBlock(&'static str),
    /// Bytes after the last name/value pair.
    #[error("header block has {0} bytes after its last pair")]
    TrailingHeaderBytes(usize),
    /// A header name that is empty, not ASCII, or not lower case.
    #[error("invalid header name {name:?}: {reason}")]
    InvalidHeaderName {
        /// The name, lossily decoded.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same name twice in one block (the draft forbids duplicates).
    #[error("duplicate header name {0:?}")]
    DuplicateHeaderName(String),
    /// A field does not fit the wire format on encode (length over 24 or 32 bits).
    #[error("{0} is too large to encode")]
    TooLargeToEncode(&'static str),
}
