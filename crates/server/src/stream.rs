//! `Exec`, `Attach` and `PortForward`: validate, check the container or pod, and hand out a
//! one-time URL of the streaming server (crate `streaming`), which does the rest.

use cri_api::runtime::v1 as cri;
use tonic::Status;

use pods::PodManager;
use streaming::{AttachRequest, ExecRequest, PortForwardRequest, StreamServer};

use crate::container;

fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

fn token_error(e: streaming::token::TokenError) -> Status {
    match e {
        streaming::token::TokenError::Full(_) => Status::resource_exhausted(e.to_string()),
        streaming::token::TokenError::Random(_) => Status::internal(e.to_string()),
    }
}

/// A `tty` stream merges stderr into stdout, so asking for both is a contradiction (the
/// kubelet rejects it the same way).
fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), Status> {
    if !(stdin || stdout || stderr) {
        return Err(invalid(
            "stdin",
            "one of stdin, stdout or stderr must be true",
        ));
    }
    if tty && stderr {
        return Err(invalid(
            "stderr",
            "tty and stderr cannot both be true: a terminal merges stderr into stdout",
        ));
    }
    Ok(())
}

/// The container's full id, if it exists and is running.
async fn running_container(pods: &PodManager, id: &str) -> Result<String, Status> {
    pods.running_container_id(id).await.map_err(container::fail)
}

pub async fn exec(
    streams: &StreamServer,
    pods: &PodManager,
    req: cri::ExecRequest,
) -> Result<cri::ExecResponse, Status> {
    container::container_id(&req.container_id)?;
    if req.cmd.is_empty() {
        return Err(invalid("cmd", "required"));
    }
    if req.cmd[0].is_empty() {
        return Err(invalid("cmd[0]", "the program to run must not be empty"));
    }
    check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
    let id = running_container(pods, &req.container_id).await?;
    let url = streams
        .exec_url(ExecRequest {
            container_id: id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })
        .map_err(token_error)?;
    Ok(cri::ExecResponse { url })
}

pub async fn attach(
    streams: &StreamServer,
    pods: &PodManager,
    req: cri::AttachRequest,
) -> Result<cri::AttachResponse, Status> {
    container::container_id(&req.container_id)?;
    check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
    let id = running_container(pods, &req.container_id).await?;
    let url = streams
        .attach_url(AttachRequest {
            container_id: id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })
        .map_err(token_error)?;
    Ok(cri::AttachResponse { url })
}

pub fn port_forward(
    streams: &StreamServer,
    pods: &PodManager,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("pod_sandbox_id", "required"));
    }
    let mut ports = Vec::with_capacity(req.port.len());
    for (i, &p) in req.port.iter().enumerate() {
        match u16::try_from(p) {
            Ok(p) if p > 0 => ports.push(p),
            _ => {
                return Err(invalid(
                    &format!("port[{i}]"),
                    format!("{p} is not a TCP port (1-65535)"),
                ));
            }
        }
    }
    let pod = pods.status(&req.pod_sandbox_id).map_err(container::fail)?;
    if pod.state != pods::PodState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready (state {:?})",
            pod.id, pod.state
        )));
    }
    let url = streams
        .port_forward_url(PortForwardRequest {
            pod_sandbox_id: pod.id,
            ports,
        })
        .map_err(token_error)?;
    Ok(cri::PortForwardResponse { url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_combinations_are_checked_naming_the_field() {
        let e = check_streams(false, false, false, false).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("stdin:"), "{}", e.message());
        let e = check_streams(true, true, true, true).unwrap_err();
        assert!(e.message().starts_with("stderr:"), "{}", e.message());
        assert!(check_streams(true, true, false, true).is_ok());
        assert!(check_streams(false, true, true, false).is_ok());
    }
}
