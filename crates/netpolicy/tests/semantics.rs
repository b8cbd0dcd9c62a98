//! Table-driven tests for each rule of the NetworkPolicy v1 spec.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use netpolicy::{
    Cidr, Compiled, CompiledPeer, Decision, Endpoint, ExplainError, LabelSelector, Operator,
    PolicyRef, Protocol, Reason, Requirement, Severity, explain, selects,
};

fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
    Requirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

#[test]
fn label_selector_operators() {
    let l = labels(&[("app", "web"), ("tier", "front")]);
    let none = labels(&[]);
    let cases: Vec<(&str, LabelSelector, bool, bool)> = vec![
        // (name, selector, matches l, matches empty labels)
        ("empty", LabelSelector::everything(), true, true),
        (
            "matchLabels",
            LabelSelector {
                match_labels: labels(&[("app", "web")]),
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "matchLabels wrong value",
            LabelSelector {
                match_labels: labels(&[("app", "db")]),
                ..Default::default()
            },
            false,
            false,
        ),
        (
            "In",
            LabelSelector {
                match_expressions: vec![req("app", Operator::In, &["db", "web"])],
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "NotIn (absent key matches)",
            LabelSelector {
                match_expressions: vec![req("app", Operator::NotIn, &["web"])],
                ..Default::default()
            },
            false,
            true,
        ),
        (
            "Exists",
            LabelSelector {
                match_expressions: vec![req("tier", Operator::Exists, &[])],
                ..Default::default()
            },
            true,
            false,
        ),
        (
            "DoesNotExist",
            LabelSelector {
                match_expressions: vec![req("tier", Operator::DoesNotExist, &[])],
                ..Default::default()
            },
            false,
            true,
        ),
        (
            "labels AND expressions",
            LabelSelector {
                match_labels: labels(&[("app", "web")]),
                match_expressions: vec![req("tier", Operator::In, &["back"])],
            },
            false,
            false,
        ),
    ];
    for (name, sel, on_l, on_none) in cases {
        assert_eq!(sel.matches(&l), on_l, "{name} on {l:?}");
        assert_eq!(sel.matches(&none), on_none, "{name} on no labels");
    }
}

#[test]
fn match_expressions_from_yaml() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: expr, namespace: default}
spec:
  podSelector:
    matchExpressions:
    - {key: app, operator: In, values: [c]}
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: role, operator: Exists}
        - {key: env, operator: NotIn, values: [prod]}
        - {key: banned, operator: DoesNotExist}
";
    let w = world(
        yaml,
        vec![
            pod("default", "c", &[("app", "c")], &["10.1.0.1"]),
            pod("default", "ok", &[("role", "x")], &["10.1.0.2"]),
            pod(
                "default",
                "dev",
                &[("role", "x"), ("env", "dev")],
                &["10.1.0.3"],
            ),
            pod(
                "default",
                "prod",
                &[("role", "x"), ("env", "prod")],
                &["10.1.0.4"],
            ),
            pod("default", "norole", &[], &["10.1.0.5"]),
            pod(
                "default",
                "banned",
                &[("role", "x"), ("banned", "")],
                &["10.1.0.6"],
            ),
        ],
    );
    for (from, expect) in [
        ("default/ok", true),
        ("default/dev", true),
        ("default/prod", false),
        ("default/norole", false),
        ("default/banned", false),
    ] {
        assert_eq!(tcp(&w, from, "default/c", 80), expect, "{from}");
    }
}

#[test]
fn empty_pod_selector_selects_every_pod_of_the_policy_namespace_only() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {}
";
    let w = world(
        yaml,
        vec![
            pod("prod", "a", &[("x", "1")], &["10.1.0.1"]),
            pod("prod", "b", &[], &["10.1.0.2"]),
            pod("dev", "c", &[], &["10.1.0.3"]),
        ],
    );
    let deny_all = vec![PolicyRef {
        namespace: "prod".into(),
        name: "deny-all".into(),
    }];
    assert_eq!(selects(&w, &w.pods[0]), deny_all);
    assert_eq!(selects(&w, &w.pods[1]), deny_all);
    assert!(selects(&w, &w.pods[2]).is_empty());
    assert!(!tcp(&w, "prod/b", "prod/a", 80));
    assert!(!tcp(&w, "dev/c", "prod/a", 80));
    assert!(tcp(&w, "prod/a", "dev/c", 80));
}

#[test]
fn peer_selector_combinations() {
    // (peer YAML, sources expected to be allowed among a (ns1 app=x), b (ns1 app=y),
    // c (ns2 app=x), d (ns3 app=x; ns3 labelled env=test by manifest))
    let cases = [
        ("podSelector: {}", vec!["t/a", "t/b"]),
        ("podSelector: {matchLabels: {app: x}}", vec!["t/a"]),
        ("namespaceSelector: {}", vec!["t/a", "t/b", "u/c", "v/d"]),
        ("namespaceSelector: {matchLabels: {env: test}}", vec!["v/d"]),
        (
            "namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [u, v]}]}",
            vec!["u/c", "v/d"],
        ),
        (
            "{namespaceSelector: {}, podSelector: {matchLabels: {app: x}}}",
            vec!["t/a", "u/c", "v/d"],
        ),
        ("ipBlock: {cidr: 10.1.0.0/30}", vec!["t/a", "t/b"]),
    ];
    for (peer, expect) in cases {
        let yaml = format!(
            "
apiVersion: v1
kind: Namespace
metadata: {{name: v, labels: {{env: test}}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: t}}
spec:
  podSelector: {{matchLabels: {{role: target}}}}
  ingress:
  - from:
    - {peer}
"
        );
        let w = world(
            &yaml,
            vec![
                pod("t", "a", &[("app", "x")], &["10.1.0.1"]),
                pod("t", "b", &[("app", "y")], &["10.1.0.2"]),
                pod("u", "c", &[("app", "x")], &["10.1.0.5"]),
                pod("v", "d", &[("app", "x")], &["10.1.0.6"]),
                pod("t", "target", &[("role", "target")], &["10.1.0.9"]),
            ],
        );
        for from in ["t/a", "t/b", "u/c", "v/d"] {
            assert_eq!(
                tcp(&w, from, "t/target", 80),
                expect.contains(&from),
                "peer {peer}, from {from}"
            );
        }
    }
}

#[test]
fn namespace_manifest_cannot_override_the_name_label() {
    let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: u, labels: {kubernetes.io/metadata.name: t}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: t}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: t}}
";
    let w = world(
        yaml,
        vec![
            pod("t", "a", &[], &["10.1.0.1"]),
            pod("u", "b", &[], &["10.1.0.2"]),
        ],
    );
    assert_eq!(
        w.namespace_labels("u").get("kubernetes.io/metadata.name"),
        Some(&"u".to_string())
    );
    assert!(!tcp(&w, "u/b", "t/a", 80));
}

#[test]
fn ip_block_with_except_ipv4_and_ipv6() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except: [172.17.1.0/24, 172.17.2.128/25]
    - ipBlock:
        cidr: fd00:1::/64
        except: [fd00:1::ff00/120]
";
    let w = world(
        yaml,
        vec![pod("default", "a", &[], &["10.1.0.1", "fd00:9::1"])],
    );
    for (src, expect) in [
        ("172.17.0.1", true),
        ("172.17.255.254", true),
        ("172.17.1.1", false),
        ("172.17.2.1", true),
        ("172.17.2.200", false),
        ("172.18.0.1", false),
        ("fd00:1::1", true),
        ("fd00:1::ff01", false),
        ("fd00:2::1", false),
    ] {
        assert_eq!(tcp(&w, src, "default/a", 80), expect, "{src}");
    }
}

#[test]
fn cidr_parsing_and_containment() {
    let c: Cidr = "10.1.2.3/16".parse().unwrap();
    assert_eq!(c.to_string(), "10.1.0.0/16");
    assert!(c.contains(ip("10.1.255.255")));
    assert!(!c.contains(ip("10.2.0.0")));
    assert!(!c.contains(ip("::ffff:10.1.0.1")), "never across families");
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(ip("255.255.255.255")));
    let v6all: Cidr = "::/0".parse().unwrap();
    assert!(v6all.contains(ip("fd00::1")) && !v6all.contains(ip("1.2.3.4")));
    let host: Cidr = "fd00::1/128".parse().unwrap();
    assert!(host.contains(ip("fd00::1")) && !host.contains(ip("fd00::2")));
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "fd00::/129",
        "x/8",
        "10.0.0.0/-1",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad}");
    }
    assert!(c.strictly_contains(&"10.1.3.0/24".parse().unwrap()));
    assert!(!c.strictly_contains(&"10.1.0.0/16".parse().unwrap()));
    assert!(!c.strictly_contains(&"10.0.0.0/8".parse().unwrap()));
}

fn ports_world(ports: &str) -> netpolicy::World {
    let yaml = format!(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: ports, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: srv}}}}
  ingress:
  - ports: {ports}
"
    );
    world(
        &yaml,
        vec![
            pod("default", "srv", &[("app", "srv")], &["10.1.0.1"]),
            pod("default", "cli", &[], &["10.1.0.2"]),
        ],
    )
}

/// (port, protocol, expected to be allowed)
type PortCheck = (u16, Protocol, bool);

#[test]
fn ports_protocols_and_end_port() {
    use Protocol::*;
    let cases: Vec<(&str, Vec<PortCheck>)> = vec![
        // protocol defaults to TCP
        (
            "[{port: 80}]",
            vec![(80, Tcp, true), (80, Udp, false), (81, Tcp, false)],
        ),
        (
            "[{protocol: UDP, port: 53}]",
            vec![(53, Udp, true), (53, Tcp, false)],
        ),
        (
            "[{protocol: SCTP, port: 9999}]",
            vec![(9999, Sctp, true), (9999, Tcp, false)],
        ),
        // no port: every port of the protocol
        (
            "[{protocol: UDP}]",
            vec![(1, Udp, true), (65535, Udp, true), (1, Tcp, false)],
        ),
        (
            "[{port: 8000, endPort: 8010}]",
            vec![
                (7999, Tcp, false),
                (8000, Tcp, true),
                (8005, Tcp, true),
                (8010, Tcp, true),
                (8011, Tcp, false),
                (8005, Udp, false),
            ],
        ),
        // empty list: all ports
        ("[]", vec![(1, Tcp, true), (2, Sctp, true)]),
        // named port: that entry matches nothing, the others still apply
        (
            "[{port: http}, {port: 443}]",
            vec![(80, Tcp, false), (443, Tcp, true)],
        ),
        ("[{port: http}]", vec![(80, Tcp, false), (8080, Tcp, false)]),
    ];
    for (ports, checks) in cases {
        let w = ports_world(ports);
        for (port, proto, expect) in checks {
            assert_eq!(
                allowed(&w, "default/cli", "default/srv", port, proto),
                expect,
                "ports {ports}: {port}/{proto}"
            );
        }
    }
}

#[test]
fn named_port_warns_naming_the_policy() {
    let loaded = load(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80}, {port: http}]
",
    );
    assert_eq!(loaded.policies.len(), 1, "the policy still applies");
    assert_eq!(loaded.problems.len(), 1);
    let p = &loaded.problems[0];
    assert_eq!(p.severity, Severity::Warning);
    assert_eq!(p.field, "spec.ingress[0].ports[1].port (\"http\")");
    assert!(p.message.contains("shop/named"), "{p}");

    // Egress rules of an Ingress-only policy are ignored, so their named ports are too.
    let loaded = load(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ignored, namespace: shop}
spec:
  policyTypes: [Ingress]
  egress:
  - ports: [{port: dns}]
",
    );
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
}

/// (description, policy spec body, pod ingress isolated, pod egress isolated,
/// ingress allowed from b, egress allowed to b)
#[test]
fn policy_types_defaulting() {
    let cases = [
        ("no rules, no types", "{}", true, false, false, true),
        (
            "ingress rules only",
            "{ingress: [{}]}",
            true,
            false,
            true,
            true,
        ),
        (
            "egress rules: Ingress and Egress",
            "{egress: [{ports: [{port: 53, protocol: UDP}]}]}",
            true,
            true,
            false,
            false,
        ),
        (
            "empty egress list does not imply Egress",
            "{egress: []}",
            true,
            false,
            false,
            true,
        ),
        (
            "explicit Egress only, no rules: deny all egress",
            "{policyTypes: [Egress]}",
            false,
            true,
            true,
            false,
        ),
        (
            "explicit Ingress ignores egress rules",
            "{policyTypes: [Ingress], egress: [{}]}",
            true,
            false,
            false,
            true,
        ),
        (
            "both, allow all",
            "{policyTypes: [Ingress, Egress], ingress: [{}], egress: [{}]}",
            true,
            true,
            true,
            true,
        ),
        (
            "empty from and to lists match all",
            "{policyTypes: [Ingress, Egress], ingress: [{from: []}], egress: [{to: []}]}",
            true,
            true,
            true,
            true,
        ),
        (
            "empty policyTypes defaults like absent",
            "{policyTypes: [], egress: [{}]}",
            true,
            true,
            false,
            true,
        ),
        (
            "empty ingress list: deny",
            "{ingress: []}",
            true,
            false,
            false,
            true,
        ),
    ];
    for (name, spec, ing_iso, eg_iso, from_b, to_b) in cases {
        let yaml = format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: a}}}}
  {}
",
            spec.trim_start_matches('{')
                .trim_end_matches('}')
                .replace(", policyTypes", "\n  policyTypes")
                .replace(", ingress", "\n  ingress")
                .replace(", egress", "\n  egress")
        );
        let w = world(
            &yaml,
            vec![
                pod("default", "a", &[("app", "a")], &["10.1.0.1"]),
                pod("default", "b", &[], &["10.1.0.2"]),
            ],
        );
        let p = &w.policies[0];
        assert_eq!(p.affects_ingress, ing_iso, "{name}: ingress isolated");
        assert_eq!(p.affects_egress, eg_iso, "{name}: egress isolated");
        assert_eq!(
            tcp(&w, "default/b", "default/a", 80),
            from_b,
            "{name}: b -> a"
        );
        assert_eq!(
            tcp(&w, "default/a", "default/b", 80),
            to_b,
            "{name}: a -> b"
        );
    }
}

#[test]
fn union_of_policies_and_first_match_reported() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p1, namespace: default}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: x}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2, namespace: default}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Exists}]}
  ingress:
  - from: [{podSelector: {matchLabels: {app: y}}}]
    ports: [{port: 81}]
  - from: [{podSelector: {matchLabels: {app: x}}}]
    ports: [{port: 82}]
";
    let w = world(
        yaml,
        vec![
            pod("default", "srv", &[("app", "srv")], &["10.1.0.1"]),
            pod("default", "x", &[("app", "x")], &["10.1.0.2"]),
            pod("default", "y", &[("app", "y")], &["10.1.0.3"]),
        ],
    );
    for (from, port, expect) in [
        ("default/x", 80, true),
        ("default/x", 81, false),
        ("default/x", 82, true),
        ("default/y", 80, false),
        ("default/y", 81, true),
    ] {
        assert_eq!(tcp(&w, from, "default/srv", port), expect, "{from}:{port}");
    }
    let v = verdict(&w, "default/x", "default/srv", 82, Protocol::Tcp);
    assert!(
        v.to_string()
            .contains("default/p2 ingress[1].from[0].ports[0]"),
        "{v}"
    );
    assert_eq!(selects(&w, &w.pods[0]).len(), 2);
}

#[test]
fn both_directions_must_allow() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: b}}
";
    let w = world(
        yaml,
        vec![
            pod("default", "a", &[("app", "a")], &["10.1.0.1"]),
            pod("default", "b", &[("app", "b")], &["10.1.0.2"]),
            pod("default", "c", &[("app", "c")], &["10.1.0.3"]),
        ],
    );
    let v = verdict(&w, "default/a", "default/b", 80, Protocol::Tcp);
    assert!(!v.allowed);
    let Reason::Evaluated {
        egress, ingress, ..
    } = &v.reason
    else {
        panic!("{v}")
    };
    assert!(matches!(egress, Decision::Allowed(r) if r.policy.name == "a-out"));
    assert!(matches!(ingress, Decision::Isolated { by } if by[0].name == "b-in"));
    assert!(tcp(&w, "default/a", "default/c", 80));
    // Egress isolation: a cannot leave the namespace's pods.
    let v = verdict(&w, "default/a", "203.0.113.9", 80, Protocol::Tcp);
    assert!(!v.allowed);
    assert!(
        v.to_string()
            .contains("egress of source: isolated by default/a-out"),
        "{v}"
    );
    // An external source is not a pod: only the destination's ingress counts.
    let v = verdict(&w, "203.0.113.9", "default/c", 80, Protocol::Tcp);
    assert!(v.allowed);
    let Reason::Evaluated { egress, .. } = &v.reason else {
        panic!("{v}")
    };
    assert_eq!(*egress, Decision::NotAPod);
}

#[test]
fn node_host_network_self_and_address_resolution() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
";
    let mut hostnet = pod("default", "hostnet", &[], &[NODE]);
    hostnet.host_network = true;
    let w = world(
        yaml,
        vec![
            pod("default", "a", &[], &["10.1.0.1", "fd00::1"]),
            pod("default", "b", &[], &["10.1.0.2"]),
            hostnet,
        ],
    );
    assert!(
        selects(&w, &w.pods[2]).is_empty(),
        "host network is not subject"
    );
    assert!(tcp(&w, NODE, "default/a", 80));
    assert!(tcp(&w, "default/hostnet", "default/a", 80));
    assert!(tcp(&w, "default/a", "default/hostnet", 80));
    assert!(tcp(&w, "default/a", NODE, 80));
    let v = verdict(&w, "default/a", "default/a", 80, Protocol::Tcp);
    assert_eq!((v.allowed, v.reason), (true, Reason::SamePod));
    assert!(!tcp(&w, "default/a", "default/b", 80));
    // An address of a pod is that pod.
    let v = verdict(&w, "10.1.0.2", "fd00::1", 80, Protocol::Tcp);
    assert!(!v.allowed, "{v}");
    assert!(tcp(&w, "10.1.0.2", "10.1.0.2", 80));
    // Errors: unknown pod, no common family.
    assert_eq!(
        explain(&w, &ep("default/nope"), &ep("default/a"), 80, Protocol::Tcp),
        Err(ExplainError::UnknownPod("default/nope".into()))
    );
    assert!(matches!(
        explain(&w, &ep("default/b"), &ep("fd00::9"), 80, Protocol::Tcp),
        Err(ExplainError::NoAddress { .. })
    ));
    assert!("default".parse::<Endpoint>().is_err());
    assert!("a/b/c".parse::<Endpoint>().is_err());
}

#[test]
fn dual_stack_pods_use_a_common_family() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v6-only, namespace: default}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress: [{from: [{ipBlock: {cidr: 'fd00::/64'}}]}]
";
    let w = world(
        yaml,
        vec![
            pod(
                "default",
                "srv",
                &[("app", "srv")],
                &["10.1.0.1", "fd00::1"],
            ),
            pod("default", "v6", &[], &["fd00::2"]),
            pod("default", "v4", &[], &["10.1.0.2"]),
        ],
    );
    assert!(tcp(&w, "default/v6", "default/srv", 80));
    assert!(!tcp(&w, "default/v4", "default/srv", 80));
    let v = verdict(&w, "default/v6", "default/srv", 80, Protocol::Tcp);
    let Reason::Evaluated {
        source,
        destination,
        ..
    } = v.reason
    else {
        panic!()
    };
    assert_eq!((source, destination), (ip("fd00::2"), ip("fd00::1")));
}

#[test]
fn compiled_form_holds_pod_and_peer_sets() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: cli}}
    - ipBlock: {cidr: 192.0.2.0/24}
    ports: [{port: 80}]
";
    let w = world(
        yaml,
        vec![
            pod(
                "default",
                "srv",
                &[("app", "srv")],
                &["10.1.0.1", "fd00::1"],
            ),
            pod("default", "cli", &[("app", "cli")], &["10.1.0.2"]),
            pod("other", "cli", &[("app", "cli")], &["10.1.0.3"]),
        ],
    );
    let c = Compiled::new(&w);
    assert_eq!(c.policies.len(), 1);
    let p = &c.policies[0];
    assert_eq!(p.selected, BTreeSet::from(["default/srv".to_string()]));
    assert_eq!(
        p.selected_ips,
        BTreeSet::from([ip("10.1.0.1"), ip("fd00::1")])
    );
    assert!(p.egress.is_none());
    let rules = p.ingress.as_ref().unwrap();
    let peers = rules[0].peers.as_ref().unwrap();
    assert_eq!(
        peers[0],
        CompiledPeer::Pods(BTreeSet::from([ip("10.1.0.2")]))
    );
    assert!(matches!(&peers[1], CompiledPeer::IpBlock(b) if b.cidr.to_string() == "192.0.2.0/24"));
}
