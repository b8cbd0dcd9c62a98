//! The streaming server over HTTPS: a self-signed certificate made by the openssl CLI, a
//! rustls client trusting exactly it, and a SPDY exec through the TLS connection.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use streaming::client::{self, SessionOptions, Url};
use streaming::runtime::BoxFuture;
use streaming::spdy::{Role, SessionConfig};
use streaming::{ExecRequest, ServerConfig, StreamError, StreamIo, StreamRuntime, StreamServer};
use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls;

/// Writes "tls ok\n" and exits 0.
#[derive(Debug)]
struct Hello;

impl StreamRuntime for Hello {
    fn exec<'a>(
        &'a self,
        _req: &'a ExecRequest,
        mut io: StreamIo,
    ) -> BoxFuture<'a, Result<i32, StreamError>> {
        Box::pin(async move {
            if let Some(out) = io.stdout.as_mut() {
                out.write_all(b"tls ok\n")
                    .await
                    .map_err(|e| StreamError::Internal(e.to_string()))?;
            }
            Ok(0)
        })
    }
    fn attach<'a>(
        &'a self,
        _req: &'a streaming::AttachRequest,
        _io: StreamIo,
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        Box::pin(async { Err(StreamError::Internal("no attach here".into())) })
    }
    fn port_forward<'a>(
        &'a self,
        _pod: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, StreamError>> {
        Box::pin(async { Err(StreamError::Internal("no port-forward here".into())) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=sluice-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // An end-entity certificate (rustls refuses a CA certificate as the server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "keyUsage=digitalSignature"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt install openssl)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let server = StreamServer::start(
        ServerConfig {
            tls: Some((cert.clone(), key)),
            ..ServerConfig::default()
        },
        Arc::new(Hello),
    )
    .await
    .unwrap();
    assert!(server.base_url().starts_with("https://127.0.0.1:"));
    let url = server
        .exec_url(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["hello".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    assert!(url.starts_with("https://"), "{url}");

    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();

    let parsed = Url::parse(&url).unwrap();
    let req = client::spdy_upgrade_request(&parsed, client::CRICTL_PROTOCOLS);
    let (head, body) = client::http_exchange(&mut tls, &req).await.unwrap();
    assert_eq!(head.status, 101, "{body}");
    let (handle, _incoming) =
        streaming::spdy::session::spawn(tls, Role::Client, SessionConfig::default());
    let out = client::run_remote_command(
        &handle,
        SessionOptions {
            stdout: true,
            ..SessionOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(out.stdout, b"tls ok\n");
    assert_eq!(out.exit_code(), Some(0));

    // Plain HTTP to the HTTPS port gets nothing useful.
    let plain = client::exec_spdy(
        &url.replacen("https://", "http://", 1),
        SessionOptions::default(),
    )
    .await;
    assert!(plain.is_err());
}
