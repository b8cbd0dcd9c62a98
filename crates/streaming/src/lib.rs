//! CRI streaming for sluice: `Exec`, `Attach` and `PortForward` sessions.
//!
//! `kubelet` and `crictl` talk to a runtime's streaming server over SPDY/3.1 (the default)
//! or WebSocket. No usable Rust crate implements the server side of SPDY/3.1, so this crate
//! carries its own codec in [`spdy`]: frame types, the zlib-compressed header blocks with the
//! SPDY/3 dictionary, an incremental decoder for frames split across TCP segments, and an
//! encoder. The codec is checked against captures of real crictl/CRI-O sessions.
#![forbid(unsafe_code)]

pub mod runtime;
pub mod spdy;

pub use runtime::{
    AttachRequest, ExecRequest, PortForwardRequest, StreamError, StreamIo, StreamRuntime, TermSize,
};
pub mod idle;
pub mod metrics;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod status;
pub mod token;
pub mod ws;

pub use metrics::StreamMetrics;
pub use server::{ServerConfig, ServerError, StreamServer};
#[cfg(any(test, feature = "client"))]
pub mod client;
