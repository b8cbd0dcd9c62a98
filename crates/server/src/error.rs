//! The one place where domain failures become gRPC statuses. Each domain error kind maps to
//! exactly one code; the message carries the whole cause chain, because it is often the only
//! thing the operator sees (`crictl` prints it verbatim).

use tonic::{Code, Status};

/// A pod failure as a gRPC status.
pub fn pod_status(e: &pods::PodError) -> Status {
    let code = match e.kind() {
        pods::ErrorKind::InvalidArgument => Code::InvalidArgument,
        pods::ErrorKind::AlreadyExists => Code::AlreadyExists,
        pods::ErrorKind::NotFound => Code::NotFound,
        pods::ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        pods::ErrorKind::Internal => Code::Internal,
    };
    let message = pods::error_chain(e);
    if code == Code::Internal {
        tracing::error!(error = %message, "internal error");
    }
    Status::new(code, message)
}
