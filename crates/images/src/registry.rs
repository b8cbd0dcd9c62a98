//! Registry access: endpoints (mirrors, plain HTTP), credentials, the oci-client client, and
//! the mapping of its errors to ours.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::error::Error;
use crate::reference::{DEFAULT_DOMAIN, Reference};

/// How long connecting to a registry may take before the endpoint counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a registry may stay silent in the middle of a response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Registry access settings: `[images]` of the daemon config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registry hosts (`host` or `host:port`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Mirrors tried in order before the registry itself.
    pub mirrors: Vec<Mirror>,
}

/// Mirror endpoints for one registry, as operators write them in CRI-O's registries.conf or
/// containerd's hosts.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The registry host images are named by (`docker.io`, `registry.k8s.io`).
    pub registry: String,
    /// `http://host[:port]` or `https://host[:port]`.
    pub endpoints: Vec<String>,
}

/// One place a pull may fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]` as oci-client addresses it.
    pub host: String,
    pub plain_http: bool,
    pub mirror: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.plain_http { "http" } else { "https" };
        let host = if self.host == DEFAULT_DOMAIN && !self.mirror {
            "index.docker.io"
        } else {
            &self.host
        };
        write!(f, "{scheme}://{host}")?;
        if self.mirror {
            f.write_str(" (mirror)")?;
        }
        Ok(())
    }
}

impl RegistryConfig {
    /// The endpoints to try for `domain`, in order: its mirrors, then the registry itself.
    pub(crate) fn endpoints(&self, domain: &str) -> Vec<Endpoint> {
        let normalize = |r: &str| {
            if r == "index.docker.io" {
                DEFAULT_DOMAIN.to_string()
            } else {
                r.to_string()
            }
        };
        let mut out: Vec<Endpoint> = self
            .mirrors
            .iter()
            .filter(|m| normalize(&m.registry) == domain)
            .flat_map(|m| m.endpoints.iter())
            .filter_map(|e| {
                let (plain_http, rest) =
                    match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
                        (Some(r), _) => (true, r),
                        (_, Some(r)) => (false, r),
                        _ => return None,
                    };
                Some(Endpoint {
                    host: rest.trim_end_matches('/').to_string(),
                    plain_http,
                    mirror: true,
                })
            })
            .collect();
        out.push(Endpoint {
            host: domain.to_string(),
            plain_http: self
                .insecure_registries
                .iter()
                .any(|r| normalize(r) == domain),
            mirror: false,
        });
        out
    }
}

/// Registry credentials from the CRI `AuthConfig`. `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`, as in a docker config.json.
    pub auth: String,
    /// An OAuth2 refresh token from a `docker login` against a token server.
    pub identity_token: String,
    /// A bearer token to present to the registry as is.
    pub registry_token: String,
    pub server_address: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &r(&self.password))
            .field("auth", &r(&self.auth))
            .field("identity_token", &r(&self.identity_token))
            .field("registry_token", &r(&self.registry_token))
            .field("server_address", &self.server_address)
            .finish()
    }
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.auth.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }

    /// The oci-client form, most specific credential first.
    pub(crate) fn to_registry_auth(&self, registry: &str) -> Result<RegistryAuth, Error> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.identity_token.is_empty() {
            // Token servers accept a refresh token as the password of a basic-auth token
            // request (what `docker login` stores for identity-token registries).
            let user = if self.username.is_empty() {
                "<token>".to_string()
            } else {
                self.username.clone()
            };
            return Ok(RegistryAuth::Basic(user, self.identity_token.clone()));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let invalid = || Error::InvalidCredentials {
                registry: registry.to_string(),
                reason: "auth is not base64 of username:password",
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| invalid())?;
            let text = String::from_utf8(raw).map_err(|_| invalid())?;
            let (u, p) = text.split_once(':').ok_or_else(invalid)?;
            return Ok(RegistryAuth::Basic(u.to_string(), p.to_string()));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// A client for one endpoint. A fresh client per pull keeps one caller's credentials and
/// tokens out of another's requests (oci-client caches both per registry host).
pub(crate) fn client(ep: &Endpoint) -> Result<oci_client::Client, Error> {
    let protocol = if ep.plain_http {
        ClientProtocol::HttpsExcept(vec![ep.host.clone()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("sluice/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    oci_client::Client::try_from(config)
        .map_err(|e| Error::Internal(format!("registry client for {ep}: {}", chain(&e))))
}

/// The oci-client reference for `r` at `ep`.
pub(crate) fn oci_reference(r: &Reference, ep: &Endpoint) -> oci_client::Reference {
    match r.digest() {
        Some(d) => {
            oci_client::Reference::with_digest(ep.host.clone(), r.path().to_string(), d.to_string())
        }
        None => oci_client::Reference::with_tag(
            ep.host.clone(),
            r.path().to_string(),
            r.tag().unwrap_or("latest").to_string(),
        ),
    }
}

/// An error and its sources, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Maps an oci-client error for `reference` at `ep` to ours.
pub(crate) fn classify(e: OciDistributionError, reference: &Reference, ep: &Endpoint) -> Error {
    let reference = reference.to_string();
    let endpoint = ep.to_string();
    let message = chain(&e);
    match &e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Error::Unauthorized {
            reference,
            endpoint,
            message,
        },
        OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound {
            reference,
            endpoint,
            message,
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|x| &x.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                Error::NotFound {
                    reference,
                    endpoint,
                    message,
                }
            } else if codes.contains(&&OciErrorCode::Unauthorized) {
                Error::Unauthorized {
                    reference,
                    endpoint,
                    message,
                }
            } else if codes.contains(&&OciErrorCode::Denied) {
                Error::Denied {
                    reference,
                    endpoint,
                    message,
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::NameInvalid | OciErrorCode::TagInvalid))
            {
                Error::BadImage { reference, message }
            } else {
                Error::Registry {
                    reference,
                    endpoint,
                    message,
                }
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            404 => Error::NotFound {
                reference,
                endpoint,
                message,
            },
            401 => Error::Unauthorized {
                reference,
                endpoint,
                message,
            },
            403 => Error::Denied {
                reference,
                endpoint,
                message,
            },
            _ => Error::Registry {
                reference,
                endpoint,
                message,
            },
        },
        OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
            Error::Unreachable {
                reference,
                endpoint,
                message,
            }
        }
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => Error::DigestMismatch {
            reference,
            what: "registry".to_string(),
            expected: expected.clone(),
            actual: actual.clone(),
        },
        OciDistributionError::IncompatibleLayerMediaTypeError(_)
        | OciDistributionError::UnsupportedMediaTypeError(_)
        | OciDistributionError::UnsupportedSchemaVersionError(_)
        | OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::VersionedParsingError(_) => Error::BadImage { reference, message },
        _ => Error::Registry {
            reference,
            endpoint,
            message,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_then_the_origin() {
        let c = RegistryConfig {
            insecure_registries: vec!["127.0.0.1:5000".into()],
            mirrors: vec![Mirror {
                registry: "index.docker.io".into(),
                endpoints: vec!["http://127.0.0.1:1".into(), "https://m.example/".into()],
            }],
        };
        let eps = c.endpoints("docker.io");
        assert_eq!(eps.len(), 3);
        assert_eq!(
            (eps[0].host.as_str(), eps[0].plain_http, eps[0].mirror),
            ("127.0.0.1:1", true, true)
        );
        assert_eq!(
            (eps[1].host.as_str(), eps[1].plain_http),
            ("m.example", false)
        );
        assert_eq!((eps[2].host.as_str(), eps[2].mirror), ("docker.io", false));
        let eps = c.endpoints("127.0.0.1:5000");
        assert_eq!(eps.len(), 1);
        assert!(eps[0].plain_http);
    }

    #[test]
    fn credentials_map_and_never_print_secrets() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
            ..Default::default()
        };
        assert_eq!(
            c.to_registry_auth("r").unwrap(),
            RegistryAuth::Basic("u".into(), "hunter2".into())
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("a:b:c"),
            ..Default::default()
        };
        assert_eq!(
            c.to_registry_auth("r").unwrap(),
            RegistryAuth::Basic("a".into(), "b:c".into())
        );
        let c = Credentials {
            auth: "!!!secret".into(),
            ..Default::default()
        };
        let e = c.to_registry_auth("r").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let c = Credentials {
            registry_token: "tok".into(),
            ..Default::default()
        };
        assert_eq!(
            c.to_registry_auth("r").unwrap(),
            RegistryAuth::Bearer("tok".into())
        );
        assert!(!format!("{c:?}").contains("tok\""));
        assert_eq!(
            Credentials::default().to_registry_auth("r").unwrap(),
            RegistryAuth::Anonymous
        );
    }
}
