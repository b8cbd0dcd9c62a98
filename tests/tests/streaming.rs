//! Streaming end to end: `Exec`, `Attach` and `PortForward` through the real daemon, with
//! busybox containers under runc/conmon in real pods, driven the way crictl drives them: the
//! CRI call returns a URL, a client upgrades it to SPDY/3.1 (sluice's own client, reusing the
//! codec) or WebSocket (tokio-tungstenite) and talks the Kubernetes stream protocols. Root
//! only. Each test has its own registry, bridge network, daemon and temp dir.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cri_api::runtime::v1::{
    AttachRequest, ContainerState, ExecRequest, PortForwardRequest, StopContainerRequest,
};
use futures_util::{SinkExt, StreamExt};
use sluice_e2e::containers::{
    Pod, Runtime, World, pids_with_cmdline, run, shell, start_time, status, wait_gone,
};
use streaming::client::{self, SessionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonic::Code;

const SECS30: Duration = Duration::from_secs(30);

async fn exec_url(c: &mut Runtime, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    c.exec(ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e:?}"))
    .into_inner()
    .url
}

/// An Attach URL for the container's stdout and stderr.
async fn attach_url(c: &mut Runtime, id: &str) -> String {
    c.attach(AttachRequest {
        container_id: id.into(),
        stdin: false,
        tty: false,
        stdout: true,
        stderr: true,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

/// A pod with one long-running busybox container; returns (world, pod, container id).
async fn world_with_container(script: &str) -> (World, Pod, String) {
    let w = World::start().await;
    let pod = w.run_pod(w.pod_config("stream")).await;
    let mut c = w.rt().await;
    let id = run(&mut c, &pod, shell("main", &w.busybox, script)).await;
    (w, pod, id)
}

#[tokio::test]
async fn exec_over_spdy_reports_output_and_exit_codes() {
    let metrics_port = sluice_e2e::net::free_port();
    let w = World::start_with(&format!(
        "[metrics]\nenable = true\naddress = \"127.0.0.1:{metrics_port}\"\n"
    ))
    .await;
    let pod = w.run_pod(w.pod_config("stream")).await;
    let mut c = w.rt().await;
    let id = run(&mut c, &pod, shell("main", &w.busybox, "sleep 3600")).await;

    let url = exec_url(&mut c, &id, &["echo", "hello"], false, false).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let out = client::exec_spdy(&url, SessionOptions::output())
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.error, br#"{"status":"Success"}"#);

    let url = exec_url(
        &mut c,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        false,
        false,
    )
    .await;
    let out = client::exec_spdy(&url, SessionOptions::output())
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let status = out.status().unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(out.exit_code(), Some(7), "{status}");

    // stdin reaches `cat`, and its EOF (empty DATA+FIN) ends it.
    let url = exec_url(&mut c, &id, &["cat"], true, false).await;
    let out = client::exec_spdy(
        &url,
        SessionOptions {
            stdin: Some(b"hello\nworld\n".to_vec()),
            close_stdin: true,
            stdout: true,
            stderr: true,
            ..SessionOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"hello\nworld\n");
    assert_eq!(out.exit_code(), Some(0));

    // The URL was single-use.
    let err = client::exec_spdy(&url, SessionOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, client::ClientError::Http { status: 404, .. }),
        "{err:?}"
    );
    // ExecSync keeps working beside the streaming server.
    let r = sluice_e2e::containers::exec_ok(&mut c, &id, &["echo", "sync"]).await;
    assert_eq!(r, "sync\n");

    // Sessions and the refused reuse are counted.
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{metrics_port}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        value("sluice_streaming_sessions_total{operation=\"exec\",transport=\"spdy\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(
        value("sluice_streaming_refused_total{code=\"404\"}"),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn exec_with_a_tty_applies_resizes() {
    let (w, _pod, id) = world_with_container("sleep 3600").await;
    let mut c = w.rt().await;
    // Wait (bounded) until the terminal has the size the client sent, then print it.
    let script = "i=0; while [ $i -lt 100 ]; do s=$(stty size); \
                  [ \"$s\" = \"30 100\" ] && break; i=$((i+1)); sleep 0.1; done; echo \"size=$s\"";
    let url = exec_url(&mut c, &id, &["sh", "-c", script], false, true).await;
    let out = client::exec_spdy(
        &url,
        SessionOptions {
            stdout: true,
            tty: true,
            resizes: vec![(100, 30)],
            ..SessionOptions::default()
        },
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("size=30 100"), "{text:?}");
    assert_eq!(out.exit_code(), Some(0), "{:?}", out.status());
    assert!(out.stderr.is_empty());
}

#[tokio::test]
async fn client_disconnect_kills_only_the_execd_process() {
    let (w, _pod, id) = world_with_container("sleep 3600").await;
    let mut c = w.rt().await;
    let url = exec_url(&mut c, &id, &["sleep", "4242"], false, false).await;
    let (handle, _incoming, protocol) = client::connect_spdy(&url, client::CRICTL_PROTOCOLS)
        .await
        .unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    let streams = client::open_streams(&handle, &["error", "stdout", "stderr"])
        .await
        .unwrap();
    std::mem::forget(streams);
    let deadline = Instant::now() + SECS30;
    let pid = loop {
        if let Some(&pid) = pids_with_cmdline(&["sleep", "4242"]).first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the exec'd sleep never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started = start_time(pid);
    // Drop the connection without any SPDY goodbye, like a killed crictl.
    handle.close().await;
    assert_eq!(
        wait_gone(pid, started, SECS30).await,
        None,
        "exec'd process {pid} survived the disconnect"
    );
    let st = status(&mut c, &id).await.status.unwrap();
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
}

#[tokio::test]
async fn attach_streams_output_and_detach_leaves_the_container_running() {
    let (w, _pod, id) =
        world_with_container("i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done")
            .await;
    let mut c = w.rt().await;
    let url = attach_url(&mut c, &id).await;
    let (handle, _incoming, _) = client::connect_spdy(&url, client::CRICTL_PROTOCOLS)
        .await
        .unwrap();
    let mut streams = client::open_streams(&handle, &["error", "stdout", "stderr"])
        .await
        .unwrap();
    let stdout = streams.remove(1);
    let (mut r, _w) = stdout.into_split();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + SECS30;
    while seen.matches("tick ").count() < 3 {
        let n = tokio::time::timeout_at(deadline.into(), r.read(&mut buf))
            .await
            .expect("no attach output in time")
            .unwrap();
        assert!(n > 0, "stdout ended early: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    handle.close().await;
    // Still running after the client detached, and still printing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = status(&mut c, &id).await.status.unwrap();
    assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{seen}");

    // Attach again, then stop the container: the session ends with Success.
    let url = attach_url(&mut c, &id).await;
    let session =
        tokio::spawn(async move { client::exec_spdy(&url, SessionOptions::output()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let out = tokio::time::timeout(SECS30, session)
        .await
        .expect("attach did not end when the container stopped")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("tick"));
    assert_eq!(out.exit_code(), Some(0), "{:?}", out.status());
}

/// An HTTP/1.0 GET over any byte stream; returns the response.
async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
) -> String {
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(SECS30, s.read_to_end(&mut out))
        .await
        .expect("http response in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn web_pod() -> (World, Pod, String) {
    world_with_container(
        "mkdir -p /w80 /w81; echo port-eighty > /w80/index.html; echo port-81 > /w81/index.html; \
         httpd -p 80 -h /w80; httpd -p 81 -h /w81; sleep 3600",
    )
    .await
}

async fn port_forward_url(c: &mut Runtime, pod: &Pod, ports: &[i32]) -> String {
    c.port_forward(PortForwardRequest {
        pod_sandbox_id: pod.id.clone(),
        port: ports.to_vec(),
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

/// Waits until both httpd instances answer inside the pod.
async fn wait_web(c: &mut Runtime, id: &str) {
    let deadline = Instant::now() + SECS30;
    loop {
        let r = sluice_e2e::containers::exec(
            c,
            id,
            &[
                "sh",
                "-c",
                "wget -q -O- http://127.0.0.1:80/ && wget -q -O- http://127.0.0.1:81/",
            ],
            10,
        )
        .await
        .unwrap();
        if r.exit_code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "httpd never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn port_forward_over_spdy_two_ports_parallel_connections() {
    let (w, pod, id) = web_pod().await;
    let mut c = w.rt().await;
    wait_web(&mut c, &id).await;
    let url = port_forward_url(&mut c, &pod, &[]).await;
    let (handle, _incoming, protocol) = client::connect_spdy(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(protocol, "portforward.k8s.io");
    let mut tasks = Vec::new();
    for (request_id, port) in [(0, 80), (1, 81), (2, 80), (3, 81)] {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let (data, _error) = client::port_forward_spdy(&handle, port, request_id)
                .await
                .unwrap();
            let (mut r, mut wr) = data.into_split();
            wr.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(SECS30, r.read_to_end(&mut out))
                .await
                .expect("response in time")
                .unwrap();
            (port, String::from_utf8_lossy(&out).into_owned())
        }));
    }
    for t in tasks {
        let (port, resp) = t.await.unwrap();
        let want = if port == 80 { "port-eighty" } else { "port-81" };
        assert!(
            resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
            "{port}: {resp}"
        );
        assert!(resp.contains(want), "{port}: {resp}");
    }
    // A closed port is reported on the error stream, and the session survives it.
    let (data, error) = client::port_forward_spdy(&handle, 9, 4).await.unwrap();
    let (mut er, _ew) = error.into_split();
    let mut msg = Vec::new();
    tokio::time::timeout(SECS30, er.read_to_end(&mut msg))
        .await
        .unwrap()
        .unwrap();
    let msg = String::from_utf8_lossy(&msg);
    assert!(msg.contains("port 9") && msg.contains(&pod.id), "{msg}");
    drop(data);
    let (data, _error) = client::port_forward_spdy(&handle, 80, 5).await.unwrap();
    let (mut r, mut wr) = data.into_split();
    wr.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    assert!(String::from_utf8_lossy(&out).contains("port-eighty"));
    handle
        .goaway(streaming::spdy::GoAwayStatus::Ok)
        .await
        .unwrap();
    tokio::time::timeout(SECS30, handle.closed())
        .await
        .expect("the server closes after the client's GOAWAY");
}

async fn ws_connect(
    url: &str,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    ws
}

/// Collects channel messages until the server closes; returns (stdout, stderr, error).
async fn ws_collect<S>(ws: &mut S) -> (Vec<u8>, Vec<u8>, Vec<u8>)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    while let Ok(Some(msg)) = tokio::time::timeout(SECS30, ws.next()).await {
        match msg {
            Ok(Message::Binary(b)) if !b.is_empty() => match b[0] {
                1 => out.extend_from_slice(&b[1..]),
                2 => err.extend_from_slice(&b[1..]),
                3 => status.extend_from_slice(&b[1..]),
                _ => {}
            },
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    (out, err, status)
}

#[tokio::test]
async fn exec_over_websocket_v4_and_v5_with_stdin_close() {
    let (w, _pod, id) = world_with_container("sleep 3600").await;
    let mut c = w.rt().await;

    // v4: exit code on the error channel.
    let url = exec_url(
        &mut c,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        false,
        false,
    )
    .await;
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    let (out, err, status) = ws_collect(&mut ws).await;
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");

    // v5: stdin data, then the close signal for channel 0 ends `cat`.
    let url = exec_url(&mut c, &id, &["cat"], true, false).await;
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    ws.send(Message::Binary([&[0u8][..], b"via v5\n"].concat().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .await
        .unwrap();
    let (out, _err, status) = ws_collect(&mut ws).await;
    assert_eq!(out, b"via v5\n");
    assert_eq!(status, br#"{"status":"Success"}"#);
}

#[tokio::test]
async fn port_forward_over_websocket_channels_and_spdy_tunnel() {
    let (w, pod, id) = web_pod().await;
    let mut c = w.rt().await;
    wait_web(&mut c, &id).await;

    // Channel framing: data on channel 0 (first port), error on 1.
    let url = port_forward_url(&mut c, &pod, &[81]).await;
    let mut ws = ws_connect(&format!("{url}?port=81"), "v4.channel.k8s.io").await;
    ws.send(Message::Binary(
        [&[0u8][..], b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n"]
            .concat()
            .into(),
    ))
    .await
    .unwrap();
    let mut data = Vec::new();
    let mut announced = 0;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(SECS30, ws.next()).await {
        match msg {
            Message::Binary(b) if b.first() == Some(&0) => {
                if announced < 1 && b.len() == 3 {
                    // The port announcement: 81 little-endian.
                    assert_eq!(&b[1..], &81u16.to_le_bytes());
                    announced += 1;
                } else {
                    data.extend_from_slice(&b[1..]);
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("port-81"), "{text}");

    // SPDY tunnelled in WebSocket binary messages (client-go's port-forward over WebSocket).
    let url = port_forward_url(&mut c, &pod, &[80]).await;
    let ws = ws_connect(&url, "SPDY/3.1+portforward.k8s.io").await;
    let bytes = streaming::ws::WsByteStream::new(ws);
    let (handle, _incoming) = streaming::spdy::session::spawn(
        bytes,
        streaming::spdy::Role::Client,
        streaming::spdy::SessionConfig::default(),
    );
    let (data, _error) = client::port_forward_spdy(&handle, 80, 0).await.unwrap();
    let mut data = DataStream(data.into_split());
    let resp = http_get(&mut data, "/").await;
    assert!(resp.contains("port-eighty"), "{resp}");
    handle.close().await;
}

/// A SPDY stream as one AsyncRead + AsyncWrite.
struct DataStream((streaming::spdy::StreamReader, streaming::spdy::StreamWriter));

impl tokio::io::AsyncRead for DataStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for DataStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0.1).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0.1).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0.1).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn streaming_rpcs_validate_and_check_state() {
    let (w, pod, id) = world_with_container("sleep 3600").await;
    let mut c = w.rt().await;
    let err = c
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("stderr:"), "{}", err.message());
    let err = c
        .exec(ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..ExecRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = c
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![70000],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("port[0]:"), "{}", err.message());
    c.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let err = c
        .attach(AttachRequest {
            container_id: id.clone(),
            stdout: true,
            ..AttachRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}
