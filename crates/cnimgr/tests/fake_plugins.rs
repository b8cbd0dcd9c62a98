//! Protocol tests with plugins the tests write as shell scripts: what sluice passes to plugins
//! (env, CNI_ARGS, stdin), config loading and watching, GC and STATUS (CNI 1.1.0, which Debian's
//! plugins 1.1.1 do not implement), and per-pod serialization.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cnimgr::{
    AttachmentKey, CniManager, EGRESS_BANDWIDTH_ANNOTATION, INGRESS_BANDWIDTH_ANNOTATION,
};
use common::{FAKE_RESULT, TestNet, pod, wait_for};
use serde_json::{Value, json};

/// A plugin that records env + stdin per command into `dir` and prints a valid result on ADD.
/// On ADD it passes `prevResult` through if it has one (like a meta plugin), else FAKE_RESULT.
fn recording_plugin(t: &TestNet, name: &str, dir: &Path) {
    let d = dir.display();
    t.plugin_script(
        name,
        &format!(
            r#"in=$(cat)
env > {d}/$CNI_COMMAND-{name}.env
printf '%s' "$in" > {d}/$CNI_COMMAND-{name}.stdin
echo "$CNI_COMMAND {name}" >> {d}/order.log
if [ "$CNI_COMMAND" = ADD ]; then
  printf '%s' '{FAKE_RESULT}'
fi"#
        ),
    );
}

fn env_of(dir: &Path, file: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn stdin_of(dir: &Path, file: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap()
}

#[tokio::test]
async fn plugins_get_pod_identity_capabilities_and_prev_result() {
    let t = TestNet::new();
    let rec = tempfile::tempdir().unwrap();
    recording_plugin(&t, "rec-a", rec.path());
    recording_plugin(&t, "rec-b", rec.path());
    let list = t.conflist(
        "1.0.0",
        vec![
            json!({"type": "rec-a", "custom": 42}),
            json!({"type": "rec-b", "capabilities": {"bandwidth": true, "cgroupPath": true, "portMappings": true}}),
        ],
    );
    t.write_conf("10-rec.conflist", &list);
    let mgr = t.manager();
    let mut p = pod(None);
    p.netns_path = Some("/run/netns/fake-for-recording".into());
    p.annotations
        .insert(INGRESS_BANDWIDTH_ANNOTATION.into(), "10M".into());
    p.annotations
        .insert(EGRESS_BANDWIDTH_ANNOTATION.into(), "1Mi".into());
    p.cgroup_parent = Some("/kubepods/besteffort/podx".into());

    let r = mgr.add(&p).await.expect("add");
    assert_eq!(r.ips[0].address.to_string(), "10.99.0.5/24");
    assert_eq!(r.dns.nameservers, vec!["10.99.0.53".to_owned()]);

    let env = env_of(rec.path(), "ADD-rec-a.env");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], p.pod_id);
    assert_eq!(env["CNI_NETNS"], "/run/netns/fake-for-recording");
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_PATH"],
        format!("{}:/usr/lib/cni", t.plugin_dir.display())
    );
    assert_eq!(
        env["CNI_ARGS"],
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=testns;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            p.name, p.pod_id, p.uid
        )
    );

    // rec-a: its own keys plus name/cniVersion; declares no capabilities, gets no runtimeConfig.
    let a = stdin_of(rec.path(), "ADD-rec-a.stdin");
    assert_eq!(a["name"], t.net_name.as_str());
    assert_eq!(a["cniVersion"], "1.0.0");
    assert_eq!(a["custom"], 42);
    assert!(a.get("runtimeConfig").is_none());
    assert!(a.get("prevResult").is_none());
    // rec-b: runtimeConfig for what it declared and we have values for; prevResult = rec-a's.
    let b = stdin_of(rec.path(), "ADD-rec-b.stdin");
    assert_eq!(
        b["runtimeConfig"],
        json!({
            "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": i32::MAX,
                          "egressRate": 1_048_576, "egressBurst": i32::MAX},
            "cgroupPath": "/kubepods/besteffort/podx"
        })
    );
    let fake: Value = serde_json::from_str(FAKE_RESULT).unwrap();
    assert_eq!(b["prevResult"], fake);

    // DEL: reverse order, prevResult from the cache, netns gone -> empty CNI_NETNS.
    mgr.del(&p).await.expect("del");
    let order = std::fs::read_to_string(rec.path().join("order.log")).unwrap();
    assert_eq!(order, "ADD rec-a\nADD rec-b\nDEL rec-b\nDEL rec-a\n");
    let denv = env_of(rec.path(), "DEL-rec-a.env");
    assert_eq!(denv["CNI_NETNS"], "");
    assert_eq!(denv["CNI_ARGS"], env["CNI_ARGS"]);
    let da = stdin_of(rec.path(), "DEL-rec-a.stdin");
    assert_eq!(da["prevResult"], fake);
    assert!(t.cache_files().is_empty());
}

#[tokio::test]
async fn conf_file_is_a_single_plugin_list_and_check_respects_disable_check() {
    let t = TestNet::new();
    let rec = tempfile::tempdir().unwrap();
    recording_plugin(&t, "rec", rec.path());
    t.write_conf(
        "10-rec.conf",
        &json!({"cniVersion": "0.4.0", "name": t.net_name, "type": "rec"}),
    );
    let mgr = t.manager();
    let mut p = pod(None);
    p.netns_path = Some("/run/netns/fake".into());
    mgr.add(&p).await.expect("add");
    mgr.check(&p).await.expect("check");
    assert!(rec.path().join("CHECK-rec.stdin").exists());
    assert_eq!(
        stdin_of(rec.path(), "CHECK-rec.stdin")["prevResult"]["ips"][0]["address"],
        "10.99.0.5/24"
    );
    mgr.del(&p).await.expect("del");

    // disableCheck: CHECK does not reach the plugin.
    std::fs::remove_file(rec.path().join("CHECK-rec.stdin")).unwrap();
    t.write_conf(
        "10-rec.conf",
        &json!({"cniVersion": "1.0.0", "name": t.net_name, "type": "rec", "disableCheck": true}),
    );
    mgr.reload();
    mgr.add(&p).await.expect("add");
    mgr.check(&p).await.expect("check");
    assert!(!rec.path().join("CHECK-rec.stdin").exists());
    mgr.del(&p).await.expect("del");
}

#[tokio::test]
async fn invalid_config_among_valid_ones_is_reported_and_skipped() {
    let t = TestNet::new();
    let rec = tempfile::tempdir().unwrap();
    recording_plugin(&t, "rec", rec.path());
    std::fs::write(t.conf_dir.join("00-garbage.conflist"), "{ not json").unwrap();
    t.write_conf(
        "05-noname.conf",
        &json!({"cniVersion": "1.0.0", "type": "rec"}),
    );
    t.write_conf(
        "07-badver.conflist",
        &json!({"cniVersion": "0.9.9", "name": "x", "plugins": [{"type": "rec"}]}),
    );
    std::fs::write(t.conf_dir.join("08-ignored.txt"), "not a config").unwrap();
    t.write_conf(
        "20-good.conflist",
        &t.conflist("1.0.0", vec![json!({"type": "rec"})]),
    );
    let mgr = t.manager();
    let r = mgr.readiness().await;
    assert!(r.ready, "{r:?}");
    assert_eq!(mgr.default_network().unwrap().name, t.net_name);
    let invalid = mgr.invalid_configs();
    let names: Vec<_> = invalid
        .iter()
        .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "00-garbage.conflist",
            "05-noname.conf",
            "07-badver.conflist"
        ]
    );
    assert!(
        invalid[0].reason.contains("invalid json"),
        "{}",
        invalid[0].reason
    );
    assert!(invalid[1].reason.contains("name"), "{}", invalid[1].reason);
    assert!(
        invalid[2].reason.contains("cniVersion"),
        "{}",
        invalid[2].reason
    );

    // Only invalid files: not ready, and the message names them.
    std::fs::remove_file(t.conf_dir.join("20-good.conflist")).unwrap();
    mgr.reload();
    let r = mgr.readiness().await;
    assert!(!r.ready);
    assert!(r.message.contains("00-garbage.conflist"), "{}", r.message);
}

#[tokio::test]
async fn default_network_by_name_wins_over_file_order() {
    let t = TestNet::new();
    let rec = tempfile::tempdir().unwrap();
    recording_plugin(&t, "rec", rec.path());
    t.write_conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "first", "plugins": [{"type": "rec"}]}),
    );
    t.write_conf(
        "20-b.conflist",
        &json!({"cniVersion": "1.0.0", "name": "second", "plugins": [{"type": "rec"}]}),
    );
    assert_eq!(t.manager().default_network().unwrap().name, "first");
    let mut cfg = t.config();
    cfg.default_network = Some("second".into());
    assert_eq!(
        CniManager::new(cfg.clone()).default_network().unwrap().name,
        "second"
    );
    cfg.default_network = Some("third".into());
    let r = CniManager::new(cfg).readiness().await;
    assert!(!r.ready);
    assert!(r.message.contains("\"third\""), "{}", r.message);
}

#[tokio::test]
async fn readiness_follows_the_watched_config_dir() {
    let t = TestNet::new();
    let rec = tempfile::tempdir().unwrap();
    recording_plugin(&t, "rec", rec.path());
    let mgr = t.manager();
    mgr.start_watching().expect("watch");
    let r = mgr.readiness().await;
    assert!(!r.ready);
    assert_eq!(r.reason, "NetworkPluginNotReady");

    let path = t.write_conf(
        "10-rec.conflist",
        &t.conflist("1.0.0", vec![json!({"type": "rec"})]),
    );
    assert!(
        wait_for(Duration::from_secs(10), async || mgr
            .readiness()
            .await
            .ready)
        .await,
        "did not become ready after the config appeared"
    );
    std::fs::remove_file(path).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), async || !mgr
            .readiness()
            .await
            .ready)
        .await,
        "did not become not-ready after the config was removed"
    );
    let r = mgr.readiness().await;
    assert_eq!(r.reason, "NetworkPluginNotReady");
    assert!(
        r.message.contains("no valid CNI network config"),
        "{}",
        r.message
    );
}

/// A CNI 1.1.0 plugin with a tiny lease store (one file per attachment) that honours GC with
/// `cni.dev/valid-attachments`, and STATUS that fails while a `down` file exists.
fn lease_store_plugin(t: &TestNet, store: &Path) {
    let s = store.display();
    t.plugin_script(
        "leasestore",
        &format!(
            r#"in=$(cat)
mkdir -p {s}/leases
echo "$CNI_COMMAND" >> {s}/commands.log
case "$CNI_COMMAND" in
ADD)
  touch "{s}/leases/$CNI_CONTAINERID-$CNI_IFNAME"
  printf '%s' '{{"cniVersion":"1.1.0","interfaces":[{{"name":"eth0","sandbox":"/x"}}],"ips":[{{"address":"10.98.0.7/24","interface":0}}]}}'
  ;;
DEL)
  rm -f "{s}/leases/$CNI_CONTAINERID-$CNI_IFNAME"
  ;;
GC)
  printf '%s' "$in" > {s}/gc.stdin
  valid=$(printf '%s' "$in" | tr -d ' \n' | grep -o '"containerID":"[^"]*","ifname":"[^"]*"' | sed 's/"containerID":"\([^"]*\)","ifname":"\([^"]*\)"/\1-\2/')
  for f in {s}/leases/*; do
    [ -e "$f" ] || continue
    b=$(basename "$f")
    keep=no
    for v in $valid; do [ "$v" = "$b" ] && keep=yes; done
    [ $keep = yes ] || rm -f "$f"
  done
  ;;
STATUS)
  if [ -e {s}/down ]; then
    echo '{{"cniVersion":"1.1.0","code":50,"msg":"lease store offline"}}'
    exit 1
  fi
  ;;
esac"#
        ),
    );
}

fn leases_in(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join("leases"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn gc_releases_leases_of_attachments_not_in_the_valid_list() {
    let t = TestNet::new();
    let store = tempfile::tempdir().unwrap();
    lease_store_plugin(&t, store.path());
    t.write_conf(
        "10-gc.conflist",
        &t.conflist("1.1.0", vec![json!({"type": "leasestore"})]),
    );
    let mgr = t.manager();
    let (mut a, mut b) = (pod(None), pod(None));
    a.netns_path = Some("/run/netns/fake-a".into());
    b.netns_path = Some("/run/netns/fake-b".into());
    mgr.add(&a).await.expect("add a");
    mgr.add(&b).await.expect("add b");
    // A lease the runtime has no record of (as if leaked before a crash).
    std::fs::write(store.path().join("leases/leaked-eth0"), "").unwrap();
    assert_eq!(leases_in(store.path()).len(), 3);

    let valid = [AttachmentKey {
        container_id: a.pod_id.clone(),
        ifname: "eth0".into(),
    }];
    mgr.gc(&valid).await.expect("gc");
    // b: cached but not valid -> DEL; leaked: plugin GC; a: kept.
    assert_eq!(leases_in(store.path()), vec![format!("{}-eth0", a.pod_id)]);
    let cmds = std::fs::read_to_string(store.path().join("commands.log")).unwrap();
    assert_eq!(cmds, "ADD\nADD\nDEL\nGC\n");
    let gc_in = stdin_of(store.path(), "gc.stdin");
    assert_eq!(
        gc_in["cni.dev/valid-attachments"],
        json!([{"containerID": a.pod_id, "ifname": "eth0"}])
    );
    assert_eq!(gc_in["name"], t.net_name.as_str());
    assert_eq!(gc_in["cniVersion"], "1.1.0");
    // Only a's cache entry remains.
    assert_eq!(mgr.cache().find(&b.pod_id, "eth0").unwrap().len(), 0);
    assert_eq!(mgr.cache().find(&a.pod_id, "eth0").unwrap().len(), 1);

    // disableGC: the plugin is not asked.
    t.write_conf(
        "10-gc.conflist",
        &json!({"cniVersion": "1.1.0", "name": t.net_name, "disableGC": true, "plugins": [{"type": "leasestore"}]}),
    );
    mgr.reload();
    std::fs::write(store.path().join("leases/leaked2-eth0"), "").unwrap();
    mgr.gc(&valid).await.expect("gc");
    assert!(leases_in(store.path()).contains(&"leaked2-eth0".to_owned()));
    mgr.del(&a).await.expect("del a");
}

#[tokio::test]
async fn status_of_a_1_1_0_network_drives_readiness() {
    let t = TestNet::new();
    let store = tempfile::tempdir().unwrap();
    lease_store_plugin(&t, store.path());
    t.write_conf(
        "10-gc.conflist",
        &t.conflist("1.1.0", vec![json!({"type": "leasestore"})]),
    );
    let mgr = t.manager();
    assert!(mgr.readiness().await.ready);
    mgr.status().await.expect("status");
    std::fs::write(store.path().join("down"), "").unwrap();
    let r = mgr.readiness().await;
    assert!(!r.ready);
    assert_eq!(r.reason, "NetworkPluginNotReady");
    assert!(
        r.message.contains("lease store offline") && r.message.contains("50"),
        "{}",
        r.message
    );
    let err = mgr.status().await.unwrap_err();
    assert_eq!(err.plugin_error().unwrap().code, Some(50));
    std::fs::remove_file(store.path().join("down")).unwrap();
    assert!(mgr.readiness().await.ready);
}

#[tokio::test]
async fn different_pods_run_in_parallel() {
    let t = TestNet::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Each ADD waits (bounded) until two ADDs have started: only parallel ADDs both succeed.
    t.plugin_script(
        "rendezvous",
        &format!(
            r#"cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  touch {d}/$CNI_CONTAINERID.started
  i=0
  while [ $(ls {d}/*.started | wc -l) -lt 2 ]; do
    i=$((i+1)); [ $i -gt 200 ] && {{ echo '{{"code":11,"msg":"peer never started"}}'; exit 1; }}
    sleep 0.05
  done
  printf '%s' '{FAKE_RESULT}'
fi"#
        ),
    );
    t.write_conf(
        "10-r.conflist",
        &t.conflist("1.0.0", vec![json!({"type": "rendezvous"})]),
    );
    let mgr = t.manager();
    let (mut a, mut b) = (pod(None), pod(None));
    a.netns_path = Some("/run/netns/fake-a".into());
    b.netns_path = Some("/run/netns/fake-b".into());
    let (ra, rb) = tokio::join!(mgr.add(&a), mgr.add(&b));
    ra.expect("add a");
    rb.expect("add b");
    mgr.del(&a).await.unwrap();
    mgr.del(&b).await.unwrap();
}

#[tokio::test]
async fn operations_of_one_pod_are_serialized() {
    let t = TestNet::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    t.plugin_script(
        "slow",
        &format!(
            r#"cat >/dev/null
echo "begin $CNI_COMMAND" >> {d}/log
sleep 0.3
echo "end $CNI_COMMAND" >> {d}/log
if [ "$CNI_COMMAND" = ADD ]; then printf '%s' '{FAKE_RESULT}'; fi"#
        ),
    );
    t.write_conf(
        "10-s.conflist",
        &t.conflist("1.0.0", vec![json!({"type": "slow"})]),
    );
    let mgr = t.manager();
    let mut p = pod(None);
    p.netns_path = Some("/run/netns/fake".into());
    let (r1, r2, r3) = tokio::join!(mgr.add(&p), mgr.check(&p), mgr.del(&p));
    r1.expect("add");
    let _ = r2; // CHECK may run before ADD (no cached result) or after it
    r3.expect("del");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 4, "{log}");
    for pair in lines.chunks(2) {
        let cmd = pair[0]
            .strip_prefix("begin ")
            .unwrap_or_else(|| panic!("interleaved: {log}"));
        assert_eq!(pair[1], format!("end {cmd}"), "interleaved: {log}");
    }
}

#[test]
fn shipped_default_config_is_valid() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cni/10-sluice-bridge.conflist");
    let list = cnimgr::config::load_file(&path).expect("shipped conflist parses");
    assert_eq!(list.name, "sluice");
    assert_eq!(list.cni_version, "1.0.0");
    let types: Vec<_> = list
        .plugins
        .iter()
        .map(|p| p.plugin_type.as_str())
        .collect();
    assert_eq!(types, ["bridge", "loopback"]);
    assert_eq!(list.plugins[0].raw["bridge"], "sluice0");
    assert_eq!(list.plugins[0].raw["ipam"]["type"], "host-local");
}
