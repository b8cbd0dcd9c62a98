//! Element diffs over netlink against the real kernel (root): the same diff sent over
//! netlink into table A and as `nft -f` of `diff_script` into table B must leave both
//! tables with the same elements (and counters); a refused batch changes nothing. Counters
//! read over netlink equal those `nft -j list table` shows, traffic counted or not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use netpolicy::enforce::parse_counters;
use netpolicy::netlink::{self, ElementCounter, NetlinkError};
use netpolicy::nft::{
    self, AddrRange, Diff, Element, Elements, Family, RulesetOptions, SetId, SetKind,
};
use netpolicy::{Compiled, Direction, Protocol};
use nix::errno::Errno;
use serde_json::Value;

use common::{ip, pod, world};

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
    };
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:05x}", ((std::process::id() << 6) ^ n) & 0xfffff)
}

/// Runs `nft -f -` with `script`; stderr on failure.
fn nft_script(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Two tables of the test's own with the enforcer's sets, deleted on drop.
struct Tables {
    a: String,
    b: String,
}

impl Tables {
    /// Both tables hold `elements`.
    fn new(elements: &Elements) -> Self {
        let id = unique();
        let tables = Tables {
            a: format!("sluice-nlt-a{id}"),
            b: format!("sluice-nlt-b{id}"),
        };
        for table in [&tables.a, &tables.b] {
            let options = RulesetOptions {
                table: table.clone(),
                log_rate_per_sec: None,
            };
            nft_script(&nft::ruleset(&options, elements)).unwrap();
        }
        tables
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        for table in [&self.a, &self.b] {
            let _ = nft_script(&nft::delete_script(table));
        }
    }
}

/// The elements of every set of `table` as `nft -j` prints them (sorted).
fn listing(table: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for set in SetId::all() {
        let name = set.name();
        let o = Command::new("nft")
            .args(["-j", "list", "set", "inet", table, &name])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut elems: Vec<Value> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|item| item.get("set"))
            .flat_map(|s| s.get("elem").and_then(Value::as_array).cloned())
            .flatten()
            .collect();
        elems.sort_by_key(|v| v.to_string());
        out.insert(name, elems);
    }
    out
}

fn small_world_elements() -> Elements {
    let w = world(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{protocol: TCP, port: 5432}]
  - from: [{ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24]}}]
  egress:
  - to: [{ipBlock: {cidr: "fd09::/32"}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 8000, endPort: 8080}]
"#,
        vec![
            pod("default", "db", &[("app", "db")], &["10.66.0.3", "fd66::3"]),
            pod(
                "default",
                "db2",
                &[("app", "db")],
                &["10.66.0.4", "fd66::4"],
            ),
            pod(
                "default",
                "web",
                &[("app", "web")],
                &["10.66.0.2", "fd66::2"],
            ),
        ],
    );
    nft::all_elements(&Compiled::new(&w))
}

fn range(from: &str, to: &str) -> AddrRange {
    let (a, b) = (AddrRange::single(ip(from)), AddrRange::single(ip(to)));
    AddrRange {
        family: a.family,
        start: a.start,
        end: b.end,
    }
}

fn cidr(s: &str) -> AddrRange {
    AddrRange::from_cidr(&s.parse().unwrap())
}

fn all(direction: Direction, pod: &str, peer: AddrRange) -> Element {
    Element::All {
        direction,
        pod: ip(pod),
        peer,
    }
}

fn ports(
    direction: Direction,
    pod: &str,
    peer: AddrRange,
    protocol: Protocol,
    ports: (u16, u16),
) -> Element {
    Element::Ports {
        direction,
        pod: ip(pod),
        peer,
        protocol,
        start: ports.0,
        end: ports.1,
    }
}

/// New elements of a pod the small world does not know, disjoint within each set: both
/// families, every set kind, prefixes, ranges, single addresses, everything, single ports,
/// port ranges and 0-65535.
fn new_elements() -> Vec<Element> {
    use Direction::{Egress, Ingress};
    use Protocol::{Sctp, Tcp, Udp};
    let (p4, p6) = ("10.77.0.5", "fd77::5");
    vec![
        Element::Isolated {
            direction: Ingress,
            pod: ip(p4),
        },
        Element::Isolated {
            direction: Egress,
            pod: ip(p6),
        },
        all(Ingress, p4, cidr("10.1.0.0/16")),
        all(Ingress, p4, range("10.2.0.3", "10.2.0.9")),
        all(Ingress, p4, AddrRange::single(ip("10.2.0.77"))),
        all(Egress, p4, AddrRange::everything(Family::V4)),
        all(Ingress, p6, cidr("fd00:1::/64")),
        all(Ingress, p6, range("fd00:3::7", "fd00:3::1:0")),
        all(Egress, p6, AddrRange::single(ip("fd00::9"))),
        ports(
            Ingress,
            p4,
            AddrRange::single(ip("10.3.0.1")),
            Tcp,
            (80, 80),
        ),
        ports(Ingress, p4, cidr("10.4.0.0/24"), Udp, (1000, 2000)),
        ports(
            Ingress,
            p4,
            AddrRange::everything(Family::V4),
            Sctp,
            (0, 65535),
        ),
        ports(
            Egress,
            p4,
            range("10.5.0.1", "10.5.0.2"),
            Tcp,
            (65535, 65535),
        ),
        ports(
            Egress,
            p6,
            AddrRange::everything(Family::V6),
            Tcp,
            (0, 65535),
        ),
        ports(Ingress, p6, range("fd00:2::5", "fd00:2::9"), Udp, (53, 53)),
        ports(Ingress, p6, cidr("fd00:4::/48"), Tcp, (0, 1023)),
    ]
}

fn set_of(e: &Element) -> String {
    e.set().name()
}

#[test]
fn netlink_and_nft_leave_the_same_elements() {
    require_root!();
    let initial = small_world_elements();
    let tables = Tables::new(&initial);
    // Delete every element of db (10.66.0.3, fd66::3); add the new pod's.
    let delete: Vec<Element> = initial
        .keys()
        .filter(|e| e.pod() == ip("10.66.0.3") || e.pod() == ip("fd66::3"))
        .cloned()
        .collect();
    assert!(delete.len() >= 6, "{delete:?}");
    let add = new_elements();
    let diff = Diff {
        delete: delete.clone(),
        add: add.clone(),
    };

    netlink::apply_diff(&tables.a, &diff).unwrap();
    nft_script(&nft::diff_script(&tables.b, &diff)).unwrap();

    let a = listing(&tables.a);
    let b = listing(&tables.b);
    assert_eq!(a, b);
    // The expected number of elements per set, each with a counter.
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for e in initial.keys().filter(|e| !delete.contains(e)).chain(&add) {
        *want.entry(set_of(e)).or_default() += 1;
    }
    for set in SetId::all() {
        let name = set.name();
        let elems = &a[&name];
        assert_eq!(
            elems.len(),
            want.get(&name).copied().unwrap_or(0),
            "{name}: {elems:?}"
        );
        for e in elems {
            assert!(
                e["elem"]["counter"].is_object(),
                "{name}: no counter in {e}"
            );
        }
    }
    // Every kind of set was touched in both families.
    for kind in [SetKind::Isolated, SetKind::All, SetKind::Ports] {
        for family in [Family::V4, Family::V6] {
            assert!(
                add.iter()
                    .any(|e| e.set().kind == kind && e.set().family == family),
                "{kind:?} {family:?}"
            );
        }
    }
    let text = a["in_ports4"]
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    assert!(
        text.contains("10.77.0.5") && !text.contains("10.66.0.3"),
        "{text}"
    );

    // Deleting what was added restores the start, in both ways.
    let back = Diff {
        delete: add,
        add: delete,
    };
    netlink::apply_diff(&tables.a, &back).unwrap();
    nft_script(&nft::diff_script(&tables.b, &back)).unwrap();
    let a = listing(&tables.a);
    assert_eq!(a, listing(&tables.b));
    let count: usize = a.values().map(Vec::len).sum();
    assert_eq!(count, initial.len());
}

#[test]
fn a_refused_batch_changes_nothing() {
    require_root!();
    let initial = small_world_elements();
    let tables = Tables::new(&initial);
    let existing = initial.keys().next().unwrap().clone();
    let base = new_elements();
    netlink::apply_diff(
        &tables.a,
        &Diff {
            delete: vec![],
            add: base.clone(),
        },
    )
    .unwrap();
    let before = listing(&tables.a);

    // A valid deletion, a valid addition, and an addition overlapping an element in the
    // set (10.1.0.0/16 is there): EEXIST, and none of the three happened.
    let overlapping = all(Direction::Ingress, "10.77.0.5", cidr("10.1.2.0/24"));
    let err = netlink::apply_diff(
        &tables.a,
        &Diff {
            delete: vec![existing.clone()],
            add: vec![
                all(Direction::Ingress, "10.77.0.5", cidr("10.8.0.0/16")),
                overlapping,
            ],
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            NetlinkError::Kernel {
                errno: Errno::EEXIST,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("in_all4"), "{err}");
    assert_eq!(listing(&tables.a), before);

    // A valid addition and the deletion of an element that is not there: ENOENT.
    let err = netlink::apply_diff(
        &tables.a,
        &Diff {
            delete: vec![Element::Isolated {
                direction: Direction::Egress,
                pod: ip("10.99.0.1"),
            }],
            add: vec![ports(
                Direction::Egress,
                "fd77::5",
                cidr("fd00:5::/64"),
                Protocol::Udp,
                (7, 7),
            )],
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            NetlinkError::Kernel {
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("10.99.0.1"), "{err}");
    assert_eq!(listing(&tables.a), before);

    // Adding an element that is exactly there already is a no-op, as with `nft add
    // element` (NLM_F_CREATE without NLM_F_EXCL).
    let again = Diff {
        delete: vec![],
        add: vec![existing, base[0].clone(), base[2].clone()],
    };
    netlink::apply_diff(&tables.a, &again).unwrap();
    assert_eq!(listing(&tables.a), before);

    // No such table: refused, nothing created.
    let missing = format!("sluice-nlt-missing{}", unique());
    let err = netlink::apply_diff(&missing, &again).unwrap_err();
    assert!(
        matches!(
            err,
            NetlinkError::Kernel {
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{err:?}"
    );
    let listed = Command::new("nft")
        .args(["list", "table", "inet", &missing])
        .output()
        .unwrap();
    assert!(!listed.status.success());
}

#[test]
fn an_empty_diff_sends_nothing() {
    // No root needed: nothing is sent, so even a table that does not exist is fine.
    netlink::apply_diff("sluice-nlt-none", &Diff::default()).unwrap();
}

fn sorted(mut v: Vec<ElementCounter>) -> Vec<ElementCounter> {
    v.sort();
    v
}

/// `nft -j list table inet <table>`, parsed as the enforcer parses it.
fn nft_counters(table: &str) -> Vec<ElementCounter> {
    let o = Command::new("nft")
        .args(["-j", "list", "table", "inet", table])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    sorted(parse_counters(&String::from_utf8(o.stdout).unwrap()).unwrap())
}

#[test]
fn netlink_counters_equal_nft_json_and_element_keys() {
    require_root!();
    let mut elements = small_world_elements();
    for e in new_elements() {
        elements.insert(e, 0);
    }
    let tables = Tables::new(&elements);
    let got = sorted(netlink::read_counters(&tables.a).unwrap());
    assert_eq!(got, nft_counters(&tables.a));
    // Exactly the keys the enforcer attributes counters by (`Element::key` per set).
    let want: Vec<ElementCounter> =
        sorted(elements.keys().map(|e| (set_of(e), e.key(), 0)).collect());
    assert_eq!(got, want);
    for set in SetId::all() {
        assert!(
            got.iter().any(|(name, _, _)| *name == set.name()),
            "no element of {}",
            set.name()
        );
    }

    // After deleting some over netlink, both readers still agree.
    let delete: Vec<Element> = elements
        .keys()
        .filter(|e| e.pod() == ip("10.66.0.3") || e.pod() == ip("fd66::3"))
        .cloned()
        .collect();
    netlink::apply_diff(
        &tables.a,
        &Diff {
            delete,
            add: vec![],
        },
    )
    .unwrap();
    let got = sorted(netlink::read_counters(&tables.a).unwrap());
    assert_eq!(got, nft_counters(&tables.a));
    assert!(got.len() < want.len());
}

#[test]
fn netlink_counters_of_a_missing_table_are_an_error() {
    require_root!();
    let missing = format!("sluice-nlt-missing{}", unique());
    let err = netlink::read_counters(&missing).unwrap_err();
    assert!(
        matches!(
            err,
            NetlinkError::Kernel {
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Counters that traffic incremented read the same over netlink as with `nft -j`: a test
/// chain on the output hook looks marked loopback datagrams up in the table's sets.
#[test]
fn netlink_counters_count_traffic_like_nft() {
    require_root!();
    const MARK: u32 = 0x5a17;
    let rx4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let port4 = rx4.local_addr().unwrap().port();
    let lo4 = AddrRange::single(ip("127.0.0.1"));
    let lo6 = AddrRange::single(ip("::1"));
    let counted = [
        ports(
            Direction::Ingress,
            "127.0.0.1",
            lo4,
            Protocol::Udp,
            (port4, port4),
        ),
        Element::Isolated {
            direction: Direction::Egress,
            pod: ip("127.0.0.1"),
        },
        all(Direction::Egress, "::1", lo6),
        ports(Direction::Ingress, "::1", lo6, Protocol::Udp, (0, 65535)),
    ];
    let mut elements = small_world_elements();
    for e in &counted {
        elements.insert(e.clone(), 0);
    }
    let tables = Tables::new(&elements);
    let t = &tables.a;
    nft_script(&format!(
        "table inet {t} {{
            chain count_out {{
                type filter hook output priority filter; policy accept;
                meta mark {MARK:#x} meta l4proto udp ip daddr . ip saddr . meta l4proto . th dport @in_ports4
                meta mark {MARK:#x} ip saddr @eg_iso4
                meta mark {MARK:#x} ip6 saddr . ip6 daddr @eg_all6
                meta mark {MARK:#x} meta l4proto udp ip6 daddr . ip6 saddr . meta l4proto . th dport @in_ports6
            }}
        }}"
    ))
    .unwrap();
    let send = |to: std::net::SocketAddr, n: usize| {
        let bind: std::net::SocketAddr = if to.is_ipv4() {
            "127.0.0.1:0".parse().unwrap()
        } else {
            "[::1]:0".parse().unwrap()
        };
        let tx = std::net::UdpSocket::bind(bind).unwrap();
        nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::Mark, &MARK).unwrap();
        for _ in 0..n {
            tx.send_to(b"sluice", to).unwrap();
        }
    };
    send(rx4.local_addr().unwrap(), 3);
    send(rx6.local_addr().unwrap(), 2);
    let got = sorted(netlink::read_counters(t).unwrap());
    assert_eq!(got, nft_counters(t));
    let packets = |e: &Element| {
        got.iter()
            .find(|(set, key, _)| *set == set_of(e) && *key == e.key())
            .map(|c| c.2)
    };
    assert_eq!(packets(&counted[0]), Some(3));
    assert_eq!(packets(&counted[1]), Some(3));
    assert_eq!(packets(&counted[2]), Some(2));
    assert_eq!(packets(&counted[3]), Some(2));
    let total: u64 = got.iter().map(|c| c.2).sum();
    assert_eq!(total, 10, "{got:?}");
}
