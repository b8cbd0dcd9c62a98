//! The image service: pulls (deduplicated, layers in parallel, streamed into the unpacker)
//! and the store operations behind CRI's ImageService.

use std::collections::HashMap;
use std::hash::{Hash, Hasher as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, Shared, try_join_all};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use tracing::Instrument;

use crate::digest::{Digest, Hasher, chain_ids};
use crate::error::{Error, Result};
use crate::manifest::{
    ACCEPTED_MANIFESTS, AnyManifest, Descriptor, ImageConfigFile, Manifest, Parsed, Platform,
};
use crate::reference::Reference;
use crate::registry::{self, Credentials, Endpoint, RegistryConfig, classify};
use crate::store::{FsUsage, ImageRecord, ImageUsage, LayerMeta, LayerRecord, Removed, Store};
use crate::unpack::{self, ChannelReader};

/// Largest config blob accepted (real ones are a few KiB; this bounds memory).
const MAX_CONFIG_SIZE: i64 = 16 << 20;
/// Chunks buffered between the download and the unpacker of one layer.
const CHANNEL_DEPTH: usize = 64;

/// Configuration of the image service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Store root: `<storage.root>/images`.
    pub root: PathBuf,
    pub registries: RegistryConfig,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Pulls that actually ran (joined duplicates are not counted).
    pub pulls: u64,
    /// Layer blobs downloaded and unpacked.
    pub layers_fetched: u64,
    /// Compressed bytes downloaded for layers.
    pub layer_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    pulls: AtomicU64,
    layers_fetched: AtomicU64,
    layer_bytes: AtomicU64,
}

type SharedPull = Shared<BoxFuture<'static, Result<Digest>>>;

/// The image service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ImageService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    registries: RegistryConfig,
    platform: Platform,
    usage: Arc<dyn ImageUsage>,
    pulls: Mutex<HashMap<(Reference, u64), SharedPull>>,
    layer_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    counters: Counters,
    metrics: crate::metrics::ImageMetrics,
}

impl std::fmt::Debug for ImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageService")
            .field("root", &self.inner.store.root())
            .field("platform", &self.inner.platform)
            .finish_non_exhaustive()
    }
}

/// What a pull resolved a reference to.
struct Resolved {
    top: Digest,
    index: Option<(Digest, Vec<u8>)>,
    manifest_digest: Digest,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
}

/// Everything one pull works with.
struct PullCtx {
    reference: Reference,
    endpoint: Endpoint,
    client: oci_client::Client,
    oref: oci_client::Reference,
    auth: RegistryAuth,
}

impl ImageService {
    /// Opens the store (blocking: it cleans up after an interrupted run), for this node's
    /// platform. `usage` tells which images containers use.
    pub fn open(config: Config, usage: Arc<dyn ImageUsage>) -> Result<Self> {
        Self::open_for(config, usage, Platform::host())
    }

    /// Like [`ImageService::open`], recording pulls in `metrics`.
    pub fn open_with_metrics(
        config: Config,
        usage: Arc<dyn ImageUsage>,
        metrics: crate::metrics::ImageMetrics,
    ) -> Result<Self> {
        Self::open_inner(config, usage, Platform::host(), metrics)
    }

    /// Like [`ImageService::open`] for another platform (tests of index selection).
    pub fn open_for(
        config: Config,
        usage: Arc<dyn ImageUsage>,
        platform: Platform,
    ) -> Result<Self> {
        Self::open_inner(
            config,
            usage,
            platform,
            crate::metrics::ImageMetrics::default(),
        )
    }

    fn open_inner(
        config: Config,
        usage: Arc<dyn ImageUsage>,
        platform: Platform,
        metrics: crate::metrics::ImageMetrics,
    ) -> Result<Self> {
        let store = Arc::new(Store::open(&config.root)?);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                registries: config.registries,
                platform,
                usage,
                pulls: Mutex::default(),
                layer_locks: Mutex::default(),
                counters: Counters::default(),
                metrics,
            }),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            pulls: c.pulls.load(Ordering::Relaxed),
            layers_fetched: c.layers_fetched.load(Ordering::Relaxed),
            layer_bytes: c.layer_bytes.load(Ordering::Relaxed),
        }
    }

    /// Pulls `image` and returns its id. Concurrent pulls of the same reference with the same
    /// credentials share one pull; the pull runs in its own task, so a caller that gives up
    /// does not waste the work of the others (or its own, for the retry).
    pub async fn pull(&self, image: &str, credentials: Option<Credentials>) -> Result<Digest> {
        let reference = Reference::parse(image)?;
        let credentials = credentials.filter(|c| !c.is_empty());
        let key = (reference.clone(), fingerprint(credentials.as_ref()));
        let fut = {
            let mut pulls = self.inner.pulls.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = pulls.get(&key) {
                tracing::debug!(image = %reference, "joining a pull in flight");
                f.clone()
            } else {
                let inner = Arc::clone(&self.inner);
                let k = key.clone();
                let span = tracing::info_span!("pull", image = %reference);
                let task = tokio::spawn(
                    async move {
                        let started = std::time::Instant::now();
                        let res = Arc::clone(&inner).pull(reference, credentials).await;
                        let result = match &res {
                            Ok(_) => "success".to_string(),
                            Err(e) => format!("{:?}", e.kind()),
                        };
                        inner
                            .metrics
                            .pulls
                            .get_or_create(&crate::metrics::ResultLabels { result })
                            .inc();
                        inner
                            .metrics
                            .duration
                            .observe(started.elapsed().as_secs_f64());
                        inner
                            .pulls
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&k);
                        res
                    }
                    .instrument(span),
                );
                let fut: BoxFuture<'static, Result<Digest>> = async move {
                    task.await
                        .unwrap_or_else(|e| Err(Error::Internal(format!("pull task failed: {e}"))))
                }
                .boxed();
                let fut = fut.shared();
                pulls.insert(key, fut.clone());
                fut
            }
        };
        fut.await
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.inner.store.list()
    }

    /// The image `image` names (id, id prefix, tag or digest reference), if present.
    pub fn status(&self, image: &str) -> Result<Option<ImageRecord>> {
        Ok(self.inner.store.resolve(image)?.map(|(r, _)| r))
    }

    /// The image config document as pulled (for verbose status).
    pub fn config_blob(&self, image: &ImageRecord) -> Result<Option<Vec<u8>>> {
        self.inner.store.read_blob(&image.id)
    }

    /// Removes what `image` names; see [`Store::remove`].
    pub async fn remove(&self, image: &str) -> Result<Removed> {
        let inner = Arc::clone(&self.inner);
        let image = image.to_string();
        tokio::task::spawn_blocking(move || inner.store.remove(&image, inner.usage.as_ref()))
            .await
            .map_err(|e| Error::Internal(format!("remove task failed: {e}")))?
    }

    pub async fn fs_usage(&self) -> Result<FsUsage> {
        let store = Arc::clone(&self.inner.store);
        tokio::task::spawn_blocking(move || store.usage())
            .await
            .map_err(|e| Error::Internal(format!("usage task failed: {e}")))?
    }

    /// Overlay lower dirs of an image, topmost first.
    pub fn rootfs(&self, id: &Digest) -> Option<Vec<PathBuf>> {
        self.inner.store.rootfs(id)
    }
}

/// Distinguishes pulls by credentials without keeping them.
fn fingerprint(c: Option<&Credentials>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(c) = c {
        (
            &c.username,
            &c.password,
            &c.auth,
            &c.identity_token,
            &c.registry_token,
        )
            .hash(&mut h);
    }
    h.finish()
}

impl Inner {
    async fn pull(
        self: Arc<Self>,
        reference: Reference,
        credentials: Option<Credentials>,
    ) -> Result<Digest> {
        self.counters.pulls.fetch_add(1, Ordering::Relaxed);
        let mut last_err = None;
        for endpoint in self.registries.endpoints(reference.domain()) {
            // Credentials belong to the registry the client named; a mirror is another host
            // and never sees them.
            let auth = match (&credentials, endpoint.mirror) {
                (Some(c), false) => c.to_registry_auth(reference.domain())?,
                _ => RegistryAuth::Anonymous,
            };
            let client = registry::client(&endpoint)?;
            let oref = registry::oci_reference(&reference, &endpoint);
            let ctx = PullCtx {
                reference: reference.clone(),
                endpoint,
                client,
                oref,
                auth,
            };
            match self.resolve(&ctx).await {
                Ok(resolved) => return self.fetch(&ctx, resolved).await,
                Err(e) if ctx.endpoint.mirror => {
                    tracing::warn!(mirror = %ctx.endpoint, error = %e, "mirror failed, trying the next endpoint");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Internal("no endpoint to pull from".to_string())))
    }

    /// Fetches the manifest (through the index, for this platform), verifying digests.
    async fn resolve(&self, ctx: &PullCtx) -> Result<Resolved> {
        let r = &ctx.reference;
        let (bytes, _) = ctx
            .client
            .pull_manifest_raw(&ctx.oref, &ctx.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| classify(e, r, &ctx.endpoint))?;
        let top = Digest::of(&bytes);
        if let Some(want) = r.digest()
            && &top != want
        {
            return Err(Error::DigestMismatch {
                reference: r.to_string(),
                what: "manifest".to_string(),
                expected: want.to_string(),
                actual: top.to_string(),
            });
        }
        let bad = |message: String| Error::BadImage {
            reference: r.to_string(),
            message,
        };
        match AnyManifest::parse(&bytes).map_err(|e| bad(e.0))? {
            Parsed::Manifest(manifest) => Ok(Resolved {
                top: top.clone(),
                index: None,
                manifest_digest: top,
                manifest_bytes: bytes.to_vec(),
                manifest,
            }),
            Parsed::Index(entries) => {
                let entry =
                    self.platform
                        .select(&entries)
                        .ok_or_else(|| Error::NoMatchingPlatform {
                            reference: r.to_string(),
                            platform: self.platform.to_string(),
                            offered: entries
                                .iter()
                                .filter_map(|e| e.platform.as_ref().map(ToString::to_string))
                                .collect::<Vec<_>>()
                                .join(", "),
                        })?;
                tracing::debug!(manifest = %entry.digest, platform = %self.platform, "selected from index");
                let mref = ctx.oref.clone_with_digest(entry.digest.to_string());
                let (mbytes, _) = ctx
                    .client
                    .pull_manifest_raw(&mref, &ctx.auth, ACCEPTED_MANIFESTS)
                    .await
                    .map_err(|e| classify(e, r, &ctx.endpoint))?;
                let got = Digest::of(&mbytes);
                if got != entry.digest {
                    return Err(Error::DigestMismatch {
                        reference: r.to_string(),
                        what: "manifest".to_string(),
                        expected: entry.digest.to_string(),
                        actual: got.to_string(),
                    });
                }
                match AnyManifest::parse(&mbytes).map_err(|e| bad(e.0))? {
                    Parsed::Manifest(manifest) => Ok(Resolved {
                        top: top.clone(),
                        index: Some((top, bytes.to_vec())),
                        manifest_digest: got,
                        manifest_bytes: mbytes.to_vec(),
                        manifest,
                    }),
                    Parsed::Index(_) => Err(bad(
                        "an index entry for this platform is itself an index".to_string(),
                    )),
                }
            }
        }
    }

    async fn fetch(self: &Arc<Self>, ctx: &PullCtx, res: Resolved) -> Result<Digest> {
        let r = &ctx.reference;
        let bad = |message: String| Error::BadImage {
            reference: r.to_string(),
            message,
        };
        let cdesc = &res.manifest.config;
        let config_bytes = match self.store.read_blob(&cdesc.digest)? {
            Some(b) => b,
            None => {
                if cdesc.size > MAX_CONFIG_SIZE {
                    return Err(bad(format!(
                        "config blob of {} bytes is too large",
                        cdesc.size
                    )));
                }
                let mut buf = Vec::new();
                ctx.client
                    .pull_blob(&ctx.oref, &oci_descriptor(cdesc), &mut buf)
                    .await
                    .map_err(|e| classify(e, r, &ctx.endpoint))?;
                let got = Digest::of(&buf);
                if got != cdesc.digest {
                    return Err(Error::DigestMismatch {
                        reference: r.to_string(),
                        what: "config".to_string(),
                        expected: cdesc.digest.to_string(),
                        actual: got.to_string(),
                    });
                }
                buf
            }
        };
        let config: ImageConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(format!("image config is not valid: {e}")))?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != res.manifest.layers.len() {
            return Err(bad(format!(
                "manifest lists {} layers but the config has {} diff ids",
                res.manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(diff_ids);
        let _pin = self.store.pin(&chains);
        try_join_all(
            res.manifest
                .layers
                .iter()
                .zip(diff_ids)
                .zip(&chains)
                .map(|((desc, diff), chain)| self.ensure_layer(ctx, desc, diff, chain)),
        )
        .await?;

        let store = Arc::clone(&self.store);
        let layers: Vec<LayerRecord> = res
            .manifest
            .layers
            .iter()
            .zip(diff_ids)
            .zip(&chains)
            .map(|((d, diff), chain)| LayerRecord {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: u64::try_from(d.size).unwrap_or(0),
                diff_id: diff.clone(),
                chain_id: chain.clone(),
            })
            .collect();
        let size =
            u64::try_from(cdesc.size).unwrap_or(0) + layers.iter().map(|l| l.size).sum::<u64>();
        let platform = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        };
        let record = ImageRecord {
            id: cdesc.digest.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest: res.manifest_digest.clone(),
            index_digest: res.index.as_ref().map(|(d, _)| d.clone()),
            layers,
            size,
            platform: platform.to_string(),
            pulled_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            config: config.config.clone().unwrap_or_default(),
        };
        // Recorded under the name the client asked for, whichever endpoint served it.
        let tag = if r.digest().is_none() {
            r.tagged()
        } else {
            None
        };
        let repo_digest = r.with_digest(&res.top);
        let id = record.id.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            if let Some((d, b)) = &res.index {
                store.put_blob(d, b)?;
            }
            store.put_blob(&res.manifest_digest, &res.manifest_bytes)?;
            store.put_blob(&record.id, &config_bytes)?;
            store.add_image(record, tag.as_deref(), &repo_digest)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("record task failed: {e}")))??;
        tracing::info!(image = %r, id = %id, from = %ctx.endpoint, "pulled");
        Ok(id)
    }

    fn layer_lock(&self, chain: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.layer_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(locks.entry(chain.clone()).or_default())
    }

    /// Makes sure the layer `chain` is unpacked: downloads the blob straight into the
    /// unpacker (never whole in memory, never a half-visible layer), then checks the blob
    /// digest and the diff id before the layer directory is renamed into place.
    #[tracing::instrument(name = "pull_layer", skip_all, fields(layer = %desc.digest))]
    async fn ensure_layer(
        &self,
        ctx: &PullCtx,
        desc: &Descriptor,
        diff_id: &Digest,
        chain: &Digest,
    ) -> Result<()> {
        let lock = self.layer_lock(chain);
        let _guard = lock.lock().await;
        if self.store.has_layer(chain) {
            tracing::debug!(layer = %desc.digest, "layer present, not downloading");
            return Ok(());
        }
        let r = &ctx.reference;
        let unpack_err = |source: unpack::UnpackError| Error::Unpack {
            reference: r.to_string(),
            digest: desc.digest.to_string(),
            source: Arc::new(source),
        };
        let scratch = self.store.scratch("layer")?;
        let diff_dir = scratch.path().join("diff");
        std::fs::create_dir(&diff_dir).map_err(Error::io("create", &diff_dir))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHANNEL_DEPTH);
        let dir = diff_dir.clone();
        let unpacker =
            tokio::task::spawn_blocking(move || unpack::unpack(ChannelReader::new(rx), &dir));

        let pump = async move {
            let mut stream = ctx
                .client
                .pull_blob_stream(&ctx.oref, &oci_descriptor(desc))
                .await
                .map_err(|e| classify(e, r, &ctx.endpoint))?;
            let mut hasher = Hasher::default();
            let mut n: u64 = 0;
            let limit = u64::try_from(desc.size).ok().filter(|s| *s > 0);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| stream_error(e, r, &ctx.endpoint, desc))?;
                n += chunk.len() as u64;
                if limit.is_some_and(|l| n > l) {
                    return Err(Error::DigestMismatch {
                        reference: r.to_string(),
                        what: format!(
                            "layer (more than the {} bytes its descriptor gives)",
                            desc.size
                        ),
                        expected: desc.digest.to_string(),
                        actual: "longer content".to_string(),
                    });
                }
                hasher.update(&chunk);
                if tx.send(chunk).await.is_err() {
                    // The unpacker stopped early; its error says why.
                    return Ok(None);
                }
            }
            drop(tx);
            let got = hasher.finish();
            if got != desc.digest {
                return Err(Error::DigestMismatch {
                    reference: r.to_string(),
                    what: "layer".to_string(),
                    expected: desc.digest.to_string(),
                    actual: got.to_string(),
                });
            }
            Ok(Some(n))
        };
        let pumped = pump.await;
        let unpacked = unpacker
            .await
            .map_err(|e| Error::Internal(format!("unpack task failed: {e}")))?;
        let bytes = match (pumped, unpacked) {
            (Err(e), _) => return Err(e),
            (Ok(_), Err(e)) => return Err(unpack_err(e)),
            (Ok(None), Ok(_)) => {
                return Err(Error::Internal(
                    "unpacker stopped before the end of the layer".to_string(),
                ));
            }
            (Ok(Some(n)), Ok(u)) => {
                if &u.diff_id != diff_id {
                    return Err(Error::DigestMismatch {
                        reference: r.to_string(),
                        what: format!("layer {} uncompressed (diff id)", desc.digest),
                        expected: diff_id.to_string(),
                        actual: u.diff_id.to_string(),
                    });
                }
                (n, u)
            }
        };
        let meta = LayerMeta {
            chain_id: chain.clone(),
            diff_id: diff_id.clone(),
            digest: desc.digest.clone(),
            content_size: bytes.1.content_size,
        };
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.commit_layer(scratch, &meta))
            .await
            .map_err(|e| Error::Internal(format!("commit task failed: {e}")))??;
        self.counters.layers_fetched.fetch_add(1, Ordering::Relaxed);
        self.counters
            .layer_bytes
            .fetch_add(bytes.0, Ordering::Relaxed);
        self.metrics.pulled_bytes.inc_by(bytes.0);
        tracing::debug!(layer = %desc.digest, bytes = bytes.0, "layer unpacked");
        Ok(())
    }
}

fn oci_descriptor(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size,
        ..OciDescriptor::default()
    }
}

/// An error in the middle of a blob stream: oci-client reports a digest mismatch at the end
/// of the stream as an I/O error wrapping its `DigestError`.
fn stream_error(e: std::io::Error, r: &Reference, ep: &Endpoint, desc: &Descriptor) -> Error {
    if let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
    {
        return Error::DigestMismatch {
            reference: r.to_string(),
            what: format!("layer {}", desc.digest),
            expected: expected.clone(),
            actual: actual.clone(),
        };
    }
    Error::Unreachable {
        reference: r.to_string(),
        endpoint: ep.to_string(),
        message: format!("reading layer {}: {}", desc.digest, registry::chain(&e)),
    }
}
