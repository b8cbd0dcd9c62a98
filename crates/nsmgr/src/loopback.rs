//! Bring up `lo` in the network namespace of the calling thread.
//!
//! A new network namespace has a loopback device, but it is down
//! (`network_namespaces(7)`); pods expect `127.0.0.1` to work before any
//! container starts. We send one `RTM_NEWLINK` request with `IFF_UP` over a
//! `NETLINK_ROUTE` socket and wait for the kernel's acknowledgement.
//!
//! Why a hand-built message: a netlink socket belongs to the network
//! namespace of the task that created it, so it must be opened on the
//! namespace thread, which runs no async runtime (rtnetlink would need one
//! there), and the `SIOCSIFFLAGS` ioctl needs `unsafe`. The request is 32
//! fixed bytes (`nlmsghdr` + `ifinfomsg`, `rtnetlink(7)`), built and parsed
//! below with nix's safe socket calls.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

use crate::error::LoopbackError;

/// The kernel gives the loopback device of every network namespace this
/// index (`LOOPBACK_IFINDEX` in `include/net/net_namespace.h`).
const LOOPBACK_IFINDEX: i32 = 1;

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct ifinfomsg)`.
const IFINFOMSG_LEN: usize = 16;
/// Sequence number of our single request.
const SEQ: u32 = 1;

/// Sets `IFF_UP` on `lo` in the current thread's network namespace.
pub(crate) fn set_up() -> Result<(), LoopbackError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(LoopbackError::Socket)?;
    let request = newlink_up_request();
    // Address the kernel: pid 0, no multicast groups.
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(LoopbackError::Send)?;
    let mut reply = [0_u8; 256];
    let len = loop {
        match recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty()) {
            Err(Errno::EINTR) => {}
            other => break other.map_err(LoopbackError::Receive)?,
        }
    };
    parse_ack(&reply[..len])
}

/// `RTM_NEWLINK` for `lo` with `ifi_flags = ifi_change = IFF_UP`, asking for
/// an acknowledgement (`NLM_F_ACK`).
fn newlink_up_request() -> Vec<u8> {
    let total = NLMSG_HDR_LEN + IFINFOMSG_LEN;
    let mut msg = Vec::with_capacity(total);
    // struct nlmsghdr
    msg.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes()); // nlmsg_type
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes()); // nlmsg_flags
    msg.extend_from_slice(&SEQ.to_ne_bytes()); // nlmsg_seq
    msg.extend_from_slice(&0_u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
    // struct ifinfomsg
    msg.push(libc::AF_UNSPEC as u8); // ifi_family
    msg.push(0); // padding
    msg.extend_from_slice(&0_u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes()); // ifi_index
    msg.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // ifi_change
    msg
}

/// Checks that `reply` is the `NLMSG_ERROR` acknowledgement of our request
/// with error 0 (`netlink(7)`: `struct nlmsgerr` follows the header).
fn parse_ack(reply: &[u8]) -> Result<(), LoopbackError> {
    let u16_at = |at: usize| {
        reply
            .get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes)
    };
    let u32_at = |at: usize| {
        reply
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let i32_at = |at: usize| {
        reply
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_ne_bytes)
    };
    let msg_type = u16_at(4).unwrap_or(0);
    let seq = u32_at(8).unwrap_or(0);
    match i32_at(NLMSG_HDR_LEN) {
        Some(error) if i32::from(msg_type) == libc::NLMSG_ERROR && seq == SEQ => {
            if error == 0 {
                Ok(())
            } else {
                Err(LoopbackError::Kernel(Errno::from_raw(-error)))
            }
        }
        _ => Err(LoopbackError::UnexpectedReply {
            len: reply.len(),
            msg_type,
            seq,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(error: i32, seq: u32) -> Vec<u8> {
        let mut reply = Vec::new();
        reply.extend_from_slice(&36_u32.to_ne_bytes());
        reply.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        reply.extend_from_slice(&0_u16.to_ne_bytes());
        reply.extend_from_slice(&seq.to_ne_bytes());
        reply.extend_from_slice(&0_u32.to_ne_bytes());
        reply.extend_from_slice(&error.to_ne_bytes());
        reply.extend_from_slice(&newlink_up_request()[..NLMSG_HDR_LEN]);
        reply
    }

    #[test]
    fn request_is_a_32_byte_newlink_for_ifindex_1() {
        let msg = newlink_up_request();
        assert_eq!(msg.len(), 32);
        assert_eq!(u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]), 32);
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), libc::RTM_NEWLINK);
        assert_eq!(i32::from_ne_bytes([msg[20], msg[21], msg[22], msg[23]]), 1);
    }

    #[test]
    fn ack_parsing() {
        assert!(parse_ack(&ack(0, SEQ)).is_ok());
        assert!(matches!(
            parse_ack(&ack(-libc::EPERM, SEQ)),
            Err(LoopbackError::Kernel(Errno::EPERM))
        ));
        assert!(matches!(
            parse_ack(&ack(0, 7)),
            Err(LoopbackError::UnexpectedReply { seq: 7, .. })
        ));
        assert!(matches!(
            parse_ack(&[0; 8]),
            Err(LoopbackError::UnexpectedReply { .. })
        ));
    }
}
