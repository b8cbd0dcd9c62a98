//! The CRI v1 gRPC services of sluice.
//!
//! This is the only crate (besides `cri-api`) that knows the protobuf types. Each handler is
//! thin: it opens a span, validates the request into domain values (rejecting bad input with a
//! `Status` that names the field), calls the domain, and builds the response. RPCs that no
//! handler implements yet fall through to the generated default stubs, which answer
//! `Unimplemented` honestly.

#![forbid(unsafe_code)]

mod container;
mod error;
mod image;
mod observe;
mod runtime;
mod sandbox;
mod stream;
mod validate;

pub use image::ImageSvc;
pub use observe::{CriLayer, CriMetrics};
pub use runtime::{
    NETWORK_PLUGIN_NOT_READY, NETWORK_READY, NetworkReadiness, NetworkStatus, NoNetwork,
    RUNTIME_API_VERSION, RUNTIME_READY, RuntimeInfo, RuntimeSvc,
};

use cri_api::runtime::v1::image_service_server::ImageServiceServer;
use cri_api::runtime::v1::runtime_service_server::RuntimeServiceServer;

/// The kubelet sends and accepts messages up to 16 MiB (`maxMsgSize` in its remote runtime
/// client); tonic's 4 MiB default would reject large ListContainers responses on busy nodes.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Wraps the runtime service with sluice's message size limits.
pub fn runtime_service(svc: RuntimeSvc) -> RuntimeServiceServer<RuntimeSvc> {
    RuntimeServiceServer::new(svc)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Wraps the image service with sluice's message size limits.
pub fn image_service(svc: ImageSvc) -> ImageServiceServer<ImageSvc> {
    ImageServiceServer::new(svc)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}
