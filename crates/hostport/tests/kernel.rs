//! Kernel tests of the nftables host-port manager: real nftables, netns and veths, one
//! throwaway node namespace per test (see `common`). Root required; they fail, never skip,
//! without it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::*;
use hostport::{
    ErrorKind, HostPortManager, NftConfig, NftHostPortManager, PodPorts, PortMapping, Protocol,
};

fn owners(m: &NftHostPortManager, rt: &tokio::runtime::Runtime) -> Vec<String> {
    let mut v: Vec<String> = rt
        .block_on(m.list())
        .unwrap()
        .into_iter()
        .map(|e| e.owner_id)
        .collect();
    v.dedup();
    v
}

fn elements_of(m: &NftHostPortManager, rt: &tokio::runtime::Runtime, pod: &str) -> Vec<String> {
    rt.block_on(m.list())
        .unwrap()
        .into_iter()
        .filter(|e| e.owner_id == pod)
        .map(|e| e.text)
        .collect()
}

#[test]
fn tcp_reachable_from_node_loopback_other_pod_hairpin_and_outside() {
    let node = Node::new(2);
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let _srv = Server::start(&p1.ns, 80, "pod1");
    let m = node.manager();
    let rt = rt();
    let sctp = PortMapping {
        protocol: Protocol::Sctp,
        ..tcp(9999, 99)
    };
    rt.block_on(m.add("pod1", "default/one", &p1.ips(), &[tcp(8080, 80), sctp]))
        .unwrap();

    // From the node itself, via its address and via loopback.
    let r = connect(&node.ns, NODE_IP, 8080, "tcp").unwrap();
    assert!(r.starts_with("hello from pod1"), "{r}");
    let r = connect(&node.ns, "127.0.0.1", 8080, "tcp").unwrap();
    assert!(r.starts_with("hello from pod1"), "{r}");
    // Loopback traffic is masqueraded to the node's pod-facing address.
    assert!(r.ends_with("10.88.1.1"), "{r}");
    // From another pod via the node IP: not masqueraded, the pod sees the real client.
    let r = connect(&p2.ns, NODE_IP, 8080, "tcp").unwrap();
    assert_eq!(r, "hello from pod1, you are 10.88.2.2");
    // Hairpin: pod1 to its own host port works and is masqueraded.
    let r = connect(&p1.ns, NODE_IP, 8080, "tcp").unwrap();
    assert_eq!(r, "hello from pod1, you are 10.88.1.1");
    // From another machine.
    let r = connect(&node.ext, NODE_IP, 8080, "tcp").unwrap();
    assert_eq!(r, "hello from pod1, you are 198.51.100.100");
    // route_localnet was set on the pod-facing interface only.
    let rl = |i: &str| node.exec(&["sysctl", "-n", &format!("net.ipv4.conf.{i}.route_localnet")]);
    assert_eq!(rl(&p1.host_if).trim(), "1");
    assert_eq!(rl(&p2.host_if).trim(), "0");
    assert_eq!(rl("all").trim(), "0");

    // SCTP: the element is in the kernel's map (no SCTP client needed to see that).
    let listed = node.nft_list("ip", "sluice-hostports");
    assert!(
        listed.contains("sctp . 9999 comment \"pod1 default/one\" : 10.88.1.2 . 99"),
        "{listed}"
    );
    let listed6 = node.nft_list("ip6", "sluice-hostports");
    assert!(
        listed6.contains("sctp . 9999 comment \"pod1 default/one\" : fd88:1::2 . 99"),
        "{listed6}"
    );
    // An unmapped port is not forwarded.
    assert_eq!(
        connect(&node.ns, NODE_IP, 8081, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );
}

#[test]
fn udp_echo_and_stale_conntrack_entries_are_flushed() {
    let node = Node::new(2);
    let p1 = &node.pods[0];
    let _srv = Server::start(&p1.ns, 53, "pod1");
    let m = node.manager();
    let rt = rt();
    // Another pod's host port already exists (so conntrack is active in the node netns, as
    // on any real node).
    rt.block_on(m.add("pod2", "default/other", &node.pods[1].ips(), &[tcp(1, 1)]))
        .unwrap();

    // A flow to the host port before it exists: answered by nobody, but conntrack keeps an
    // entry. Without the flush, the same flow would keep bypassing the new DNAT.
    assert!(connect_from(&node.ext, NODE_IP, 5353, "udp", 40000).is_err());
    let ct = node.exec(&["conntrack", "-L", "-p", "udp", "--orig-port-dst", "5353"]);
    assert!(
        ct.contains("sport=40000"),
        "precondition: a stale entry exists: {ct}"
    );

    rt.block_on(m.add("pod1", "default/dns", &p1.ips(), &[udp(5353, 53)]))
        .unwrap();
    let r = connect_from(&node.ext, NODE_IP, 5353, "udp", 40000).unwrap();
    assert_eq!(r, "ping from pod1");
    assert_eq!(
        connect(&node.ns, NODE_IP, 5353, "udp").unwrap(),
        "ping from pod1"
    );
    assert_eq!(
        connect(&node.ns, "127.0.0.1", 5353, "udp").unwrap(),
        "ping from pod1"
    );
    assert_eq!(
        connect(&node.ns, NODE_IP6, 5353, "udp").unwrap(),
        "ping from pod1"
    );
}

#[test]
fn host_ip_specific_mapping_answers_only_on_that_ip() {
    let node = Node::new(2);
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let _s1 = Server::start(&p1.ns, 80, "pod1");
    let _s2 = Server::start(&p2.ns, 80, "pod2");
    let m = node.manager();
    let rt = rt();
    let on_ip = |ip: &str, port| PortMapping {
        host_ip: Some(ip.parse().unwrap()),
        ..tcp(port, 80)
    };
    rt.block_on(m.add("pod1", "a/one", &p1.ips(), &[on_ip(NODE_IP, 8081)]))
        .unwrap();
    // The same port on the other node address belongs to another pod: allowed.
    rt.block_on(m.add("pod2", "a/two", &p2.ips(), &[on_ip(NODE_IP2, 8081)]))
        .unwrap();

    assert!(
        connect(&node.ext, NODE_IP, 8081, "tcp")
            .unwrap()
            .starts_with("hello from pod1")
    );
    assert!(
        connect(&node.ext, NODE_IP2, 8081, "tcp")
            .unwrap()
            .starts_with("hello from pod2")
    );
    rt.block_on(m.remove("pod2")).unwrap();
    assert_eq!(
        connect(&node.ext, NODE_IP2, 8081, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );
    assert_eq!(
        connect(&node.ns, NODE_IP2, 8081, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );
    assert!(
        connect(&node.ns, NODE_IP, 8081, "tcp")
            .unwrap()
            .starts_with("hello from pod1")
    );
    // A v4 host IP is not published for the pod's v6 address.
    assert_eq!(
        connect(&node.ns, NODE_IP6, 8081, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );
    let v6: Vec<_> = rt
        .block_on(m.list())
        .unwrap()
        .into_iter()
        .filter(|e| e.family == hostport::Family::V6)
        .collect();
    assert!(v6.is_empty(), "{v6:?}");
}

#[test]
fn ipv6_via_node_address_and_loopback() {
    let node = Node::new(2);
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let _srv = Server::start(&p1.ns, 80, "pod1");
    let m = node.manager();
    let rt = rt();
    rt.block_on(m.add(
        "pod1",
        "default/one",
        &p1.ips(),
        &[tcp(8080, 80), udp(8053, 80)],
    ))
    .unwrap();

    assert_eq!(
        connect(&node.ns, NODE_IP6, 8080, "tcp").unwrap(),
        "hello from pod1, you are fd5e::1"
    );
    let r = connect(&node.ns, "::1", 8080, "tcp").unwrap();
    assert_eq!(r, "hello from pod1, you are fd88:1::1", "::1 masqueraded");
    assert_eq!(
        connect(&node.ns, "::1", 8053, "udp").unwrap(),
        "ping from pod1"
    );
    assert_eq!(
        connect(&node.ext, NODE_IP6, 8080, "tcp").unwrap(),
        "hello from pod1, you are fd5e::100"
    );
    assert_eq!(
        connect(&p2.ns, NODE_IP6, 8080, "tcp").unwrap(),
        "hello from pod1, you are fd88:2::2"
    );
    assert_eq!(
        connect(&p1.ns, NODE_IP6, 8080, "tcp").unwrap(),
        "hello from pod1, you are fd88:1::1"
    );
    // The ::1 plumbing: one rule, one local route on the pod-facing interface only.
    let rules = node.exec(&["ip", "-6", "rule", "show"]);
    assert_eq!(rules.matches("to ::1 lookup 29548").count(), 1, "{rules}");
    let routes = node.exec(&["ip", "-6", "route", "show", "table", "29548"]);
    assert_eq!(
        routes.trim(),
        format!("local ::1 dev {} metric 1024 pref medium", p1.host_if)
    );

    // An IPv6-only pod gets only IPv6 elements.
    rt.block_on(m.add("pod2", "default/two", &[p2.v6], &[tcp(8090, 80)]))
        .unwrap();
    assert!(!node.nft_list("ip", "sluice-hostports").contains("8090"));
    assert!(
        node.nft_list("ip6", "sluice-hostports")
            .contains("tcp . 8090 comment \"pod2 default/two\" : fd88:2::2 . 80")
    );
}

#[test]
fn remove_refuses_afterwards_keeps_other_pods_and_is_idempotent() {
    let node = Node::new(2);
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let _s1 = Server::start(&p1.ns, 80, "pod1");
    let _s2 = Server::start(&p2.ns, 80, "pod2");
    let m = node.manager();
    let rt = rt();
    rt.block_on(m.add("pod1", "a/one", &p1.ips(), &[tcp(8080, 80), udp(8080, 80)]))
        .unwrap();
    rt.block_on(m.add("pod2", "a/two", &p2.ips(), &[tcp(9090, 80)]))
        .unwrap();
    assert!(connect(&node.ns, NODE_IP, 8080, "tcp").is_ok());

    rt.block_on(m.remove("pod1")).unwrap();
    assert_eq!(
        connect(&node.ns, NODE_IP, 8080, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );
    assert_eq!(
        connect(&node.ns, "127.0.0.1", 8080, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );
    assert_eq!(
        connect(&node.ns, NODE_IP6, 8080, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );
    for fam in ["ip", "ip6"] {
        let listed = node.nft_list(fam, "sluice-hostports");
        assert!(!listed.contains("pod1"), "{listed}");
        assert!(listed.contains("pod2"), "{listed}");
    }
    assert!(elements_of(&m, &rt, "pod1").is_empty());
    assert_eq!(
        elements_of(&m, &rt, "pod2").len(),
        6,
        "tcp/9090 + hairpin + podip, per family"
    );
    assert!(
        connect(&node.ns, NODE_IP, 9090, "tcp")
            .unwrap()
            .starts_with("hello from pod2")
    );

    // Twice, and for a pod that never existed.
    rt.block_on(m.remove("pod1")).unwrap();
    rt.block_on(m.remove("never-existed")).unwrap();
    assert!(
        connect(&node.ns, NODE_IP6, 9090, "tcp")
            .unwrap()
            .starts_with("hello from pod2")
    );
}

#[test]
fn remove_after_restart_uses_kernel_state() {
    let node = Node::new(2);
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let rt = rt();
    let long_id = "pod id that is not a CRI id and has \"quotes\"";
    {
        let m = node.manager();
        rt.block_on(m.add(long_id, "a/one", &p1.ips(), &[tcp(8080, 80)]))
            .unwrap();
        rt.block_on(m.add("pod2", "a/two", &p2.ips(), &[tcp(9090, 80)]))
            .unwrap();
    }
    // A new manager (a restarted daemon) knows nothing but the kernel.
    let m = node.manager();
    rt.block_on(m.remove(long_id)).unwrap();
    assert_eq!(owners(&m, &rt), vec!["pod2".to_owned()]);
    // Re-adding with the same ports works after the restart too.
    let m = node.manager();
    rt.block_on(m.add(long_id, "a/one", &p1.ips(), &[tcp(8080, 80)]))
        .unwrap();
    assert_eq!(owners(&m, &rt).len(), 2);
}

#[test]
fn re_add_replaces_the_pods_mappings() {
    let node = Node::new(1);
    let p1 = &node.pods[0];
    let _s1 = Server::start(&p1.ns, 80, "pod1");
    let m = node.manager();
    let rt = rt();
    rt.block_on(m.add("pod1", "a/one", &p1.ips(), &[tcp(8080, 80)]))
        .unwrap();
    rt.block_on(m.add("pod1", "a/one", &p1.ips(), &[tcp(8080, 80)]))
        .unwrap();
    rt.block_on(m.add("pod1", "a/one", &p1.ips(), &[tcp(8081, 80)]))
        .unwrap();
    assert_eq!(
        connect(&node.ns, NODE_IP, 8080, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );
    assert!(connect(&node.ns, NODE_IP, 8081, "tcp").is_ok());
    assert_eq!(elements_of(&m, &rt, "pod1").len(), 6);
}

#[test]
fn conflict_is_refused_atomically_and_names_the_owner() {
    let node = Node::new(2);
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let _s1 = Server::start(&p1.ns, 80, "pod1");
    let m = node.manager();
    let rt = rt();
    rt.block_on(m.add("pod1", "default/web", &p1.ips(), &[tcp(8080, 80)]))
        .unwrap();
    let before_v4 = node.nft_list("ip", "sluice-hostports");
    let before_v6 = node.nft_list("ip6", "sluice-hostports");

    let err = rt
        .block_on(m.add(
            "pod2",
            "default/other",
            &p2.ips(),
            &[tcp(9090, 80), tcp(8080, 80)],
        ))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("tcp/8080") && msg.contains("default/web") && msg.contains("pod1"),
        "{msg}"
    );
    // Nothing of pod2 was applied, not even its free port.
    assert_eq!(node.nft_list("ip", "sluice-hostports"), before_v4);
    assert_eq!(node.nft_list("ip6", "sluice-hostports"), before_v6);
    assert_eq!(
        connect(&node.ns, NODE_IP, 9090, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );

    // A host-IP-specific request on a port held on every address also conflicts; the same
    // port with another protocol does not.
    let specific = PortMapping {
        host_ip: Some(NODE_IP.parse().unwrap()),
        ..tcp(8080, 80)
    };
    let err = rt
        .block_on(m.add("pod2", "default/other", &p2.ips(), &[specific]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    rt.block_on(m.add("pod2", "default/other", &p2.ips(), &[udp(8080, 80)]))
        .unwrap();

    // A fresh manager (restart) finds the owner from the kernel.
    let m2 = node.manager();
    let err = rt
        .block_on(m2.add("pod3", "x/y", &p2.ips(), &[tcp(8080, 80)]))
        .unwrap_err();
    assert!(err.to_string().contains("default/web"), "{err}");
    assert!(
        connect(&node.ns, NODE_IP, 8080, "tcp")
            .unwrap()
            .starts_with("hello from pod1")
    );
}

#[test]
fn sync_rebuilds_a_flushed_table_and_drops_stale_pods() {
    let node = Node::new(2);
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let _s1 = Server::start(&p1.ns, 80, "pod1");
    let m = node.manager();
    let rt = rt();
    rt.block_on(m.add("pod1", "a/one", &p1.ips(), &[tcp(8080, 80)]))
        .unwrap();
    rt.block_on(m.add("stale", "a/gone", &p2.ips(), &[tcp(9090, 80)]))
        .unwrap();

    node.exec(&["nft", "flush", "ruleset"]);
    assert_eq!(
        connect(&node.ns, NODE_IP, 8080, "tcp"),
        Err("ERR ConnectionRefusedError".into())
    );

    // A restarted daemon syncs from its live pods.
    let m = node.manager();
    let live = [PodPorts {
        pod_id: "pod1".into(),
        pod_name: "a/one".into(),
        ips: p1.ips(),
        mappings: vec![tcp(8080, 80)],
    }];
    rt.block_on(m.sync(&live)).unwrap();
    assert!(
        connect(&node.ns, NODE_IP, 8080, "tcp")
            .unwrap()
            .starts_with("hello from pod1")
    );
    assert!(
        connect(&node.ns, NODE_IP6, 8080, "tcp")
            .unwrap()
            .starts_with("hello from pod1")
    );
    assert_eq!(owners(&node.manager(), &rt), vec!["pod1".to_owned()]);

    // Stale elements in an intact table are dropped too.
    rt.block_on(m.add("stale", "a/gone", &p2.ips(), &[tcp(9090, 80)]))
        .unwrap();
    rt.block_on(m.sync(&live)).unwrap();
    assert_eq!(owners(&node.manager(), &rt), vec!["pod1".to_owned()]);
    assert!(!node.nft_list("ip", "sluice-hostports").contains("9090"));

    // A table damaged behind our back (a chain flushed) is repaired by the next add.
    node.exec(&[
        "nft",
        "flush",
        "chain",
        "ip",
        "sluice-hostports",
        "prerouting",
    ]);
    let m = node.manager();
    rt.block_on(m.add("pod2", "a/two", &p2.ips(), &[tcp(7070, 80)]))
        .unwrap();
    assert!(
        connect(&node.ext, NODE_IP, 8080, "tcp")
            .unwrap()
            .starts_with("hello from pod1")
    );
}

#[test]
fn golden_ruleset() {
    let node = Node::new(0);
    let m = NftHostPortManager::new(NftConfig {
        table: "golden-hostports".into(),
        ..node.config()
    })
    .unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let live = vec![
        PodPorts {
            pod_id: "bbbb".into(),
            pod_name: "kube-system/dns".into(),
            ips: vec![ip("10.88.0.3"), ip("fd88::3")],
            mappings: vec![
                udp(53, 5353),
                tcp(53, 5353),
                PortMapping {
                    protocol: Protocol::Sctp,
                    ..tcp(3868, 3868)
                },
            ],
        },
        PodPorts {
            pod_id: "aaaa".into(),
            pod_name: "default/web".into(),
            ips: vec![ip("10.88.0.2"), ip("fd88::2")],
            mappings: vec![
                tcp(8080, 80),
                PortMapping {
                    host_ip: Some(ip("192.0.2.10")),
                    ..tcp(8443, 443)
                },
                PortMapping {
                    host_ip: Some(ip("2001:db8::10")),
                    ..tcp(8443, 443)
                },
                tcp(0, 9000),
            ],
        },
    ];
    let script = m.render_sync(&live).unwrap();
    let rt = rt();
    rt.block_on(m.sync(&live)).unwrap();
    let listed = format!(
        "{}{}",
        node.nft_list("ip", "golden-hostports"),
        node.nft_list("ip6", "golden-hostports")
    );
    // Nothing in the default table: the name is configurable.
    let tables = node.exec(&["nft", "list", "tables"]);
    assert_eq!(
        tables,
        "table ip golden-hostports\ntable ip6 golden-hostports\n"
    );

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for (name, actual) in [
        ("sync-script.nft", &script),
        ("listed-ruleset.nft", &listed),
    ] {
        let path = dir.join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(
            actual, &expected,
            "{name} differs from the golden file (UPDATE_GOLDEN=1 rewrites it)"
        );
    }
}

#[test]
fn noop_manager_touches_nothing() {
    let node = Node::new(1);
    let rt = rt();
    let m = hostport::NoopHostPortManager;
    rt.block_on(m.add("pod1", "a/one", &node.pods[0].ips(), &[tcp(8080, 80)]))
        .unwrap();
    rt.block_on(m.remove("pod1")).unwrap();
    assert_eq!(node.exec(&["nft", "list", "tables"]), "");
}

#[test]
fn invalid_config_is_refused() {
    for cfg in [
        NftConfig {
            table: "bad name".into(),
            ..NftConfig::default()
        },
        NftConfig {
            table: "x;flush ruleset".into(),
            ..NftConfig::default()
        },
        NftConfig {
            loopback6_table: 255,
            ..NftConfig::default()
        },
        NftConfig {
            localhost: hostport::LocalhostAccess::Interfaces(vec!["../all".into()]),
            ..NftConfig::default()
        },
    ] {
        let err = NftHostPortManager::new(cfg).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
}

#[test]
fn failures_keep_the_evidence() {
    // A manager pointed at a namespace that does not exist fails with nsenter's stderr.
    let rt = rt();
    let m = NftHostPortManager::new(NftConfig {
        netns: Some(format!("/run/netns/hostport-missing-{}", std::process::id()).into()),
        ..NftConfig::default()
    })
    .unwrap();
    let err = rt
        .block_on(m.add("p", "a/b", &["10.0.0.1".parse().unwrap()], &[tcp(1, 1)]))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    match &err {
        hostport::Error::Command {
            command, stderr, ..
        } => {
            assert!(
                command.starts_with("nsenter --net=/run/netns/hostport-missing-"),
                "{command}"
            );
            assert!(!stderr.is_empty());
        }
        other => panic!("expected Command, got {other:?}"),
    }

    // A transaction nft refuses keeps nft's stderr and the whole script. The refusal is
    // simulated by an `nft` wrapper (real nft for everything but `-f`), since our own
    // scripts are valid by construction.
    let node = Node::new(1);
    let dir = std::env::temp_dir().join(format!("hostport-nft-wrapper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join("nft");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nif [ \"$1\" = -f ]; then cat >/dev/null; echo 'Error: simulated refusal' >&2; exit 1; fi\nexec nft \"$@\"\n",
    )
    .unwrap();
    sh(&["chmod", "+x", wrapper.to_str().unwrap()]);
    let m = NftHostPortManager::new(NftConfig {
        nft: wrapper.to_str().unwrap().into(),
        ..node.config()
    })
    .unwrap();
    let err = rt
        .block_on(m.add("p", "a/b", &node.pods[0].ips(), &[tcp(1, 1)]))
        .unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    match err {
        hostport::Error::NftApply { stderr, script, .. } => {
            assert_eq!(stderr, "Error: simulated refusal");
            assert!(
                script.contains("tcp . 1 comment \"p a/b\" : 10.88.1.2 . 1"),
                "{script}"
            );
        }
        other => panic!("expected NftApply, got {other:?}"),
    }
    assert_eq!(node.exec(&["nft", "list", "tables"]), "", "nothing applied");
}

#[test]
fn stale_index_is_detected_and_reloaded() {
    // Someone deletes our table behind the manager's back: the element-only transaction
    // fails atomically, the manager re-reads the kernel, rebuilds, and succeeds.
    let node = Node::new(2);
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let _s2 = Server::start(&p2.ns, 80, "pod2");
    let m = node.manager();
    let rt = rt();
    rt.block_on(m.add("pod1", "a/one", &p1.ips(), &[tcp(8080, 80)]))
        .unwrap();
    node.exec(&["nft", "delete", "table", "ip", "sluice-hostports"]);
    rt.block_on(m.add("pod2", "a/two", &p2.ips(), &[tcp(9090, 80)]))
        .unwrap();
    assert!(
        connect(&node.ns, NODE_IP, 9090, "tcp")
            .unwrap()
            .starts_with("hello from pod2")
    );
    // pod1's v4 elements went with the table (sync restores them); its v6 ones remain and
    // remove still finds them.
    rt.block_on(m.remove("pod1")).unwrap();
    assert_eq!(owners(&m, &rt), vec!["pod2".to_owned()]);
}
