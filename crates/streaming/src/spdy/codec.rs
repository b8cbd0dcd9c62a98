//! Incremental frame decoder and frame encoder (draft 3.1, section 2.2).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::SpdyError;
use super::frame::{
    DataFrame, Flags, Frame, HeadersFrame, MAX_STREAM_ID, SPDY_VERSION, Setting, SynReply,
    SynStream, frame_type,
};
use super::header::{HeaderBlock, HeaderCompressor, HeaderDecompressor};

/// Every frame starts with 8 header bytes.
pub const FRAME_HEADER_LEN: usize = 8;

/// Default cap on a frame's payload length. The 24-bit length field allows up to 16 MiB - 1,
/// and real clients send at most 32 KiB of DATA at a time.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Most the decoder reserves ahead for a frame that has not fully arrived.
const RESERVE_CAP: usize = 64 * 1024;

/// Largest payload length the 24-bit field can carry.
const MAX_WIRE_LEN: usize = 0x00ff_ffff;

/// Turns a byte stream into frames, one at a time, across arbitrary read boundaries.
///
/// Owns the receive-side header decompression context, so use one decoder per connection
/// direction for the whole connection.
#[derive(Debug)]
pub struct FrameDecoder {
    headers: HeaderDecompressor,
    max_frame_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with a fresh decompression context and the default limits.
    #[must_use]
    pub fn new() -> Self {
        Self::with_limits(
            DEFAULT_MAX_FRAME_LEN,
            super::header::DEFAULT_MAX_HEADER_BLOCK,
        )
    }

    /// A decoder that rejects payloads over `max_frame_len` bytes and decompressed header
    /// blocks over `max_header_block` bytes.
    #[must_use]
    pub fn with_limits(max_frame_len: usize, max_header_block: usize) -> Self {
        Self {
            headers: HeaderDecompressor::with_max_block(max_header_block),
            max_frame_len,
        }
    }

    /// Decodes the next complete frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` and leaves `buf` untouched when it does not hold a whole frame yet
    /// (the header is checked as soon as it is complete, so a bad version or an oversized
    /// length is reported without waiting for the payload). On success the frame's bytes
    /// are removed from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        let Some(head) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
            if let [first, second, ..] = buf[..] {
                check_version(first, second)?;
            }
            return Ok(None);
        };
        let [b0, b1, b2, b3, flags, l0, l1, l2] = *head;
        let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        check_version(b0, b1)?;
        if len > self.max_frame_len {
            return Err(SpdyError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            // Grow toward the frame, but never let an 8-byte header make us allocate megabytes.
            buf.reserve((FRAME_HEADER_LEN + len - buf.len()).min(RESERVE_CAP));
            return Ok(None);
        }
        let mut frame = buf.split_to(FRAME_HEADER_LEN + len);
        frame.advance(FRAME_HEADER_LEN);
        let payload = frame.freeze();
        let flags = Flags(flags);
        if b0 & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([b0, b1, b2, b3]);
            if stream_id == 0 {
                return Err(SpdyError::InvalidStreamId {
                    frame: "DATA",
                    stream_id,
                });
            }
            return Ok(Some(Frame::Data(DataFrame {
                stream_id,
                flags,
                data: payload,
            })));
        }
        let kind = u16::from_be_bytes([b2, b3]);
        self.decode_control(kind, flags, payload).map(Some)
    }

    fn decode_control(
        &mut self,
        kind: u16,
        flags: Flags,
        mut p: Bytes,
    ) -> Result<Frame, SpdyError> {
        let len = p.len();
        let frame = match kind {
            frame_type::SYN_STREAM => {
                need_len("SYN_STREAM", len, |l| l >= 10)?;
                let stream_id = stream_id(p.get_u32(), "SYN_STREAM")?;
                let associated_stream_id = p.get_u32() & MAX_STREAM_ID;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                let headers = self.headers.decompress(&p)?;
                Frame::SynStream(SynStream {
                    stream_id,
                    associated_stream_id,
                    priority,
                    slot,
                    flags,
                    headers,
                })
            }
            frame_type::SYN_REPLY => {
                need_len("SYN_REPLY", len, |l| l >= 4)?;
                let stream_id = stream_id(p.get_u32(), "SYN_REPLY")?;
                let headers = self.headers.decompress(&p)?;
                Frame::SynReply(SynReply {
                    stream_id,
                    flags,
                    headers,
                })
            }
            frame_type::HEADERS => {
                need_len("HEADERS", len, |l| l >= 4)?;
                let stream_id = stream_id(p.get_u32(), "HEADERS")?;
                let headers = self.headers.decompress(&p)?;
                Frame::Headers(HeadersFrame {
                    stream_id,
                    flags,
                    headers,
                })
            }
            frame_type::RST_STREAM => {
                need_len("RST_STREAM", len, |l| l == 8)?;
                let stream_id = stream_id(p.get_u32(), "RST_STREAM")?;
                Frame::RstStream {
                    stream_id,
                    status: p.get_u32().into(),
                }
            }
            frame_type::SETTINGS => {
                need_len("SETTINGS", len, |l| l >= 4)?;
                let declared = p.get_u32();
                let fits = usize::try_from(declared)
                    .ok()
                    .and_then(|n| n.checked_mul(8))
                    .is_some_and(|n| n == p.len());
                if !fits {
                    return Err(SpdyError::SettingsCount { declared, len });
                }
                let mut entries = Vec::with_capacity(p.len() / 8);
                while p.has_remaining() {
                    let word = p.get_u32();
                    entries.push(Setting {
                        flags: (word >> 24) as u8,
                        id: (word & 0x00ff_ffff).into(),
                        value: p.get_u32(),
                    });
                }
                Frame::Settings { flags, entries }
            }
            frame_type::PING => {
                need_len("PING", len, |l| l == 4)?;
                Frame::Ping { id: p.get_u32() }
            }
            frame_type::GOAWAY => {
                need_len("GOAWAY", len, |l| l == 8)?;
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & MAX_STREAM_ID,
                    status: p.get_u32().into(),
                }
            }
            frame_type::WINDOW_UPDATE => {
                need_len("WINDOW_UPDATE", len, |l| l == 8)?;
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let delta = p.get_u32() & MAX_STREAM_ID;
                if delta == 0 {
                    return Err(SpdyError::ZeroWindowDelta(stream_id));
                }
                Frame::WindowUpdate { stream_id, delta }
            }
            other => {
                tracing::debug!(frame_type = other, len, "unknown spdy control frame");
                Frame::Unknown {
                    frame_type: other,
                    flags,
                    payload: p,
                }
            }
        };
        Ok(frame)
    }
}

fn check_version(b0: u8, b1: u8) -> Result<(), SpdyError> {
    if b0 & 0x80 == 0 {
        return Ok(());
    }
    let version = u16::from_be_bytes([b0 & 0x7f, b1]);
    if version == SPDY_VERSION {
        Ok(())
    } else {
        Err(SpdyError::UnsupportedVersion(version))
    }
}

fn need_len(frame: &'static str, len: usize, ok: impl Fn(usize) -> bool) -> Result<(), SpdyError> {
    if ok(len) {
        Ok(())
    } else {
        Err(SpdyError::InvalidLength { frame, len })
    }
}

/// The 31-bit stream id of a frame that must name a stream.
fn stream_id(word: u32, frame: &'static str) -> Result<u32, SpdyError> {
    let stream_id = word & MAX_STREAM_ID;
    if stream_id == 0 {
        return Err(SpdyError::InvalidStreamId { frame, stream_id });
    }
    Ok(stream_id)
}

/// Serialises frames. Owns the send-side header compression context, so use one encoder
/// per connection direction for the whole connection, and encode frames in wire order.
#[derive(Debug)]
pub struct FrameEncoder {
    headers: HeaderCompressor,
}

impl FrameEncoder {
    /// An encoder with a fresh compression context.
    pub fn new() -> Result<Self, SpdyError> {
        Ok(Self {
            headers: HeaderCompressor::new()?,
        })
    }

    /// Appends the wire bytes of `frame` to `dst`. On error nothing is appended, but a
    /// failure while compressing leaves the compression context unusable.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), SpdyError> {
        let mut body = Vec::new();
        let (kind, flags) = match frame {
            Frame::Data(data) => {
                let id = check_id(data.stream_id, "DATA", false)?;
                let len = wire_len(data.data.len())?;
                dst.reserve(FRAME_HEADER_LEN + data.data.len());
                dst.put_u32(id);
                dst.put_u8(data.flags.0);
                put_u24(dst, len);
                dst.put_slice(&data.data);
                return Ok(());
            }
            Frame::SynStream(f) => {
                body.put_u32(check_id(f.stream_id, "SYN_STREAM", false)?);
                body.put_u32(check_id(f.associated_stream_id, "SYN_STREAM", true)?);
                body.put_u8((f.priority & 0x07) << 5);
                body.put_u8(f.slot);
                self.compress(&f.headers, &mut body)?;
                (frame_type::SYN_STREAM, f.flags)
            }
            Frame::SynReply(f) => {
                body.put_u32(check_id(f.stream_id, "SYN_REPLY", false)?);
                self.compress(&f.headers, &mut body)?;
                (frame_type::SYN_REPLY, f.flags)
            }
            Frame::Headers(f) => {
                body.put_u32(check_id(f.stream_id, "HEADERS", false)?);
                self.compress(&f.headers, &mut body)?;
                (frame_type::HEADERS, f.flags)
            }
            Frame::RstStream { stream_id, status } => {
                body.put_u32(check_id(*stream_id, "RST_STREAM", false)?);
                body.put_u32((*status).into());
                (frame_type::RST_STREAM, Flags::NONE)
            }
            Frame::Settings { flags, entries } => {
                let count = u32::try_from(entries.len())
                    .map_err(|_| SpdyError::TooLargeToEncode("settings"))?;
                body.put_u32(count);
                for entry in entries {
                    let id = u32::from(entry.id);
                    if id > 0x00ff_ffff {
                        return Err(SpdyError::TooLargeToEncode("setting id"));
                    }
                    body.put_u32(u32::from(entry.flags) << 24 | id);
                    body.put_u32(entry.value);
                }
                (frame_type::SETTINGS, *flags)
            }
            Frame::Ping { id } => {
                body.put_u32(*id);
                (frame_type::PING, Flags::NONE)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                body.put_u32(check_id(*last_good_stream_id, "GOAWAY", true)?);
                body.put_u32((*status).into());
                (frame_type::GOAWAY, Flags::NONE)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                body.put_u32(check_id(*stream_id, "WINDOW_UPDATE", true)?);
                if *delta == 0 || *delta > MAX_STREAM_ID {
                    return Err(SpdyError::ZeroWindowDelta(*stream_id));
                }
                body.put_u32(*delta);
                (frame_type::WINDOW_UPDATE, Flags::NONE)
            }
            Frame::Unknown {
                frame_type,
                flags,
                payload,
            } => {
                body.put_slice(payload);
                (*frame_type, *flags)
            }
        };
        let len = wire_len(body.len())?;
        dst.reserve(FRAME_HEADER_LEN + body.len());
        dst.put_u16(0x8000 | SPDY_VERSION);
        dst.put_u16(kind);
        dst.put_u8(flags.0);
        put_u24(dst, len);
        dst.put_slice(&body);
        Ok(())
    }

    fn compress(&mut self, headers: &HeaderBlock, body: &mut Vec<u8>) -> Result<(), SpdyError> {
        self.headers.compress(headers, body)
    }
}

fn check_id(id: u32, frame: &'static str, zero_ok: bool) -> Result<u32, SpdyError> {
    if id > MAX_STREAM_ID || (id == 0 && !zero_ok) {
        return Err(SpdyError::InvalidStreamId {
            frame,
            stream_id: id,
        });
    }
    Ok(id)
}

fn wire_len(len: usize) -> Result<u32, SpdyError> {
    if len > MAX_WIRE_LEN {
        return Err(SpdyError::TooLargeToEncode("frame payload"));
    }
    u32::try_from(len).map_err(|_| SpdyError::TooLargeToEncode("frame payload"))
}

fn put_u24(dst: &mut BytesMut, v: u32) {
    let [_, a, b, c] = v.to_be_bytes();
    dst.put_slice(&[a, b, c]);
}
