//! A self-contained SPDY/3.1 codec (draft-mbelshe-httpbis-spdy, version 3.1).
//!
//! * [`Frame`] and friends: the eight control frames and DATA, with flags, priorities and
//!   status codes (unknown codes are kept as `Unknown(u32)`).
//! * [`HeaderBlock`], [`HeaderCompressor`], [`HeaderDecompressor`]: name/value blocks with
//!   32-bit lengths, zlib-compressed with the SPDY/3 dictionary, one context per direction.
//! * [`FrameDecoder`]: incremental; call [`FrameDecoder::decode`] after every read. Frames
//!   from real Go clients arrive in pieces of 2, 2, 4, 4, ... bytes.
//! * [`FrameEncoder`]: the exact wire bytes; header blocks are compressed in call order.
//!
//! The codec knows nothing about streams' state or flow control: that is the session's job.

mod codec;
mod dictionary;
mod error;
mod frame;
mod header;

pub use codec::{DEFAULT_MAX_FRAME_LEN, FRAME_HEADER_LEN, FrameDecoder, FrameEncoder};
pub use dictionary::{SPDY3_DICTIONARY, SPDY3_DICTIONARY_ID};
pub use error::SpdyError;
pub use frame::{
    DataFrame, Flags, Frame, GoAwayStatus, HeadersFrame, MAX_STREAM_ID, RstStatus, SPDY_VERSION,
    Setting, SettingId, SynReply, SynStream, frame_type,
};
pub use header::{DEFAULT_MAX_HEADER_BLOCK, HeaderBlock, HeaderCompressor, HeaderDecompressor};

use bytes::BytesMut;

/// Fuzzing entry point: decodes `data` with a fresh decoder until it needs more input or
/// fails. Must never panic, whatever the input. The first byte picks a read size so that
/// the incremental path is exercised too.
pub fn fuzz_decode(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 16) + 1;
    let mut decoder = FrameDecoder::with_limits(1 << 20, 64 * 1024);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;

pub mod session;
pub use session::{
    Incoming, IncomingStream, OpenError, Role, SessionClosed, SessionConfig, SessionEnd,
    SessionHandle, Stream, StreamReader, StreamWriter,
};
