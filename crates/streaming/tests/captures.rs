//! Decodes the real crictl <-> CRI-O SPDY/3.1 captures in `shared/spdy-vectors` with our codec
//! and checks every frame against the capture's `frames.txt` listing.
//!
//! Each direction is fed to its own [`FrameDecoder`] (its own zlib context) in the exact TCP
//! segments recorded in `segments.tsv`, so the frames arrive split the way real clients split
//! them. The vectors live outside the repository: set `SLUICE_SPDY_VECTORS` or keep them at
//! `../shared/spdy-vectors` next to the checkout. The test fails loudly when they are absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use common::{http_preamble_len, sessions};
use streaming::spdy::{Frame, FrameDecoder, FrameEncoder};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ClientToServer,
    ServerToClient,
}

impl Dir {
    fn tag(self) -> &'static str {
        match self {
            Dir::ClientToServer => "C->S",
            Dir::ServerToClient => "S->C",
        }
    }

    fn bin(self) -> &'static str {
        match self {
            Dir::ClientToServer => "client-to-server.bin",
            Dir::ServerToClient => "server-to-client.bin",
        }
    }
}

/// One frame as listed in frames.txt.
#[derive(Debug, Default)]
struct Listed {
    number: String,
    offset: usize,
    kind: String,
    fields: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    pairs: Option<usize>,
    raw: Option<Vec<u8>>,
}

impl Listed {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A numeric field; `0x..` is hex, and a `(NAME)` suffix is dropped.
    fn num(&self, key: &str) -> Option<u64> {
        let value = self.field(key)?;
        let value = value.split('(').next().unwrap_or(value);
        Some(match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
            None => value.parse().unwrap(),
        })
    }
}

struct Listing {
    frames: Vec<(Dir, Listed)>,
    /// Per direction: offset of a trailing incomplete frame.
    incomplete: Vec<(Dir, usize)>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn parse_listing(text: &str) -> Listing {
    let mut listing = Listing {
        frames: Vec::new(),
        incomplete: Vec::new(),
    };
    for line in text.lines() {
        if line.starts_with("# Per-stream summary") {
            break;
        }
        if line.starts_with("t=") {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let Some(at) = tokens.iter().position(|t| {
                t.strip_prefix('#')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            }) else {
                continue; // TCP and HTTP events
            };
            let dir = match tokens[at + 1] {
                "C->S" => Dir::ClientToServer,
                "S->C" => Dir::ServerToClient,
                other => panic!("unknown direction {other} in {line:?}"),
            };
            let offset: usize = tokens[at + 2].strip_prefix('@').unwrap().parse().unwrap();
            let (kind, rest) = match tokens[at + 3] {
                "CONTROL" => (tokens[at + 4].to_owned(), &tokens[at + 5..]),
                "DATA" => ("DATA".to_owned(), &tokens[at + 4..]),
                "INCOMPLETE" => {
                    listing.incomplete.push((dir, offset));
                    continue;
                }
                other => panic!("unknown frame kind {other} in {line:?}"),
            };
            let fields = rest
                .iter()
                .filter_map(|t| t.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            listing.frames.push((
                dir,
                Listed {
                    number: tokens[at].to_owned(),
                    offset,
                    kind,
                    fields,
                    ..Listed::default()
                },
            ));
            continue;
        }
        let Some((_, current)) = listing.frames.last_mut() else {
            continue;
        };
        let trimmed = line.trim();
        if let Some(raw) = trimmed.strip_prefix("raw: ") {
            current.raw = Some(hex(raw));
        } else if let Some(block) = trimmed.strip_prefix("header block: ") {
            let pairs = block.rsplit(", ").next().unwrap();
            current.pairs = Some(pairs.strip_suffix(" pairs").unwrap().parse().unwrap());
        } else if line.starts_with("          ") {
            let (name, value) = trimmed
                .split_once(": ")
                .unwrap_or((trimmed.trim_end_matches(':'), ""));
            current
                .headers
                .push((name.to_owned(), value.replace(" | ", "\0")));
        }
    }
    listing
}

/// Segments of one direction as (offset, length), in capture order.
fn segments(session: &Path, dir: Dir) -> Vec<(usize, usize)> {
    let text = fs::read_to_string(session.join("segments.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|cols| cols[2] == dir.tag())
        .map(|cols| (cols[3].parse().unwrap(), cols[4].parse().unwrap()))
        .filter(|&(_, len): &(usize, usize)| len > 0)
        .collect()
}

struct Decoded {
    /// (offset in the .bin, total frame length, frame)
    frames: Vec<(usize, usize, Frame)>,
    leftover: usize,
}

/// Feeds one direction to a fresh decoder in the recorded TCP segments.
fn decode_direction(session: &Path, dir: Dir, bin: &[u8]) -> Decoded {
    let start = http_preamble_len(bin);
    let mut decoder = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut fed = start;
    let mut frames = Vec::new();
    let mut expected_offset = 0;
    let mut pieces = 0;
    for (offset, len) in segments(session, dir) {
        assert_eq!(
            offset,
            expected_offset,
            "{}: segments are contiguous",
            dir.tag()
        );
        expected_offset = offset + len;
        let end = offset + len;
        if end <= start {
            continue;
        }
        buf.extend_from_slice(&bin[offset.max(start)..end]);
        fed = end;
        pieces += 1;
        loop {
            let frame_start = fed - buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let frame_len = fed - buf.len() - frame_start;
                    frames.push((frame_start, frame_len, frame));
                }
                Ok(None) => break,
                Err(e) => panic!(
                    "{}: {} at offset {frame_start}: {e}",
                    session.display(),
                    dir.tag()
                ),
            }
        }
    }
    assert_eq!(fed, bin.len(), "{}: segments cover the .bin", dir.tag());
    assert!(
        pieces > frames.len() || frames.is_empty(),
        "frames arrive split"
    );
    Decoded {
        frames,
        leftover: buf.len(),
    }
}

fn check_frame(
    what: &str,
    listed: &Listed,
    offset: usize,
    frame_len: usize,
    frame: &Frame,
    bin: &[u8],
) {
    assert_eq!(listed.offset, offset, "{what}: offset");
    assert_eq!(listed.kind, frame.type_name(), "{what}: frame type");
    assert_eq!(
        listed.num("flags"),
        Some(u64::from(frame.flags().0)),
        "{what}: flags"
    );
    assert_eq!(
        listed.num("len"),
        Some((frame_len - 8) as u64),
        "{what}: length"
    );
    if let Some(stream) = listed.num("stream") {
        assert_eq!(
            frame.stream_id().map(u64::from),
            Some(stream),
            "{what}: stream id"
        );
    }
    let wire = &bin[offset..offset + frame_len];
    if let Some(raw) = &listed.raw {
        assert_eq!(
            raw.as_slice(),
            wire,
            "{what}: raw bytes in frames.txt match the .bin"
        );
    }
    match frame {
        Frame::Data(data) => {
            assert_eq!(data.data.len(), frame_len - 8, "{what}: data length");
            assert_eq!(&data.data[..], &wire[8..], "{what}: data bytes");
        }
        Frame::SynStream(s) => {
            assert_eq!(listed.num("assoc"), Some(u64::from(s.associated_stream_id)));
            assert_eq!(listed.num("pri"), Some(u64::from(s.priority)));
            assert_eq!(listed.num("slot"), Some(u64::from(s.slot)));
            check_headers(what, listed, s.headers.iter());
        }
        Frame::SynReply(s) => check_headers(what, listed, s.headers.iter()),
        Frame::Headers(s) => check_headers(what, listed, s.headers.iter()),
        Frame::RstStream { status, .. } => {
            assert_eq!(
                listed.num("status"),
                Some(u64::from(u32::from(*status))),
                "{what}"
            );
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            assert_eq!(
                listed.num("last_good_stream"),
                Some(u64::from(*last_good_stream_id))
            );
            assert_eq!(
                listed.num("status"),
                Some(u64::from(u32::from(*status))),
                "{what}"
            );
        }
        Frame::Ping { id } => assert_eq!(listed.num("id"), Some(u64::from(*id)), "{what}"),
        other => panic!("{what}: frame type not seen in the captures: {other:?}"),
    }
    // Frames without a header block re-encode to the captured bytes exactly.
    if !matches!(
        frame,
        Frame::SynStream(_) | Frame::SynReply(_) | Frame::Headers(_)
    ) {
        let mut out = BytesMut::new();
        FrameEncoder::new()
            .unwrap()
            .encode(frame, &mut out)
            .unwrap();
        assert_eq!(&out[..], wire, "{what}: re-encoded bytes");
    }
}

fn check_headers<'a>(what: &str, listed: &Listed, got: impl Iterator<Item = (&'a str, &'a [u8])>) {
    let got: Vec<(String, String)> = got
        .map(|(n, v)| (n.to_owned(), String::from_utf8(v.to_vec()).unwrap()))
        .collect();
    assert_eq!(got, listed.headers, "{what}: header pairs in wire order");
    assert_eq!(listed.pairs, Some(got.len()), "{what}: pair count");
}

#[test]
fn every_capture_decodes_like_frames_txt() {
    let mut summary = Vec::new();
    for session in sessions() {
        let name = session.file_name().unwrap().to_string_lossy().into_owned();
        let listing = parse_listing(&fs::read_to_string(session.join("frames.txt")).unwrap());
        for dir in [Dir::ClientToServer, Dir::ServerToClient] {
            let bin = fs::read(session.join(dir.bin())).unwrap();
            let decoded = decode_direction(&session, dir, &bin);
            let listed: Vec<&Listed> = listing
                .frames
                .iter()
                .filter(|(d, _)| *d == dir)
                .map(|(_, l)| l)
                .collect();
            assert_eq!(
                decoded.frames.len(),
                listed.len(),
                "{name} {}: frame count",
                dir.tag()
            );
            for ((offset, len, frame), listed) in decoded.frames.iter().zip(&listed) {
                let what = format!("{name} {} {}", dir.tag(), listed.number);
                check_frame(&what, listed, *offset, *len, frame, &bin);
            }
            let incomplete = listing
                .incomplete
                .iter()
                .find(|(d, _)| *d == dir)
                .map_or(0, |(_, offset)| bin.len() - offset);
            assert_eq!(
                decoded.leftover,
                incomplete,
                "{name} {}: trailing bytes",
                dir.tag()
            );

            // Re-compressing the header blocks in order with one fresh context and decoding
            // them with another gives the same frames back.
            let mut encoder = FrameEncoder::new().unwrap();
            let mut wire = BytesMut::new();
            let originals: Vec<&Frame> = decoded.frames.iter().map(|(_, _, f)| f).collect();
            for frame in &originals {
                encoder.encode(frame, &mut wire).unwrap();
            }
            let mut decoder = FrameDecoder::new();
            for frame in &originals {
                assert_eq!(decoder.decode(&mut wire).unwrap().as_ref(), Some(*frame));
            }
            assert!(wire.is_empty());
            summary.push((name.clone(), dir.tag(), decoded.frames.len()));
        }
    }
    assert!(summary.len() >= 2, "{summary:?}");
}

#[test]
fn whole_streams_decode_like_segmented_ones() {
    for session in sessions() {
        for dir in [Dir::ClientToServer, Dir::ServerToClient] {
            let bin = fs::read(session.join(dir.bin())).unwrap();
            let segmented = decode_direction(&session, dir, &bin);
            let mut buf = BytesMut::from(&bin[http_preamble_len(&bin)..]);
            let mut decoder = FrameDecoder::new();
            let mut whole = Vec::new();
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                whole.push(frame);
            }
            let segmented: Vec<Frame> = segmented.frames.into_iter().map(|(_, _, f)| f).collect();
            assert_eq!(whole, segmented, "{} {}", session.display(), dir.tag());
            assert_eq!(buf.len(), segmented_leftover(&session, dir, &bin));
        }
    }
}

fn segmented_leftover(session: &Path, dir: Dir, bin: &[u8]) -> usize {
    decode_direction(session, dir, bin).leftover
}
