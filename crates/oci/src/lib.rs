//! The container-runtime layer: OCI runtime spec generation, overlay root filesystems, runc
//! driven through conmon, exec, stats and reaping.
#![deny(unsafe_code)]

pub mod spec;
