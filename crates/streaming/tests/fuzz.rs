//! Runs `spdy::fuzz_decode` on 10 000 deterministic inputs: pseudo-random bytes, and the
//! real capture streams (plus encoder output) with bits flipped, bytes replaced, regions
//! cut, duplicated or inserted. The only property checked is "never panics"; the test has
//! no timing assertions and the seed is fixed, so a failure reproduces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use bytes::{Bytes, BytesMut};
use streaming::spdy::{
    DataFrame, Flags, Frame, FrameDecoder, FrameEncoder, HeaderBlock, SynStream, fuzz_decode,
};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for session in common::sessions() {
        for name in ["client-to-server.bin", "server-to-client.bin"] {
            let bin = fs::read(session.join(name)).unwrap();
            let spdy = &bin[common::http_preamble_len(&bin)..];
            // Keep inputs small: the first 4 KiB hold every header block of a session.
            seeds.push(spdy[..spdy.len().min(4096)].to_vec());
        }
    }
    let mut encoder = FrameEncoder::new().unwrap();
    let mut wire = BytesMut::new();
    let headers = HeaderBlock::new()
        .with("streamtype", "data")
        .and_then(|h| h.with("port", "80"))
        .unwrap();
    for frame in [
        Frame::SynStream(SynStream {
            stream_id: 1,
            associated_stream_id: 0,
            priority: 0,
            slot: 0,
            flags: Flags::NONE,
            headers,
        }),
        Frame::Data(DataFrame {
            stream_id: 1,
            flags: Flags::FIN,
            data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
        }),
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1,
        },
        Frame::Settings {
            flags: Flags::NONE,
            entries: Vec::new(),
        },
        Frame::Ping { id: 2 },
    ] {
        encoder.encode(&frame, &mut wire).unwrap();
    }
    seeds.push(wire.to_vec());
    seeds
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let len = data.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.byte();
            }
            2 => data.truncate(rng.below(len + 1)),
            3 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                let copy = data[at..end].to_vec();
                let to = rng.below(data.len() + 1);
                data.splice(to..to, copy);
            }
            4 => {
                let to = rng.below(len + 1);
                let noise: Vec<u8> = (0..rng.below(16)).map(|_| rng.byte()).collect();
                data.splice(to..to, noise);
            }
            5 if len > 8 => {
                // Hit a length field: 24 bits starting 5 bytes into some 8-byte window.
                let at = rng.below(len - 8);
                data[at + 5] = rng.byte();
                data[at + 6] = 0xff;
            }
            _ if len > 0 => {
                let at = rng.below(len);
                let end = (at + rng.below(32)).min(len);
                data.drain(at..end);
            }
            _ => {}
        }
    }
    // The first byte of a fuzz input picks the read size.
    let mut input = vec![rng.byte()];
    input.extend_from_slice(&data);
    input
}

#[test]
fn fuzz_decode_never_panics_on_10000_inputs() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_5bd7_0031_0009);
    let mut runs = 0;
    for i in 0..10_000 {
        let input = if i % 4 == 0 {
            let len = rng.below(512);
            let mut random: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            // Half of the random inputs start like a SPDY/3 control frame.
            if rng.below(2) == 0 && random.len() > 3 {
                random[1] = 0x80;
                random[2] = 0x03;
            }
            random
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        fuzz_decode(&input);
        runs += 1;
    }
    assert_eq!(runs, 10_000);
}

#[test]
fn unmutated_seeds_decode_cleanly() {
    // The mutations are only meaningful if the seeds themselves reach the header paths.
    for seed in seeds() {
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::from(&seed[..]);
        let mut frames = 0;
        while let Some(_frame) = decoder.decode(&mut buf).expect("seed decodes") {
            frames += 1;
        }
        assert!(frames > 0);
    }
}
