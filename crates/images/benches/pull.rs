//! Pull + unpack throughput: a ~100 MB, 3-layer gzip image from a local `docker-registry`,
//! cold (empty store) and warm (every layer present), next to `skopeo copy` into an OCI
//! layout followed by `umoci unpack` of the same image on the same machine.
//!
//! Layers: 40 MiB incompressible noise in one file, 40 MiB of compressible text in one
//! file, 2000 small files of 10 KiB (20 MiB). Run with `cargo bench -p images --bench pull`
//! (root: unpacking preserves ownership and creates device nodes).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use images::{Config, ImageService, NoContainers, RegistryConfig};
use sluice_e2e::registry::{Compression, ImageOptions, LayerBuilder, Registry, build_image};

const RUNS: usize = 5;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i:>10} of a log-like, compressible text file\n").as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

fn p50(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn drop_caches() {
    // Not required; keeps runs comparable when possible.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

fn main() {
    let mut small = LayerBuilder::new().dir("small", 0o755);
    for i in 0..2000u64 {
        small = small.file(&format!("small/f{i}"), &noise(10 << 10, 1000 + i), 0o644);
    }
    let tars = vec![
        LayerBuilder::new()
            .file("noise", &noise(40 << 20, 7), 0o644)
            .finish(),
        LayerBuilder::new()
            .file("text", &text(40 << 20), 0o644)
            .finish(),
        small.finish(),
    ];
    let tar_bytes: usize = tars.iter().map(Vec::len).sum();
    let img = build_image(
        &tars,
        &ImageOptions {
            compression: Compression::Gzip,
            ..ImageOptions::default()
        },
    );
    let blob_bytes: usize = img.layers.iter().map(|l| l.blob.len()).sum();
    let reg = Registry::start();
    reg.push_image("bench/app", "1", &img);
    let name = format!("{}/bench/app:1", reg.host());
    println!(
        "image: 3 layers, {:.1} MiB uncompressed, {:.1} MiB gzip in the registry",
        tar_bytes as f64 / (1 << 20) as f64,
        blob_bytes as f64 / (1 << 20) as f64
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let registries = RegistryConfig {
        insecure_registries: vec![reg.host()],
        mirrors: vec![],
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let svc = ImageService::open(
            Config {
                root: dir.path().join("images"),
                registries: registries.clone(),
            },
            Arc::new(NoContainers),
        )
        .unwrap();
        drop_caches();
        let t = Instant::now();
        rt.block_on(svc.pull(&name, None)).unwrap();
        cold.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(svc.pull(&name, None)).unwrap();
        warm.push(t.elapsed());
    }
    let (c, w) = (p50(&mut cold), p50(&mut warm));
    println!(
        "sluice pull+unpack  cold p50 {:>8.1} ms  {:>6.1} MiB/s (uncompressed)  {:>6.1} MiB/s (wire)",
        c.as_secs_f64() * 1e3,
        mbps(tar_bytes, c),
        mbps(blob_bytes, c)
    );
    println!(
        "sluice pull+unpack  warm p50 {:>8.1} ms  (all layers present)",
        w.as_secs_f64() * 1e3
    );

    let have = |b: &str| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("skopeo") && have("umoci")) {
        println!("skopeo+umoci: not installed (Debian packages skopeo, umoci); comparison skipped");
        return;
    }
    let (mut copy, mut unpack, mut total, mut warm_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("oci");
        let bundle = |n: &str| dir.path().join(n);
        let src = format!("docker://{name}");
        let dst = format!("oci:{}:1", layout.display());
        let skopeo = |d: &Path| {
            let _ = d;
            let mut c = Command::new("skopeo");
            c.args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--insecure-policy",
                &src,
                &dst,
            ]);
            c
        };
        let umoci = |b: &Path| {
            let mut c = Command::new("umoci");
            c.args(["unpack", "--image", &format!("{}:1", layout.display())])
                .arg(b);
            c
        };
        drop_caches();
        let t = Instant::now();
        run(&mut skopeo(&layout));
        let t_copy = t.elapsed();
        let t2 = Instant::now();
        run(&mut umoci(&bundle("b1")));
        let t_unpack = t2.elapsed();
        copy.push(t_copy);
        unpack.push(t_unpack);
        total.push(t_copy + t_unpack);
        // Warm: blobs already in the layout; umoci always unpacks the whole rootfs again.
        let t = Instant::now();
        run(&mut skopeo(&layout));
        run(&mut umoci(&bundle("b2")));
        warm_total.push(t.elapsed());
    }
    let (cp, up, tot, wt) = (
        p50(&mut copy),
        p50(&mut unpack),
        p50(&mut total),
        p50(&mut warm_total),
    );
    println!(
        "skopeo copy         cold p50 {:>8.1} ms\numoci unpack             p50 {:>8.1} ms",
        cp.as_secs_f64() * 1e3,
        up.as_secs_f64() * 1e3
    );
    println!(
        "skopeo+umoci        cold p50 {:>8.1} ms  {:>6.1} MiB/s (uncompressed)  {:>6.1} MiB/s (wire)",
        tot.as_secs_f64() * 1e3,
        mbps(tar_bytes, tot),
        mbps(blob_bytes, tot)
    );
    println!(
        "skopeo+umoci        warm p50 {:>8.1} ms  (blobs present, rootfs unpacked again)",
        wt.as_secs_f64() * 1e3
    );
    println!(
        "sluice cold is {:.2}x the speed of skopeo+umoci",
        tot.as_secs_f64() / c.as_secs_f64()
    );
}
