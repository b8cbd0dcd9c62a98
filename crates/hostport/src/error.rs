//! Errors of the host-port manager. External tools' failures keep their evidence: the
//! command line, exit status, stderr and (for `nft -f -`) the script that was refused.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::types::{PortMapping, Protocol};

/// Coarse classification for callers that map errors to CRI status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A host port is held by another pod (CRI: `AlreadyExists`).
    AlreadyExists,
    /// The request itself is malformed (CRI: `InvalidArgument`).
    InvalidArgument,
    /// The node could not be changed (CRI: `Internal` / `Unavailable`).
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The (host IP, host port, protocol) is already published for another pod. Nothing of
    /// the request was applied.
    #[error(
        "host port {protocol}/{host_port}{} is already taken by pod {owner_name:?} (id {owner_id})",
        host_ip.map(|ip| format!(" on {ip}")).unwrap_or_default()
    )]
    AlreadyExists {
        protocol: Protocol,
        host_port: u16,
        host_ip: Option<IpAddr>,
        /// The owner's id as stored in the element comment (the pod id, or `h-<hash>` for
        /// ids that cannot be stored verbatim).
        owner_id: String,
        owner_name: String,
    },

    #[error("invalid host-port configuration `{key}`: {reason}")]
    InvalidConfig { key: &'static str, reason: String },

    #[error("invalid port mapping {mapping:?}: {reason}")]
    InvalidMapping {
        mapping: PortMapping,
        reason: &'static str,
    },

    /// `nft -f -` refused a transaction; nothing of it was applied.
    #[error("nft transaction failed ({status}): {stderr}")]
    NftApply {
        status: String,
        stderr: String,
        /// The complete script that was fed to `nft -f -`.
        script: String,
    },

    /// Any other external command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("could not start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },

    #[error("i/o with `{command}`")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// `nft -j list table` printed something we could not understand.
    #[error("cannot parse `{command}` output: {detail}")]
    ReadBack { command: String, detail: String },

    #[error("cannot write {}", path.display())]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `ip route get` gave no usable interface for a pod IP.
    #[error("no interface routes to pod ip {ip}: {detail}")]
    NoRoute { ip: IpAddr, detail: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::InvalidMapping { .. } | Error::InvalidConfig { .. } => {
                ErrorKind::InvalidArgument
            }
            _ => ErrorKind::Internal,
        }
    }
}
