//! SPDY/3.1 frame types (draft 3.1, section 2.2 and 2.6).

use bytes::Bytes;

use super::header::HeaderBlock;

/// The only protocol version this codec speaks.
pub const SPDY_VERSION: u16 = 3;

/// Largest stream id (31 bits).
pub const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// Control frame type codes.
pub mod frame_type {
    /// SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// The 8 flag bits of a frame; which bits mean what depends on the frame type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// FLAG_FIN (DATA, SYN_STREAM, SYN_REPLY, HEADERS): last frame from this side.
    pub const FIN: Flags = Flags(0x01);
    /// FLAG_UNIDIRECTIONAL (SYN_STREAM): the recipient may not send on the stream.
    pub const UNIDIRECTIONAL: Flags = Flags(0x02);
    /// FLAG_SETTINGS_CLEAR_SETTINGS (SETTINGS).
    pub const CLEAR_SETTINGS: Flags = Flags(0x01);

    /// Whether every bit of `other` is set.
    #[must_use]
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether FLAG_FIN is set.
    #[must_use]
    pub fn fin(self) -> bool {
        self.contains(Flags::FIN)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A code this codec does not know, kept as received.
            Unknown(u32),
        }

        impl From<u32> for $name {
            fn from(code: u32) -> Self {
                match code {
                    $($code => $name::$variant,)*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(status: $name) -> u32 {
                match status {
                    $($name::$variant => $code,)*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

status_enum! {
    /// RST_STREAM status codes (section 2.6.3).
    RstStatus {
        /// PROTOCOL_ERROR.
        ProtocolError = 1,
        /// INVALID_STREAM.
        InvalidStream = 2,
        /// REFUSED_STREAM.
        RefusedStream = 3,
        /// UNSUPPORTED_VERSION.
        UnsupportedVersion = 4,
        /// CANCEL: the stream is no longer needed (what CRI-O sends at the end of an exec).
        Cancel = 5,
        /// INTERNAL_ERROR.
        InternalError = 6,
        /// FLOW_CONTROL_ERROR.
        FlowControlError = 7,
        /// STREAM_IN_USE.
        StreamInUse = 8,
        /// STREAM_ALREADY_CLOSED.
        StreamAlreadyClosed = 9,
        /// INVALID_CREDENTIALS (unused in 3.1).
        InvalidCredentials = 10,
        /// FRAME_TOO_LARGE.
        FrameTooLarge = 11,
    }
}

status_enum! {
    /// GOAWAY status codes (section 2.6.6).
    GoAwayStatus {
        /// OK: a normal session teardown.
        Ok = 0,
        /// PROTOCOL_ERROR.
        ProtocolError = 1,
        /// INTERNAL_ERROR.
        InternalError = 2,
    }
}

status_enum! {
    /// SETTINGS ids (section 2.6.4).
    SettingId {
        /// SETTINGS_UPLOAD_BANDWIDTH.
        UploadBandwidth = 1,
        /// SETTINGS_DOWNLOAD_BANDWIDTH.
        DownloadBandwidth = 2,
        /// SETTINGS_ROUND_TRIP_TIME.
        RoundTripTime = 3,
        /// SETTINGS_MAX_CONCURRENT_STREAMS.
        MaxConcurrentStreams = 4,
        /// SETTINGS_CURRENT_CWND.
        CurrentCwnd = 5,
        /// SETTINGS_DOWNLOAD_RETRANS_RATE.
        DownloadRetransRate = 6,
        /// SETTINGS_INITIAL_WINDOW_SIZE.
        InitialWindowSize = 7,
        /// SETTINGS_CLIENT_CERTIFICATE_VECTOR_SIZE.
        ClientCertificateVectorSize = 8,
    }
}

/// One SETTINGS entry: 8 flag bits, a 24-bit id and a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (0x1) / FLAG_SETTINGS_PERSISTED (0x2).
    pub flags: u8,
    /// The setting (24 bits on the wire).
    pub id: SettingId,
    /// Its value.
    pub value: u32,
}

/// A DATA frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    /// Stream id (31 bits, never 0).
    pub stream_id: u32,
    /// FLAG_FIN is the only defined flag.
    pub flags: Flags,
    /// The payload.
    pub data: Bytes,
}

/// SYN_STREAM: opens a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynStream {
    /// New stream id.
    pub stream_id: u32,
    /// Associated stream id (server push), 0 if none.
    pub associated_stream_id: u32,
    /// Priority 0 (highest) to 7.
    pub priority: u8,
    /// Credential slot (always 0 in 3.1).
    pub slot: u8,
    /// FIN and/or UNIDIRECTIONAL.
    pub flags: Flags,
    /// Decompressed name/value pairs.
    pub headers: HeaderBlock,
}

/// SYN_REPLY: accepts a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynReply {
    /// Stream being answered.
    pub stream_id: u32,
    /// FIN.
    pub flags: Flags,
    /// Decompressed name/value pairs.
    pub headers: HeaderBlock,
}

/// HEADERS: more headers on an open stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadersFrame {
    /// Stream id.
    pub stream_id: u32,
    /// FIN.
    pub flags: Flags,
    /// Decompressed name/value pairs.
    pub headers: HeaderBlock,
}

/// A decoded SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA.
    Data(DataFrame),
    /// SYN_STREAM.
    SynStream(SynStream),
    /// SYN_REPLY.
    SynReply(SynReply),
    /// RST_STREAM.
    RstStream {
        /// Stream being reset.
        stream_id: u32,
        /// Why.
        status: RstStatus,
    },
    /// SETTINGS.
    Settings {
        /// CLEAR_SETTINGS.
        flags: Flags,
        /// Entries in wire order.
        entries: Vec<Setting>,
    },
    /// PING; the receiver echoes the id.
    Ping {
        /// Ping id (odd from the client, even from the server).
        id: u32,
    },
    /// GOAWAY.
    GoAway {
        /// Last stream id the sender processed.
        last_good_stream_id: u32,
        /// Why.
        status: GoAwayStatus,
    },
    /// HEADERS.
    Headers(HeadersFrame),
    /// WINDOW_UPDATE (stream 0 = the session window in 3.1).
    WindowUpdate {
        /// Stream id, or 0 for the session.
        stream_id: u32,
        /// Window increase, 1 to 2^31-1.
        delta: u32,
    },
    /// A control frame of a type this codec does not know (the draft says: ignore it).
    Unknown {
        /// Frame type code.
        frame_type: u16,
        /// Flags.
        flags: Flags,
        /// Raw payload.
        payload: Bytes,
    },
}

impl Frame {
    /// Name of the frame type as in the draft (`SYN_STREAM`, `DATA`, ...).
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Frame::Data(_) => "DATA",
            Frame::SynStream(_) => "SYN_STREAM",
            Frame::SynReply(_) => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers(_) => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
            Frame::Unknown { .. } => "UNKNOWN",
        }
    }

    /// The stream the frame belongs to, if it has one (GOAWAY, PING, SETTINGS do not).
    #[must_use]
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Frame::Data(f) => Some(f.stream_id),
            Frame::SynStream(f) => Some(f.stream_id),
            Frame::SynReply(f) => Some(f.stream_id),
            Frame::Headers(f) => Some(f.stream_id),
            Frame::RstStream { stream_id, .. } | Frame::WindowUpdate { stream_id, .. } => {
                Some(*stream_id)
            }
            Frame::Settings { .. } | Frame::Ping { .. } | Frame::GoAway { .. } => None,
            Frame::Unknown { .. } => None,
        }
    }

    /// The frame's flag byte.
    #[must_use]
    pub fn flags(&self) -> Flags {
        match self {
            Frame::Data(f) => f.flags,
            Frame::SynStream(f) => f.flags,
            Frame::SynReply(f) => f.flags,
            Frame::Headers(f) => f.flags,
            Frame::Settings { flags, .. } | Frame::Unknown { flags, .. } => *flags,
            Frame::RstStream { .. }
            | Frame::Ping { .. }
            | Frame::GoAway { .. }
            | Frame::WindowUpdate { .. } => Flags::NONE,
        }
    }
}
