//! The scenarios of issue 11, as explain() cases.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use netpolicy::{Decision, Direction, PolicyRef, Protocol, Reason, RuleRef};

/// Pods A, B, C in `default`, F (app=frontend) in `default`, G (app=frontend) in `other`
/// (labelled team=web by its Namespace manifest), H (app=frontend) in `third` (no manifest).
fn pods() -> Vec<netpolicy::Pod> {
    vec![
        pod("default", "a", &[("app", "a")], &["10.1.0.10"]),
        pod("default", "b", &[("app", "b")], &["10.1.0.11"]),
        pod("default", "c", &[("app", "c")], &["10.1.0.12"]),
        pod("default", "f", &[("app", "frontend")], &["10.1.0.13"]),
        pod("other", "g", &[("app", "frontend")], &["10.1.0.14"]),
        pod("third", "h", &[("app", "frontend")], &["10.1.0.15"]),
        pod("default", "dns", &[("app", "dns")], &["10.1.0.53"]),
    ]
}

const NS_OTHER: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: other
  labels:
    team: web
";

const DENY_C: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-c
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: c
";

#[test]
fn no_policy_everyone_talks() {
    let w = world("", pods());
    for (from, to) in [
        ("default/a", "default/b"),
        ("default/b", "default/c"),
        ("default/c", "default/a"),
    ] {
        let v = verdict(&w, from, to, 80, Protocol::Tcp);
        assert!(v.allowed, "{from} -> {to}: {v}");
        let Reason::Evaluated {
            egress, ingress, ..
        } = v.reason
        else {
            panic!("{v}")
        };
        assert_eq!(egress, Decision::NotIsolated);
        assert_eq!(ingress, Decision::NotIsolated);
    }
}

#[test]
fn default_deny_ingress_for_c() {
    let w = world(DENY_C, pods());
    assert!(!tcp(&w, "default/a", "default/c", 80));
    assert!(!tcp(&w, "default/b", "default/c", 80));
    // Egress of C is not isolated.
    assert!(tcp(&w, "default/c", "default/a", 80));
    // The node reaches C (kubelet probes).
    let v = verdict(&w, NODE, "default/c", 80, Protocol::Tcp);
    assert!(v.allowed);
    assert_eq!(
        v.reason,
        Reason::FromNode {
            host_network_pod: None
        }
    );
    // The reason names the isolating policy.
    let v = verdict(&w, "default/a", "default/c", 80, Protocol::Tcp);
    let Reason::Evaluated { ingress, .. } = &v.reason else {
        panic!("{v}")
    };
    assert_eq!(
        *ingress,
        Decision::Isolated {
            by: vec![PolicyRef {
                namespace: "default".into(),
                name: "deny-c".into()
            }]
        }
    );
    assert!(v.to_string().contains("isolated by default/deny-c"), "{v}");
}

const ALLOW_FRONTEND: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-frontend
  namespace: default
spec:
  podSelector:
    matchLabels:
      app: c
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    ports:
    - protocol: TCP
      port: 80
";

#[test]
fn allow_from_frontend_tcp_80_only() {
    let w = world(&format!("{DENY_C}---{ALLOW_FRONTEND}"), pods());
    let v = verdict(&w, "default/f", "default/c", 80, Protocol::Tcp);
    assert!(v.allowed, "{v}");
    let Reason::Evaluated { ingress, .. } = &v.reason else {
        panic!("{v}")
    };
    assert_eq!(
        *ingress,
        Decision::Allowed(RuleRef {
            policy: PolicyRef {
                namespace: "default".into(),
                name: "allow-frontend".into()
            },
            direction: Direction::Ingress,
            rule: 0,
            peer: Some(0),
            port: Some(0),
        })
    );
    assert!(
        v.to_string()
            .contains("allowed by default/allow-frontend ingress[0].from[0].ports[0]"),
        "{v}"
    );
    assert!(!tcp(&w, "default/f", "default/c", 81));
    assert!(!allowed(&w, "default/f", "default/c", 80, Protocol::Udp));
    // Without the label.
    assert!(!tcp(&w, "default/a", "default/c", 80));
    // Other namespace with the label: a bare podSelector means the policy's namespace.
    assert!(!tcp(&w, "other/g", "default/c", 80));
    // Both denying policies are named.
    let v = verdict(&w, "default/a", "default/c", 80, Protocol::Tcp);
    assert!(
        v.to_string()
            .contains("isolated by default/allow-frontend, default/deny-c"),
        "{v}"
    );
}

#[test]
fn other_namespace_admitted_by_namespace_selector() {
    let by_name = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-other, namespace: default}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: third
      podSelector:
        matchLabels:
          app: frontend
    ports: [{port: 80}]
";
    let w = world(by_name, pods());
    assert!(tcp(&w, "third/h", "default/c", 80));
    assert!(!tcp(&w, "other/g", "default/c", 80));
    // namespaceSelector set: the policy's own namespace is not implied.
    assert!(!tcp(&w, "default/f", "default/c", 80));

    let by_manifest_label = format!(
        "{NS_OTHER}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: from-web, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: c}}}}
  ingress:
  - from:
    - namespaceSelector: {{matchLabels: {{team: web}}}}
      podSelector: {{matchLabels: {{app: frontend}}}}
    ports: [{{port: 80}}]
"
    );
    let w = world(&by_manifest_label, pods());
    assert!(tcp(&w, "other/g", "default/c", 80));
    assert!(!tcp(&w, "third/h", "default/c", 80));
    assert!(!tcp(&w, "other/g", "default/c", 81));
}

#[test]
fn egress_only_dns_to_one_pod_and_https_to_a_cidr() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-a, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: dns}}
    ports:
    - {protocol: UDP, port: 53}
  - to:
    - ipBlock: {cidr: 192.0.2.0/24}
    ports:
    - {protocol: TCP, port: 443}
";
    let w = world(yaml, pods());
    assert!(allowed(&w, "default/a", "default/dns", 53, Protocol::Udp));
    assert!(!allowed(&w, "default/a", "default/dns", 53, Protocol::Tcp));
    assert!(!allowed(&w, "default/a", "default/b", 53, Protocol::Udp));
    let v = verdict(&w, "default/a", "192.0.2.7", 443, Protocol::Tcp);
    assert!(v.allowed, "{v}");
    assert!(
        v.to_string().contains("egress-a egress[1].to[0].ports[0]"),
        "{v}"
    );
    assert!(!tcp(&w, "default/a", "192.0.2.7", 80));
    assert!(!tcp(&w, "default/a", "198.51.100.1", 443));
    // Ingress of A is not isolated: policyTypes says Egress only.
    assert!(tcp(&w, "default/b", "default/a", 8080));
    // The node is always reachable.
    assert!(tcp(&w, "default/a", NODE, 10250));
}
