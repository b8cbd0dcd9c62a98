//! Codec unit tests with vectors built by hand from the draft, so they run anywhere.
#![allow(clippy::unwrap_used)]

use bytes::{BufMut, Bytes, BytesMut};

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    b << 16 | a
}

/// Decodes every frame of `bytes` with `decoder`, requiring that nothing is left over.
fn decode_all(decoder: &mut FrameDecoder, bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).unwrap() {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, SpdyError> {
    FrameDecoder::new().decode(&mut BytesMut::from(bytes))
}

fn encode_fresh(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    FrameEncoder::new()
        .unwrap()
        .encode(frame, &mut out)
        .unwrap();
    out.to_vec()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderBlock {
    let mut block = HeaderBlock::new();
    for (name, value) in pairs {
        block
            .push(name, Bytes::copy_from_slice(value.as_bytes()))
            .unwrap();
    }
    block
}

fn syn_stream(id: u32, pairs: &[(&str, &str)]) -> Frame {
    Frame::SynStream(SynStream {
        stream_id: id,
        associated_stream_id: 0,
        priority: 0,
        slot: 0,
        flags: Flags::NONE,
        headers: headers(pairs),
    })
}

/// Uncompressed name/value block, built field by field as in section 2.6.10.
fn raw_block(pairs: &[(&[u8], &[u8])], declared: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.put_u32(declared);
    for (name, value) in pairs {
        raw.put_u32(u32::try_from(name.len()).unwrap());
        raw.put_slice(name);
        raw.put_u32(u32::try_from(value.len()).unwrap());
        raw.put_slice(value);
    }
    raw
}

/// A zlib stream written by hand: header `78 f9` (FDICT), the dictionary id, then one
/// non-final stored deflate block holding `raw` verbatim (RFC 1950/1951).
fn stored_zlib_block(raw: &[u8]) -> Vec<u8> {
    let len = u16::try_from(raw.len()).unwrap();
    let mut out = vec![0x78, 0xf9];
    out.put_u32(SPDY3_DICTIONARY_ID);
    out.put_u8(0x00); // BFINAL=0, BTYPE=00 (stored)
    out.put_u16_le(len);
    out.put_u16_le(!len);
    out.put_slice(raw);
    out
}

fn syn_stream_with_block(stream_id: u32, block: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.put_slice(&[0x80, 0x03, 0x00, 0x01, 0x00]);
    let len = u32::try_from(10 + block.len()).unwrap();
    frame.put_slice(&len.to_be_bytes()[1..]);
    frame.put_u32(stream_id);
    frame.put_u32(0);
    frame.put_u16(0);
    frame.put_slice(block);
    frame
}

fn compressed(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    HeaderCompressor::new()
        .unwrap()
        .compress_raw(raw, &mut out)
        .unwrap();
    out
}

#[test]
fn dictionary_matches_its_id() {
    assert_eq!(SPDY3_DICTIONARY.len(), 1423);
    assert_eq!(adler32(SPDY3_DICTIONARY), SPDY3_DICTIONARY_ID);
    assert!(SPDY3_DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    assert!(SPDY3_DICTIONARY.ends_with(b"utf-,*,enq=0."));
}

#[test]
fn fixed_size_control_frames_from_the_draft() {
    let cases: Vec<(&str, Frame)> = vec![
        ("80030006 00000004 00000001", Frame::Ping { id: 1 }),
        (
            "80030003 00000008 00000007 00000005",
            Frame::RstStream {
                stream_id: 7,
                status: RstStatus::Cancel,
            },
        ),
        (
            "80030003 00000008 00000003 0000002a",
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::Unknown(42),
            },
        ),
        (
            "80030007 00000008 00000007 00000000",
            Frame::GoAway {
                last_good_stream_id: 7,
                status: GoAwayStatus::Ok,
            },
        ),
        (
            "80030007 00000008 00000000 00000002",
            Frame::GoAway {
                last_good_stream_id: 0,
                status: GoAwayStatus::InternalError,
            },
        ),
        (
            "80030009 00000008 00000000 00010000",
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 65536,
            },
        ),
        (
            "80030004 00000014 00000002 01000004 00000064 00000007 00010000",
            Frame::Settings {
                flags: Flags::NONE,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: SettingId::MaxConcurrentStreams,
                        value: 100,
                    },
                    Setting {
                        flags: 0,
                        id: SettingId::InitialWindowSize,
                        value: 65536,
                    },
                ],
            },
        ),
        (
            "80030004 01000004 00000000",
            Frame::Settings {
                flags: Flags::CLEAR_SETTINGS,
                entries: vec![],
            },
        ),
        (
            "8003000b 00000002 abcd",
            Frame::Unknown {
                frame_type: 11,
                flags: Flags::NONE,
                payload: Bytes::from_static(&[0xab, 0xcd]),
            },
        ),
        (
            "00000003 01000000",
            Frame::Data(DataFrame {
                stream_id: 3,
                flags: Flags::FIN,
                data: Bytes::new(),
            }),
        ),
        (
            "00000005 0000000c 68656c6c6f0a776f726c640a",
            Frame::Data(DataFrame {
                stream_id: 5,
                flags: Flags::NONE,
                data: Bytes::from_static(b"hello\nworld\n"),
            }),
        ),
    ];
    for (wire, expected) in cases {
        let wire = hex(wire);
        let frame = decode_one(&wire).unwrap().unwrap();
        assert_eq!(frame, expected, "decoding {wire:02x?}");
        assert_eq!(encode_fresh(&frame), wire, "re-encoding {frame:?}");
    }
}

#[test]
fn status_codes_round_trip_through_u32() {
    for code in 0..16u32 {
        assert_eq!(u32::from(RstStatus::from(code)), code);
        assert_eq!(u32::from(GoAwayStatus::from(code)), code);
        assert_eq!(u32::from(SettingId::from(code)), code);
    }
    assert_eq!(RstStatus::from(5), RstStatus::Cancel);
    assert_eq!(GoAwayStatus::from(1), GoAwayStatus::ProtocolError);
}

#[test]
fn uncompressed_header_block_layout() {
    let raw = hex("00000001 0000000a 73747265616d74797065 00000005 6572726f72");
    let block = HeaderBlock::from_uncompressed(&raw).unwrap();
    assert_eq!(block.get_str("streamtype"), Some("error"));
    assert_eq!(block.to_uncompressed().unwrap(), raw);
}

#[test]
fn hand_built_stored_zlib_block_decompresses() {
    let raw = raw_block(&[(b"port", b"80"), (b"requestid", b"0")], 2);
    let block = stored_zlib_block(&raw);
    let frame = decode_one(&syn_stream_with_block(1, &block))
        .unwrap()
        .unwrap();
    let Frame::SynStream(syn) = frame else {
        panic!("expected SYN_STREAM, got {frame:?}");
    };
    let pairs: Vec<_> = syn.headers.iter().collect();
    assert_eq!(pairs, vec![("port", &b"80"[..]), ("requestid", &b"0"[..])]);
}

#[test]
fn go_client_syn_streams_decode_in_one_context() {
    // crictl's first two SYN_STREAMs of an exec (exact wire bytes, one zlib stream).
    let wire = hex(concat!(
        "800300010000002a0000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a5a",
        "54945f04000000ffff",
        "800300010000001700000003000000000000c22e555c92929907000000ffff",
    ));
    let frames = decode_all(&mut FrameDecoder::new(), &wire);
    let types: Vec<_> = frames
        .iter()
        .map(|f| {
            let Frame::SynStream(s) = f else {
                panic!("expected SYN_STREAM, got {f:?}")
            };
            (
                s.stream_id,
                s.headers.get_str("streamtype").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        types,
        vec![(1, "error".to_owned()), (3, "stdin".to_owned())]
    );

    // The second block on its own needs the first one's context.
    let second = hex("800300010000001700000003000000000000c22e555c92929907000000ffff");
    assert!(decode_one(&second).is_err());
}

#[test]
fn go_server_syn_replies_are_empty_blocks() {
    let wire = hex(concat!(
        "80030002000000140000000178f9e3c6a7c26260606000000000ffff",
        "800300020000000e000000036260606000000000ffff",
    ));
    let frames = decode_all(&mut FrameDecoder::new(), &wire);
    assert_eq!(frames.len(), 2);
    for (frame, id) in frames.iter().zip([1, 3]) {
        let Frame::SynReply(reply) = frame else {
            panic!("expected SYN_REPLY, got {frame:?}")
        };
        assert_eq!(reply.stream_id, id);
        assert!(reply.headers.is_empty());
    }
}

#[test]
fn header_frames_round_trip_with_fresh_contexts() {
    let frames = vec![
        syn_stream(1, &[("streamtype", "error")]),
        Frame::SynStream(SynStream {
            stream_id: 3,
            associated_stream_id: 1,
            priority: 7,
            slot: 0,
            flags: Flags::FIN | Flags::UNIDIRECTIONAL,
            headers: headers(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
        }),
        Frame::SynReply(SynReply {
            stream_id: 1,
            flags: Flags::NONE,
            headers: HeaderBlock::new(),
        }),
        Frame::Headers(HeadersFrame {
            stream_id: 5,
            flags: Flags::FIN,
            headers: headers(&[(":status", "200 OK"), ("set-cookie", "a=1\0b=2")]),
        }),
    ];
    for frame in &frames {
        let wire = encode_fresh(frame);
        assert_eq!(&wire[..2], &[0x80, 0x03]);
        let decoded = decode_one(&wire).unwrap().unwrap();
        assert_eq!(&decoded, frame);
        assert_eq!(encode_fresh(&decoded), wire);
    }
    // Our compressor primes with the dictionary: the block starts with FDICT + its id.
    let wire = encode_fresh(&frames[0]);
    assert_eq!(wire[18] & 0x20, 0x20);
    assert_eq!(wire[20..24], SPDY3_DICTIONARY_ID.to_be_bytes());
}

#[test]
fn contexts_persist_across_frames() {
    let mut encoder = FrameEncoder::new().unwrap();
    let mut wire = BytesMut::new();
    let frames: Vec<Frame> = ["error", "stdin", "stdout", "stderr", "stdout"]
        .iter()
        .zip((1u32..).step_by(2))
        .map(|(kind, id)| syn_stream(id, &[("streamtype", kind), ("port", "8080")]))
        .collect();
    let mut sizes = Vec::new();
    for frame in &frames {
        let before = wire.len();
        encoder.encode(frame, &mut wire).unwrap();
        sizes.push(wire.len() - before);
    }
    // Later blocks refer back to earlier ones, so they shrink.
    assert!(sizes[4] < sizes[0], "sizes {sizes:?}");
    assert_eq!(decode_all(&mut FrameDecoder::new(), &wire), frames);
}

fn mixed_stream() -> (Vec<u8>, Vec<Frame>) {
    let frames = vec![
        syn_stream(1, &[("streamtype", "error")]),
        syn_stream(3, &[("streamtype", "stdin")]),
        Frame::Data(DataFrame {
            stream_id: 3,
            flags: Flags::NONE,
            data: Bytes::from_static(b"hello\nworld\n"),
        }),
        Frame::Data(DataFrame {
            stream_id: 3,
            flags: Flags::FIN,
            data: Bytes::new(),
        }),
        Frame::Ping { id: 1 },
        syn_stream(5, &[("streamtype", "stdout"), ("port", "80")]),
        Frame::RstStream {
            stream_id: 5,
            status: RstStatus::Cancel,
        },
        Frame::GoAway {
            last_good_stream_id: 5,
            status: GoAwayStatus::Ok,
        },
    ];
    let mut encoder = FrameEncoder::new().unwrap();
    let mut wire = BytesMut::new();
    for frame in &frames {
        encoder.encode(frame, &mut wire).unwrap();
    }
    (wire.to_vec(), frames)
}

#[test]
fn split_at_every_offset_gives_the_same_frames() {
    let (wire, frames) = mixed_stream();
    for cut in 0..=wire.len() {
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in [&wire[..cut], &wire[cut..]] {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames, "cut at {cut}");
    }
}

#[test]
fn byte_at_a_time_gives_the_same_frames() {
    let (wire, frames) = mixed_stream();
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in &wire {
        buf.put_u8(*byte);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            got.push(frame);
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn partial_frames_leave_the_buffer_alone() {
    let wire = hex("80030006 00000004 00000001");
    for cut in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        assert!(FrameDecoder::new().decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), cut);
    }
}

#[track_caller]
fn assert_err(bytes: &[u8], check: impl Fn(&SpdyError) -> bool) {
    match decode_one(bytes) {
        Err(e) => assert!(check(&e), "unexpected error {e:?}"),
        Ok(frame) => panic!("expected an error, got {frame:?}"),
    }
}

#[test]
fn rejects_bad_version_early() {
    assert_err(&hex("8002"), |e| {
        matches!(e, SpdyError::UnsupportedVersion(2))
    });
    assert_err(&hex("80020006 00000004 00000001"), |e| {
        matches!(e, SpdyError::UnsupportedVersion(2))
    });
    assert_err(&hex("ffff"), |e| {
        matches!(e, SpdyError::UnsupportedVersion(0x7fff))
    });
}

#[test]
fn rejects_oversized_frames_before_the_payload_arrives() {
    let mut decoder = FrameDecoder::with_limits(1024, 1024);
    let mut buf = BytesMut::from(&hex("00000001 00000401")[..]);
    let err = decoder.decode(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            SpdyError::FrameTooLarge {
                len: 1025,
                max: 1024
            }
        ),
        "{err:?}"
    );
    // At the limit it simply waits for more bytes.
    let mut buf = BytesMut::from(&hex("00000001 00000400")[..]);
    assert!(decoder.decode(&mut buf).unwrap().is_none());
}

#[test]
fn rejects_bad_lengths_and_ids() {
    let bad_len = |e: &SpdyError| matches!(e, SpdyError::InvalidLength { .. });
    assert_err(&hex("80030003 00000004 00000001"), bad_len);
    assert_err(&hex("80030006 00000008 00000001 00000002"), bad_len);
    assert_err(&hex("80030007 00000004 00000001"), bad_len);
    assert_err(&hex("80030009 00000004 00000001"), bad_len);
    assert_err(&hex("80030001 00000008 00000001 00000000"), bad_len);
    assert_err(&hex("80030002 00000002 0000"), bad_len);
    assert_err(&hex("80030008 00000000"), bad_len);
    let bad_id = |e: &SpdyError| matches!(e, SpdyError::InvalidStreamId { stream_id: 0, .. });
    assert_err(&hex("00000000 00000001 ff"), bad_id);
    assert_err(&hex("80030003 00000008 80000000 00000005"), bad_id);
    assert_err(&hex("80030004 0000000c 00000002 00000001 00000002"), |e| {
        matches!(e, SpdyError::SettingsCount { declared: 2, .. })
    });
    assert_err(&hex("80030004 00000004 ffffffff"), |e| {
        matches!(e, SpdyError::SettingsCount { .. })
    });
    assert_err(&hex("80030009 00000008 00000001 80000000"), |e| {
        matches!(e, SpdyError::ZeroWindowDelta(1))
    });
}

#[test]
fn rejects_malformed_header_blocks() {
    type Check = fn(&SpdyError) -> bool;
    let cases: Vec<(Vec<u8>, Check)> = vec![
        // Two pairs declared, one present.
        (raw_block(&[(b"streamtype", b"error")], 2), |e| {
            matches!(e, SpdyError::TruncatedHeaderBlock(_))
        }),
        // Value length runs past the end.
        (hex("00000001 00000001 61 00000009 6263"), |e| {
            matches!(e, SpdyError::TruncatedHeaderBlock(_))
        }),
        // Empty block: not even a pair count.
        (Vec::new(), |e| {
            matches!(e, SpdyError::TruncatedHeaderBlock(_))
        }),
        (raw_block(&[(b"StreamType", b"error")], 1), |e| {
            matches!(
                e,
                SpdyError::InvalidHeaderName {
                    reason: "not lower case",
                    ..
                }
            )
        }),
        (raw_block(&[("caf\u{e9}".as_bytes(), b"x")], 1), |e| {
            matches!(e, SpdyError::InvalidHeaderName { .. })
        }),
        (raw_block(&[(&[0xff, 0xfe], b"x")], 1), |e| {
            matches!(e, SpdyError::InvalidHeaderName { .. })
        }),
        (raw_block(&[(b"", b"x")], 1), |e| {
            matches!(
                e,
                SpdyError::InvalidHeaderName {
                    reason: "empty",
                    ..
                }
            )
        }),
        (raw_block(&[(b"port", b"80"), (b"port", b"81")], 2), |e| {
            matches!(e, SpdyError::DuplicateHeaderName(_))
        }),
        (
            {
                let mut raw = raw_block(&[(b"port", b"80")], 1);
                raw.push(0);
                raw
            },
            |e| matches!(e, SpdyError::TrailingHeaderBytes(1)),
        ),
    ];
    for (raw, check) in cases {
        // Both through our compressor and as a hand-made stored block.
        assert_err(&syn_stream_with_block(1, &compressed(&raw)), check);
        assert_err(&syn_stream_with_block(1, &stored_zlib_block(&raw)), check);
    }
}

#[test]
fn rejects_bad_zlib_data() {
    // Not zlib at all.
    assert_err(
        &syn_stream_with_block(1, &hex("00112233445566778899")),
        |e| matches!(e, SpdyError::Decompress(_)),
    );
    // A zlib header asking for another dictionary.
    assert_err(&syn_stream_with_block(1, &hex("78f9 01020304 0000")), |e| {
        matches!(
            e,
            SpdyError::WrongDictionary {
                found: 0x0102_0304,
                ..
            }
        )
    });
    // A zlib bomb: 1 MiB of zeros as a pair value compresses to about 1 KiB.
    let raw = raw_block(&[(b"x", &vec![0u8; 1 << 20])], 1);
    let block = compressed(&raw);
    assert!(block.len() < 8 * 1024);
    let err = FrameDecoder::with_limits(1 << 20, 64 * 1024)
        .decode(&mut BytesMut::from(&syn_stream_with_block(1, &block)[..]))
        .unwrap_err();
    assert!(
        matches!(err, SpdyError::HeaderBlockTooLarge { max: 65536 }),
        "{err:?}"
    );
}

#[test]
fn decoder_survives_a_bad_frame_it_could_skip() {
    // A bad RST_STREAM is consumed, and the PING after it still decodes.
    let mut buf = BytesMut::from(&hex("80030003 00000004 00000001 80030006 00000004 00000009")[..]);
    let mut decoder = FrameDecoder::new();
    assert!(decoder.decode(&mut buf).is_err());
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(Frame::Ping { id: 9 })
    );
}

#[test]
fn encoder_rejects_what_the_wire_cannot_carry() {
    let mut encoder = FrameEncoder::new().unwrap();
    let mut out = BytesMut::new();
    let too_big = Frame::Data(DataFrame {
        stream_id: 1,
        flags: Flags::NONE,
        data: Bytes::from(vec![0u8; 1 << 24]),
    });
    assert!(matches!(
        encoder.encode(&too_big, &mut out),
        Err(SpdyError::TooLargeToEncode(_))
    ));
    let bad_id = Frame::RstStream {
        stream_id: 0x8000_0001,
        status: RstStatus::Cancel,
    };
    assert!(matches!(
        encoder.encode(&bad_id, &mut out),
        Err(SpdyError::InvalidStreamId { .. })
    ));
    assert!(out.is_empty());
    assert!(HeaderBlock::new().with("Upper", "x").is_err());
    assert!(
        HeaderBlock::new()
            .with("a", "1")
            .unwrap()
            .with("a", "2")
            .is_err()
    );
}

#[test]
fn fuzz_entry_point_accepts_odd_inputs() {
    fuzz_decode(&[]);
    fuzz_decode(&[0]);
    fuzz_decode(&hex(
        "00 80030001 00000010 00000001 00000000 0000 78f9e3c6a7c2",
    ));
    let (wire, _) = mixed_stream();
    for first in 0..16u8 {
        let mut input = vec![first];
        input.extend_from_slice(&wire);
        fuzz_decode(&input);
    }
}
