//! Test support: a real registry (Debian's `docker-registry`, the CNCF distribution server)
//! on a free loopback port, and images built in Rust and pushed to it through the registry
//! HTTP API.
//!
//! [`Registry`] starts the server with a temp storage dir and a generated config (optionally
//! with htpasswd auth), keeps its access log so tests can count blob downloads, and can
//! corrupt a stored blob in place so the registry serves bytes that do not match their
//! digest. Dropping it kills and reaps the server and removes its files.
//!
//! [`LayerBuilder`] writes layer tars (files, dirs, symlinks, hard links, devices, xattrs,
//! OCI whiteouts and opaque markers); [`build_image`] wraps layers (plain, gzip or zstd)
//! with a config and an OCI or Docker manifest; [`build_index`] makes a multi-platform
//! index. The pushing client is a few lines of HTTP/1.1 here, independent of the code
//! under test.

#![allow(clippy::print_stderr)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use images::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The registry binary; `make deps` installs Debian's `docker-registry`.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// Debian's `busybox-static`: one static binary, a realistic one-layer image.
pub const BUSYBOX: &str = "/bin/busybox";

/// Status, lower-cased headers and body of one HTTP response.
type HttpResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// A running `docker-registry`.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    auth: Option<(String, String)>,
}

/// A port that was free a moment ago (bind, read, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// A registry that requires HTTP basic auth (htpasswd, bcrypt) for every request.
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(auth: Option<(String, String)>) -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry (make deps)"
        );
        let mut dir = tempfile::Builder::new()
            .prefix("sluice-registry-")
            .tempdir()
            .expect("temp dir");
        let mut last_log = String::new();
        // The port can be taken between probing and binding; try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            );
            if let Some((user, password)) = &auth {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: sluice-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).expect("write registry config");
            let log = fs::File::create(dir.path().join("registry.log")).expect("log file");
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut reg = Self {
                dir,
                child: Some(child),
                port,
                auth: auth.clone(),
            };
            if reg.wait_ready() {
                return reg;
            }
            last_log = reg.log();
            reg.kill();
            dir = std::mem::replace(
                &mut reg.dir,
                tempfile::tempdir().expect("placeholder temp dir"),
            );
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && c.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            if let Ok((status, _, _)) = self.request("GET", "/v2/", &[], &[])
                && (status == 200 || status == 401)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:<port>`, the registry host part of image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`, for mirror config.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Successful downloads of blob `digest` so far, from the access log.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} HTTP/1.1\" 200 ");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&needle))
            .count()
    }

    /// Where the registry keeps blob `digest` (filesystem driver layout).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Flips bytes of a stored blob, keeping its length, so the registry serves content that
    /// no longer matches the digest it is named by.
    pub fn corrupt_blob(&self, digest: &str) {
        let p = self.blob_path(digest);
        let mut data = fs::read(&p).expect("read stored blob");
        let mid = data.len() / 2;
        let end = (mid + 16).min(data.len());
        for b in &mut data[mid..end] {
            *b ^= 0xff;
        }
        fs::write(&p, data).expect("rewrite stored blob");
    }

    /// One HTTP/1.1 request (connection closed after it); returns status, headers, body.
    fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut head = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.host(),
            body.len()
        );
        if let Some((u, p)) = &self.auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
        let text = String::from_utf8_lossy(&resp[..split]).into_owned();
        let mut lines = text.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let hdrs = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok((status, hdrs, resp[split + 4..].to_vec()))
    }

    /// Uploads one blob (POST to open an upload, PUT with the content and its digest).
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = Digest::of(data).to_string();
        let (status, headers, body) = self
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])
            .expect("start upload");
        assert_eq!(
            status,
            202,
            "start upload: {}",
            String::from_utf8_lossy(&body)
        );
        let location = headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .expect("upload location");
        let path = match location.find("/v2/") {
            Some(i) => location[i..].to_string(),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _, body) = self
            .request(
                "PUT",
                &format!("{path}{sep}digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                data,
            )
            .expect("finish upload");
        assert_eq!(
            status,
            201,
            "upload blob: {}",
            String::from_utf8_lossy(&body)
        );
        digest
    }

    /// Stores a manifest or index under `reference` (a tag or digest).
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let (status, _, resp) = self
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Content-Type", media_type)],
                body,
            )
            .expect("put manifest");
        assert_eq!(
            status,
            201,
            "put manifest: {}",
            String::from_utf8_lossy(&resp)
        );
    }

    /// Pushes an image's blobs and manifest, tagged `tag`.
    pub fn push_image(&self, repo: &str, tag: &str, image: &BuiltImage) {
        for b in &image.layers {
            self.push_blob(repo, &b.blob);
        }
        self.push_blob(repo, &image.config);
        self.push_manifest(repo, tag, &image.manifest_type, &image.manifest);
    }

    /// Pushes every image of an index by digest, then the index under `tag`.
    pub fn push_index(&self, repo: &str, tag: &str, index: &BuiltIndex) {
        for (img, _) in &index.images {
            self.push_image(repo, &img.manifest_digest, img);
        }
        self.push_manifest(repo, tag, OCI_INDEX, &index.bytes);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- docker-registry log ----\n{}---- end ----", self.log());
        }
    }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Builds one layer tar.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl std::fmt::Debug for LayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBuilder").finish_non_exhaustive()
    }
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).expect("tar path");
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(path, tar::EntryType::Directory, mode, 0);
        h.set_cksum();
        self.tar.append(&h, &[][..]).expect("tar dir");
        self
    }

    pub fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(path, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.tar.append(&h, data).expect("tar file");
        self
    }

    /// A file with extended attributes as PAX `SCHILY.xattr.*` records.
    pub fn file_with_xattr(mut self, path: &str, data: &[u8], name: &str, value: &[u8]) -> Self {
        self.tar
            .append_pax_extensions([(format!("SCHILY.xattr.{name}").as_str(), value)])
            .expect("pax");
        let mut h = Self::header(path, tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        self.tar.append(&h, data).expect("tar file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(path, tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(target).expect("link name");
        h.set_cksum();
        self.tar.append(&h, &[][..]).expect("tar symlink");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(path, tar::EntryType::Link, 0o644, 0);
        h.set_link_name(target).expect("link name");
        h.set_cksum();
        self.tar.append(&h, &[][..]).expect("tar link");
        self
    }

    pub fn char_device(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(path, tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        h.set_cksum();
        self.tar.append(&h, &[][..]).expect("tar device");
        self
    }

    /// OCI whiteout: deletes `dir/name` of lower layers.
    pub fn whiteout(self, dir: &str, name: &str) -> Self {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&path, b"", 0o644)
    }

    /// OCI opaque marker: hides every lower-layer entry of `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    pub fn finish(self) -> Vec<u8> {
        self.tar.into_inner().expect("tar finish")
    }
}

/// A layer made from Debian's static busybox: `/bin/busybox` plus a few applet links,
/// `/etc/passwd` and `/tmp`, with `marker` written to `/etc/marker`.
pub fn busybox_layer(marker: &str) -> Vec<u8> {
    let busybox = fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e} (install Debian's busybox-static)"));
    LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755)
        .symlink("bin/sh", "busybox")
        .symlink("bin/ls", "busybox")
        .symlink("bin/cat", "busybox")
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("etc/marker", marker.as_bytes(), 0o644)
        .dir("tmp", 0o1777)
        .finish()
}

/// One layer of a built image: the blob as pushed and the uncompressed tar's digest.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub blob: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
    pub media_type: String,
}

/// An image ready to push.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub layers: Vec<BuiltLayer>,
    pub config: Vec<u8>,
    /// The config digest: the image id.
    pub id: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_type: String,
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

/// Options for [`build_image`].
#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub compression: Compression,
    /// Docker schema 2 media types instead of OCI (gzip only).
    pub docker: bool,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub user: String,
    pub cmd: Vec<String>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Gzip,
            docker: false,
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            user: String::new(),
            cmd: vec!["/bin/sh".into()],
        }
    }
}

/// Wraps layer tars (bottom first) into an image.
pub fn build_image(tars: &[Vec<u8>], opts: &ImageOptions) -> BuiltImage {
    let layers: Vec<BuiltLayer> = tars
        .iter()
        .map(|t| {
            let blob = compress(t, opts.compression);
            let media_type = match (opts.docker, opts.compression) {
                (true, _) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                (false, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
                (false, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
                (false, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            };
            BuiltLayer {
                digest: Digest::of(&blob).to_string(),
                diff_id: Digest::of(t).to_string(),
                blob,
                media_type: media_type.to_string(),
            }
        })
        .collect();
    let mut config = serde_json::json!({
        "architecture": opts.architecture,
        "os": opts.os,
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": opts.cmd,
            "User": opts.user,
            "WorkingDir": "/",
            "Labels": {"org.example.test": "sluice"},
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    });
    if let Some(v) = &opts.variant {
        config["variant"] = serde_json::json!(v);
    }
    let config = serde_json::to_vec(&config).expect("config json");
    let id = Digest::of(&config).to_string();
    let (manifest_type, config_type) = if opts.docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json")
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": id, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("manifest json");
    BuiltImage {
        manifest_digest: Digest::of(&manifest).to_string(),
        manifest,
        manifest_type: manifest_type.to_string(),
        layers,
        config,
        id,
    }
}

/// A multi-platform index and its images.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub images: Vec<(BuiltImage, ImageOptions)>,
    pub bytes: Vec<u8>,
    pub digest: String,
}

/// An OCI index over `images`, each listed with its options' platform.
pub fn build_index(images: Vec<(BuiltImage, ImageOptions)>) -> BuiltIndex {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(img, o)| {
            let mut platform = serde_json::json!({"os": o.os, "architecture": o.architecture});
            if let Some(v) = &o.variant {
                platform["variant"] = serde_json::json!(v);
            }
            serde_json::json!({
                "mediaType": img.manifest_type,
                "digest": img.manifest_digest,
                "size": img.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("index json");
    BuiltIndex {
        digest: Digest::of(&bytes).to_string(),
        bytes,
        images,
    }
}
