//! explain() (which decides on the compiled form: pod sets, peer address sets) against a
//! direct reading of the spec over the policy model, on random worlds.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use netpolicy::{
    Cidr, Compiled, Endpoint, IpBlock, LabelSelector, Labels, NetworkPolicy, Operator, Peer, Pod,
    PolicyPort, PortMatch, Protocol, Requirement, Rule, World,
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const NAMESPACES: [&str; 3] = ["n1", "n2", "n3"];
const KEYS: [&str; 2] = ["app", "tier"];
const VALUES: [&str; 3] = ["a", "b", "c"];

fn random_labels(rng: &mut Rng) -> Labels {
    let mut l = BTreeMap::new();
    for key in KEYS {
        if rng.chance(70) {
            l.insert(key.to_string(), rng.pick(&VALUES).to_string());
        }
    }
    l
}

fn random_selector(rng: &mut Rng) -> LabelSelector {
    let mut s = LabelSelector::default();
    if rng.chance(40) {
        s.match_labels
            .insert(rng.pick(&KEYS).to_string(), rng.pick(&VALUES).to_string());
    }
    if rng.chance(40) {
        let operator = *rng.pick(&[
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]);
        let values = match operator {
            Operator::In | Operator::NotIn => (0..1 + rng.below(2))
                .map(|_| rng.pick(&VALUES).to_string())
                .collect(),
            _ => Default::default(),
        };
        s.match_expressions.push(Requirement {
            key: rng.pick(&KEYS).to_string(),
            operator,
            values,
        });
    }
    s
}

fn random_peer(rng: &mut Rng) -> Peer {
    match rng.below(4) {
        0 => Peer::Pods {
            namespaces: None,
            pods: random_selector(rng),
        },
        1 => Peer::Pods {
            namespaces: Some(random_selector_ns(rng)),
            pods: LabelSelector::default(),
        },
        2 => Peer::Pods {
            namespaces: Some(random_selector_ns(rng)),
            pods: random_selector(rng),
        },
        _ => {
            let prefix = *rng.pick(&[24u8, 28, 30]);
            let cidr = Cidr::new([10, 1, 0, 0].into(), prefix).unwrap();
            let except = if rng.chance(50) {
                vec![Cidr::new([10, 1, 0, 4].into(), 30).unwrap()]
            } else {
                vec![]
            };
            Peer::IpBlock(IpBlock { cidr, except })
        }
    }
}

fn random_selector_ns(rng: &mut Rng) -> LabelSelector {
    let mut s = LabelSelector::default();
    match rng.below(3) {
        0 => {}
        1 => {
            s.match_labels.insert(
                "kubernetes.io/metadata.name".into(),
                rng.pick(&NAMESPACES).to_string(),
            );
        }
        _ => {
            s.match_labels
                .insert("env".into(), rng.pick(&["prod", "dev"]).to_string());
        }
    }
    s
}

fn random_port(rng: &mut Rng) -> PolicyPort {
    let protocol = *rng.pick(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    let port = match rng.below(4) {
        0 => PortMatch::Any,
        1 => PortMatch::Named("http".into()),
        2 => PortMatch::Range { start: 80, end: 81 },
        _ => {
            let p = *rng.pick(&[80u16, 81, 443]);
            PortMatch::Range { start: p, end: p }
        }
    };
    PolicyPort { protocol, port }
}

fn random_rules(rng: &mut Rng) -> Vec<Rule> {
    (0..rng.below(3))
        .map(|_| Rule {
            peers: rng
                .chance(70)
                .then(|| (0..1 + rng.below(2)).map(|_| random_peer(rng)).collect()),
            ports: rng
                .chance(60)
                .then(|| (0..1 + rng.below(2)).map(|_| random_port(rng)).collect()),
        })
        .collect()
}

fn random_world(seed: u64) -> World {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let pods = (0..4 + rng.below(6))
        .map(|i| Pod {
            namespace: rng.pick(&NAMESPACES).to_string(),
            name: format!("p{i}"),
            labels: random_labels(&mut rng),
            ips: vec![[10, 1, 0, u8::try_from(i + 2).unwrap()].into()],
            host_network: false,
        })
        .collect();
    let policies = (0..rng.below(6))
        .map(|i| {
            let ingress = random_rules(&mut rng);
            let egress = random_rules(&mut rng);
            let (affects_ingress, affects_egress) = match rng.below(4) {
                0 => (true, !egress.is_empty()), // defaulted
                1 => (true, false),
                2 => (false, true),
                _ => (true, true),
            };
            NetworkPolicy {
                namespace: rng.pick(&NAMESPACES).to_string(),
                name: format!("np{i}"),
                pod_selector: random_selector(&mut rng),
                affects_ingress,
                affects_egress,
                ingress,
                egress,
                source: None,
            }
        })
        .collect();
    let mut namespaces = BTreeMap::new();
    for n in NAMESPACES {
        if rng.chance(70) {
            let env = rng.pick(&["prod", "dev"]).to_string();
            namespaces.insert(n.to_string(), BTreeMap::from([("env".to_string(), env)]));
        }
    }
    World {
        policies,
        namespaces,
        pods,
        node_ips: vec![[10, 1, 0, 1].into()],
    }
}

/// The spec, read directly: a policy selects pods of its namespace matching podSelector; a
/// direction is isolated when a selecting policy has it in policyTypes; then some rule of
/// such a policy must match both peer and port.
fn reference(w: &World, src: &Pod, dst: &Pod, port: u16, proto: Protocol) -> bool {
    if src.namespace == dst.namespace && src.name == dst.name {
        return true;
    }
    let rule_matches = |policy: &NetworkPolicy, rule: &Rule, peer: &Pod| {
        let peer_ok = match &rule.peers {
            None => true,
            Some(peers) => peers.iter().any(|p| match p {
                Peer::Pods { namespaces, pods } => {
                    let ns_ok = match namespaces {
                        None => peer.namespace == policy.namespace,
                        Some(sel) => {
                            let mut labels = w
                                .namespaces
                                .get(&peer.namespace)
                                .cloned()
                                .unwrap_or_default();
                            labels.insert(
                                "kubernetes.io/metadata.name".into(),
                                peer.namespace.clone(),
                            );
                            sel.matches(&labels)
                        }
                    };
                    ns_ok && pods.matches(&peer.labels)
                }
                Peer::IpBlock(b) => b.contains(peer.ips[0]),
            }),
        };
        let port_ok = match &rule.ports {
            None => true,
            Some(ports) => ports.iter().any(|p| {
                p.protocol == proto
                    && match &p.port {
                        PortMatch::Any => true,
                        PortMatch::Range { start, end } => *start <= port && port <= *end,
                        PortMatch::Named(_) => false,
                    }
            }),
        };
        peer_ok && port_ok
    };
    let side_ok = |pod: &Pod, peer: &Pod, egress: bool| {
        let applying: Vec<&NetworkPolicy> = w
            .policies
            .iter()
            .filter(|p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
            .filter(|p| {
                if egress {
                    p.affects_egress
                } else {
                    p.affects_ingress
                }
            })
            .collect();
        applying.is_empty()
            || applying.iter().any(|p| {
                let rules = if egress { &p.egress } else { &p.ingress };
                rules.iter().any(|r| rule_matches(p, r, peer))
            })
    };
    side_ok(src, dst, true) && side_ok(dst, src, false)
}

#[test]
fn explain_agrees_with_the_spec_on_random_worlds() {
    let mut checked = 0;
    let mut denied = 0;
    for seed in 0..300 {
        let w = random_world(seed);
        let compiled = Compiled::new(&w);
        for src in &w.pods {
            for dst in &w.pods {
                for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for port in [80, 81, 443] {
                        let from = Endpoint::pod(&src.namespace, &src.name);
                        let to = Endpoint::pod(&dst.namespace, &dst.name);
                        let v = compiled.explain(&w, &from, &to, port, proto).unwrap();
                        let expect = reference(&w, src, dst, port, proto);
                        assert_eq!(
                            v.allowed, expect,
                            "seed {seed}: {from} -> {to} {port}/{proto}: {v}\n{w:#?}"
                        );
                        checked += 1;
                        denied += usize::from(!expect);
                    }
                }
            }
        }
    }
    // The generator must produce both outcomes in quantity, or the test proves nothing.
    assert!(
        denied > checked / 10 && denied < checked * 9 / 10,
        "{denied}/{checked}"
    );
}
