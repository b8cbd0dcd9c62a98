//! `runtime.v1.ImageService`: pull, list, status, remove and usage of images, translated
//! between the CRI messages and the `images` crate. Domain errors become gRPC codes in
//! exactly one place, [`status`].

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use cri_api::runtime::v1::image_service_server::ImageService;
use cri_api::runtime::v1::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest,
    ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use images::{Credentials, ErrorKind, ImageRecord, Removed};
use tonic::{Request, Response, Status};

/// The CRI image service, backed by an [`images::ImageService`].
#[derive(Debug, Clone)]
pub struct ImageSvc {
    images: images::ImageService,
}

impl ImageSvc {
    pub fn new(images: images::ImageService) -> Self {
        Self { images }
    }
}

/// Maps an image-service error to the gRPC status the kubelet and crictl see. The message
/// is the error's own text, which names the reference and the cause and never a secret.
pub fn status(e: images::Error) -> Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::Unauthenticated => Status::unauthenticated(msg),
        ErrorKind::PermissionDenied => Status::permission_denied(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        ErrorKind::DataLoss => Status::data_loss(msg),
        ErrorKind::FailedPrecondition => Status::failed_precondition(msg),
        ErrorKind::Internal => Status::internal(msg),
    }
}

/// The image name of an optional `ImageSpec`, required non-empty; `field` names it.
fn image_name(field: &str, spec: Option<&ImageSpec>) -> Result<String, Status> {
    let name = spec.map(|s| s.image.trim()).unwrap_or_default();
    if name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must name an image"
        )));
    }
    Ok(name.to_string())
}

fn credentials(auth: Option<AuthConfig>) -> Option<Credentials> {
    auth.map(|a| Credentials {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
        server_address: a.server_address,
    })
}

/// `Image.uid`/`Image.username` from the config's `User` (`uid`, `uid:gid`, `name`,
/// `name:group`), which the kubelet uses for `runAsNonRoot` checks.
fn user_of(user: &str) -> (Option<Int64Value>, String) {
    let u = user.split(':').next().unwrap_or_default();
    if u.is_empty() {
        return (None, String::new());
    }
    match u.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, u.to_string()),
    }
}

fn to_cri(rec: &ImageRecord) -> Image {
    let (uid, username) = user_of(&rec.config.user);
    Image {
        id: rec.id.to_string(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        size: rec.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: rec.id.to_string(),
            ..ImageSpec::default()
        }),
        pinned: false,
    }
}

/// Verbose `ImageStatus` info: the image config as pulled and where its layers are.
fn verbose_info(
    images: &images::ImageService,
    rec: &ImageRecord,
) -> Result<HashMap<String, String>, Status> {
    let config: serde_json::Value = match images.config_blob(rec).map_err(status)? {
        Some(b) => serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    };
    let layers: Vec<serde_json::Value> = rec
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "digest": l.digest,
                "mediaType": l.media_type,
                "size": l.size,
                "diffID": l.diff_id,
                "chainID": l.chain_id,
                "dir": images.store().layer_dir(&l.chain_id),
            })
        })
        .collect();
    let info = serde_json::json!({
        "id": rec.id,
        "manifestDigest": rec.manifest_digest,
        "indexDigest": rec.index_digest,
        "platform": rec.platform,
        "pulledAt": rec.pulled_at,
        "layers": layers,
        "imageSpec": config,
    });
    Ok(HashMap::from([("info".to_string(), info.to_string())]))
}

#[tonic::async_trait]
impl ImageService for ImageSvc {
    #[tracing::instrument(skip_all)]
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image.trim().to_string())
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(f) => self
                .images
                .status(&f)
                .map_err(status)?
                .into_iter()
                .collect(),
            None => self.images.list(),
        };
        Ok(Response::new(ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(image))]
    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let name = image_name("image.image", req.image.as_ref())?;
        tracing::Span::current().record("image", name.as_str());
        // CRI: an unknown image is an empty response, not an error.
        let Some(rec) = self.images.status(&name).map_err(status)? else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let info = if req.verbose {
            verbose_info(&self.images, &rec)?
        } else {
            HashMap::new()
        };
        Ok(Response::new(ImageStatusResponse {
            image: Some(to_cri(&rec)),
            info,
        }))
    }

    #[tracing::instrument(skip_all, fields(image))]
    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name("image.image", req.image.as_ref())?;
        tracing::Span::current().record("image", name.as_str());
        let id = self
            .images
            .pull(&name, credentials(req.auth))
            .await
            .map_err(status)?;
        Ok(Response::new(PullImageResponse {
            image_ref: id.to_string(),
        }))
    }

    #[tracing::instrument(skip_all, fields(image))]
    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let name = image_name("image.image", req.image.as_ref())?;
        tracing::Span::current().record("image", name.as_str());
        match self.images.remove(&name).await.map_err(status)? {
            Removed::NotPresent => tracing::debug!("image not present"),
            Removed::Untagged(t) => tracing::info!(tag = %t, "untagged"),
            Removed::Deleted(id) => tracing::info!(id = %id, "removed"),
        }
        Ok(Response::new(RemoveImageResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let u = self.images.fs_usage().await.map_err(status)?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: u.mountpoint.to_string_lossy().into_owned(),
                }),
                used_bytes: Some(UInt64Value {
                    value: u.used_bytes,
                }),
                inodes_used: Some(UInt64Value {
                    value: u.inodes_used,
                }),
            }],
            container_filesystems: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_map_to_uid_or_name() {
        assert_eq!(user_of("").0, None);
        assert_eq!(user_of("1000:1000").0, Some(Int64Value { value: 1000 }));
        assert_eq!(user_of("nobody"), (None, "nobody".to_string()));
        assert_eq!(user_of("0").0, Some(Int64Value { value: 0 }));
    }

    #[test]
    fn empty_image_names_the_field() {
        let e = image_name("image.image", None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("image.image"));
    }
}
