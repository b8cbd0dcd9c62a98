//! The SPDY/3.1 frame decoder on arbitrary bytes, fed in pieces (the first byte picks the
//! piece size): it must return frames or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    streaming::spdy::fuzz_decode(data);
});
