//! `runtime.v1.ImageService`. No image RPC is implemented yet: every call answers
//! `Unimplemented` through the generated default stubs until the images issue lands.

use cri_api::runtime::v1::image_service_server::ImageService;

/// The CRI image service.
#[derive(Debug, Default, Clone)]
pub struct ImageSvc {}

impl ImageSvc {
    pub fn new() -> Self {
        Self {}
    }
}

#[tonic::async_trait]
impl ImageService for ImageSvc {}
