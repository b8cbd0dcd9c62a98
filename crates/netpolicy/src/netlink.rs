//! Element diffs sent to the kernel over `NETLINK_NETFILTER`, without running `nft`.
//!
//! A pod starting or stopping changes a handful of set elements; starting `nft` to parse
//! a two-line script costs several milliseconds, the kernel transaction a few microseconds.
//! This module sends the same transaction as `nft -f` of [`nft::diff_script`]: one nfnetlink
//! batch (`NFNL_MSG_BATCH_BEGIN`, the element messages, `NFNL_MSG_BATCH_END`) that the
//! kernel commits as a whole or not at all. Deletions come first, then additions, grouped
//! per set, as in the script.
//!
//! Encoding (`linux/netfilter/nf_tables.h`, `linux/netfilter/nfnetlink.h`; checked byte by
//! byte against `nft --debug=mnl`): every message is a `nlmsghdr` plus `struct nfgenmsg`,
//! then attributes. An element message (`NFT_MSG_NEWSETELEM` with `NLM_F_CREATE` and no
//! `NLM_F_EXCL`, as `nft add element`; `NFT_MSG_DELSETELEM` for deletions) names table and
//! set and nests one `NFTA_LIST_ELEM` per element with `NFTA_SET_ELEM_KEY` and, in the
//! interval sets of concatenations, `NFTA_SET_ELEM_KEY_END` (the last value of every
//! field). A concatenated key is its fields in network byte order, each padded to 4 bytes.
//! No expressions are sent: the kernel gives a new element the set's `counter`.
//!
//! Every element message asks for an acknowledgement; the kernel processes the batch while
//! we are in `sendto`, then queues one `NLMSG_ERROR` per message (error 0 when the message
//! was fine, even if another one failed and the batch was aborted). Any error means nothing
//! changed; the caller falls back to `nft -f`, which reports the error in its own words.
//!
//! Counters are read the same way instead of `nft -j list table` ([`read_counters`]): one
//! `NFT_MSG_GETSETELEM` dump (`NLM_F_DUMP`) per set of the table; the kernel answers with
//! `NFT_MSG_NEWSETELEM` messages (`NLM_F_MULTI`) holding the elements as they were sent
//! (key, key end) plus their `counter` expression (`NFTA_SET_ELEM_EXPR`, or a list of them in
//! `NFTA_SET_ELEM_EXPRESSIONS`), then `NLMSG_DONE`.
//!
//! [`nft::diff_script`]: crate::nft::diff_script

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use crate::nft::{Diff, Element, ElementKey, Family, SetId, SetKind};

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct nfgenmsg)`.
const NFGENMSG_LEN: usize = 4;
/// `sizeof(struct nlattr)`.
const NLA_HDR_LEN: usize = 4;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// Set in a dump's messages when the dumped object changed while it was dumped.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_TYPE_MASK`: the type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFNETLINK_V0: u8 = 0;
const AF_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;

// enum nft_set_elem_list_attributes
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes
const NFTA_LIST_ELEM: u16 = 1;
// enum nft_set_elem_attributes
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_EXPR: u16 = 7;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
// enum nft_set_elem_flags
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
// enum nft_expr_attributes
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
// enum nft_counter_attributes
const NFTA_COUNTER_PACKETS: u16 = 2;
// enum nft_data_attributes
const NFTA_DATA_VALUE: u16 = 1;

/// Bytes of elements per message: the `NFTA_SET_ELEM_LIST_ELEMENTS` nest has a 16-bit
/// length, so larger diffs take several messages (of the same batch).
const MAX_ELEMENTS_BYTES: usize = 60_000;
/// The kernel answers while we are in `sendto`; this only bounds a wait for replies that,
/// by a bug, never come.
const REPLY_TIMEOUT_SECS: i64 = 2;
/// Sequence number of the batch-begin message; the element messages follow it.
const FIRST_SEQ: u32 = 1;

/// Why a netlink transaction failed. Whatever the reason, the kernel is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netfilter netlink socket: {0}")]
    Socket(#[source] Errno),
    #[error("cannot send the netlink batch ({bytes} bytes): {source}")]
    Send {
        bytes: usize,
        #[source]
        source: Errno,
    },
    #[error("cannot receive the netlink acknowledgements: {0}")]
    Receive(#[source] Errno),
    /// The kernel refused a message (so the whole batch).
    #[error("the kernel refused {request}: {errno}")]
    Kernel { errno: Errno, request: String },
    #[error("no acknowledgement for {missing} of {sent} netlink messages")]
    MissingAck { missing: usize, sent: usize },
    #[error("malformed netlink reply ({len} bytes)")]
    Malformed { len: usize },
    /// A dump reply we cannot map to an element of our sets (or a dump the kernel marked
    /// as interrupted by a concurrent change).
    #[error("unexpected element dump of set {set}: {what}")]
    Unexpected { set: String, what: String },
}

/// A `NETLINK_NETFILTER` socket that gives up waiting for a reply after
/// [`REPLY_TIMEOUT_SECS`].
fn open_socket() -> Result<OwnedFd, NetlinkError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(NetlinkError::Socket)?;
    let _ = setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::new(REPLY_TIMEOUT_SECS, 0),
    );
    Ok(fd)
}

/// Applies `diff` to the sets of `table inet <table>` in one netfilter transaction,
/// blocking until the kernel answered (call it from a blocking thread). On error nothing
/// changed.
pub fn apply_diff(table: &str, diff: &Diff) -> Result<(), NetlinkError> {
    if diff.is_empty() {
        return Ok(());
    }
    let batch = Batch::new(table, diff);
    let fd = open_socket()?;
    // Best effort: a batch larger than the socket buffer fails in sendto with EMSGSIZE (and
    // the caller falls back to nft), the default (about 200 KiB) holds every pod's diff.
    if batch.bytes.len() > 100_000 {
        let _ = setsockopt(&fd, sockopt::SndBufForce, &batch.bytes.len());
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &batch.bytes.len());
    }
    // Address the kernel: pid 0, no multicast groups.
    sendto(
        fd.as_raw_fd(),
        &batch.bytes,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|source| NetlinkError::Send {
        bytes: batch.bytes.len(),
        source,
    })?;
    batch.read_acks(&fd)
}

/// Whether an element message adds or deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Delete => "delete",
        }
    }
}

/// One element message of a batch, for naming it in errors.
#[derive(Debug)]
struct Message<'a> {
    seq: u32,
    op: Op,
    set: SetId,
    elements: Vec<&'a Element>,
}

/// The encoded batch and what each of its element messages holds.
#[derive(Debug)]
struct Batch<'a> {
    table: &'a str,
    bytes: Vec<u8>,
    messages: Vec<Message<'a>>,
}

impl<'a> Batch<'a> {
    fn new(table: &'a str, diff: &'a Diff) -> Self {
        let mut batch = Batch {
            table,
            bytes: Vec::with_capacity(256 + 128 * diff.len()),
            messages: Vec::new(),
        };
        let mut seq = FIRST_SEQ;
        batch.control(NFNL_MSG_BATCH_BEGIN, seq);
        for (op, elements) in [(Op::Delete, &diff.delete), (Op::Add, &diff.add)] {
            let mut by_set: std::collections::BTreeMap<SetId, Vec<&Element>> =
                std::collections::BTreeMap::new();
            for e in elements {
                by_set.entry(e.set()).or_default().push(e);
            }
            for (set, elements) in by_set {
                let mut rest = elements.as_slice();
                while !rest.is_empty() {
                    seq += 1;
                    let taken = batch.element_message(seq, op, set, rest);
                    batch.messages.push(Message {
                        seq,
                        op,
                        set,
                        elements: rest[..taken].to_vec(),
                    });
                    rest = &rest[taken..];
                }
            }
        }
        batch.control(NFNL_MSG_BATCH_END, seq + 1);
        batch
    }

    /// `NFNL_MSG_BATCH_BEGIN`/`END`: `nfgenmsg { AF_UNSPEC, NFNETLINK_V0,
    /// htons(NFNL_SUBSYS_NFTABLES) }`, no attributes.
    fn control(&mut self, msg_type: u16, seq: u32) {
        let at = self.message_start(msg_type, NLM_F_REQUEST, seq, AF_UNSPEC);
        self.bytes[at + NLMSG_HDR_LEN + 2..at + NLMSG_HDR_LEN + 4]
            .copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        self.message_end(at);
    }

    /// Appends one element message with as many of `elements` as fit (at least one);
    /// returns how many.
    fn element_message(&mut self, seq: u32, op: Op, set: SetId, elements: &[&Element]) -> usize {
        // add element inet <table> <set> { ... }: NEWSETELEM, NLM_F_CREATE without EXCL
        // delete element inet <table> <set> { ... }: DELSETELEM
        let (kind, flags) = match op {
            Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            Op::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        let at = self.message_start(NFNL_SUBSYS_NFTABLES << 8 | kind, flags, seq, NFPROTO_INET);
        self.string(NFTA_SET_ELEM_LIST_TABLE, self.table);
        self.string(NFTA_SET_ELEM_LIST_SET, &set.name());
        let list = self.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
        let mut taken = 0;
        for e in elements {
            if taken > 0 && self.bytes.len() - list > MAX_ELEMENTS_BYTES {
                break;
            }
            self.element(set, e);
            taken += 1;
        }
        self.nest_end(list);
        self.message_end(at);
        taken
    }

    /// `NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }, [NFTA_SET_ELEM_KEY_END {
    /// NFTA_DATA_VALUE }] }`.
    fn element(&mut self, set: SetId, e: &Element) {
        let key = e.key();
        let elem = self.nest_start(NFTA_LIST_ELEM);
        let put = |this: &mut Self, attr: u16, end: bool| {
            let nest = this.nest_start(attr);
            let value = key_bytes(set, &key, end);
            this.attr(NFTA_DATA_VALUE, &value);
            this.nest_end(nest);
        };
        put(self, NFTA_SET_ELEM_KEY, false);
        if set.kind != SetKind::Isolated {
            // Interval set of a concatenation: the range ends of every field.
            put(self, NFTA_SET_ELEM_KEY_END, true);
        }
        self.nest_end(elem);
    }

    /// Appends `nlmsghdr` (length patched by [`Self::message_end`]) and `nfgenmsg` with
    /// `res_id` 0; returns the message's offset.
    fn message_start(&mut self, msg_type: u16, flags: u16, seq: u32, family: u8) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&0_u32.to_ne_bytes()); // nlmsg_len
        self.bytes.extend_from_slice(&msg_type.to_ne_bytes()); // nlmsg_type
        self.bytes.extend_from_slice(&flags.to_ne_bytes()); // nlmsg_flags
        self.bytes.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
        self.bytes.extend_from_slice(&0_u32.to_ne_bytes()); // nlmsg_pid
        // struct nfgenmsg
        self.bytes.push(family); // nfgen_family
        self.bytes.push(NFNETLINK_V0); // version
        self.bytes.extend_from_slice(&0_u16.to_be_bytes()); // res_id
        debug_assert_eq!(self.bytes.len() - at, NLMSG_HDR_LEN + NFGENMSG_LEN);
        at
    }

    fn message_end(&mut self, at: usize) {
        let len = (self.bytes.len() - at) as u32;
        self.bytes[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// One attribute, padded to 4 bytes.
    fn attr(&mut self, attr: u16, payload: &[u8]) {
        let len = (NLA_HDR_LEN + payload.len()) as u16;
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&attr.to_ne_bytes());
        self.bytes.extend_from_slice(payload);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    fn string(&mut self, attr: u16, s: &str) {
        let mut payload = Vec::with_capacity(s.len() + 1);
        payload.extend_from_slice(s.as_bytes());
        payload.push(0);
        self.attr(attr, &payload);
    }

    fn nest_start(&mut self, attr: u16) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&0_u16.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(attr | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = (self.bytes.len() - at) as u16;
        self.bytes[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// Reads one acknowledgement per element message; the first refusal (in batch order)
    /// is the error.
    fn read_acks(&self, fd: &OwnedFd) -> Result<(), NetlinkError> {
        let mut pending: std::collections::BTreeSet<u32> =
            self.messages.iter().map(|m| m.seq).collect();
        let mut refused: Option<(u32, Errno)> = None;
        // An error reply echoes the refused message (up to 64 KiB).
        let mut buf = vec![0_u8; 128 * 1024];
        while !pending.is_empty() {
            let len = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(len) => len,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(refused.map_or(
                        NetlinkError::MissingAck {
                            missing: pending.len(),
                            sent: self.messages.len(),
                        },
                        |(seq, errno)| self.refusal(seq, errno),
                    ));
                }
                Err(e) => return Err(NetlinkError::Receive(e)),
            };
            for (seq, error) in parse_acks(&buf[..len])? {
                pending.remove(&seq);
                if error != 0 {
                    let errno = Errno::from_raw(-error);
                    // A refusal of the batch itself (say, no CAP_NET_ADMIN, or a failed
                    // commit) names the begin message: no other reply follows.
                    if seq == FIRST_SEQ {
                        return Err(self.refusal(seq, errno));
                    }
                    if refused.is_none_or(|(first, _)| seq < first) {
                        refused = Some((seq, errno));
                    }
                }
            }
        }
        match refused {
            Some((seq, errno)) => Err(self.refusal(seq, errno)),
            None => Ok(()),
        }
    }

    /// The error for a refused message, naming it in nft syntax (first elements only).
    fn refusal(&self, seq: u32, errno: Errno) -> NetlinkError {
        const SHOWN: usize = 3;
        let request = match self.messages.iter().find(|m| m.seq == seq) {
            Some(m) => {
                let mut texts: Vec<String> =
                    m.elements.iter().take(SHOWN).map(|e| e.text()).collect();
                if m.elements.len() > SHOWN {
                    texts.push(format!("... ({} elements)", m.elements.len()));
                }
                format!(
                    "{} element inet {} {} {{ {} }}",
                    m.op.verb(),
                    self.table,
                    m.set.name(),
                    texts.join(", ")
                )
            }
            None => "the element batch".to_string(),
        };
        NetlinkError::Kernel { errno, request }
    }
}

/// The `NFTA_DATA_VALUE` of a key: the start (or, with `end`, the last) value of every
/// field in network byte order, each field padded to 4 bytes.
fn key_bytes(set: SetId, key: &[(u128, u128)], end: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    for (i, (first, last)) in key.iter().enumerate() {
        let v = if end { *last } else { *first };
        match i {
            // pod . peer
            0 | 1 => match set.family {
                Family::V4 => out.extend_from_slice(&(v as u32).to_be_bytes()),
                Family::V6 => out.extend_from_slice(&v.to_be_bytes()),
            },
            // inet_proto: one byte
            2 => out.extend_from_slice(&[v as u8, 0, 0, 0]),
            // inet_service: two bytes, big-endian
            _ => {
                out.extend_from_slice(&(v as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
        }
    }
    out
}

/// One counted element: the name of its set, its key as [`Element::key`] gives it (the
/// shape `nft -j list table` is parsed into), and its packet count.
pub type ElementCounter = (String, ElementKey, u64);

/// The packet counters of the elements of every set of `table inet <table>` (elements
/// without a counter are left out), set by set, blocking until the kernel answered (call
/// it from a blocking thread). A set that does not exist is an error.
pub fn read_counters(table: &str) -> Result<Vec<ElementCounter>, NetlinkError> {
    let fd = open_socket()?;
    let mut out = Vec::new();
    // A dump's datagrams are at most 32 KiB; MSG_TRUNC makes a longer one an error
    // instead of a silently cut reply.
    let mut buf = vec![0_u8; 64 * 1024];
    // One dump at a time per socket: the next set is asked for once a dump is done.
    for (seq, set) in (FIRST_SEQ..).zip(SetId::all()) {
        let request = dump_request(table, set, seq);
        sendto(
            fd.as_raw_fd(),
            &request,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|source| NetlinkError::Send {
            bytes: request.len(),
            source,
        })?;
        let mut elements = Vec::new();
        loop {
            let len = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC) {
                Ok(len) => len,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(NetlinkError::Receive(e)),
            };
            if len > buf.len() {
                return Err(NetlinkError::Malformed { len });
            }
            if parse_dump(&buf[..len], table, set, seq, &mut elements)? {
                break;
            }
        }
        let name = set.name();
        out.extend(
            elements
                .into_iter()
                .map(|(key, packets)| (name.clone(), key, packets)),
        );
    }
    Ok(out)
}

/// `NFT_MSG_GETSETELEM` with `NLM_F_DUMP` for one set: `nfgenmsg { NFPROTO_INET }`,
/// `NFTA_SET_ELEM_LIST_TABLE`, `NFTA_SET_ELEM_LIST_SET`.
fn dump_request(table: &str, set: SetId, seq: u32) -> Vec<u8> {
    let mut msg = Batch {
        table,
        bytes: Vec::with_capacity(64),
        messages: Vec::new(),
    };
    let at = msg.message_start(
        NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
    );
    msg.string(NFTA_SET_ELEM_LIST_TABLE, table);
    msg.string(NFTA_SET_ELEM_LIST_SET, &set.name());
    msg.message_end(at);
    msg.bytes
}

/// Adds the `(key, packets)` of the counted elements in one datagram of the dump of
/// `set` (request `seq`) to `out`; `true` once the dump is complete (`NLMSG_DONE`).
fn parse_dump(
    reply: &[u8],
    table: &str,
    set: SetId,
    seq: u32,
    out: &mut Vec<(ElementKey, u64)>,
) -> Result<bool, NetlinkError> {
    let malformed = || NetlinkError::Malformed { len: reply.len() };
    let unexpected = |what: String| NetlinkError::Unexpected {
        set: set.name(),
        what,
    };
    let mut at = 0;
    while at + NLMSG_HDR_LEN <= reply.len() {
        let len = u32_ne(reply, at).ok_or_else(malformed)? as usize;
        if len < NLMSG_HDR_LEN || at + len > reply.len() {
            return Err(malformed());
        }
        let msg = &reply[at..at + len];
        at += len.next_multiple_of(4);
        let msg_type = u16_ne(msg, 4).ok_or_else(malformed)?;
        let flags = u16_ne(msg, 6).ok_or_else(malformed)?;
        let msg_seq = u32_ne(msg, 8).ok_or_else(malformed)?;
        if msg_seq != seq {
            return Err(unexpected(format!(
                "reply to request {msg_seq} while waiting for {seq}"
            )));
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(unexpected("dump interrupted by a concurrent change".into()));
        }
        match msg_type {
            NLMSG_ERROR | NLMSG_DONE => {
                // NLMSG_DONE of a dump carries the dump's status as an int.
                let error = u32_ne(msg, NLMSG_HDR_LEN).map_or(0, |e| e as i32);
                if error < 0 {
                    return Err(NetlinkError::Kernel {
                        errno: Errno::from_raw(-error),
                        request: format!("list set inet {table} {}", set.name()),
                    });
                }
                if msg_type == NLMSG_DONE {
                    return Ok(true);
                }
            }
            t if t == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM => {
                let body = msg
                    .get(NLMSG_HDR_LEN + NFGENMSG_LEN..)
                    .ok_or_else(malformed)?;
                for (attr, payload) in attrs(body).ok_or_else(malformed)? {
                    if attr != NFTA_SET_ELEM_LIST_ELEMENTS {
                        continue;
                    }
                    for (attr, element) in attrs(payload).ok_or_else(malformed)? {
                        if attr != NFTA_LIST_ELEM {
                            continue;
                        }
                        if let Some(counted) = parse_element(set, element).map_err(unexpected)? {
                            out.push(counted);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// `(key, packets)` of one `NFTA_LIST_ELEM` of a dump; `None` without a counter.
fn parse_element(set: SetId, element: &[u8]) -> Result<Option<(ElementKey, u64)>, String> {
    let attrs = attrs(element).ok_or("malformed element")?;
    let value = |payload: &[u8]| -> Result<Vec<u8>, String> {
        self::attrs(payload)
            .ok_or("malformed key")?
            .into_iter()
            .find(|(attr, _)| *attr == NFTA_DATA_VALUE)
            .map(|(_, v)| v.to_vec())
            .ok_or_else(|| "key without a value".to_string())
    };
    let (mut key, mut key_end, mut packets) = (None, None, None);
    for (attr, payload) in attrs {
        match attr {
            NFTA_SET_ELEM_KEY => key = Some(value(payload)?),
            NFTA_SET_ELEM_KEY_END => key_end = Some(value(payload)?),
            NFTA_SET_ELEM_FLAGS => {
                let flags = payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes)
                    .ok_or("malformed flags")?;
                // Interval ends are elements of interval sets of single fields; ours are
                // concatenations (start and end in one element) or plain keys.
                if flags & NFT_SET_ELEM_INTERVAL_END != 0 {
                    return Err("an interval end element".into());
                }
            }
            NFTA_SET_ELEM_EXPR => {
                if let Some(n) = counter_packets(payload)? {
                    packets = Some(n);
                }
            }
            NFTA_SET_ELEM_EXPRESSIONS => {
                for (attr, expr) in self::attrs(payload).ok_or("malformed expressions")? {
                    if attr == NFTA_LIST_ELEM
                        && let Some(n) = counter_packets(expr)?
                    {
                        packets = Some(n);
                    }
                }
            }
            _ => {}
        }
    }
    let key = key.ok_or("element without a key")?;
    let Some(packets) = packets else {
        return Ok(None);
    };
    let key = decode_key(set, &key, key_end.as_deref())
        .ok_or_else(|| format!("key {key:02x?} (end {key_end:02x?}) does not fit the set"))?;
    Ok(Some((key, packets)))
}

/// The packets of a `counter` expression (`NFTA_EXPR_NAME "counter"`, `NFTA_EXPR_DATA {
/// NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS }`, big-endian u64); `None` for another
/// expression.
fn counter_packets(expr: &[u8]) -> Result<Option<u64>, String> {
    let attrs = attrs(expr).ok_or("malformed expression")?;
    let is_counter = attrs.iter().any(|(attr, name)| {
        *attr == NFTA_EXPR_NAME && name.split(|b| *b == 0).next() == Some(b"counter")
    });
    if !is_counter {
        return Ok(None);
    }
    let data = attrs
        .iter()
        .find(|(attr, _)| *attr == NFTA_EXPR_DATA)
        .ok_or("counter without data")?
        .1;
    self::attrs(data)
        .ok_or("malformed counter")?
        .into_iter()
        .find(|(attr, _)| *attr == NFTA_COUNTER_PACKETS)
        .and_then(|(_, v)| v.get(..8)?.try_into().ok())
        .map(|b| Some(u64::from_be_bytes(b)))
        .ok_or_else(|| "counter without packets".to_string())
}

/// The [`Element::key`] of a dumped element of `set` (the inverse of [`key_bytes`]):
/// every field of `key` and, for interval sets, its last value from `key_end`.
fn decode_key(set: SetId, key: &[u8], key_end: Option<&[u8]>) -> Option<ElementKey> {
    let addr = match set.family {
        Family::V4 => 4,
        Family::V6 => 16,
    };
    let fields = match set.kind {
        SetKind::Isolated => 1,
        SetKind::All => 2,
        SetKind::Ports => 4,
    };
    if (set.kind == SetKind::Isolated) != key_end.is_none() {
        return None;
    }
    let len = if fields == 1 {
        addr
    } else {
        2 * addr + 4 * (fields - 2)
    };
    let field = |bytes: &[u8], i: usize| -> Option<u128> {
        let (at, width) = match i {
            0 | 1 => (i * addr, addr),
            _ => (2 * addr + 4 * (i - 2), 4),
        };
        let b = bytes.get(at..at + width)?;
        Some(match i {
            0 | 1 => b.iter().fold(0_u128, |v, byte| v << 8 | u128::from(*byte)),
            2 => u128::from(b[0]),
            _ => u128::from(u16::from_be_bytes([b[0], b[1]])),
        })
    };
    if key.len() != len || key_end.is_some_and(|end| end.len() != len) {
        return None;
    }
    (0..fields)
        .map(|i| {
            let first = field(key, i)?;
            let last = match key_end {
                Some(end) => field(end, i)?,
                None => first,
            };
            Some((first, last))
        })
        .collect()
}

/// The attributes `(type without flags, payload)` of a run of attributes; `None` if one
/// overruns it.
fn attrs(mut bytes: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while bytes.len() >= NLA_HDR_LEN {
        let len = usize::from(u16_ne(bytes, 0)?);
        let attr = u16_ne(bytes, 2)? & NLA_TYPE_MASK;
        if len < NLA_HDR_LEN || len > bytes.len() {
            return None;
        }
        out.push((attr, &bytes[NLA_HDR_LEN..len]));
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Some(out)
}

fn u16_ne(bytes: &[u8], at: usize) -> Option<u16> {
    bytes
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes)
}

fn u32_ne(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
}

/// `(seq, error)` of every `NLMSG_ERROR` in one datagram (`netlink(7)`: `struct nlmsgerr`
/// follows the header); other messages are skipped.
fn parse_acks(reply: &[u8]) -> Result<Vec<(u32, i32)>, NetlinkError> {
    let malformed = || NetlinkError::Malformed { len: reply.len() };
    let u32_at = |at: usize| {
        reply
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDR_LEN <= reply.len() {
        let len = u32_at(at).ok_or_else(malformed)? as usize;
        if len < NLMSG_HDR_LEN || at + len > reply.len() {
            return Err(malformed());
        }
        let msg_type = reply
            .get(at + 4..at + 6)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes)
            .ok_or_else(malformed)?;
        if msg_type == NLMSG_ERROR {
            let seq = u32_at(at + 8).ok_or_else(malformed)?;
            let error = u32_at(at + NLMSG_HDR_LEN).ok_or_else(malformed)? as i32;
            out.push((seq, error));
        }
        at += len.next_multiple_of(4);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::{Direction, Protocol};
    use crate::nft::AddrRange;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v4(s: &str) -> u128 {
        u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().unwrap()))
    }

    /// The element message `nft --debug=mnl` shows for
    /// `add element inet zz_probe in_ports4 { 10.0.0.3 . 10.0.0.2-10.0.0.9 . tcp . 80-90 }`
    /// (without nft's `NFTA_SET_ELEM_LIST_SET_ID`, with our `NLM_F_ACK`).
    #[test]
    fn element_message_matches_nft() {
        let e = Element::Ports {
            direction: Direction::Ingress,
            pod: ip("10.0.0.3"),
            peer: AddrRange {
                family: Family::V4,
                start: v4("10.0.0.2"),
                end: v4("10.0.0.9"),
            },
            protocol: Protocol::Tcp,
            start: 80,
            end: 90,
        };
        let diff = Diff {
            delete: vec![],
            add: vec![e],
        };
        let batch = Batch::new("zz_probe", &diff);
        let mut want: Vec<u8> = Vec::new();
        let hdr = |want: &mut Vec<u8>, len: u32, ty: u16, flags: u16, seq: u32| {
            want.extend_from_slice(&len.to_ne_bytes());
            want.extend_from_slice(&ty.to_ne_bytes());
            want.extend_from_slice(&flags.to_ne_bytes());
            want.extend_from_slice(&seq.to_ne_bytes());
            want.extend_from_slice(&0_u32.to_ne_bytes());
        };
        let nla = |want: &mut Vec<u8>, len: u16, ty: u16| {
            want.extend_from_slice(&len.to_ne_bytes());
            want.extend_from_slice(&ty.to_ne_bytes());
        };
        hdr(&mut want, 20, 0x10, 1, 1);
        want.extend_from_slice(&[0, 0, 0, 10]);
        hdr(&mut want, 108, 2572, 1 | 4 | 0x400, 2);
        want.extend_from_slice(&[1, 0, 0, 0]);
        nla(&mut want, 13, 1);
        want.extend_from_slice(b"zz_probe\0\0\0\0");
        nla(&mut want, 14, 2);
        want.extend_from_slice(b"in_ports4\0\0\0");
        nla(&mut want, 56, 0x8003);
        nla(&mut want, 52, 0x8001);
        nla(&mut want, 24, 0x8001);
        nla(&mut want, 20, 1);
        want.extend_from_slice(&[10, 0, 0, 3, 10, 0, 0, 2, 6, 0, 0, 0, 0, 0x50, 0, 0]);
        nla(&mut want, 24, 0x800a);
        nla(&mut want, 20, 1);
        want.extend_from_slice(&[10, 0, 0, 3, 10, 0, 0, 9, 6, 0, 0, 0, 0, 0x5a, 0, 0]);
        hdr(&mut want, 20, 0x11, 1, 3);
        want.extend_from_slice(&[0, 0, 0, 10]);
        assert_eq!(batch.bytes, want);
        assert_eq!(batch.messages.len(), 1);
    }

    #[test]
    fn isolated_elements_have_no_key_end_and_ipv6_is_16_bytes() {
        let diff = Diff {
            delete: vec![Element::Isolated {
                direction: Direction::Egress,
                pod: ip("fd00::3"),
            }],
            add: vec![],
        };
        let batch = Batch::new("t", &diff);
        // begin (20) + header, nfgenmsg, table "t" (8), set "eg_iso6" (12), elements
        // nest (4) + list elem (4) + key (4) + value (4 + 16) + end (20)
        assert_eq!(batch.bytes.len(), 20 + 20 + 8 + 12 + 4 + 4 + 4 + 20 + 20);
        let msg = &batch.bytes[20..];
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 2574);
        assert_eq!(u16::from_ne_bytes([msg[6], msg[7]]), 1 | 4);
        assert_eq!(
            &msg[msg.len() - 16 - 20..msg.len() - 20],
            &ip_bytes("fd00::3")
        );
    }

    fn ip_bytes(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn large_diffs_are_split_into_messages_under_64k() {
        let add: Vec<Element> = (0..3000_u32)
            .map(|i| Element::Ports {
                direction: Direction::Ingress,
                pod: ip("fd00::3"),
                peer: AddrRange {
                    family: Family::V6,
                    start: u128::from(i) << 8,
                    end: (u128::from(i) << 8) | 0xff,
                },
                protocol: Protocol::Udp,
                start: 0,
                end: 65535,
            })
            .collect();
        let diff = Diff {
            delete: vec![],
            add,
        };
        let batch = Batch::new("t", &diff);
        assert!(batch.messages.len() > 1);
        assert_eq!(
            batch
                .messages
                .iter()
                .map(|m| m.elements.len())
                .sum::<usize>(),
            3000
        );
        // Walk the messages: every length fits, seqs are consecutive.
        let mut at = 0;
        let mut seqs = Vec::new();
        while at < batch.bytes.len() {
            let b = &batch.bytes;
            let len = u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
            assert!(len < 65_536 + 100);
            seqs.push(u32::from_ne_bytes([
                b[at + 8],
                b[at + 9],
                b[at + 10],
                b[at + 11],
            ]));
            at += len;
        }
        assert_eq!(at, batch.bytes.len());
        assert_eq!(seqs, (1..=seqs.len() as u32).collect::<Vec<_>>());
    }

    fn ack(seq: u32, error: i32) -> Vec<u8> {
        let mut reply = Vec::new();
        reply.extend_from_slice(&36_u32.to_ne_bytes());
        reply.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        reply.extend_from_slice(&0_u16.to_ne_bytes());
        reply.extend_from_slice(&seq.to_ne_bytes());
        reply.extend_from_slice(&0_u32.to_ne_bytes());
        reply.extend_from_slice(&error.to_ne_bytes());
        reply.extend_from_slice(&[0; 16]);
        reply
    }

    #[test]
    fn acks_are_parsed() {
        let mut two = ack(2, 0);
        two.extend(ack(3, -17));
        assert_eq!(parse_acks(&two).unwrap(), [(2, 0), (3, -17)]);
        assert!(parse_acks(&two[..30]).is_err());
        assert!(parse_acks(&[]).unwrap().is_empty());
    }

    #[test]
    fn refusals_name_the_request() {
        let diff = Diff {
            delete: vec![],
            add: vec![Element::Isolated {
                direction: Direction::Ingress,
                pod: ip("10.0.0.3"),
            }],
        };
        let batch = Batch::new("t", &diff);
        let text = batch.refusal(2, Errno::EEXIST).to_string();
        assert_eq!(
            text,
            "the kernel refused add element inet t in_iso4 { 10.0.0.3 }: EEXIST: File exists"
        );
        assert!(
            batch
                .refusal(1, Errno::EPERM)
                .to_string()
                .contains("the element batch")
        );
    }

    /// Every kind of element of both families decodes back from what we send.
    #[test]
    fn keys_decode_back_from_their_bytes() {
        let elements = [
            Element::Isolated {
                direction: Direction::Ingress,
                pod: ip("10.0.0.3"),
            },
            Element::Isolated {
                direction: Direction::Egress,
                pod: ip("fd00::3"),
            },
            Element::All {
                direction: Direction::Egress,
                pod: ip("fd00::3"),
                peer: AddrRange::everything(Family::V6),
            },
            Element::Ports {
                direction: Direction::Ingress,
                pod: ip("10.0.0.3"),
                peer: AddrRange {
                    family: Family::V4,
                    start: v4("10.0.0.2"),
                    end: v4("10.0.0.9"),
                },
                protocol: Protocol::Sctp,
                start: 80,
                end: 65535,
            },
        ];
        for e in elements {
            let set = e.set();
            let key = e.key();
            let end = (set.kind != SetKind::Isolated).then(|| key_bytes(set, &key, true));
            assert_eq!(
                decode_key(set, &key_bytes(set, &key, false), end.as_deref()),
                Some(key.clone()),
                "{e:?}"
            );
            // Another family's key, or a missing / extra key end, does not fit.
            let other = SetId {
                family: match set.family {
                    Family::V4 => Family::V6,
                    Family::V6 => Family::V4,
                },
                ..set
            };
            assert_eq!(
                decode_key(other, &key_bytes(set, &key, false), end.as_deref()),
                None
            );
            let wrong_end = match end {
                Some(_) => None,
                None => Some(key_bytes(set, &key, false)),
            };
            assert_eq!(
                decode_key(set, &key_bytes(set, &key, false), wrong_end.as_deref()),
                None
            );
        }
    }

    /// A dump datagram as the kernel builds it (`nf_tables_fill_setelem`).
    struct Reply(Batch<'static>);

    impl Reply {
        fn new() -> Self {
            Reply(Batch {
                table: "t",
                bytes: Vec::new(),
                messages: Vec::new(),
            })
        }

        fn u64_attr(&mut self, attr: u16, v: u64) {
            self.0.attr(attr, &v.to_be_bytes());
        }

        fn expr(&mut self, attr: u16, name: &str, packets: u64) {
            let b = &mut self.0;
            let expr = b.nest_start(attr);
            b.string(NFTA_EXPR_NAME, name);
            let data = b.nest_start(NFTA_EXPR_DATA);
            self.u64_attr(1, packets * 100); // NFTA_COUNTER_BYTES
            self.u64_attr(NFTA_COUNTER_PACKETS, packets);
            self.0.nest_end(data);
            self.0.nest_end(expr);
        }

        /// A NEWSETELEM message; `each` writes one element's attributes per entry.
        fn elements(&mut self, seq: u32, flags: u16, set: SetId, each: &[&dyn Fn(&mut Reply)]) {
            let at = self.0.message_start(
                NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM,
                flags,
                seq,
                NFPROTO_INET,
            );
            self.0.string(NFTA_SET_ELEM_LIST_TABLE, "t");
            self.0.string(NFTA_SET_ELEM_LIST_SET, &set.name());
            let list = self.0.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
            for f in each {
                let elem = self.0.nest_start(NFTA_LIST_ELEM);
                f(self);
                self.0.nest_end(elem);
            }
            self.0.nest_end(list);
            self.0.message_end(at);
        }

        fn key(&mut self, attr: u16, value: &[u8]) {
            let nest = self.0.nest_start(attr);
            self.0.attr(NFTA_DATA_VALUE, value);
            self.0.nest_end(nest);
        }

        fn done(&mut self, seq: u32, msg_type: u16, error: i32) {
            let at = self.0.message_start(msg_type, 0x2, seq, AF_UNSPEC);
            // message_start wrote a 4-byte nfgenmsg where the int goes.
            let len = self.0.bytes.len();
            self.0.bytes[len - 4..].copy_from_slice(&error.to_ne_bytes());
            self.0.message_end(at);
        }
    }

    #[test]
    fn dumps_are_parsed() {
        let set = SetId {
            direction: Direction::Ingress,
            kind: SetKind::All,
            family: Family::V4,
        };
        let (a, b) = ([10, 0, 0, 3, 10, 1, 0, 0], [10, 0, 0, 3, 10, 1, 255, 255]);
        let want_key = vec![
            (v4("10.0.0.3"), v4("10.0.0.3")),
            (v4("10.1.0.0"), v4("10.1.255.255")),
        ];
        let mut reply = Reply::new();
        reply.elements(
            7,
            0x2,
            set,
            &[
                // One expression: NFTA_SET_ELEM_EXPR.
                &|r: &mut Reply| {
                    r.key(NFTA_SET_ELEM_KEY, &a);
                    r.key(NFTA_SET_ELEM_KEY_END, &b);
                    r.expr(NFTA_SET_ELEM_EXPR, "counter", 5);
                },
                // Several: NFTA_SET_ELEM_EXPRESSIONS, the counter not first.
                &|r: &mut Reply| {
                    r.key(NFTA_SET_ELEM_KEY, &a);
                    r.key(NFTA_SET_ELEM_KEY_END, &a);
                    let list = r.0.nest_start(NFTA_SET_ELEM_EXPRESSIONS);
                    r.expr(NFTA_LIST_ELEM, "quota", 99);
                    r.expr(NFTA_LIST_ELEM, "counter", 1 << 40);
                    r.0.nest_end(list);
                },
                // No counter: left out.
                &|r: &mut Reply| {
                    r.key(NFTA_SET_ELEM_KEY, &b);
                    r.key(NFTA_SET_ELEM_KEY_END, &b);
                },
            ],
        );
        let mut out = Vec::new();
        assert!(!parse_dump(&reply.0.bytes, "t", set, 7, &mut out).unwrap());
        assert_eq!(
            out,
            vec![
                (want_key, 5),
                (
                    vec![
                        (v4("10.0.0.3"), v4("10.0.0.3")),
                        (v4("10.1.0.0"), v4("10.1.0.0"))
                    ],
                    1 << 40
                )
            ]
        );
        let mut done = Reply::new();
        done.done(7, NLMSG_DONE, 0);
        assert!(parse_dump(&done.0.bytes, "t", set, 7, &mut out).unwrap());
        assert_eq!(out.len(), 2);

        // Errors: the kernel's, an interrupted dump, another request's reply, a key that
        // does not fit the set, a cut datagram.
        let mut refused = Reply::new();
        refused.done(7, NLMSG_ERROR, -2);
        let err = parse_dump(&refused.0.bytes, "t", set, 7, &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel refused list set inet t in_all4: ENOENT: No such file or directory"
        );
        let mut failed = Reply::new();
        failed.done(7, NLMSG_DONE, -16);
        assert!(matches!(
            parse_dump(&failed.0.bytes, "t", set, 7, &mut out),
            Err(NetlinkError::Kernel {
                errno: Errno::EBUSY,
                ..
            })
        ));
        let mut interrupted = Reply::new();
        interrupted.elements(7, 0x2 | NLM_F_DUMP_INTR, set, &[]);
        assert!(matches!(
            parse_dump(&interrupted.0.bytes, "t", set, 7, &mut out),
            Err(NetlinkError::Unexpected { .. })
        ));
        assert!(parse_dump(&reply.0.bytes, "t", set, 8, &mut out).is_err());
        let v6 = SetId {
            family: Family::V6,
            ..set
        };
        assert!(matches!(
            parse_dump(&reply.0.bytes, "t", v6, 7, &mut out),
            Err(NetlinkError::Unexpected { .. })
        ));
        let cut = &reply.0.bytes[..reply.0.bytes.len() - 8];
        assert!(matches!(
            parse_dump(cut, "t", set, 7, &mut out),
            Err(NetlinkError::Malformed { .. })
        ));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn dump_requests_name_table_and_set() {
        let set = SetId {
            direction: Direction::Egress,
            kind: SetKind::Ports,
            family: Family::V6,
        };
        let bytes = dump_request("tbl", set, 4);
        let mut want = Vec::new();
        want.extend_from_slice(&44_u32.to_ne_bytes());
        want.extend_from_slice(&((10_u16 << 8) | 13).to_ne_bytes());
        want.extend_from_slice(&(1_u16 | 0x300).to_ne_bytes());
        want.extend_from_slice(&4_u32.to_ne_bytes());
        want.extend_from_slice(&0_u32.to_ne_bytes());
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&8_u16.to_ne_bytes());
        want.extend_from_slice(&1_u16.to_ne_bytes());
        want.extend_from_slice(b"tbl\0");
        want.extend_from_slice(&14_u16.to_ne_bytes());
        want.extend_from_slice(&2_u16.to_ne_bytes());
        want.extend_from_slice(b"eg_ports6\0\0\0");
        assert_eq!(bytes, want);
    }
}
