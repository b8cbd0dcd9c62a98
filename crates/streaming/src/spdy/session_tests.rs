use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderBlock {
    let mut h = HeaderBlock::new();
    for (n, v) in pairs {
        h.push(n, v.as_bytes().to_vec()).unwrap();
    }
    h
}

fn pair() -> ((SessionHandle, Incoming), (SessionHandle, Incoming)) {
    let (a, b) = tokio::io::duplex(8 * 1024);
    (
        spawn(a, Role::Client, SessionConfig::default()),
        spawn(b, Role::Server, SessionConfig::default()),
    )
}

#[tokio::test]
async fn streams_carry_data_both_ways_with_fin() {
    let ((client, _cin), (_server, mut sin)) = pair();
    let server_task = tokio::spawn(async move {
        let inc = sin.accept().await.unwrap();
        assert_eq!(inc.header("streamtype"), Some("stdin"));
        assert_eq!(inc.id(), 1);
        let stream = inc.accept().await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        // Echo it back in one write larger than a DATA frame, then FIN.
        let big = got.repeat(20_000);
        w.send(&big, true).await.unwrap();
        got
    });
    let stream = client
        .open(headers(&[("streamtype", "stdin")]))
        .await
        .unwrap();
    let (mut r, mut w) = stream.into_split();
    w.send(b"hello ", false).await.unwrap();
    w.send(b"world", true).await.unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    assert_eq!(server_task.await.unwrap(), b"hello world");
    assert_eq!(back, b"hello world".repeat(20_000));
}

#[tokio::test]
async fn shutdown_resets_open_streams_then_goes_away() {
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let (server, mut sin) = spawn(a, Role::Server, SessionConfig::default());
    let mut enc = FrameEncoder::new().unwrap();
    let mut out = BytesMut::new();
    for (id, t) in [(1, "error"), (3, "stdout")] {
        enc.encode(
            &Frame::SynStream(SynStream {
                stream_id: id,
                associated_stream_id: 0,
                priority: 0,
                slot: 0,
                flags: Flags::NONE,
                headers: headers(&[("streamtype", t)]),
            }),
            &mut out,
        )
        .unwrap();
    }
    raw.write_all(&out).await.unwrap();
    let e = sin.accept().await.unwrap().accept().await.unwrap();
    let o = sin.accept().await.unwrap().accept().await.unwrap();
    let (_er, mut ew) = e.into_split();
    let (_or, mut ow) = o.into_split();
    ow.send(b"out", true).await.unwrap();
    ew.send(b"{\"status\":\"Success\"}", false).await.unwrap();
    server.shutdown().await;
    let mut wire = Vec::new();
    raw.read_to_end(&mut wire).await.unwrap();
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::from(&wire[..]);
    let mut frames = Vec::new();
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        frames.push(f);
    }
    let kinds: Vec<String> = frames
        .iter()
        .map(|f| format!("{}:{}", f.type_name(), f.stream_id().unwrap_or(0)))
        .collect();
    // Replies, stdout data + FIN, status, then RST only for the error stream, then GOAWAY.
    assert_eq!(
        kinds,
        [
            "SYN_REPLY:1",
            "SYN_REPLY:3",
            "DATA:3",
            "DATA:3",
            "DATA:1",
            "RST_STREAM:1",
            "GOAWAY:0"
        ],
        "{frames:?}"
    );
    assert!(matches!(
        frames.last(),
        Some(Frame::GoAway {
            last_good_stream_id: 3,
            status: GoAwayStatus::Ok
        })
    ));
    assert_eq!(server.end(), Some(SessionEnd::Local));
}

#[tokio::test]
async fn pings_from_the_peer_are_echoed() {
    let (a, mut raw) = tokio::io::duplex(1024);
    let (_server, _sin) = spawn(a, Role::Server, SessionConfig::default());
    // Split across writes like Go's framer.
    let ping = [0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1];
    for piece in [&ping[..2], &ping[2..4], &ping[4..8], &ping[8..]] {
        raw.write_all(piece).await.unwrap();
    }
    let mut back = [0u8; 12];
    raw.read_exact(&mut back).await.unwrap();
    assert_eq!(back, ping);
}

#[tokio::test]
async fn malformed_frame_gets_goaway_protocol_error_and_close() {
    let (a, mut raw) = tokio::io::duplex(1024);
    let (server, _sin) = spawn(a, Role::Server, SessionConfig::default());
    // Version 2 control frame.
    raw.write_all(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    let mut wire = Vec::new();
    raw.read_to_end(&mut wire).await.unwrap();
    let mut buf = BytesMut::from(&wire[..]);
    let f = FrameDecoder::new().decode(&mut buf).unwrap();
    assert_eq!(
        f,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::ProtocolError
        })
    );
    server.closed().await;
    assert!(matches!(server.end(), Some(SessionEnd::Protocol(_))));
}

#[tokio::test]
async fn reset_by_peer_fails_writes_and_reads() {
    let ((client, _cin), (_server, mut sin)) = pair();
    let opener = tokio::spawn(async move {
        let s = client
            .open(headers(&[("streamtype", "data")]))
            .await
            .unwrap();
        let id = s.id();
        (client, s, id)
    });
    let inc = sin.accept().await.unwrap();
    let stream = inc.accept().await.unwrap();
    let (client, cs, id) = opener.await.unwrap();
    client.reset(id, RstStatus::Cancel).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let mut buf = Vec::new();
    let err = r.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    let err = w.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    drop(cs);
}

#[tokio::test(start_paused = true)]
async fn idle_session_times_out() {
    let (a, _raw) = tokio::io::duplex(1024);
    let cfg = SessionConfig {
        idle_timeout: Some(Duration::from_secs(60)),
        ..SessionConfig::default()
    };
    let (server, _sin) = spawn(a, Role::Server, cfg);
    tokio::time::timeout(Duration::from_secs(120), server.closed())
        .await
        .unwrap();
    assert_eq!(server.end(), Some(SessionEnd::IdleTimeout));
}

#[tokio::test]
async fn peer_goaway_ends_incoming() {
    let ((client, _cin), (_server, mut sin)) = pair();
    client.goaway(GoAwayStatus::Ok).await.unwrap();
    assert!(sin.accept().await.is_none());
}

#[tokio::test]
async fn dropping_every_handle_ends_the_session() {
    let (a, mut raw) = tokio::io::duplex(1024);
    let (server, sin) = spawn(a, Role::Server, SessionConfig::default());
    let done = server.done.clone();
    drop(server);
    drop(sin);
    // The peer sees the connection close.
    let mut wire = Vec::new();
    raw.read_to_end(&mut wire).await.unwrap();
    assert!(wire.is_empty());
    done.cancelled().await;
}
