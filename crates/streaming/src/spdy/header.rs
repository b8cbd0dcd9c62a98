//! Name/value header blocks and their zlib contexts (draft 3.1, section 2.6.10).
//!
//! Uncompressed, a block is a 32-bit pair count followed by, per pair, a 32-bit name length,
//! the name, a 32-bit value length and the value. Values may hold several values separated
//! by NUL. Each direction of a connection compresses all its blocks with one zlib stream that
//! was primed with [`SPDY3_DICTIONARY`] and flushes with Z_SYNC_FLUSH after every block, so
//! the contexts must live as long as the connection and see the blocks in wire order.

use bytes::{BufMut, Bytes};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::SpdyError;
use super::dictionary::{SPDY3_DICTIONARY, SPDY3_DICTIONARY_ID};

/// Largest decompressed header block [`HeaderDecompressor`] accepts by default.
pub const DEFAULT_MAX_HEADER_BLOCK: usize = 256 * 1024;

/// An ordered list of header name/value pairs. Names are lower-case ASCII and unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderBlock {
    pairs: Vec<(String, Bytes)>,
}

impl HeaderBlock {
    /// An empty block (what SYN_REPLY carries in the Kubernetes streaming protocols).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a pair after checking the name. Replaces nothing: duplicates are an error.
    pub fn push(&mut self, name: &str, value: impl Into<Bytes>) -> Result<(), SpdyError> {
        validate_name(name.as_bytes())?;
        if self.get(name).is_some() {
            return Err(SpdyError::DuplicateHeaderName(name.to_owned()));
        }
        self.pairs.push((name.to_owned(), value.into()));
        Ok(())
    }

    /// Builder form of [`HeaderBlock::push`].
    pub fn with(mut self, name: &str, value: impl Into<Bytes>) -> Result<Self, SpdyError> {
        self.push(name, value)?;
        Ok(self)
    }

    /// The raw value of `name` (several values are NUL-separated).
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The value of `name` if it is UTF-8.
    #[must_use]
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_ref()))
    }

    /// Number of pairs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no pairs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Serialises the uncompressed block.
    pub fn to_uncompressed(&self) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(
            4 + self
                .pairs
                .iter()
                .map(|(n, v)| 8 + n.len() + v.len())
                .sum::<usize>(),
        );
        out.put_u32(u32_len(self.pairs.len(), "header pair count")?);
        for (name, value) in &self.pairs {
            out.put_u32(u32_len(name.len(), "header name")?);
            out.put_slice(name.as_bytes());
            out.put_u32(u32_len(value.len(), "header value")?);
            out.put_slice(value);
        }
        Ok(out)
    }

    /// Parses an uncompressed block, checking names and rejecting trailing bytes.
    pub fn from_uncompressed(raw: &[u8]) -> Result<Self, SpdyError> {
        let mut cur = raw;
        let count = take_u32(&mut cur, "pair count")?;
        // Every pair needs at least 8 length bytes: bound the allocation by the input.
        let count = usize::try_from(count).map_err(|_| SpdyError::TruncatedHeaderBlock("pairs"))?;
        if count > cur.len() / 8 {
            return Err(SpdyError::TruncatedHeaderBlock("pairs"));
        }
        let mut block = HeaderBlock {
            pairs: Vec::with_capacity(count),
        };
        for _ in 0..count {
            let name = take_field(&mut cur, "header name")?;
            validate_name(name)?;
            let value = take_field(&mut cur, "header value")?;
            // validate_name guarantees ASCII, so this never fails.
            let name = String::from_utf8_lossy(name).into_owned();
            if block.get(&name).is_some() {
                return Err(SpdyError::DuplicateHeaderName(name));
            }
            block.pairs.push((name, Bytes::copy_from_slice(value)));
        }
        if !cur.is_empty() {
            return Err(SpdyError::TrailingHeaderBytes(cur.len()));
        }
        Ok(block)
    }
}

fn u32_len(len: usize, what: &'static str) -> Result<u32, SpdyError> {
    u32::try_from(len).map_err(|_| SpdyError::TooLargeToEncode(what))
}

fn take_u32(cur: &mut &[u8], what: &'static str) -> Result<u32, SpdyError> {
    let Some((head, rest)) = cur.split_first_chunk::<4>() else {
        return Err(SpdyError::TruncatedHeaderBlock(what));
    };
    *cur = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_field<'a>(cur: &mut &'a [u8], what: &'static str) -> Result<&'a [u8], SpdyError> {
    let len = take_u32(cur, what)?;
    let len = usize::try_from(len).map_err(|_| SpdyError::TruncatedHeaderBlock(what))?;
    if len > cur.len() {
        return Err(SpdyError::TruncatedHeaderBlock(what));
    }
    let (field, rest) = cur.split_at(len);
    *cur = rest;
    Ok(field)
}

/// Header names must be non-empty, printable US-ASCII and lower case (section 2.6.10).
fn validate_name(name: &[u8]) -> Result<(), SpdyError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.iter().any(u8::is_ascii_uppercase) {
        Some("not lower case")
    } else if !name.iter().all(|b| b.is_ascii_graphic()) {
        Some("not printable us-ascii")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SpdyError::InvalidHeaderName {
            name: String::from_utf8_lossy(name).into_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The sending side's zlib stream: one per connection direction.
pub struct HeaderCompressor {
    zlib: Compress,
}

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCompressor")
            .field("total_in", &self.zlib.total_in())
            .field("total_out", &self.zlib.total_out())
            .finish()
    }
}

impl HeaderCompressor {
    /// A fresh context primed with the SPDY/3 dictionary.
    pub fn new() -> Result<Self, SpdyError> {
        // Best compression, like the Go framer (its blocks start `78 f9`).
        let mut zlib = Compress::new(Compression::best(), true);
        zlib.set_dictionary(SPDY3_DICTIONARY)
            .map_err(SpdyError::Compress)?;
        Ok(Self { zlib })
    }

    /// Compresses one block and sync-flushes, appending the bytes to `out`.
    pub fn compress(&mut self, block: &HeaderBlock, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        self.compress_raw(&block.to_uncompressed()?, out)
    }

    /// Compresses already serialised name/value bytes (tests use it to build bad blocks).
    pub(crate) fn compress_raw(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let start_in = self.zlib.total_in();
        loop {
            let consumed = usize::try_from(self.zlib.total_in() - start_in)
                .map_err(|_| SpdyError::TooLargeToEncode("header block"))?;
            let rest = raw.get(consumed..).unwrap_or_default();
            out.reserve(rest.len() + 64);
            self.zlib
                .compress_vec(rest, out, FlushCompress::Sync)
                .map_err(SpdyError::Compress)?;
            let consumed = usize::try_from(self.zlib.total_in() - start_in)
                .map_err(|_| SpdyError::TooLargeToEncode("header block"))?;
            // Done once all input is in and zlib left spare output room (flush complete).
            if consumed >= raw.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// The receiving side's zlib stream: one per connection direction.
pub struct HeaderDecompressor {
    zlib: Decompress,
    max_block: usize,
}

impl std::fmt::Debug for HeaderDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecompressor")
            .field("total_in", &self.zlib.total_in())
            .field("total_out", &self.zlib.total_out())
            .field("max_block", &self.max_block)
            .finish()
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecompressor {
    /// A fresh context; the dictionary is supplied when the zlib header asks for it.
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_block(DEFAULT_MAX_HEADER_BLOCK)
    }

    /// A fresh context that rejects decompressed blocks larger than `max_block` bytes.
    #[must_use]
    pub fn with_max_block(max_block: usize) -> Self {
        Self {
            zlib: Decompress::new(true),
            max_block,
        }
    }

    /// Inflates one compressed block into the raw name/value bytes.
    pub fn decompress_raw(&mut self, compressed: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity((compressed.len() * 4).clamp(64, self.max_block.max(64)));
        let start_in = self.zlib.total_in();
        loop {
            let consumed = usize::try_from(self.zlib.total_in() - start_in).map_err(|_| {
                SpdyError::HeaderBlockTooLarge {
                    max: self.max_block,
                }
            })?;
            let rest = compressed.get(consumed..).unwrap_or_default();
            if out.len() == out.capacity() {
                if out.len() >= self.max_block {
                    return Err(SpdyError::HeaderBlockTooLarge {
                        max: self.max_block,
                    });
                }
                let grow = out.len().max(64).min(self.max_block - out.len());
                out.reserve_exact(grow);
            }
            let before_out = out.len();
            let status = match self
                .zlib
                .decompress_vec(rest, &mut out, FlushDecompress::Sync)
            {
                Ok(status) => status,
                Err(e) => match e.needs_dictionary() {
                    Some(SPDY3_DICTIONARY_ID) => {
                        self.zlib
                            .set_dictionary(SPDY3_DICTIONARY)
                            .map_err(SpdyError::Decompress)?;
                        continue;
                    }
                    Some(found) => {
                        return Err(SpdyError::WrongDictionary {
                            found,
                            expected: SPDY3_DICTIONARY_ID,
                        });
                    }
                    None => return Err(SpdyError::Decompress(e)),
                },
            };
            let now_consumed = usize::try_from(self.zlib.total_in() - start_in).map_err(|_| {
                SpdyError::HeaderBlockTooLarge {
                    max: self.max_block,
                }
            })?;
            let left = compressed.len().saturating_sub(now_consumed);
            let output_full = out.len() == out.capacity();
            if status == Status::StreamEnd {
                if left > 0 {
                    return Err(SpdyError::TrailingCompressedBytes(left));
                }
                return Ok(out);
            }
            if left == 0 && !output_full {
                return Ok(out);
            }
            let progressed = now_consumed > consumed || out.len() > before_out;
            if !output_full && !progressed {
                // zlib refuses the rest of the input although it has room to write.
                return Err(SpdyError::TrailingCompressedBytes(left));
            }
        }
    }

    /// Inflates and parses one header block.
    pub fn decompress(&mut self, compressed: &[u8]) -> Result<HeaderBlock, SpdyError> {
        let raw = self.decompress_raw(compressed)?;
        HeaderBlock::from_uncompressed(&raw)
    }
}
