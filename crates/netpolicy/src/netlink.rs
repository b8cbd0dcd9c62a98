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
//! [`nft::diff_script`]: crate::nft::diff_script

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use crate::nft::{Diff, Element, Family, SetId, SetKind};

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct nfgenmsg)`.
const NFGENMSG_LEN: usize = 4;
/// `sizeof(struct nlattr)`.
const NLA_HDR_LEN: usize = 4;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
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
const NFTA_SET_ELEM_KEY_END: u16 = 10;
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
}

/// Applies `diff` to the sets of `table inet <table>` in one netfilter transaction,
/// blocking until the kernel answered (call it from a blocking thread). On error nothing
/// changed.
pub fn apply_diff(table: &str, diff: &Diff) -> Result<(), NetlinkError> {
    if diff.is_empty() {
        return Ok(());
    }
    let batch = Batch::new(table, diff);
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(NetlinkError::Socket)?;
    // Best effort: a batch larger than the socket buffer fails in sendto with EMSGSIZE (and
    // the caller falls back to nft), the default (about 200 KiB) holds every pod's diff.
    if batch.bytes.len() > 100_000 {
        let _ = setsockopt(&fd, sockopt::SndBufForce, &batch.bytes.len());
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &batch.bytes.len());
    }
    let _ = setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::new(REPLY_TIMEOUT_SECS, 0),
    );
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
}
