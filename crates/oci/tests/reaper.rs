//! The subreaper reaps adopted orphans (another session) and leaves tokio's children alone.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

fn state(pid: i32) -> Option<oci::reaper::ProcStat> {
    oci::reaper::parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaps_adopted_orphans_but_not_tokio_children() {
    oci::reaper::become_subreaper().unwrap();
    // A tokio child in our session that will be a zombie when the sweep runs.
    let mut ours = tokio::process::Command::new("sleep")
        .arg("0.1")
        .spawn()
        .unwrap();
    let ours_pid = ours.id().unwrap() as i32;
    // An orphan in a session of its own, as conmon is: sh starts it and exits at once.
    let out = std::process::Command::new("sh")
        .args(["-c", "setsid sleep 0.2 >/dev/null 2>&1 & echo $!"])
        .output()
        .unwrap();
    let orphan: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let st = state(orphan).unwrap();
    assert_eq!(
        st.ppid,
        std::process::id() as i32,
        "the orphan was reparented to us"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(state(orphan).unwrap().state, 'Z');
    let reaped = tokio::task::spawn_blocking(oci::reaper::reap_adopted)
        .await
        .unwrap();
    assert_eq!(
        reaped,
        vec![oci::reaper::Reaped {
            pid: orphan,
            code: 0
        }]
    );
    assert!(state(orphan).is_none(), "orphan zombie is gone");
    // tokio still gets its own child's status.
    assert!(state(ours_pid).is_some());
    assert!(ours.wait().await.unwrap().success());
}
