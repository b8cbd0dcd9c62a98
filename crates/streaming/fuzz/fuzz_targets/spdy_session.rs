//! Arbitrary bytes from a peer into a server-role SPDY session over an in-memory pipe.
//!
//! The first byte picks the size of the pieces the bytes are written in; the rest is what
//! the "client" sends, followed by EOF. Every stream the peer opens is accepted, and each
//! one echoes what it receives, the way the exec and port-forward handlers use streams.
//! The session must end (it reaches EOF or rejects the input) without panicking and
//! without hanging: the clock is paused, so a session that stops making progress runs into
//! the timeout at once and the target panics.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use streaming::spdy::{self, Role, SessionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let (client, server) = tokio::io::duplex(8 * 1024);
        let cfg = SessionConfig {
            max_frame_len: 256 * 1024,
            max_header_block: 64 * 1024,
            max_streams: 64,
            ..SessionConfig::default()
        };
        let (handle, mut incoming) = spdy::session::spawn(server, Role::Server, cfg);
        let (mut client_rd, mut client_wr) = tokio::io::split(client);
        let input = input.to_vec();
        let feed = tokio::spawn(async move {
            for piece in input.chunks(chunk) {
                if client_wr.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = client_wr.shutdown().await;
        });
        // Whatever the session answers is read and dropped, so its writer never stalls.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while matches!(client_rd.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let accept = tokio::spawn(async move {
            while let Some(inc) = incoming.accept().await {
                let Ok(stream) = inc.accept().await else {
                    break;
                };
                tokio::spawn(async move {
                    let (mut rd, mut wr) = stream.into_split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                    let _ = wr.shutdown().await;
                });
            }
        });
        let ended = tokio::time::timeout(Duration::from_secs(600), handle.closed()).await;
        assert!(ended.is_ok(), "the SPDY session hung on this input");
        let _ = feed.await;
        accept.abort();
        drain.abort();
    });
});
