//! Domain types: what a pod asks for. No CRI protobuf types here (the server crate converts).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The nftables `inet_proto` keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// IANA protocol number (how `nft -j` may print an `inet_proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub(crate) fn from_number(n: u64) -> Option<Self> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| u64::from(p.number()) == n)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(()),
        }
    }
}

/// IP family; each family has its own nftables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The nftables table family keyword (`ip` / `ip6`), also the payload keyword in rules.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The nftables address data type.
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// `conntrack -f` argument.
    pub(crate) fn conntrack(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// One CRI port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub protocol: Protocol,
    /// Port inside the pod; must not be 0.
    pub container_port: u16,
    /// Port on the node; 0 means "no host port" and the mapping is ignored.
    pub host_port: u16,
    /// Only answer on this node address; `None`, `0.0.0.0` and `::` mean every address.
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// The host IP, with unspecified addresses (`0.0.0.0`, `::`) normalised to `None`.
    pub fn specific_host_ip(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }
}

/// A live pod and its mappings, as given to [`crate::HostPortManager::sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPorts {
    pub pod_id: String,
    pub pod_name: String,
    pub ips: Vec<IpAddr>,
    pub mappings: Vec<PortMapping>,
}
