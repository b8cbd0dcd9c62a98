//! The JSON documents of an image: index, manifest and config (OCI image-spec v1 and the
//! Docker schema 2 equivalents), with only the fields sluice uses, and this node's platform.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Every manifest media type a pull accepts, for the `Accept` header.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Layer media types sluice unpacks. The compression is detected from the bytes, so a
/// mislabeled layer still unpacks; the list keeps out things that are not filesystem layers
/// (signatures, attestations, wasm modules).
pub const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A manifest or an index: which one is decided by `mediaType` and, for documents that omit
/// it (it is optional in OCI), by whether `manifests` or `layers` is present.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnyManifest {
    pub schema_version: i64,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

/// An image manifest reduced to what a pull needs.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub enum Parsed {
    Index(Vec<Descriptor>),
    Manifest(Manifest),
}

/// Why a manifest document is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

impl AnyManifest {
    pub fn parse(bytes: &[u8]) -> Result<Parsed, ManifestError> {
        let m: AnyManifest = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError(format!("manifest is not valid JSON: {e}")))?;
        if m.schema_version != 2 {
            return Err(ManifestError(format!(
                "manifest schema version {} is not supported (Docker schema 1 images must be converted)",
                m.schema_version
            )));
        }
        let mt = m.media_type.as_deref();
        let is_index = match mt {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => {
                return Err(ManifestError(format!(
                    "unsupported manifest media type {other:?}"
                )));
            }
            None => m.manifests.is_some(),
        };
        if is_index {
            return Ok(Parsed::Index(m.manifests.unwrap_or_default()));
        }
        let config = m
            .config
            .ok_or_else(|| ManifestError("manifest has no config".to_string()))?;
        let layers = m.layers.unwrap_or_default();
        for l in &layers {
            if !LAYER_TYPES.contains(&l.media_type.as_str()) {
                return Err(ManifestError(format!(
                    "layer {} has unsupported media type {:?}",
                    l.digest, l.media_type
                )));
            }
        }
        Ok(Parsed::Manifest(Manifest { config, layers }))
    }
}

/// An OS/architecture/variant triple as written in indexes and configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this node, from the running binary's target, in Go's GOOS/GOARCH
    /// spelling that images use.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Self {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Picks the entry of an index for this platform: os and architecture must match; an
    /// entry with our exact variant wins, then one without a variant (or, for arm64, `v8`,
    /// which is what an absent variant means there), then any.
    pub fn select<'a>(&self, entries: &'a [Descriptor]) -> Option<&'a Descriptor> {
        let candidates: Vec<&Descriptor> = entries
            .iter()
            .filter(|e| {
                e.platform
                    .as_ref()
                    .is_some_and(|p| p.os == self.os && p.architecture == self.architecture)
            })
            .collect();
        let variant_of = |e: &Descriptor| {
            e.platform
                .as_ref()
                .and_then(|p| p.variant.clone())
                .filter(|v| !v.is_empty())
        };
        candidates
            .iter()
            .find(|e| variant_of(e) == self.variant)
            .or_else(|| candidates.iter().find(|e| variant_of(e).is_none()))
            .or_else(|| candidates.first())
            .copied()
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The image config (`application/vnd.oci.image.config.v1+json` / Docker's container
/// config), the fields containers need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<ImageConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// What a container started from this image inherits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// Docker writes `null` for empty lists and maps.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(&[n]),
            size: 1,
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn selects_the_host_platform_and_variant() {
        let entries = vec![
            entry("arm", Some("v6"), 1),
            entry("arm64", None, 2),
            entry("amd64", None, 3),
            entry("arm", Some("v7"), 4),
        ];
        let p = |a: &str, v: Option<&str>| Platform {
            os: "linux".into(),
            architecture: a.into(),
            variant: v.map(Into::into),
        };
        assert_eq!(
            p("amd64", None).select(&entries).unwrap().digest,
            Digest::of(&[3])
        );
        assert_eq!(
            p("arm", Some("v7")).select(&entries).unwrap().digest,
            Digest::of(&[4])
        );
        assert_eq!(
            p("arm64", Some("v8")).select(&entries).unwrap().digest,
            Digest::of(&[2])
        );
        assert!(p("s390x", None).select(&entries).is_none());
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn parses_docker_config_with_nulls() {
        let c: ImageConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":["sh"],"Labels":null},
               "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.config.unwrap().cmd, vec!["sh"]);
    }

    #[test]
    fn refuses_schema1_and_unknown_layers() {
        assert!(AnyManifest::parse(br#"{"schemaVersion":1}"#).is_err());
        let d = Digest::of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{d}","size":1}},
               "layers":[{{"mediaType":"application/vnd.cncf.helm.chart","digest":"{d}","size":1}}]}}"#
        );
        assert!(AnyManifest::parse(m.as_bytes()).is_err());
    }
}
