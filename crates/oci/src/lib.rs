//! The container-runtime layer of sluice: everything between a domain container description
//! and a process running under runc.
//!
//! - [`spec`]: OCI runtime spec (`config.json`) generation from a [`spec::ContainerSpec`]
//!   (Kubernetes command/env merge, user resolution against the image's passwd/group,
//!   namespaces, capabilities bounded by the daemon's own bounding set, seccomp, resources).
//! - [`rootfs`]: the overlay root filesystem and writable-layer usage.
//! - [`runtime`]: runc driven through conmon (Debian's 2.1.6), which owns the container's
//!   stdio, writes the CRI log and exit records, and survives a daemon restart; exec-sync,
//!   stop with timeout, reconciliation from the runtime directory.
//! - [`stream`]: interactive exec (pipes or a terminal, resizes, cancellation) and attach
//!   through conmon's attach socket, on the client's byte streams.
//! - [`stats`]: CPU and memory usage from cgroupfs v1 or v2.
//! - [`reaper`]: the daemon as child subreaper and how it reaps adopted monitors without
//!   stealing tokio's children.
//!
//! Only domain types here: the CRI server translates protobuf messages into them.

#![forbid(unsafe_code)]

pub mod reaper;
pub mod rootfs;
pub mod runtime;
pub mod spec;
pub mod stats;
pub mod stream;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

/// Bounded external commands (runc, conmon, …): the [`runcmd`] crate, under its old path.
pub use runcmd as cmd;

pub use runtime::{
    ContainerRuntime, ContainerStatus, CreateRequest, Created, ExecOutcome, Runc, RuntimeConfig,
    RuntimeError, StopOutcome,
};
pub use stream::{ProcessIo, WindowSize};
