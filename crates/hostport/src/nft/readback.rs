//! Reading our table back from the kernel: `nft -j list table <family> <name>` parsed into
//! our own tolerant serde types (unknown objects and fields are ignored; the `nftables`
//! crate's typed schema rejects concatenated maps, so we do not use it).
//!
//! Shapes we rely on (nft 1.0.x JSON schema 1):
//! - `{"map": {"name": "hostports", "elem": [[KEY, VALUE], ...]}}`
//! - `{"set": {"name": "hairpins", "elem": [KEY, ...]}}`
//! - `KEY` is `{"elem": {"val": V, "comment": "..."}}` when the element has a comment,
//!   otherwise `V`; `V` and `VALUE` are `{"concat": [atom, ...]}` or one atom.
//! - atoms: addresses and protocol names as strings, ports (and unnamed protocols) as numbers.
//! - `{"rule": {"chain": "prerouting", ...}}`, `{"chain": {"name": "..."}}`.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::ruleset::{
    Element, MAP_HOST_IP_PORTS, MAP_HOST_PORTS, Owner, SET_HAIRPINS, SET_POD_IPS, Tagged,
    expected_rules,
};
use crate::types::{Family, Protocol};

#[derive(Debug, Deserialize)]
struct Listing {
    #[serde(default)]
    nftables: Vec<Object>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Object {
    map: Option<SetObject>,
    set: Option<SetObject>,
    chain: Option<ChainObject>,
    rule: Option<RuleObject>,
}

#[derive(Debug, Deserialize)]
struct SetObject {
    name: String,
    #[serde(default)]
    elem: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct ChainObject {
    name: String,
}

#[derive(Debug, Deserialize)]
struct RuleObject {
    chain: String,
}

/// What one family's table holds.
#[derive(Debug, Default)]
pub(crate) struct TableState {
    /// The table exists and has every map, set, chain and rule we create. When false, the
    /// next change rebuilds the table instead of editing elements.
    pub intact: bool,
    pub elements: Vec<Tagged>,
    /// Elements we could not decode (kept for the log; `sync` drops them).
    pub unknown: Vec<String>,
}

/// Parses `nft -j list table` output of `family`'s table.
pub(crate) fn parse_table(json: &str, family: Family) -> Result<TableState, String> {
    let listing: Listing = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut state = TableState::default();
    let mut sets_seen = 0;
    let mut chains: HashMap<String, usize> = HashMap::new();
    for obj in listing.nftables {
        if let Some(chain) = obj.chain {
            chains.entry(chain.name).or_default();
        }
        if let Some(rule) = obj.rule {
            *chains.entry(rule.chain).or_default() += 1;
        }
        let (set, is_map) = match (obj.map, obj.set) {
            (Some(m), _) => (m, true),
            (None, Some(s)) => (s, false),
            (None, None) => continue,
        };
        if ![MAP_HOST_IP_PORTS, MAP_HOST_PORTS, SET_HAIRPINS, SET_POD_IPS]
            .contains(&set.name.as_str())
        {
            continue;
        }
        sets_seen += 1;
        for raw in &set.elem {
            match decode_element(&set.name, is_map, raw) {
                Some(t) if t.elem.family() == family => state.elements.push(t),
                _ => state.unknown.push(format!("{}: {raw}", set.name)),
            }
        }
    }
    state.intact = sets_seen == 4
        && expected_rules(family)
            .iter()
            .all(|(name, n)| chains.get(*name) == Some(n));
    Ok(state)
}

fn decode_element(container: &str, is_map: bool, raw: &Value) -> Option<Tagged> {
    let (key, value) = if is_map {
        match raw.as_array()?.as_slice() {
            [k, v] => (k, Some(v)),
            _ => return None,
        }
    } else {
        (raw, None)
    };
    let (key, comment) = match key.get("elem") {
        Some(e) => (e.get("val")?, e.get("comment").and_then(Value::as_str)),
        None => (key, None),
    };
    let owner = Owner::parse(comment.unwrap_or(""));
    let k = atoms(key);
    let v = value.map(atoms).unwrap_or_default();
    let elem = match (container, k.as_slice(), v.as_slice()) {
        (MAP_HOST_IP_PORTS, [hip, proto, hport], [pip, pport]) => Element::HostIpPort {
            host_ip: ip(hip)?,
            protocol: protocol(proto)?,
            host_port: port(hport)?,
            pod_ip: ip(pip)?,
            pod_port: port(pport)?,
        },
        (MAP_HOST_PORTS, [proto, hport], [pip, pport]) => Element::HostPort {
            protocol: protocol(proto)?,
            host_port: port(hport)?,
            pod_ip: ip(pip)?,
            pod_port: port(pport)?,
        },
        (SET_HAIRPINS, [a, b], []) => {
            let pod_ip = ip(a)?;
            (ip(b)? == pod_ip).then_some(Element::Hairpin { pod_ip })?
        }
        (SET_POD_IPS, [a], []) => Element::PodIp { pod_ip: ip(a)? },
        _ => return None,
    };
    Some(Tagged { owner, elem })
}

fn atoms(v: &Value) -> Vec<&Value> {
    match v.get("concat").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![v],
    }
}

fn ip(v: &Value) -> Option<IpAddr> {
    v.as_str()?.parse().ok()
}

fn protocol(v: &Value) -> Option<Protocol> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => Protocol::from_number(n.as_u64()?),
        _ => None,
    }
}

fn port(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nft_1_0_6_listing_and_ignores_unknown_fields() {
        let json = r#"{"nftables": [
          {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "ip", "name": "t", "handle": 1}},
          {"map": {"family": "ip", "name": "hostipports", "table": "t", "type": ["ipv4_addr","inet_proto","inet_service"],
                   "handle": 2, "map": "ipv4_addr . inet_service", "some_future_field": 3,
                   "elem": [[{"elem": {"val": {"concat": ["198.51.100.1", "tcp", 8081]}, "comment": "p1 ns/a"}},
                             {"concat": ["10.88.1.2", 80]}]]}},
          {"map": {"family": "ip", "name": "hostports", "table": "t", "elem": [
             [{"elem": {"val": {"concat": [132, 9999]}, "comment": "p1"}}, {"concat": ["10.88.1.2", 99]}],
             [{"concat": ["udp", 53]}, {"concat": ["10.88.1.3", 53]}],
             [{"concat": ["bogus", 53]}, {"concat": ["10.88.1.3", 53]}]]}},
          {"set": {"family": "ip", "name": "hairpins", "table": "t",
                   "elem": [{"elem": {"val": {"concat": ["10.88.1.2", "10.88.1.2"]}, "comment": "p1 ns/a"}}]}},
          {"set": {"family": "ip", "name": "podips", "table": "t", "elem": ["10.88.1.9"]}},
          {"chain": {"family": "ip", "table": "t", "name": "hostports", "handle": 5}},
          {"rule": {"family": "ip", "table": "t", "chain": "hostports", "expr": []}}
        ]}"#;
        let st = parse_table(json, Family::V4).expect("parse");
        assert!(!st.intact, "chains incomplete");
        assert_eq!(st.unknown.len(), 1, "{:?}", st.unknown);
        assert_eq!(st.elements.len(), 5);
        assert_eq!(
            st.elements[0],
            Tagged {
                owner: Owner::parse("p1 ns/a"),
                elem: Element::HostIpPort {
                    host_ip: "198.51.100.1".parse().expect("ip"),
                    protocol: Protocol::Tcp,
                    host_port: 8081,
                    pod_ip: "10.88.1.2".parse().expect("ip"),
                    pod_port: 80,
                }
            }
        );
        assert!(matches!(
            st.elements[1].elem,
            Element::HostPort {
                protocol: Protocol::Sctp,
                host_port: 9999,
                ..
            }
        ));
        assert_eq!(
            st.elements[2].owner.id, "",
            "uncommented element has no owner"
        );
        assert!(matches!(st.elements[4].elem, Element::PodIp { .. }));
    }
}
