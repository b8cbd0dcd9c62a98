//! A SPDY/3.1 session: many streams over one connection (draft 3.1, sections 2.1–2.4).
//!
//! [`spawn`] starts a driver task that owns the connection: it decodes frames as bytes
//! arrive, routes DATA to the stream it belongs to, answers PINGs, and writes every outgoing
//! frame in the order it was queued. One queue for all outgoing frames is what makes the
//! CRI teardown correct: everything a stream writer has accepted is on the wire before a
//! later status, RST_STREAM or GOAWAY.
//!
//! What real Kubernetes clients need, from the captures in `shared/spdy-vectors`:
//!
//! * No flow control is enforced. client-go never sends WINDOW_UPDATE or SETTINGS, and
//!   moves far more than the 64 KiB default window on one stream, so a session that honoured
//!   windows would stall it. WINDOW_UPDATE and SETTINGS are accepted and ignored.
//!   Back-pressure comes from the bounded per-stream receive queues instead: a stream whose
//!   reader is slow holds up reading the connection (as Go's spdystream does).
//! * Streams are opened by the peer and answered with an empty SYN_REPLY by [`Incoming`];
//!   [`SessionHandle::open`] is the client side (used by tests and tools).
//! * PINGs from the peer are echoed at once; they do not count as activity for the idle
//!   timeout (client-go pings every 5 s on an otherwise idle session).
//! * [`SessionHandle::shutdown`] ends a session the way CRI-O does: RST_STREAM (CANCEL) for
//!   every stream not yet closed by us, GOAWAY (OK) naming the last peer stream, TCP FIN.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSender};

use super::{
    DataFrame, Flags, Frame, FrameDecoder, FrameEncoder, GoAwayStatus, HeaderBlock, MAX_STREAM_ID,
    RstStatus, SpdyError, SynReply, SynStream,
};

/// Which end of the connection this session is. It decides stream id parity: clients open
/// odd streams, servers even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Limits of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame payload accepted from the peer.
    pub max_frame_len: usize,
    /// Largest decompressed header block accepted from the peer.
    pub max_header_block: usize,
    /// Streams open at once; more are refused with RST_STREAM (REFUSED_STREAM).
    pub max_streams: usize,
    /// Largest DATA payload this side sends (client-go and CRI-O use 32 KiB).
    pub max_data_frame: usize,
    /// End the session when no stream was opened and no DATA moved for this long.
    pub idle_timeout: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_frame_len: 1 << 20,
            max_header_block: 64 * 1024,
            max_streams: 1000,
            max_data_frame: 32 * 1024,
            idle_timeout: None,
        }
    }
}

/// Received DATA chunks a stream buffers before the connection reader waits for it.
const STREAM_QUEUE: usize = 16;
/// Frames queued for the writer.
const OUT_QUEUE: usize = 64;
/// Streams the peer opened that were not accepted yet.
const ACCEPT_QUEUE: usize = 64;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// This side shut it down ([`SessionHandle::shutdown`] or [`SessionHandle::close`]).
    Local,
    /// The peer closed the connection.
    PeerClosed,
    /// Nothing happened for the configured idle timeout.
    IdleTimeout,
    /// The peer sent something this codec or session cannot accept; GOAWAY was sent.
    Protocol(String),
    /// Reading or writing the connection failed.
    Io(String),
}

enum Out {
    Frame(Frame),
    /// RST every stream we have not closed, GOAWAY OK, close.
    Shutdown,
    /// Flush what is queued and close without further frames.
    Close,
}

#[derive(Debug)]
struct Slot {
    /// Sender of the stream's receive queue; `None` once the peer closed its side.
    data: Option<mpsc::Sender<io::Result<Bytes>>>,
    /// A local `open` waiting for the SYN_REPLY.
    reply: Option<oneshot::Sender<Result<(), RstStatus>>>,
    /// We sent FIN or RST_STREAM.
    local_closed: bool,
    /// The peer reset it: writes fail from now on.
    reset: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Shared {
    streams: HashMap<u32, Slot>,
    next_local_id: u32,
    last_remote_id: u32,
    goaway_sent: bool,
    goaway_received: bool,
    last_activity: Instant,
    end: Option<SessionEnd>,
}

impl Shared {
    fn slot_done(&mut self, id: u32) {
        if let Some(s) = self.streams.get(&id)
            && s.data.is_none()
            && s.local_closed
            && s.reply.is_none()
        {
            self.streams.remove(&id);
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves plain bookkeeping behind, still usable.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Controls a running session; cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    out: mpsc::Sender<Out>,
    shared: Arc<Mutex<Shared>>,
    done: CancellationToken,
    role: Role,
    max_data_frame: usize,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::Frame(fr) => write!(f, "Frame({})", fr.type_name()),
            Out::Shutdown => f.write_str("Shutdown"),
            Out::Close => f.write_str("Close"),
        }
    }
}

/// Streams the peer opens, in order. Ends (`None`) when the session ends or the peer sent
/// GOAWAY.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<IncomingStream>,
}

impl Incoming {
    /// The next stream the peer opened.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        self.rx.recv().await
    }
}

/// A stream the peer opened (SYN_STREAM received), not yet answered.
#[derive(Debug)]
pub struct IncomingStream {
    id: u32,
    headers: HeaderBlock,
    /// The peer sent FIN with the SYN_STREAM: it will send no data.
    remote_fin: bool,
    rx: mpsc::Receiver<io::Result<Bytes>>,
    reset: Arc<AtomicBool>,
    handle: SessionHandle,
}

impl IncomingStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn headers(&self) -> &HeaderBlock {
        &self.headers
    }

    /// A header value as text (names are lower case on the wire).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    pub fn remote_fin(&self) -> bool {
        self.remote_fin
    }

    /// Answers with an empty SYN_REPLY and returns the open stream.
    pub async fn accept(self) -> Result<Stream, SessionClosed> {
        let reply = Frame::SynReply(SynReply {
            stream_id: self.id,
            flags: Flags::default(),
            headers: HeaderBlock::new(),
        });
        self.handle.send(Out::Frame(reply)).await?;
        Ok(Stream::new(
            self.id,
            self.headers,
            self.rx,
            self.reset,
            &self.handle,
        ))
    }

    /// Refuses the stream with RST_STREAM.
    pub async fn refuse(self, status: RstStatus) -> Result<(), SessionClosed> {
        self.handle.reset(self.id, status).await
    }
}

/// The session has ended; nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the spdy session has ended")]
pub struct SessionClosed;

/// Opening a stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the spdy session has ended")]
    Closed,
    #[error("the peer refused the stream: {0:?}")]
    Refused(RstStatus),
    #[error("the peer sent GOAWAY")]
    GoingAway,
    #[error("no stream ids left")]
    IdsExhausted,
}

impl From<SessionClosed> for OpenError {
    fn from(_: SessionClosed) -> Self {
        OpenError::Closed
    }
}

/// Starts a session over `io` and returns its handle and the streams the peer opens.
pub fn spawn<T>(io: T, role: Role, cfg: SessionConfig) -> (SessionHandle, Incoming)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let (in_tx, in_rx) = mpsc::channel(ACCEPT_QUEUE);
    let shared = Arc::new(Mutex::new(Shared {
        streams: HashMap::new(),
        next_local_id: match role {
            Role::Client => 1,
            Role::Server => 2,
        },
        last_remote_id: 0,
        goaway_sent: false,
        goaway_received: false,
        last_activity: Instant::now(),
        end: None,
    }));
    let handle = SessionHandle {
        out: out_tx,
        shared: shared.clone(),
        done: CancellationToken::new(),
        role,
        max_data_frame: cfg.max_data_frame.max(1),
    };
    let driver = Driver {
        out: handle.out.downgrade(),
        shared,
        done: handle.done.clone(),
        role,
        max_data_frame: handle.max_data_frame,
        cfg,
        incoming: Some(in_tx),
    };
    tokio::spawn(driver.run(io, out_rx));
    (handle, Incoming { rx: in_rx })
}

impl SessionHandle {
    async fn send(&self, out: Out) -> Result<(), SessionClosed> {
        self.out.send(out).await.map_err(|_| SessionClosed)
    }

    /// Opens a stream (SYN_STREAM) and waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: HeaderBlock) -> Result<Stream, OpenError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
        let reset = Arc::new(AtomicBool::new(false));
        let id = {
            let mut sh = lock(&self.shared);
            if sh.end.is_some() {
                return Err(OpenError::Closed);
            }
            if sh.goaway_received {
                return Err(OpenError::GoingAway);
            }
            let id = sh.next_local_id;
            if id > MAX_STREAM_ID {
                return Err(OpenError::IdsExhausted);
            }
            sh.next_local_id += 2;
            sh.streams.insert(
                id,
                Slot {
                    data: Some(data_tx),
                    reply: Some(reply_tx),
                    local_closed: false,
                    reset: reset.clone(),
                },
            );
            id
        };
        let syn = Frame::SynStream(SynStream {
            stream_id: id,
            associated_stream_id: 0,
            priority: 0,
            slot: 0,
            flags: Flags::default(),
            headers: headers.clone(),
        });
        self.send(Out::Frame(syn)).await?;
        match reply_rx.await {
            Ok(Ok(())) => Ok(Stream::new(id, headers, data_rx, reset, self)),
            Ok(Err(status)) => Err(OpenError::Refused(status)),
            Err(_) => Err(OpenError::Closed),
        }
    }

    /// Sends RST_STREAM for `id`.
    pub async fn reset(&self, id: u32, status: RstStatus) -> Result<(), SessionClosed> {
        self.send(Out::Frame(Frame::RstStream {
            stream_id: id,
            status,
        }))
        .await
    }

    /// Sends a PING with `id` (use the parity of this side: odd for clients).
    pub async fn ping(&self, id: u32) -> Result<(), SessionClosed> {
        self.send(Out::Frame(Frame::Ping { id })).await
    }

    /// Sends GOAWAY: no new streams from the peer will be accepted.
    pub async fn goaway(&self, status: GoAwayStatus) -> Result<(), SessionClosed> {
        let last = lock(&self.shared).last_remote_id;
        self.send(Out::Frame(Frame::GoAway {
            last_good_stream_id: last,
            status,
        }))
        .await
    }

    /// Ends the session as CRI-O does after an exec: RST_STREAM (CANCEL) for every stream
    /// this side has not closed, GOAWAY (OK), close. Everything queued before goes first.
    /// Returns when the connection is closed.
    pub async fn shutdown(&self) {
        if self.send(Out::Shutdown).await.is_ok() {
            self.done.cancelled().await;
        }
    }

    /// Writes what is queued and closes the connection without further frames.
    pub async fn close(&self) {
        if self.send(Out::Close).await.is_ok() {
            self.done.cancelled().await;
        }
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) {
        self.done.cancelled().await;
    }

    /// Why the session ended, once it has.
    pub fn end(&self) -> Option<SessionEnd> {
        lock(&self.shared).end.clone()
    }

    /// The peer sent GOAWAY.
    pub fn goaway_received(&self) -> bool {
        lock(&self.shared).goaway_received
    }

    /// Streams currently tracked (open in at least one direction).
    pub fn open_streams(&self) -> usize {
        lock(&self.shared).streams.len()
    }

    pub fn role(&self) -> Role {
        self.role
    }
}

/// An open stream: a byte reader (the peer's DATA; EOF at its FIN) and a writer (our DATA;
/// `shutdown` sends FIN).
#[derive(Debug)]
pub struct Stream {
    id: u32,
    headers: HeaderBlock,
    reader: StreamReader,
    writer: StreamWriter,
}

impl Stream {
    fn new(
        id: u32,
        headers: HeaderBlock,
        rx: mpsc::Receiver<io::Result<Bytes>>,
        reset: Arc<AtomicBool>,
        handle: &SessionHandle,
    ) -> Self {
        Stream {
            id,
            headers,
            reader: StreamReader {
                rx,
                pending: Bytes::new(),
            },
            writer: StreamWriter {
                id,
                tx: PollSender::new(handle.out.clone()),
                handle: handle.clone(),
                reset,
                fin_sent: false,
            },
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn headers(&self) -> &HeaderBlock {
        &self.headers
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// Splits into the receiving and the sending half.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct StreamReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    pending: Bytes,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// The sending half of a stream. Each write becomes DATA frames of at most the session's
/// `max_data_frame` bytes, queued in order with every other frame of the session.
#[derive(Debug)]
pub struct StreamWriter {
    id: u32,
    tx: PollSender<Out>,
    handle: SessionHandle,
    reset: Arc<AtomicBool>,
    fin_sent: bool,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends RST_STREAM with `status`; later writes fail.
    pub async fn reset(&mut self, status: RstStatus) -> Result<(), SessionClosed> {
        self.fin_sent = true;
        self.handle.reset(self.id, status).await
    }

    /// Sends `data` in DATA frames, then FIN if `fin` (a convenience over `AsyncWrite`).
    pub async fn send(&mut self, data: &[u8], fin: bool) -> io::Result<()> {
        self.write_all(data).await?;
        if fin {
            self.shutdown().await?;
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.reset.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("spdy stream {} was reset by the peer", self.id),
            ));
        }
        if self.fin_sent {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("spdy stream {} is closed for writing", self.id),
            ));
        }
        Ok(())
    }

    fn poll_queue(&mut self, cx: &mut Context<'_>, frame: DataFrame) -> Poll<io::Result<()>> {
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed_err())?;
        self.tx
            .send_item(Out::Frame(Frame::Data(frame)))
            .map_err(|_| closed_err())?;
        Poll::Ready(Ok(()))
    }
}

fn closed_err() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the spdy session has ended")
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(self.handle.max_data_frame);
        let frame = DataFrame {
            stream_id: self.id,
            flags: Flags::default(),
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        ready!(self.poll_queue(cx, frame))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued frames are written by the session in order; there is nothing to wait for.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fin_sent || self.reset.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let frame = DataFrame {
            stream_id: self.id,
            flags: Flags::FIN,
            data: Bytes::new(),
        };
        ready!(self.poll_queue(cx, frame))?;
        self.fin_sent = true;
        Poll::Ready(Ok(()))
    }
}

struct Driver {
    /// Weak, so the session ends once every handle and stream of its owner is gone.
    out: mpsc::WeakSender<Out>,
    shared: Arc<Mutex<Shared>>,
    done: CancellationToken,
    role: Role,
    max_data_frame: usize,
    cfg: SessionConfig,
    incoming: Option<mpsc::Sender<IncomingStream>>,
}

/// What the reader loop decided.
enum ReadEnd {
    Eof,
    /// Every handle and stream of the session's owner is gone.
    Abandoned,
    Protocol(String),
    Io(io::Error),
}

impl Driver {
    async fn run<T>(mut self, io: T, out_rx: mpsc::Receiver<Out>)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let shared = self.shared.clone();
        let out = self.out.clone();
        let idle = self.cfg.idle_timeout;
        let writer = write_loop(wr, out_rx, shared.clone());
        tokio::pin!(writer);
        let end = {
            let reader = self.read_loop(rd);
            tokio::pin!(reader);
            tokio::select! {
                end = &mut reader => match end {
                    ReadEnd::Eof => SessionEnd::PeerClosed,
                    ReadEnd::Abandoned => SessionEnd::Local,
                    ReadEnd::Io(e) => SessionEnd::Io(e.to_string()),
                    ReadEnd::Protocol(msg) => {
                        tracing::debug!(error = %msg, "spdy protocol error; sending GOAWAY");
                        if let Some(out) = out.upgrade() {
                            let _ = out.try_send(Out::Frame(Frame::GoAway {
                                last_good_stream_id: lock(&shared).last_remote_id,
                                status: GoAwayStatus::ProtocolError,
                            }));
                            let _ = out.try_send(Out::Close);
                        }
                        // Give the writer a moment to send the GOAWAY.
                        let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
                        SessionEnd::Protocol(msg)
                    }
                },
                end = &mut writer => end,
                () = idle_watch(shared.clone(), idle) => SessionEnd::IdleTimeout,
            }
        };
        tracing::debug!(?end, "spdy session ended");
        {
            let mut sh = lock(&shared);
            sh.end.get_or_insert(end);
            // Readers see EOF, pending opens fail.
            sh.streams.clear();
        }
        self.incoming = None;
        self.done.cancel();
    }

    async fn read_loop<R: AsyncRead>(&mut self, rd: R) -> ReadEnd {
        tokio::pin!(rd);
        let mut decoder =
            FrameDecoder::with_limits(self.cfg.max_frame_len, self.cfg.max_header_block);
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if let Err(e) = self.on_frame(frame).await {
                            return e;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return ReadEnd::Protocol(spdy_msg(&e)),
                }
            }
            buf.reserve(16 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return ReadEnd::Eof,
                Ok(_) => {}
                Err(e) => return ReadEnd::Io(e),
            }
        }
    }

    fn peer_parity(&self, id: u32) -> bool {
        match self.role {
            Role::Server => !id.is_multiple_of(2),
            Role::Client => id.is_multiple_of(2),
        }
    }

    /// A handle for the session, unless its owner has dropped every one.
    fn handle(&self) -> Option<SessionHandle> {
        Some(SessionHandle {
            out: self.out.upgrade()?,
            shared: self.shared.clone(),
            done: self.done.clone(),
            role: self.role,
            max_data_frame: self.max_data_frame,
        })
    }

    async fn emit(&self, frame: Frame) -> Result<(), ReadEnd> {
        let Some(out) = self.out.upgrade() else {
            return Err(ReadEnd::Abandoned);
        };
        out.send(Out::Frame(frame))
            .await
            .map_err(|_| ReadEnd::Abandoned)
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), ReadEnd> {
        match frame {
            Frame::SynStream(syn) => self.on_syn_stream(syn).await,
            Frame::SynReply(reply) => {
                let mut sh = lock(&self.shared);
                if let Some(slot) = sh.streams.get_mut(&reply.stream_id)
                    && let Some(tx) = slot.reply.take()
                {
                    let _ = tx.send(Ok(()));
                    if reply.flags.fin() {
                        slot.data = None;
                    }
                    sh.slot_done(reply.stream_id);
                }
                Ok(())
            }
            Frame::Data(data) => self.on_data(data).await,
            Frame::RstStream { stream_id, status } => {
                let mut sh = lock(&self.shared);
                if let Some(mut slot) = sh.streams.remove(&stream_id) {
                    slot.reset.store(true, Ordering::Release);
                    if let Some(tx) = slot.reply.take() {
                        let _ = tx.send(Err(status));
                    }
                    if let Some(tx) = slot.data.take() {
                        let _ = tx.try_send(Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            format!("spdy stream {stream_id} reset by the peer ({status:?})"),
                        )));
                    }
                }
                Ok(())
            }
            Frame::Ping { id } => {
                if self.peer_parity(id) {
                    self.emit(Frame::Ping { id }).await?;
                }
                Ok(())
            }
            Frame::GoAway { .. } => {
                lock(&self.shared).goaway_received = true;
                // No more streams will come: end `Incoming`.
                self.incoming = None;
                Ok(())
            }
            // Flow control is not enforced (see the module docs); HEADERS carry nothing the
            // CRI protocols use; unknown control frames are ignored as the draft says.
            Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Headers(_)
            | Frame::Unknown { .. } => Ok(()),
        }
    }

    async fn on_syn_stream(&mut self, syn: SynStream) -> Result<(), ReadEnd> {
        let id = syn.stream_id;
        let refuse = {
            let mut sh = lock(&self.shared);
            if !self.peer_parity(id) || id <= sh.last_remote_id {
                return Err(ReadEnd::Protocol(format!(
                    "SYN_STREAM with stream id {id} (last was {})",
                    sh.last_remote_id
                )));
            }
            sh.last_remote_id = id;
            sh.last_activity = Instant::now();
            let full = sh.streams.len() >= self.cfg.max_streams;
            (sh.goaway_sent || self.incoming.is_none() || full).then_some(RstStatus::RefusedStream)
        };
        if let Some(status) = refuse {
            return self
                .emit(Frame::RstStream {
                    stream_id: id,
                    status,
                })
                .await;
        }
        let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
        let reset = Arc::new(AtomicBool::new(false));
        let remote_fin = syn.flags.fin();
        lock(&self.shared).streams.insert(
            id,
            Slot {
                data: (!remote_fin).then_some(data_tx),
                reply: None,
                local_closed: false,
                reset: reset.clone(),
            },
        );
        let Some(handle) = self.handle() else {
            return Err(ReadEnd::Abandoned);
        };
        let stream = IncomingStream {
            id,
            headers: syn.headers,
            remote_fin,
            rx: data_rx,
            reset,
            handle,
        };
        if let Some(tx) = &self.incoming
            && tx.send(stream).await.is_err()
        {
            // Nobody accepts streams any more.
            lock(&self.shared).streams.remove(&id);
            self.emit(Frame::RstStream {
                stream_id: id,
                status: RstStatus::RefusedStream,
            })
            .await?;
        }
        Ok(())
    }

    async fn on_data(&mut self, data: DataFrame) -> Result<(), ReadEnd> {
        let id = data.stream_id;
        let fin = data.flags.fin();
        let tx = {
            let mut sh = lock(&self.shared);
            sh.last_activity = Instant::now();
            let last_remote = sh.last_remote_id;
            match sh.streams.get_mut(&id) {
                Some(slot) => match &slot.data {
                    Some(tx) => Ok(tx.clone()),
                    None => Err(RstStatus::StreamAlreadyClosed),
                },
                None if self.peer_parity(id) && id <= last_remote => {
                    Err(RstStatus::StreamAlreadyClosed)
                }
                None => Err(RstStatus::InvalidStream),
            }
        };
        let tx = match tx {
            Ok(tx) => tx,
            Err(status) => {
                // DATA for a stream we already reset is normal during teardown races; answer
                // only streams the peer could still think open.
                return self
                    .emit(Frame::RstStream {
                        stream_id: id,
                        status,
                    })
                    .await;
            }
        };
        if !data.data.is_empty() {
            // Waits when the stream's reader is behind (back-pressure on the connection).
            let _ = tx.send(Ok(data.data)).await;
        }
        if fin {
            let mut sh = lock(&self.shared);
            if let Some(slot) = sh.streams.get_mut(&id) {
                slot.data = None;
            }
            sh.slot_done(id);
        }
        Ok(())
    }
}

fn spdy_msg(e: &SpdyError) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

async fn idle_watch(shared: Arc<Mutex<Shared>>, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let last = lock(&shared).last_activity;
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

async fn write_loop<W: AsyncWrite>(
    wr: W,
    mut rx: mpsc::Receiver<Out>,
    shared: Arc<Mutex<Shared>>,
) -> SessionEnd {
    tokio::pin!(wr);
    let mut encoder = match FrameEncoder::new() {
        Ok(e) => e,
        Err(e) => return SessionEnd::Io(spdy_msg(&e)),
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let Some(first) = rx.recv().await else {
            // Every handle is gone: nobody can use the session any more.
            let _ = wr.shutdown().await;
            return SessionEnd::Local;
        };
        let mut next = Some(first);
        let mut finish = false;
        // Batch what is already queued into one write.
        while let Some(out) = next.take() {
            match out {
                Out::Frame(frame) => {
                    note_sent(&shared, &frame);
                    if let Err(e) = encoder.encode(&frame, &mut buf) {
                        return SessionEnd::Io(spdy_msg(&e));
                    }
                }
                Out::Shutdown => {
                    for frame in shutdown_frames(&shared) {
                        if let Err(e) = encoder.encode(&frame, &mut buf) {
                            return SessionEnd::Io(spdy_msg(&e));
                        }
                    }
                    finish = true;
                }
                Out::Close => finish = true,
            }
            if finish || buf.len() >= 64 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = wr.write_all(&buf).await {
            return SessionEnd::Io(e.to_string());
        }
        buf.clear();
        if let Err(e) = wr.flush().await {
            return SessionEnd::Io(e.to_string());
        }
        if finish {
            let _ = wr.shutdown().await;
            return SessionEnd::Local;
        }
    }
}

/// Bookkeeping for a frame about to be written.
fn note_sent(shared: &Mutex<Shared>, frame: &Frame) {
    let mut sh = lock(shared);
    match frame {
        Frame::Data(d) => {
            sh.last_activity = Instant::now();
            if d.flags.fin()
                && let Some(slot) = sh.streams.get_mut(&d.stream_id)
            {
                slot.local_closed = true;
                sh.slot_done(d.stream_id);
            }
        }
        Frame::RstStream { stream_id, .. } => {
            if let Some(slot) = sh.streams.remove(stream_id) {
                slot.reset.store(true, Ordering::Release);
            }
        }
        Frame::GoAway { .. } => sh.goaway_sent = true,
        _ => {}
    }
}

/// RST_STREAM (CANCEL) for every stream this side has not closed, then GOAWAY (OK).
fn shutdown_frames(shared: &Mutex<Shared>) -> Vec<Frame> {
    let mut sh = lock(shared);
    let mut open: Vec<u32> = sh
        .streams
        .iter()
        .filter(|(_, s)| !s.local_closed)
        .map(|(id, _)| *id)
        .collect();
    open.sort_unstable();
    let mut frames: Vec<Frame> = open
        .iter()
        .map(|&stream_id| Frame::RstStream {
            stream_id,
            status: RstStatus::Cancel,
        })
        .collect();
    for id in open {
        if let Some(slot) = sh.streams.remove(&id) {
            slot.reset.store(true, Ordering::Release);
        }
    }
    sh.goaway_sent = true;
    frames.push(Frame::GoAway {
        last_good_stream_id: sh.last_remote_id,
        status: GoAwayStatus::Ok,
    });
    frames
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
