//! Loading manifests: YAML multi-document and JSON files, problems with file, document and
//! field, invalid documents skipped while the others apply.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use netpolicy::{
    Format, Loaded, NAMESPACE_NAME_LABEL, Peer, PortMatch, Protocol, Severity, load_dir, load_str,
};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const GOOD: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: good
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {team: web}}
      podSelector: {matchLabels: {role: fe}}
    ports:
    - {protocol: SCTP, port: 7000, endPort: 7100}
";

#[test]
fn directory_of_yaml_and_json_with_an_invalid_document() {
    let dir = tempfile::tempdir().unwrap();
    // Three documents; the second is invalid (except outside cidr) and is skipped.
    write(
        dir.path(),
        "a.yaml",
        &format!(
            "{GOOD}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: bad, namespace: shop}}
spec:
  ingress:
  - from:
    - ipBlock: {{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: web
  labels: {{team: web}}
---
"
        ),
    );
    write(
        dir.path(),
        "b.json",
        r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "from-json"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/48"}}], "ports": [{"protocol": "UDP", "port": 53}]}]}}
           {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "json-ns"}}"#,
    );
    write(dir.path(), "notes.txt", "not a manifest");
    write(dir.path(), ".swap.yaml", "garbage: [");
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();

    let loaded = load_dir(dir.path()).unwrap();
    let names: Vec<_> = loaded
        .policies
        .iter()
        .map(|p| p.reference().to_string())
        .collect();
    assert_eq!(names, ["shop/good", "default/from-json"]);
    let ns: Vec<_> = loaded.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(ns, ["web", "json-ns"]);

    assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
    let p = &loaded.problems[0];
    assert_eq!(p.file, dir.path().join("a.yaml"));
    assert_eq!(p.document, Some(1));
    assert_eq!(p.field, "spec.ingress[0].from[0].ipBlock.except[0]");
    assert_eq!(p.severity, Severity::Error);
    assert!(
        p.message.contains("strict subset of cidr 10.0.0.0/8"),
        "{p}"
    );
    assert!(loaded.has_errors());
    assert!(
        p.to_string()
            .contains("a.yaml document 1 field spec.ingress"),
        "{p}"
    );

    // The good policy is parsed completely.
    let good = &loaded.policies[0];
    assert!(good.affects_ingress && !good.affects_egress);
    let peers = good.ingress[0].peers.as_ref().unwrap();
    assert!(matches!(&peers[0], Peer::IpBlock(b) if b.except.len() == 1));
    assert!(
        matches!(&peers[1], Peer::Pods { namespaces: Some(_), pods } if !pods.match_labels.is_empty())
    );
    let port = &good.ingress[0].ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol, Protocol::Sctp);
    assert_eq!(
        port.port,
        PortMatch::Range {
            start: 7000,
            end: 7100
        }
    );
    let json = &loaded.policies[1];
    assert!(!json.affects_ingress && json.affects_egress);
    assert_eq!(json.source.as_ref().unwrap().document, 0);
}

#[test]
fn missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_dir(&dir.path().join("nope")).unwrap_err();
    assert!(
        err.to_string().starts_with("read policy directory"),
        "{err}"
    );
}

fn problems_of(format: Format, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_str(&mut loaded, Path::new("x"), format, text);
    loaded
}

/// Each invalid spec (inside an otherwise valid NetworkPolicy) is rejected with this field.
#[test]
fn invalid_documents_name_the_field() {
    let cases = [
        (
            "podSelector: {matchLabels: {app: 1}}",
            "spec.podSelector.matchLabels.app",
        ),
        ("podselector: {}", "spec.podselector"),
        ("policyTypes: [Ingres]", "spec.policyTypes[0]"),
        ("ingress: {}", "spec.ingress"),
        ("ingress: [{from: [{}]}]", "spec.ingress[0].from[0]"),
        ("ingress: [{to: []}]", "spec.ingress[0].to"),
        ("egress: [{from: []}]", "spec.egress[0].from"),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
            "spec.ingress[0].from[0].ipBlock",
        ),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "ingress: [{from: [{ipBlock: {except: [10.0.0.0/8]}}]}]",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]}]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "ingress: [{ports: [{protocol: tcp}]}]",
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            "ingress: [{ports: [{port: 0}]}]",
            "spec.ingress[0].ports[0].port",
        ),
        (
            "ingress: [{ports: [{port: 65536}]}]",
            "spec.ingress[0].ports[0].port",
        ),
        (
            "ingress: [{ports: [{port: '80'}]}]",
            "spec.ingress[0].ports[0].port",
        ),
        (
            "ingress: [{ports: [{endPort: 90}]}]",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "ingress: [{ports: [{port: 90, endPort: 80}]}]",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "ingress: [{ports: [{port: http, endPort: 80}]}]",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "podSelector: {matchExpressions: [{key: a, operator: In}]}",
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            "podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}",
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            "podSelector: {matchExpressions: [{key: a, operator: Gt, values: ['1']}]}",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            "podSelector: {matchExpressions: [{operator: Exists}]}",
            "spec.podSelector.matchExpressions[0].key",
        ),
    ];
    for (spec, field) in cases {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\n\
             spec: {{{spec}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ok}}\n"
        );
        let loaded = problems_of(Format::Yaml, &text);
        assert!(loaded.policies.is_empty(), "{spec}: accepted");
        assert_eq!(
            loaded.namespaces.len(),
            1,
            "{spec}: the other document applies"
        );
        assert_eq!(loaded.problems.len(), 1, "{spec}: {:?}", loaded.problems);
        let p = &loaded.problems[0];
        assert_eq!(
            (p.document, p.field.as_str()),
            (Some(0), field),
            "{spec}: {p}"
        );
    }
}

#[test]
fn invalid_objects() {
    let cases = [
        ("kind: NetworkPolicy\nmetadata: {name: p}", "apiVersion"),
        (
            "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}",
            "apiVersion",
        ),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}", "kind"),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy",
            "metadata",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {}",
            "metadata.name",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {a: [1]}}",
            "metadata.labels.a",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\nextra: 1",
            "extra",
        ),
        ("- a list", ""),
    ];
    for (text, field) in cases {
        let loaded = problems_of(Format::Yaml, text);
        assert!(
            loaded.policies.is_empty() && loaded.namespaces.is_empty(),
            "{text}"
        );
        assert_eq!(loaded.problems.len(), 1, "{text}");
        assert_eq!(loaded.problems[0].field, field, "{text}");
    }
}

#[test]
fn syntax_errors_and_duplicates() {
    // A YAML syntax error in document 1: document 0 applies, the error names document 1.
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nfoo: [unclosed\n";
    let loaded = problems_of(Format::Yaml, text);
    assert_eq!(loaded.namespaces.len(), 1);
    assert_eq!(loaded.problems.len(), 1);
    assert_eq!(loaded.problems[0].document, Some(1));
    assert!(
        loaded.problems[0].message.starts_with("invalid YAML"),
        "{}",
        loaded.problems[0]
    );

    let loaded = problems_of(
        Format::Json,
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}} {"#,
    );
    assert_eq!(loaded.namespaces.len(), 1);
    assert_eq!(loaded.problems[0].document, Some(1));
    assert!(loaded.problems[0].message.starts_with("invalid JSON"));

    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\n";
    let loaded = problems_of(Format::Yaml, &format!("{policy}---\n{policy}"));
    assert_eq!(loaded.policies.len(), 1);
    assert_eq!(loaded.problems[0].document, Some(1));
    assert!(
        loaded.problems[0]
            .message
            .contains("duplicate NetworkPolicy n/p")
    );
}

#[test]
fn defaults_and_nulls() {
    // No spec at all: selects every pod of `default`, isolates ingress, no rules.
    let loaded = problems_of(
        Format::Yaml,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\n\
         spec:\n  podSelector:\n  ingress:\n  - from:\n    ports:\n  - {}\n",
    );
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let p = &loaded.policies[0];
    assert_eq!(p.namespace, "default");
    assert!(p.pod_selector.match_labels.is_empty() && p.pod_selector.match_expressions.is_empty());
    assert!(p.affects_ingress && !p.affects_egress && p.ingress.is_empty());
    let q = &loaded.policies[1];
    assert_eq!(q.ingress.len(), 2);
    assert!(
        q.ingress
            .iter()
            .all(|r| r.peers.is_none() && r.ports.is_none())
    );
    assert_eq!(NAMESPACE_NAME_LABEL, "kubernetes.io/metadata.name");
}
