//! CRI streaming for sluice: `Exec`, `Attach` and `PortForward` sessions.
//!
//! `kubelet` and `crictl` talk to a runtime's streaming server over SPDY/3.1 (the default)
//! or WebSocket. No usable Rust crate implements the server side of SPDY/3.1, so this crate
//! carries its own codec in [`spdy`]: frame types, the zlib-compressed header blocks with the
//! SPDY/3 dictionary, an incremental decoder for frames split across TCP segments, and an
//! encoder. The codec is checked against captures of real crictl/CRI-O sessions.
#![forbid(unsafe_code)]

pub mod spdy;
pub mod runtime;

pub use runtime::{
    AttachRequest, ExecRequest, PortForwardRequest, StreamError, StreamIo, StreamRuntime, TermSize,
};
