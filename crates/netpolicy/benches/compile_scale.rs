//! Cost of compiling a world and of one explain, with 1 to 10 000 policies (most of them
//! selecting no measured pod) and 100 pods. Prints p50/p90 per size.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use netpolicy::{
    Compiled, Endpoint, LabelSelector, NetworkPolicy, Peer, Pod, PolicyPort, PortMatch, Protocol,
    Rule, World,
};

fn world(policies: usize) -> World {
    let pods = (0..100u32)
        .map(|i| Pod {
            namespace: format!("ns{}", i % 10),
            name: format!("pod{i}"),
            labels: BTreeMap::from([("app".to_string(), format!("app{}", i % 20))]),
            ips: vec![IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 2])],
            host_network: false,
        })
        .collect();
    let policies = (0..policies)
        .map(|i| NetworkPolicy {
            namespace: format!("ns{}", i % 10),
            name: format!("np{i}"),
            pod_selector: LabelSelector {
                // Policies beyond the first 20 select labels no pod has.
                match_labels: BTreeMap::from([("app".to_string(), format!("app{i}"))]),
                ..Default::default()
            },
            affects_ingress: true,
            affects_egress: false,
            ingress: vec![Rule {
                peers: Some(vec![Peer::Pods {
                    namespaces: None,
                    pods: LabelSelector {
                        match_labels: BTreeMap::from([(
                            "app".to_string(),
                            format!("app{}", (i + 1) % 20),
                        )]),
                        ..Default::default()
                    },
                }]),
                ports: Some(vec![PolicyPort {
                    protocol: Protocol::Tcp,
                    port: PortMatch::Range { start: 80, end: 80 },
                }]),
            }],
            egress: vec![],
            source: None,
        })
        .collect();
    World {
        policies,
        namespaces: BTreeMap::new(),
        pods,
        node_ips: vec![],
    }
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.9))
}

fn main() {
    println!("netpolicy compile/explain, 100 pods");
    for n in [1, 100, 1_000, 10_000] {
        let w = world(n);
        let runs = if n >= 10_000 { 5 } else { 20 };
        let compile: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(Compiled::new(&w));
                t.elapsed()
            })
            .collect();
        let compiled = Compiled::new(&w);
        let (from, to) = (Endpoint::pod("ns1", "pod1"), Endpoint::pod("ns0", "pod0"));
        let explain: Vec<Duration> = (0..200)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(compiled.explain(&w, &from, &to, 80, Protocol::Tcp).unwrap());
                t.elapsed()
            })
            .collect();
        let (c50, c90) = percentiles(compile);
        let (e50, e90) = percentiles(explain);
        println!(
            "policies={n:>6}  compile p50={c50:>10.2?} p90={c90:>10.2?}  explain p50={e50:>9.2?} p90={e90:>9.2?}"
        );
    }
}
