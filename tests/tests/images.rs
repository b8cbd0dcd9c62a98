//! Image service end to end: the CRI `ImageService` (the `server` crate's handlers over the
//! `images` crate) on a temp unix socket, driven by the generated CRI client, pulling from a
//! real `docker-registry` on loopback with images built and pushed by the test.
//!
//! Most tests run the service in-process (fast, and independent of daemon wiring); the
//! `daemon_*` tests drive the real `sluice` binary, including a `kill -9` in the middle of
//! a pull.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cri_api::runtime::v1::image_service_client::ImageServiceClient;
use cri_api::runtime::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use images::{Mirror, NoContainers, RegistryConfig};
use sluice_e2e::registry::{
    BuiltImage, Compression, ImageOptions, LayerBuilder, Registry, build_image, build_index,
    busybox_layer, free_port,
};
use tonic::Code;
use tonic::transport::Channel;

/// The image service served in-process on a temp unix socket.
struct Node {
    dir: tempfile::TempDir,
    svc: images::ImageService,
    server: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(registries: RegistryConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-images-")
            .tempdir()
            .unwrap();
        let svc = images::ImageService::open(
            images::Config {
                root: dir.path().join("images"),
                registries,
            },
            Arc::new(NoContainers),
        )
        .unwrap();
        let socket = dir.path().join("cri.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let service = server::image_service(server::ImageSvc::new(svc.clone()));
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { dir, svc, server }
    }

    /// Trusts `registry` over plain HTTP.
    async fn for_registry(reg: &Registry) -> Self {
        Self::start(RegistryConfig {
            insecure_registries: vec![reg.host()],
            mirrors: vec![],
        })
        .await
    }

    async fn client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(
            sluice_e2e::connect(&self.dir.path().join("cri.sock"))
                .await
                .unwrap(),
        )
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("images")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..ImageSpec::default()
    })
}

async fn pull(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    c.pull_image(PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn list(
    c: &mut ImageServiceClient<Channel>,
    filter: Option<&str>,
) -> Vec<cri_api::runtime::v1::Image> {
    c.list_images(ListImagesRequest {
        filter: filter.map(|f| ImageFilter { image: spec(f) }),
    })
    .await
    .unwrap()
    .into_inner()
    .images
}

/// Verbose status: the image and the parsed `info` JSON.
async fn status(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
) -> (Option<cri_api::runtime::v1::Image>, serde_json::Value) {
    let r = c
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info = r
        .info
        .get("info")
        .map(|s| serde_json::from_str(s).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (r.image, info)
}

/// Unpacked layer dirs of an image, bottom first, from verbose status.
async fn layer_dirs(c: &mut ImageServiceClient<Channel>, image: &str) -> Vec<PathBuf> {
    let (_, info) = status(c, image).await;
    info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["dir"].as_str().unwrap()))
        .collect()
}

async fn fs_used(c: &mut ImageServiceClient<Channel>) -> (u64, u64, String) {
    let r = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let u = &r.image_filesystems[0];
    (
        u.used_bytes.as_ref().unwrap().value,
        u.inodes_used.as_ref().unwrap().value,
        u.fs_id.as_ref().unwrap().mountpoint.clone(),
    )
}

fn busybox_image(marker: &str, compression: Compression) -> BuiltImage {
    build_image(
        &[busybox_layer(marker)],
        &ImageOptions {
            compression,
            ..ImageOptions::default()
        },
    )
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The store holds nothing but empty scaffolding.
fn assert_store_clean(root: &Path) {
    for d in ["tmp", "layers", "images", "blobs/sha256"] {
        let names = names_in(&root.join(d));
        assert!(names.is_empty(), "{d} is not empty: {names:?}");
    }
}

fn assert_busybox_unpacked(dir: &Path, marker: &str) {
    let bin = dir.join("bin/busybox");
    assert_eq!(fs::read(&bin).unwrap(), fs::read("/bin/busybox").unwrap());
    assert_eq!(fs::metadata(&bin).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read_link(dir.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(fs::read_to_string(dir.join("etc/marker")).unwrap(), marker);
    assert_eq!(
        fs::metadata(dir.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_every_layer_format_and_list() {
    let reg = Registry::start();
    let node = Node::for_registry(&reg).await;
    let mut c = node.client().await;
    let cases = [
        ("gzip", busybox_image("gzip", Compression::Gzip)),
        ("zstd", busybox_image("zstd", Compression::Zstd)),
        ("plain", busybox_image("plain", Compression::None)),
        (
            "docker",
            build_image(
                &[busybox_layer("docker")],
                &ImageOptions {
                    docker: true,
                    user: "1000:1000".into(),
                    ..ImageOptions::default()
                },
            ),
        ),
    ];
    for (tag, img) in &cases {
        reg.push_image("library/busybox", tag, img);
        let name = format!("{}/library/busybox:{tag}", reg.host());
        let id = pull(&mut c, &name, None).await.unwrap();
        assert_eq!(&id, &img.id, "{tag}: the image id is the config digest");
        let dirs = layer_dirs(&mut c, &name).await;
        assert_eq!(dirs.len(), 1);
        assert_busybox_unpacked(&dirs[0], tag);
        let (image, info) = status(&mut c, &name).await;
        let image = image.unwrap();
        assert_eq!(image.repo_tags, vec![name.clone()]);
        assert_eq!(
            image.repo_digests,
            vec![format!(
                "{}/library/busybox@{}",
                reg.host(),
                img.manifest_digest
            )]
        );
        let blob_size: usize =
            img.config.len() + img.layers.iter().map(|l| l.blob.len()).sum::<usize>();
        assert_eq!(image.size, blob_size as u64);
        assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "/bin/sh");
        assert_eq!(info["platform"], "linux/amd64");
    }
    let (image, _) = status(&mut c, &format!("{}/library/busybox:docker", reg.host())).await;
    assert_eq!(image.unwrap().uid.unwrap().value, 1000);
    assert_eq!(list(&mut c, None).await.len(), 4);
    let filtered = list(
        &mut c,
        Some(&format!("{}/library/busybox:zstd", reg.host())),
    )
    .await;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, cases[1].1.id);
    assert!(list(&mut c, Some("nothing:here")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_digest_and_through_an_index_picks_this_platform() {
    let reg = Registry::start();
    let node = Node::for_registry(&reg).await;
    let mut c = node.client().await;
    let plat = |arch: &str, variant: Option<&str>| ImageOptions {
        architecture: arch.into(),
        variant: variant.map(Into::into),
        ..ImageOptions::default()
    };
    let mut entries = Vec::new();
    for (arch, variant) in [("arm64", Some("v8")), ("amd64", None), ("arm", Some("v7"))] {
        let o = plat(arch, variant);
        entries.push((build_image(&[busybox_layer(arch)], &o), o));
    }
    let index = build_index(entries);
    reg.push_index("multi/busybox", "1.0", &index);
    let host_arch = images::Platform::host().architecture;
    let expected = index
        .images
        .iter()
        .find(|(_, o)| o.architecture == host_arch)
        .map(|(img, _)| img.clone())
        .expect("index has this node's architecture");

    let name = format!("{}/multi/busybox:1.0", reg.host());
    let id = pull(&mut c, &name, None).await.unwrap();
    assert_eq!(id, expected.id);
    let dirs = layer_dirs(&mut c, &name).await;
    assert_busybox_unpacked(&dirs[0], &host_arch);
    let (image, info) = status(&mut c, &name).await;
    let by_index = format!("{}/multi/busybox@{}", reg.host(), index.digest);
    assert_eq!(image.unwrap().repo_digests, vec![by_index.clone()]);
    assert_eq!(info["indexDigest"], index.digest.as_str());
    assert_eq!(info["manifestDigest"], expected.manifest_digest.as_str());

    // By the index digest and by the platform manifest digest: the same image.
    assert_eq!(pull(&mut c, &by_index, None).await.unwrap(), expected.id);
    let by_manifest = format!("{}/multi/busybox@{}", reg.host(), expected.manifest_digest);
    assert_eq!(pull(&mut c, &by_manifest, None).await.unwrap(), expected.id);
    let (image, _) = status(&mut c, &by_manifest).await;
    let image = image.unwrap();
    assert_eq!(image.repo_tags, vec![name.clone()]);
    assert_eq!(image.repo_digests.len(), 2, "{:?}", image.repo_digests);
    assert_eq!(list(&mut c, None).await.len(), 1);

    // An index without this platform: NotFound naming the platforms on offer.
    let other = if host_arch == "amd64" {
        "s390x"
    } else {
        "amd64"
    };
    let o = plat(other, None);
    let only_other = build_index(vec![(build_image(&[busybox_layer(other)], &o), o)]);
    reg.push_index("multi/busybox", "other", &only_other);
    let e = pull(&mut c, &format!("{}/multi/busybox:other", reg.host()), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains(&format!("linux/{other}")),
        "{}",
        e.message()
    );
}

/// Mounts overlayfs read-only over lower dirs (topmost first); unmounted on drop.
struct Overlay {
    target: tempfile::TempDir,
}

impl Overlay {
    fn mount(lowers_top_first: &[PathBuf]) -> Self {
        let target = tempfile::tempdir().unwrap();
        let lowers: Vec<String> = lowers_top_first
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowers.join(":")))
            .arg(target.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount overlay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { target }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.target.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_and_opaque_dirs_apply_under_overlayfs() {
    let reg = Registry::start();
    let node = Node::for_registry(&reg).await;
    let mut c = node.client().await;
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/keep", b"keep", 0o644)
        .file("etc/removed", b"old", 0o644)
        .dir("etc/removed-dir", 0o755)
        .file("etc/removed-dir/inner", b"x", 0o644)
        .dir("opq", 0o755)
        .file("opq/old1", b"1", 0o644)
        .dir("opq/olddir", 0o755)
        .file("opq/olddir/f", b"2", 0o644)
        .finish();
    let top = LayerBuilder::new()
        .dir("etc", 0o755)
        .whiteout("etc", "removed")
        .whiteout("etc", "removed-dir")
        .file_owned("etc/owned", b"o", 0o4750, 1234, 5678)
        .hardlink("etc/owned-link", "etc/owned")
        .file_with_xattr("etc/xattr", b"x", "user.sluice", b"yes")
        .dir("opq", 0o700)
        .opaque("opq")
        .file("opq/new", b"n", 0o644)
        .dir("dev", 0o755)
        .char_device("dev/null", 1, 3)
        .finish();
    let img = build_image(
        &[base, top],
        &ImageOptions {
            compression: Compression::Zstd,
            ..ImageOptions::default()
        },
    );
    reg.push_image("layered/app", "v1", &img);
    let name = format!("{}/layered/app:v1", reg.host());
    pull(&mut c, &name, None).await.unwrap();
    let dirs = layer_dirs(&mut c, &name).await;
    assert_eq!(dirs.len(), 2);

    // In the top layer itself: overlayfs whiteouts, not OCI marker files.
    let wh = fs::symlink_metadata(dirs[1].join("etc/removed")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!dirs[1].join("etc/.wh.removed").exists());
    let owned = fs::symlink_metadata(dirs[1].join("etc/owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1234, 5678, 0o4750)
    );
    assert_eq!(
        fs::symlink_metadata(dirs[1].join("etc/owned-link"))
            .unwrap()
            .ino(),
        owned.ino()
    );
    let dev = fs::symlink_metadata(dirs[1].join("dev/null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));

    // What a container would see.
    let top_first: Vec<PathBuf> = dirs.iter().rev().cloned().collect();
    let ov = Overlay::mount(&top_first);
    let root = ov.target.path();
    assert_eq!(
        names_in(&root.join("etc")),
        ["keep", "owned", "owned-link", "xattr"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        names_in(&root.join("opq")),
        ["new"].map(String::from).into()
    );
    assert_eq!(fs::read_to_string(root.join("etc/keep")).unwrap(), "keep");
    let xattr_out = Command::new("getfattr")
        .args(["--only-values", "-n", "user.sluice"])
        .arg(root.join("etc/xattr"))
        .output();
    if let Ok(out) = xattr_out
        && out.status.success()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "yes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_pulls_download_once_and_shared_layers_are_skipped() {
    let reg = Registry::start();
    let node = Node::for_registry(&reg).await;
    let base = busybox_layer("base");
    let a = build_image(std::slice::from_ref(&base), &ImageOptions::default());
    let b = build_image(
        &[
            base,
            LayerBuilder::new().file("extra", b"b", 0o644).finish(),
        ],
        &ImageOptions::default(),
    );
    reg.push_image("app/a", "1", &a);
    reg.push_image("app/b", "1", &b);
    let name_a = format!("{}/app/a:1", reg.host());
    let (mut c1, mut c2) = (node.client().await, node.client().await);
    let (r1, r2) = tokio::join!(pull(&mut c1, &name_a, None), pull(&mut c2, &name_a, None));
    assert_eq!(r1.unwrap(), a.id);
    assert_eq!(r2.unwrap(), a.id);
    let base_digest = &a.layers[0].digest;
    assert_eq!(
        reg.blob_gets(base_digest),
        1,
        "the base layer was downloaded once"
    );
    assert_eq!(
        node.svc.stats().pulls,
        1,
        "the second pull joined the first"
    );

    pull(&mut c1, &format!("{}/app/b:1", reg.host()), None)
        .await
        .unwrap();
    assert_eq!(b.layers[0].digest, *base_digest);
    assert_eq!(
        reg.blob_gets(base_digest),
        1,
        "a present layer is not downloaded again"
    );
    assert_eq!(reg.blob_gets(&b.layers[1].digest), 1);
    assert_eq!(node.svc.stats().layers_fetched, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_auth_wrong_password_is_unauthenticated_without_the_secret() {
    let reg = Registry::start_with_auth("alice", "correct-horse");
    reg.push_image(
        "private/app",
        "1",
        &busybox_image("private", Compression::Gzip),
    );
    let node = Node::for_registry(&reg).await;
    let mut c = node.client().await;
    let name = format!("{}/private/app:1", reg.host());

    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let wrong = AuthConfig {
        username: "alice".into(),
        password: "battery-staple-secret".into(),
        ..AuthConfig::default()
    };
    let e = pull(&mut c, &name, Some(wrong)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains(&name), "{}", e.message());
    assert!(
        !e.message().contains("battery-staple-secret"),
        "{}",
        e.message()
    );
    assert!(list(&mut c, None).await.is_empty());

    let right = AuthConfig {
        username: "alice".into(),
        password: "correct-horse".into(),
        ..AuthConfig::default()
    };
    pull(&mut c, &name, Some(right)).await.unwrap();
    // The docker config.json form: base64("user:password").
    let encoded = AuthConfig {
        auth: "YWxpY2U6Y29ycmVjdC1ob3JzZQ==".into(),
        ..AuthConfig::default()
    };
    node.svc.remove(&name).await.unwrap();
    pull(&mut c, &name, Some(encoded)).await.unwrap();
    assert_eq!(list(&mut c, None).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_fails_the_pull_and_keeps_nothing() {
    let reg = Registry::start();
    let img = busybox_image("corrupt", Compression::Gzip);
    reg.push_image("bad/app", "1", &img);
    reg.corrupt_blob(&img.layers[0].digest);
    let node = Node::for_registry(&reg).await;
    let mut c = node.client().await;
    let name = format!("{}/bad/app:1", reg.host());
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(
        e.message().contains(&img.layers[0].digest),
        "{}",
        e.message()
    );
    assert!(list(&mut c, None).await.is_empty());
    assert_store_clean(&node.root());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_and_unknown_tag_name_the_reference_and_cause() {
    let reg = Registry::start();
    reg.push_image(
        "library/busybox",
        "1.0",
        &busybox_image("x", Compression::Gzip),
    );
    let dead = format!("127.0.0.1:{}", free_port());
    let node = Node::start(RegistryConfig {
        insecure_registries: vec![reg.host(), dead.clone()],
        mirrors: vec![],
    })
    .await;
    let mut c = node.client().await;

    let name = format!("{dead}/library/busybox:1.0");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&name), "{}", e.message());
    assert!(e.message().contains("unreachable"), "{}", e.message());

    let name = format!("{}/library/busybox:nope", reg.host());
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains(&name), "{}", e.message());
    assert!(
        e.message().to_lowercase().contains("manifest unknown"),
        "{}",
        e.message()
    );

    let e = pull(&mut c, "Not/A/Valid:Ref!", None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = pull(&mut c, "", None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("image.image"), "{}", e.message());
    assert_store_clean(&node.root());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_serve_the_pull_in_order_and_the_requested_name_is_recorded() {
    let reg = Registry::start();
    let img = busybox_image("mirrored", Compression::Gzip);
    reg.push_image("library/busybox", "1.0", &img);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let node = Node::start(RegistryConfig {
        insecure_registries: vec![],
        mirrors: vec![Mirror {
            registry: "registry.example.test".into(),
            endpoints: vec![dead, reg.url()],
        }],
    })
    .await;
    let mut c = node.client().await;
    // `registry.example.test` does not resolve; only the mirrors can serve this.
    let name = "registry.example.test/library/busybox:1.0";
    assert_eq!(pull(&mut c, name, None).await.unwrap(), img.id);
    let images = list(&mut c, None).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags, vec![name.to_string()]);
    assert_eq!(
        images[0].repo_digests,
        vec![format!(
            "registry.example.test/library/busybox@{}",
            img.manifest_digest
        )]
    );
    assert_eq!(reg.blob_gets(&img.layers[0].digest), 1);
    // Short names of the mirrored registry resolve to the same image.
    let (image, _) = status(&mut c, name).await;
    assert_eq!(image.unwrap().id, img.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_remove_and_fs_info() {
    let reg = Registry::start();
    let img = busybox_image("rm", Compression::Gzip);
    reg.push_image("library/busybox", "1.0", &img);
    reg.push_image("library/busybox", "1.1", &img);
    let node = Node::for_registry(&reg).await;
    let mut c = node.client().await;

    let (empty_bytes, empty_inodes, mountpoint) = fs_used(&mut c).await;
    assert!(Path::new(&mountpoint).is_absolute());
    let (img_none, info) = status(&mut c, "docker.io/library/unknown:1").await;
    assert!(img_none.is_none(), "unknown image: empty response");
    assert!(info.is_null());

    let t0 = format!("{}/library/busybox:1.0", reg.host());
    let t1 = format!("{}/library/busybox:1.1", reg.host());
    pull(&mut c, &t0, None).await.unwrap();
    pull(&mut c, &t1, None).await.unwrap();
    let (bytes, inodes, _) = fs_used(&mut c).await;
    let busybox_size = fs::metadata("/bin/busybox").unwrap().len();
    assert!(
        bytes >= empty_bytes + busybox_size,
        "{bytes} after pull vs {empty_bytes} before"
    );
    assert!(inodes > empty_inodes + 5);

    let images = list(&mut c, None).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags.len(), 2);
    let dirs = layer_dirs(&mut c, &t0).await;

    // Lookups by id, id prefix, tag and digest all find it.
    let id_hex = img.id.strip_prefix("sha256:").unwrap();
    for key in [
        img.id.clone(),
        id_hex.to_string(),
        id_hex[..12].to_string(),
        t1.clone(),
        format!("{}/library/busybox@{}", reg.host(), img.manifest_digest),
    ] {
        let (found, _) = status(&mut c, &key).await;
        assert_eq!(found.map(|i| i.id), Some(img.id.clone()), "lookup by {key}");
    }

    // Removing one of two tags only untags.
    c.remove_image(RemoveImageRequest { image: spec(&t0) })
        .await
        .unwrap();
    let images = list(&mut c, None).await;
    assert_eq!(images[0].repo_tags, vec![t1.clone()]);
    assert!(dirs[0].join("bin/busybox").exists());

    // Removing by id prefix removes the image and its layers.
    c.remove_image(RemoveImageRequest {
        image: spec(&id_hex[..12]),
    })
    .await
    .unwrap();
    assert!(list(&mut c, None).await.is_empty());
    assert!(!dirs[0].exists());
    assert_store_clean(&node.root());
    let (after, _, _) = fs_used(&mut c).await;
    assert!(
        after < bytes,
        "{after} after remove vs {bytes} with the image"
    );

    // Removing what is not there succeeds (CRI: idempotent); an empty name does not.
    c.remove_image(RemoveImageRequest { image: spec(&t1) })
        .await
        .unwrap();
    let e = c
        .remove_image(RemoveImageRequest { image: spec("") })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_survives_reopening_the_store() {
    let reg = Registry::start();
    let img = busybox_image("persist", Compression::Gzip);
    reg.push_image("library/busybox", "1.0", &img);
    let node = Node::for_registry(&reg).await;
    let mut c = node.client().await;
    let name = format!("{}/library/busybox:1.0", reg.host());
    pull(&mut c, &name, None).await.unwrap();
    let before = list(&mut c, None).await;
    let reopened = images::ImageService::open(
        images::Config {
            root: node.root(),
            registries: RegistryConfig::default(),
        },
        Arc::new(NoContainers),
    )
    .unwrap();
    let recs = reopened.list();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].id.to_string(), before[0].id);
    assert_eq!(recs[0].repo_tags, before[0].repo_tags);
    assert_eq!(recs[0].config.cmd, vec!["/bin/sh"]);
    let rootfs = reopened.rootfs(&recs[0].id).unwrap();
    assert_busybox_unpacked(&rootfs[0], "persist");
}

/// Incompressible bytes from a fixed seed (xorshift64*), fast to make in bulk.
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

fn daemon_config(reg: &Registry) -> String {
    format!(
        "[images]\ninsecure_registries = [\"{}\"]\n\n[[images.mirrors]]\nregistry = \"registry.example.test\"\nendpoints = [\"{}\"]\n",
        reg.host(),
        reg.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_images_from_its_config() {
    let reg = Registry::start();
    let img = busybox_image("daemon", Compression::Gzip);
    reg.push_image("library/busybox", "1.0", &img);
    let d =
        sluice_e2e::Daemon::start_with(sluice_e2e::Layout::new(&daemon_config(&reg)), &[]).await;
    let mut c = d.images().await;
    let (before, _, _) = fs_used(&mut c).await;
    let direct = format!("{}/library/busybox:1.0", reg.host());
    let mirrored = "registry.example.test/library/busybox:1.0";
    assert_eq!(pull(&mut c, &direct, None).await.unwrap(), img.id);
    assert_eq!(pull(&mut c, mirrored, None).await.unwrap(), img.id);
    let images = list(&mut c, None).await;
    assert_eq!(images.len(), 1);
    let tags: BTreeSet<String> = images[0].repo_tags.iter().cloned().collect();
    assert_eq!(tags, [direct.clone(), mirrored.to_string()].into());
    let dirs = layer_dirs(&mut c, mirrored).await;
    assert!(
        dirs[0].starts_with(d.layout.root.join("images")),
        "{dirs:?}"
    );
    assert_busybox_unpacked(&dirs[0], "daemon");
    let (after, _, _) = fs_used(&mut c).await;
    assert!(after > before);
    for t in [&direct, mirrored] {
        c.remove_image(RemoveImageRequest { image: spec(t) })
            .await
            .unwrap();
    }
    assert!(list(&mut c, None).await.is_empty());
    assert_store_clean(&d.layout.root.join("images"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_mid_pull_restarts_clean_and_pulls_again() {
    let reg = Registry::start();
    // Three large incompressible layers, so the pull is still running when it is killed.
    let tars: Vec<Vec<u8>> = (0..3u64)
        .map(|i| {
            LayerBuilder::new()
                .file(&format!("blob{i}"), &noise(32 << 20, i + 1), 0o644)
                .finish()
        })
        .collect();
    let img = build_image(
        &tars,
        &ImageOptions {
            compression: Compression::None,
            ..ImageOptions::default()
        },
    );
    reg.push_image("big/app", "1", &img);
    let mut d =
        sluice_e2e::Daemon::start_with(sluice_e2e::Layout::new(&daemon_config(&reg)), &[]).await;
    let store = d.layout.root.join("images");
    let name = format!("{}/big/app:1", reg.host());
    let mut c = d.images().await;
    let puller = {
        let name = name.clone();
        tokio::spawn(async move { pull(&mut c, &name, None).await })
    };
    // Wait until a layer is half unpacked in scratch space, then kill -9.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let caught = loop {
        let busy = names_in(&store.join("tmp")).iter().any(|n| {
            n.starts_with("layer-")
                && fs::metadata(store.join("tmp").join(n).join("diff").join("blob0"))
                    .or_else(|_| fs::metadata(store.join("tmp").join(n).join("diff").join("blob1")))
                    .or_else(|_| fs::metadata(store.join("tmp").join(n).join("diff").join("blob2")))
                    .is_ok_and(|m| m.len() > 0)
        });
        if busy {
            break true;
        }
        if puller.is_finished() || std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    assert!(caught, "the pull finished before it could be interrupted");
    d.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = d.wait_exit(std::time::Duration::from_secs(10)).await;
    let _ = puller.await;
    assert!(
        !names_in(&store.join("tmp")).is_empty(),
        "the kill left scratch data behind, as a crash would"
    );

    d.restart(&[]).await;
    let mut c = d.images().await;
    assert!(
        names_in(&store.join("tmp")).is_empty(),
        "scratch data removed at start-up"
    );
    assert!(
        names_in(&store.join("layers")).is_empty(),
        "no unreferenced layer kept"
    );
    assert!(list(&mut c, None).await.is_empty());
    assert_eq!(pull(&mut c, &name, None).await.unwrap(), img.id);
    let dirs = layer_dirs(&mut c, &name).await;
    assert_eq!(
        fs::metadata(dirs[2].join("blob2")).unwrap().len(),
        32 << 20,
        "the retried pull unpacked the whole image"
    );
    assert!(names_in(&store.join("tmp")).is_empty());
}
