//! nft text generation: the fixed per-family table and the per-pod elements.
//!
//! Layout of one family's table (IPv4 shown; IPv6 is the same with `ip6`, `ipv6_addr` and
//! `::1`, and without the `input` chain):
//!
//! ```text
//! table ip sluice-hostports {
//!   map hostipports  { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
//!   map hostports    { type inet_proto . inet_service : ipv4_addr . inet_service }
//!   set hairpins     { type ipv4_addr . ipv4_addr }     # podIP . podIP
//!   set podips       { type ipv4_addr }
//!   chain hostports  { <dnat via hostipports>; <dnat via hostports> }
//!   chain prerouting { nat hook prerouting: locally addressed -> hostports }
//!   chain output     { nat hook output:     locally addressed -> hostports }
//!   chain postrouting{ nat hook postrouting: hairpin + loopback masquerade }
//!   chain input      { filter hook input: route_localnet guard }
//! }
//! ```
//!
//! Every element carries the comment `"<owner-id> <pod-name>"` (the pod id, or `h-<hash>` for ids that are not short and safe).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::types::{Family, Protocol};

// Names of everything in our table. Changing any of them is a breaking change for a running
// node: `sync` at daemon start replaces the whole table, so it heals, but keep them stable.
/// `host IP . protocol . host port -> pod IP . pod port`, consulted first.
pub const MAP_HOST_IP_PORTS: &str = "hostipports";
/// `protocol . host port -> pod IP . pod port` for mappings on every local address.
pub const MAP_HOST_PORTS: &str = "hostports";
/// `pod IP . pod IP`: DNAT'd traffic from a pod to itself, masqueraded (hairpin).
pub const SET_HAIRPINS: &str = "hairpins";
/// Pod IPs that have host ports: scope of the loopback masquerade.
pub const SET_POD_IPS: &str = "podips";
/// Regular chain holding the two DNAT map lookups.
pub const CHAIN_HOSTPORTS: &str = "hostports";
pub const CHAIN_PREROUTING: &str = "prerouting";
pub const CHAIN_OUTPUT: &str = "output";
pub const CHAIN_POSTROUTING: &str = "postrouting";
/// IPv4 only: drops what `route_localnet` would otherwise let in.
pub const CHAIN_INPUT: &str = "input";

/// Number of rules each chain must hold for the table to be considered intact.
pub(crate) fn expected_rules(family: Family) -> Vec<(&'static str, usize)> {
    let mut v = vec![
        (CHAIN_HOSTPORTS, 2),
        (CHAIN_PREROUTING, 1),
        (CHAIN_OUTPUT, 1),
        (CHAIN_POSTROUTING, 2),
    ];
    if family == Family::V4 {
        v.push((CHAIN_INPUT, 1));
    }
    v
}

/// Who owns an element: stored as the element's nftables comment `"<id> <name>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Owner {
    /// The pod id when it is short and made of safe characters (CRI ids are 64 hex
    /// digits), otherwise `h-` and a 128-bit FNV-1a hash of it. Stable across releases.
    pub id: String,
    /// Sanitised pod name, informational (error messages) only.
    pub name: String,
}

/// nftables limits comments to 128 bytes (`NFTNL_UDATA_COMMENT_MAXLEN`).
const COMMENT_MAX: usize = 127;
const ID_MAX: usize = 64;

fn safe_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn safe_name_char(c: char) -> bool {
    safe_id_char(c) || matches!(c, '/' | ':' | '@' | '=' | '+')
}

/// FNV-1a 64 with a given offset basis; two bases give 128 bits. Hand-written because std's
/// `DefaultHasher` is not guaranteed stable across Rust releases, and the hash must survive
/// a daemon upgrade (it identifies elements in the kernel).
fn fnv1a(data: &[u8], basis: u64) -> u64 {
    let mut h = basis;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Owner {
    pub fn new(pod_id: &str, pod_name: &str) -> Self {
        Owner {
            id: owner_id(pod_id),
            name: pod_name
                .chars()
                .map(|c| if safe_name_char(c) { c } else { '_' })
                .collect(),
        }
    }

    /// The comment text (without quotes), truncated to the nftables limit.
    pub fn comment(&self) -> String {
        let mut c = format!("{} {}", self.id, self.name);
        // Only ASCII by construction, so byte truncation is on a char boundary.
        c.truncate(COMMENT_MAX);
        c.trim_end().to_owned()
    }

    pub fn parse(comment: &str) -> Self {
        let (id, name) = comment.split_once(' ').unwrap_or((comment, ""));
        Owner {
            id: id.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// The owner id under which a pod's elements are stored.
pub(crate) fn owner_id(pod_id: &str) -> String {
    if !pod_id.is_empty() && pod_id.len() <= ID_MAX && pod_id.chars().all(safe_id_char) {
        pod_id.to_owned()
    } else {
        let a = fnv1a(pod_id.as_bytes(), 0xcbf2_9ce4_8422_2325);
        let b = fnv1a(pod_id.as_bytes(), 0x84222325_cbf29ce4);
        format!("h-{a:016x}{b:016x}")
    }
}

/// One element of one of our maps or sets. The family is that of `pod_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Element {
    HostIpPort {
        host_ip: IpAddr,
        protocol: Protocol,
        host_port: u16,
        pod_ip: IpAddr,
        pod_port: u16,
    },
    HostPort {
        protocol: Protocol,
        host_port: u16,
        pod_ip: IpAddr,
        pod_port: u16,
    },
    Hairpin {
        pod_ip: IpAddr,
    },
    PodIp {
        pod_ip: IpAddr,
    },
}

/// The conflict key of a host-port element: (host IP or every address, protocol, port).
pub(crate) type PortKey = (Family, Option<IpAddr>, Protocol, u16);

impl Element {
    pub fn family(&self) -> Family {
        match self {
            Element::HostIpPort { pod_ip, .. }
            | Element::HostPort { pod_ip, .. }
            | Element::Hairpin { pod_ip }
            | Element::PodIp { pod_ip } => Family::of(pod_ip),
        }
    }

    pub fn container(&self) -> &'static str {
        match self {
            Element::HostIpPort { .. } => MAP_HOST_IP_PORTS,
            Element::HostPort { .. } => MAP_HOST_PORTS,
            Element::Hairpin { .. } => SET_HAIRPINS,
            Element::PodIp { .. } => SET_POD_IPS,
        }
    }

    pub fn port_key(&self) -> Option<PortKey> {
        match self {
            Element::HostIpPort {
                host_ip,
                protocol,
                host_port,
                ..
            } => Some((self.family(), Some(*host_ip), *protocol, *host_port)),
            Element::HostPort {
                protocol,
                host_port,
                ..
            } => Some((self.family(), None, *protocol, *host_port)),
            _ => None,
        }
    }

    /// Pod IP of IP-keyed elements (hairpin, pod IP), which a newer pod takes over.
    pub fn ip_key(&self) -> Option<IpAddr> {
        match self {
            Element::Hairpin { pod_ip } | Element::PodIp { pod_ip } => Some(*pod_ip),
            _ => None,
        }
    }

    /// The element key as nft writes it, e.g. `10.0.0.1 . tcp . 8080`.
    pub fn key(&self) -> String {
        match self {
            Element::HostIpPort {
                host_ip,
                protocol,
                host_port,
                ..
            } => format!("{host_ip} . {protocol} . {host_port}"),
            Element::HostPort {
                protocol,
                host_port,
                ..
            } => format!("{protocol} . {host_port}"),
            Element::Hairpin { pod_ip } => format!("{pod_ip} . {pod_ip}"),
            Element::PodIp { pod_ip } => pod_ip.to_string(),
        }
    }

    /// The full element with its owner comment, e.g.
    /// `tcp . 8080 comment "<id> <name>" : 10.88.0.5 . 80` (the comment belongs to the key,
    /// so it sits before the `:` of a map element).
    pub fn with_comment(&self, owner: &Owner) -> String {
        let mut s = format!("{} comment \"{}\"", self.key(), owner.comment());
        match self {
            Element::HostIpPort {
                pod_ip, pod_port, ..
            }
            | Element::HostPort {
                pod_ip, pod_port, ..
            } => {
                let _ = write!(s, " : {pod_ip} . {pod_port}");
            }
            _ => {}
        }
        s
    }
}

/// An element and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tagged {
    pub owner: Owner,
    pub elem: Element,
}

/// Statement verbs used on elements.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Verb {
    /// `add element`: used when (re)building a table from scratch.
    Add,
    /// `create element`: fails with EEXIST if the key exists, so a stale view of the table
    /// can never silently overwrite another pod's mapping.
    Create,
    Delete,
}

/// Appends element statements, one statement per (family, map/set), sorted for stable text.
pub(crate) fn push_elements<'a>(
    out: &mut String,
    table: &str,
    verb: Verb,
    elems: impl IntoIterator<Item = (&'a Owner, &'a Element)>,
) {
    let mut items: Vec<(&Owner, &Element)> = elems.into_iter().collect();
    items.sort_by(|a, b| {
        (a.1.family(), a.1.container(), a.1)
            .cmp(&(b.1.family(), b.1.container(), b.1))
            .then(a.0.cmp(b.0))
    });
    let mut i = 0;
    while i < items.len() {
        let (family, container) = (items[i].1.family(), items[i].1.container());
        let mut j = i;
        let mut parts = Vec::new();
        while j < items.len()
            && items[j].1.family() == family
            && items[j].1.container() == container
        {
            let (owner, elem) = items[j];
            parts.push(match verb {
                Verb::Delete => elem.key(),
                Verb::Add | Verb::Create => elem.with_comment(owner),
            });
            j += 1;
        }
        let verb_text = match verb {
            Verb::Add => "add",
            Verb::Create => "create",
            Verb::Delete => "delete",
        };
        let _ = writeln!(
            out,
            "{verb_text} element {} {table} {container} {{ {} }}",
            family.nft(),
            parts.join(", ")
        );
        i = j;
    }
}

/// Appends statements that replace `family`'s table with an empty, complete one: the
/// `add table` makes the `delete table` valid when the table does not exist yet, and the
/// whole thing is part of the caller's single atomic transaction.
pub(crate) fn push_table_rebuild(out: &mut String, family: Family, table: &str) {
    let f = family.nft();
    let addr = family.addr_type();
    let _ = writeln!(out, "add table {f} {table}");
    let _ = writeln!(out, "delete table {f} {table}");
    let _ = writeln!(out, "table {f} {table} {{");
    let _ = writeln!(
        out,
        "\tcomment \"sluice pod host ports; managed by sluice, do not edit\""
    );

    // map hostipports { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service }
    let _ = writeln!(
        out,
        "\tmap {MAP_HOST_IP_PORTS} {{\n\t\ttype {addr} . inet_proto . inet_service : {addr} . inet_service\n\t\tcomment \"host IP . protocol . host port -> pod IP . pod port\"\n\t}}"
    );
    // map hostports { type inet_proto . inet_service : ipv4_addr . inet_service }
    let _ = writeln!(
        out,
        "\tmap {MAP_HOST_PORTS} {{\n\t\ttype inet_proto . inet_service : {addr} . inet_service\n\t\tcomment \"protocol . host port -> pod IP . pod port, on every local address\"\n\t}}"
    );
    // set hairpins { type ipv4_addr . ipv4_addr }
    let _ = writeln!(
        out,
        "\tset {SET_HAIRPINS} {{\n\t\ttype {addr} . {addr}\n\t\tcomment \"pod IP . pod IP: a pod reaching its own host port\"\n\t}}"
    );
    // set podips { type ipv4_addr }
    let _ = writeln!(
        out,
        "\tset {SET_POD_IPS} {{\n\t\ttype {addr}\n\t\tcomment \"pods with host ports\"\n\t}}"
    );

    let _ = writeln!(out, "\tchain {CHAIN_HOSTPORTS} {{");
    // The host-IP-specific map must be consulted first: the second rule matches the port on
    // every local address. A map miss ends the rule without a verdict, so evaluation falls
    // through to the next rule, and off the end of the chain (no DNAT).
    //   dnat ip addr . port to ip daddr . meta l4proto . th dport map @hostipports
    let _ = writeln!(
        out,
        "\t\tdnat {f} addr . port to {f} daddr . meta l4proto . th dport map @{MAP_HOST_IP_PORTS}"
    );
    //   dnat ip addr . port to meta l4proto . th dport map @hostports
    let _ = writeln!(
        out,
        "\t\tdnat {f} addr . port to meta l4proto . th dport map @{MAP_HOST_PORTS}"
    );
    let _ = writeln!(out, "\t}}");

    // Traffic from outside and from pods, addressed to any local address (the node IPs, but
    // not pod IPs or traffic routed through the node).
    //   type nat hook prerouting priority dstnat; fib daddr type local goto hostports
    let _ = writeln!(
        out,
        "\tchain {CHAIN_PREROUTING} {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tfib daddr type local goto {CHAIN_HOSTPORTS}\n\t}}"
    );
    // Traffic from the node itself, including to 127.0.0.1 / ::1. The symbolic `dstnat`
    // priority is only accepted on prerouting, hence -100 (the same value).
    //   type nat hook output priority -100; fib daddr type local goto hostports
    let _ = writeln!(
        out,
        "\tchain {CHAIN_OUTPUT} {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tfib daddr type local goto {CHAIN_HOSTPORTS}\n\t}}"
    );

    let loopback = match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1",
    };
    let _ = writeln!(
        out,
        "\tchain {CHAIN_POSTROUTING} {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    // Hairpin: a pod reaching its own host port would see a packet from itself to itself
    // and answer locally; masquerade so the reply goes back through the node. nft cannot
    // compare saddr with daddr, hence the set of `podIP . podIP` pairs (as CRI-O does).
    // This runs after DNAT, so daddr is already the pod IP.
    //   ct status & dnat == dnat ip saddr . ip daddr @hairpins masquerade
    let _ = writeln!(
        out,
        "\t\tct status & dnat == dnat {f} saddr . {f} daddr @{SET_HAIRPINS} masquerade"
    );
    // Loopback: the node connecting to 127.0.0.1:hostport (or ::1) keeps its loopback
    // source after DNAT, which the pod cannot answer; masquerade to the outgoing interface
    // address. Scoped to DNAT'd connections towards pods with host ports.
    //   ct status & dnat == dnat ip saddr 127.0.0.0/8 ip daddr @podips masquerade
    let _ = writeln!(
        out,
        "\t\tct status & dnat == dnat {f} saddr {loopback} {f} daddr @{SET_POD_IPS} masquerade"
    );
    let _ = writeln!(out, "\t}}");

    if family == Family::V4 {
        // route_localnet (set on pod-facing interfaces, see `localhost`) would also let a
        // neighbour on that interface send *new* connections to 127.0.0.0/8 services on the
        // node (CVE-2020-8558). Accept only replies of connections the node started (and
        // anything DNAT'd by someone on purpose), like kube-proxy's KUBE-FIREWALL rule.
        //   type filter hook input priority filter
        //   iifname != "lo" ip daddr 127.0.0.0/8 ct state != { established, related }
        //       ct status & dnat == 0 drop
        let _ = writeln!(
            out,
            "\tchain {CHAIN_INPUT} {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname != \"lo\" ip daddr 127.0.0.0/8 ct state != {{ established, related }} ct status & dnat == 0 drop\n\t}}"
        );
    }
    let _ = writeln!(out, "}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_id_keeps_cri_ids_and_hashes_the_rest() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(owner_id(id), id);
        let weird = owner_id("has space \" quote");
        assert!(weird.starts_with("h-") && weird.len() == 34, "{weird}");
        assert_eq!(weird, owner_id("has space \" quote"));
        assert_ne!(weird, owner_id("has space \" quotf"));
        assert!(owner_id(&"a".repeat(65)).starts_with("h-"));
    }

    #[test]
    fn comment_round_trips_and_is_bounded() {
        let o = Owner::new("abc", "default/web \"x\"");
        assert_eq!(o.comment(), "abc default/web__x_");
        assert_eq!(Owner::parse(&o.comment()), o);
        let long = Owner::new(&"f".repeat(64), &"n".repeat(300));
        assert!(long.comment().len() <= COMMENT_MAX);
        assert_eq!(Owner::parse(&long.comment()).id, "f".repeat(64));
    }

    #[test]
    fn map_element_comment_precedes_value() {
        let e = Element::HostPort {
            protocol: Protocol::Tcp,
            host_port: 8080,
            pod_ip: "fd00::5".parse().expect("ip"),
            pod_port: 80,
        };
        assert_eq!(
            e.with_comment(&Owner::new("p1", "ns/a")),
            "tcp . 8080 comment \"p1 ns/a\" : fd00::5 . 80"
        );
        assert_eq!(e.family(), Family::V6);
    }
}
