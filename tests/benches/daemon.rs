//! Daemon-level numbers: start-up time to a serving socket, `Version` and `Status` round-trip
//! latency over the CRI socket, and resident memory when idle. Uses `$SLUICE_BIN` (the Makefile
//! points it at the release build) or the build next to this bench.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use sluice_e2e::bench::{report, rss_kib};
use std::time::{Duration, Instant};

use cri_api::runtime::v1::{StatusRequest, VersionRequest};
use sluice_e2e::{Daemon, Layout};

#[tokio::main]
async fn main() {
    println!("binary: {}", sluice_e2e::sluice_bin().display());

    let mut starts = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let d = Daemon::start_with(Layout::new(""), &[]).await;
        starts.push(t.elapsed());
        drop(d);
    }
    report("start to serving socket", starts);

    let d = Daemon::start().await;
    let mut c = d.runtime().await;
    for _ in 0..100 {
        c.version(VersionRequest::default()).await.unwrap();
    }
    let mut v = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        c.version(VersionRequest::default()).await.unwrap();
        v.push(t.elapsed());
    }
    report("Version round trip", v);
    let mut s = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        c.status(StatusRequest { verbose: false }).await.unwrap();
        s.push(t.elapsed());
    }
    report("Status round trip", s);

    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "idle RSS after 4000 calls     {} KiB",
        rss_kib(d.pid().as_raw())
    );
    let fresh = Daemon::start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "idle RSS of a fresh daemon    {} KiB",
        rss_kib(fresh.pid().as_raw())
    );
}
