//! Kernel tests: real nftables inside a throwaway node netns per test (root required).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use hostport::{ErrorKind, HostPortManager, NftHostPortManager, PodPorts, PortMapping, Protocol};

#[test]
fn smoke() {
    let node = Node::new(2);
    let _s = Server::start(&node.pods[0].ns, 80, "pod1");
    let m = node.manager();
    let rt = rt();
    rt.block_on(m.add("pod1", "default/one", &node.pods[0].ips(), &[tcp(8080, 80)])).unwrap();
    println!("{}", node.nft_list("ip", "sluice-hostports"));
    assert!(connect(&node.ns, NODE_IP, 8080, "tcp").unwrap().contains("pod1"));
    assert!(connect(&node.ns, "127.0.0.1", 8080, "tcp").unwrap().contains("pod1"));
    assert!(connect(&node.ns, "::1", 8080, "tcp").unwrap().contains("pod1"));
}
