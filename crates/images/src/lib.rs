//! sluice's image service: pulls images from OCI registries, keeps them in a content store,
//! unpacks layers for overlayfs, and answers list / status / remove / usage.
//!
//! - [`ImageService`] is the entry point: `pull` (mirrors, plain-HTTP registries,
//!   credentials, platform selection from indexes, identical pulls deduplicated, layers
//!   fetched in parallel and skipped when present), `list`, `status`, `remove`, `fs_usage`,
//!   `rootfs` (the overlay lower dirs of an image, for containers).
//! - [`Store`] is the on-disk layout and metadata (one atomically written JSON file per
//!   image), with garbage collection of unreferenced layers and blobs.
//! - [`unpack`] turns a layer tar (plain, gzip or zstd) into an overlayfs lower dir,
//!   converting OCI whiteouts and refusing entries that would escape the layer.
//!
//! Registry protocol (tokens, basic auth, manifests, blobs) is oci-client's; digests are
//! verified here as well (manifest, config, every blob, every layer's diff id) and nothing
//! becomes visible in the store until it has been verified. The CRI protobuf types are not
//! known here: the `server` crate translates.

#![forbid(unsafe_code)]

mod digest;
mod error;
mod manifest;
mod metrics;
mod reference;
mod registry;
mod service;
mod store;
pub mod unpack;

pub use digest::{Digest, DigestError, chain_ids};
pub use error::{Error, ErrorKind, Result};
pub use manifest::{ImageConfig, Platform};
pub use metrics::ImageMetrics;
pub use reference::{Reference, ReferenceError};
pub use registry::{Credentials, Mirror, RegistryConfig};
pub use service::{Config, ImageService, Stats};
pub use store::{
    FsUsage, ImageRecord, ImageUsage, LayerRecord, Match, NoContainers, Removed, Store,
};
