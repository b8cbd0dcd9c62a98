//! The one error type of the image service, with a coarse [`ErrorKind`] that the CRI server
//! maps to gRPC codes in one place.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::reference::ReferenceError;
use crate::unpack::UnpackError;

/// Everything an image operation can fail with. Cloneable (sources are shared) so one pull's
/// outcome can be handed to every caller that joined it. No variant ever carries a secret:
/// credentials are only ever named by the registry they belong to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    #[error("invalid credentials for {registry}: {reason}")]
    InvalidCredentials {
        registry: String,
        reason: &'static str,
    },
    #[error("pull {reference}: not found at {endpoint}: {message}")]
    NotFound {
        reference: String,
        endpoint: String,
        message: String,
    },
    #[error(
        "pull {reference}: no image for platform {platform} in the index (it offers {offered})"
    )]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        offered: String,
    },
    #[error("pull {reference}: {endpoint} did not accept the credentials: {message}")]
    Unauthorized {
        reference: String,
        endpoint: String,
        message: String,
    },
    #[error("pull {reference}: {endpoint} denied access: {message}")]
    Denied {
        reference: String,
        endpoint: String,
        message: String,
    },
    #[error("pull {reference}: registry {endpoint} is unreachable: {message}")]
    Unreachable {
        reference: String,
        endpoint: String,
        message: String,
    },
    #[error("pull {reference}: registry {endpoint} failed: {message}")]
    Registry {
        reference: String,
        endpoint: String,
        message: String,
    },
    #[error("pull {reference}: {what} content does not match its digest {expected} (got {actual})")]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("pull {reference}: {message}")]
    BadImage { reference: String, message: String },
    #[error("pull {reference}: layer {digest}: {source}")]
    Unpack {
        reference: String,
        digest: String,
        #[source]
        source: Arc<UnpackError>,
    },
    #[error("image {image:?} is ambiguous: it is a prefix of the ids {candidates}")]
    Ambiguous { image: String, candidates: String },
    #[error("image {image} is in use by containers {containers:?}")]
    InUse {
        image: String,
        containers: Vec<String>,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("image service: {0}")]
    Internal(String),
}

/// What kind of failure an [`Error`] is, for protocol mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is malformed (reference, credentials encoding, ambiguous id).
    InvalidArgument,
    /// The image, tag or platform does not exist.
    NotFound,
    /// The registry wants (other) credentials.
    Unauthenticated,
    /// The registry knows who we are and says no.
    PermissionDenied,
    /// The registry could not be reached or failed; retrying may help.
    Unavailable,
    /// Content did not match its digest, or a layer stream was corrupt.
    DataLoss,
    /// The image cannot be used as it is (unsupported format, unsafe layer, in use).
    FailedPrecondition,
    /// Local failure (disk, bug).
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference(_)
            | Error::InvalidCredentials { .. }
            | Error::Ambiguous { .. } => ErrorKind::InvalidArgument,
            Error::NotFound { .. } | Error::NoMatchingPlatform { .. } => ErrorKind::NotFound,
            Error::Unauthorized { .. } => ErrorKind::Unauthenticated,
            Error::Denied { .. } => ErrorKind::PermissionDenied,
            Error::Unreachable { .. } | Error::Registry { .. } => ErrorKind::Unavailable,
            Error::DigestMismatch { .. } => ErrorKind::DataLoss,
            Error::Unpack { source, .. } => match source.as_ref() {
                UnpackError::Unsafe { .. } => ErrorKind::FailedPrecondition,
                UnpackError::Read(_) => ErrorKind::DataLoss,
                UnpackError::Io { .. } => ErrorKind::Internal,
            },
            Error::BadImage { .. } | Error::InUse { .. } => ErrorKind::FailedPrecondition,
            Error::Io { .. } | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            op,
            path,
            source: Arc::new(source),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
