//! Port-forward over SPDY (`portforward.k8s.io`), as crictl and the kubelet speak it.
//!
//! Each local connection of the client becomes a pair of client-opened streams sharing a
//! `requestid`: `streamtype=error` and `streamtype=data`, both with a `port` header. Once both
//! are open, the runtime dials the port inside the pod and the data stream and the TCP
//! connection are copied both ways; each side's FIN is passed on as the other's shutdown.
//! When both directions are done, the server FINs the data and error streams (no
//! RST_STREAM, as in the captures). Dial failures are reported as text on the error stream.
//! A GOAWAY from the client (crictl on SIGINT) ends the session at once.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::remotecommand::STREAM_CREATION_TIMEOUT;
use crate::runtime::{PortForwardRequest, StreamRuntime};
use crate::spdy::{Incoming, RstStatus, SessionHandle, Stream};

/// The one SPDY port-forward protocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Option<Instant>,
}

/// Runs a port-forward session on an upgraded SPDY connection until the client ends it.
pub async fn serve(
    handle: SessionHandle,
    mut incoming: Incoming,
    req: PortForwardRequest,
    runtime: Arc<dyn StreamRuntime>,
) {
    let req = Arc::new(req);
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let inc = tokio::select! {
            inc = incoming.accept() => inc,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Some(inc) = inc else { break };
        let kind = inc.header("streamtype").unwrap_or_default().to_string();
        let request_id = inc.header("requestid").map(str::to_string);
        let id = inc.id();
        let Ok(stream) = inc.accept().await else {
            break;
        };
        let Some(request_id) = request_id else {
            tracing::debug!(
                stream = id,
                "port-forward stream without a requestid header"
            );
            let _ = handle.reset(id, RstStatus::ProtocolError).await;
            continue;
        };
        let now = Instant::now();
        // Forget halves whose partner never came.
        pending.retain(|_, p| p.since.is_none_or(|t| now - t < STREAM_CREATION_TIMEOUT));
        let pair = pending.entry(request_id.clone()).or_default();
        pair.since.get_or_insert(now);
        match kind.as_str() {
            "error" => pair.error = Some(stream),
            "data" => pair.data = Some(stream),
            other => {
                tracing::debug!(streamtype = other, "ignoring unknown port-forward stream");
                let _ = handle.reset(id, RstStatus::ProtocolError).await;
                continue;
            }
        }
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pending.remove(&request_id)
        {
            tasks.spawn(forward(error, data, req.clone(), runtime.clone()));
        }
    }
    // The client sent GOAWAY or went away: close now, like the kubelet's server.
    tasks.abort_all();
    handle.close().await;
}

async fn forward(
    error: Stream,
    data: Stream,
    req: Arc<PortForwardRequest>,
    runtime: Arc<dyn StreamRuntime>,
) {
    let (_error_in, mut error_out) = error.into_split();
    let port_header = data.header("port").unwrap_or_default().to_string();
    let (mut data_in, mut data_out) = data.into_split();
    let port = match port_header.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            let msg = format!("invalid port {port_header:?} in the port-forward request");
            let _ = error_out.send(msg.as_bytes(), true).await;
            let _ = data_out.shutdown().await;
            return;
        }
    };
    if !req.ports.is_empty() && !req.ports.contains(&port) {
        let msg = format!(
            "port {port} was not requested for pod sandbox {}",
            req.pod_sandbox_id
        );
        let _ = error_out.send(msg.as_bytes(), true).await;
        let _ = data_out.shutdown().await;
        return;
    }
    let span = tracing::debug_span!("port_forward", pod_sandbox_id = %req.pod_sandbox_id, port);
    let _enter = span.enter();
    let tcp = match runtime.port_forward(&req.pod_sandbox_id, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}: {e}",
                req.pod_sandbox_id
            );
            tracing::debug!(error = %msg, "port-forward dial failed");
            let _ = error_out.send(msg.as_bytes(), true).await;
            let _ = data_out.shutdown().await;
            return;
        }
    };
    let (mut tcp_in, mut tcp_out) = tcp.into_split();
    let upstream = async {
        let r = tokio::io::copy(&mut data_in, &mut tcp_out).await;
        let _ = tcp_out.shutdown().await;
        r
    };
    let downstream = async {
        let r = tokio::io::copy(&mut tcp_in, &mut data_out).await;
        let _ = data_out.shutdown().await;
        r
    };
    tokio::pin!(upstream, downstream);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        // A reset or a failed write in one direction ends both.
        let result = tokio::select! {
            r = &mut upstream, if !up_done => { up_done = true; r }
            r = &mut downstream, if !down_done => { down_done = true; r }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "port-forward copy ended with an error");
            break;
        }
    }
    let _ = error_out.shutdown().await;
}
