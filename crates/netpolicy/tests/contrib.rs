//! The example manifests shipped in contrib/policy load cleanly and mean what they say.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use netpolicy::{Endpoint, Pod, Protocol, World};

#[test]
fn contrib_example_policies_load_and_decide() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/policy/policies");
    let loaded = netpolicy::load_dir(&dir).unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    assert_eq!(loaded.policies.len(), 2);
    let pod = |ns: &str, name: &str, app: &str, ip: &str| Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![ip.parse().unwrap()],
        host_network: false,
    };
    let world = World::new(
        &loaded,
        vec![
            pod("prod", "db-0", "db", "10.0.0.2"),
            pod("prod", "api-0", "api", "10.0.0.3"),
            pod("prod", "web-0", "web", "10.0.0.4"),
            pod("monitoring", "prom-0", "prometheus", "10.0.0.5"),
        ],
        vec![],
    );
    let allowed = |from: &str, to: &str, port: u16| {
        netpolicy::explain(
            &world,
            &from.parse::<Endpoint>().unwrap(),
            &to.parse::<Endpoint>().unwrap(),
            port,
            Protocol::Tcp,
        )
        .unwrap()
        .allowed
    };
    assert!(allowed("prod/api-0", "prod/db-0", 5432));
    assert!(!allowed("prod/web-0", "prod/db-0", 5432));
    assert!(!allowed("prod/api-0", "prod/db-0", 9187));
    assert!(allowed("monitoring/prom-0", "prod/db-0", 9187));
    assert!(
        allowed("prod/db-0", "prod/web-0", 80),
        "db's egress is not isolated"
    );
}
