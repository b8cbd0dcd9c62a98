//! Shared helpers: worlds from inline YAML, pods, and short explain calls.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::Path;

use netpolicy::{
    Endpoint, Format, Labels, Loaded, Pod, Protocol, Severity, Verdict, World, explain, load_str,
};

pub const NODE: &str = "10.0.0.1";

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn pod(ns: &str, name: &str, lbls: &[(&str, &str)], ips: &[&str]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(lbls),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        host_network: false,
    }
}

/// Loads YAML text, asserting it has no errors.
pub fn load(yaml: &str) -> Loaded {
    let mut loaded = Loaded::default();
    load_str(&mut loaded, Path::new("test.yaml"), Format::Yaml, yaml);
    let errors: Vec<_> = loaded
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "unexpected problems: {errors:?}");
    loaded
}

pub fn world(yaml: &str, pods: Vec<Pod>) -> World {
    World::new(&load(yaml), pods, vec![NODE.parse().unwrap()])
}

/// `"ns/name"` or an IP.
pub fn ep(s: &str) -> Endpoint {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn verdict(w: &World, from: &str, to: &str, port: u16, proto: Protocol) -> Verdict {
    explain(w, &ep(from), &ep(to), port, proto).unwrap()
}

pub fn allowed(w: &World, from: &str, to: &str, port: u16, proto: Protocol) -> bool {
    verdict(w, from, to, port, proto).allowed
}

pub fn tcp(w: &World, from: &str, to: &str, port: u16) -> bool {
    allowed(w, from, to, port, Protocol::Tcp)
}
