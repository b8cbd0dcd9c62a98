//! The CRI v1 wire types and gRPC stubs, generated at build time from
//! `proto/runtime/v1/api.proto` (k8s.io/cri-api v0.36.0 wire contract).
//!
//! Nothing here is hand-written except the redacting `Debug` of [`runtime::v1::AuthConfig`]:
//! only the `server` crate (and test clients) should depend on this crate; domain crates speak
//! their own types.

/// `runtime.v1`: the CRI package.
pub mod runtime {
    /// Generated messages, `runtime_service_{client,server}` and `image_service_{client,server}`.
    #[allow(
        clippy::all,
        clippy::pedantic,
        missing_debug_implementations,
        rust_2018_idioms
    )]
    pub mod v1 {
        tonic::include_proto!("runtime.v1");

        impl std::fmt::Debug for AuthConfig {
            /// Registry secrets (`password`, `auth`, `identity_token`, `registry_token`) are
            /// marked `debug_redact` in the schema; they must never reach a log line.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                fn redact(s: &str) -> &'static str {
                    if s.is_empty() { "" } else { "[REDACTED]" }
                }
                f.debug_struct("AuthConfig")
                    .field("username", &self.username)
                    .field("password", &redact(&self.password))
                    .field("auth", &redact(&self.auth))
                    .field("server_address", &self.server_address)
                    .field("identity_token", &redact(&self.identity_token))
                    .field("registry_token", &redact(&self.registry_token))
                    .finish()
            }
        }
    }
}

/// The compiled `FileDescriptorSet` of the CRI schema (protobuf-encoded), for schema checks and
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::runtime::v1::AuthConfig;

    #[test]
    fn auth_config_debug_never_shows_secrets() {
        let auth = AuthConfig {
            username: "alice".into(),
            password: "hunter2".into(),
            auth: "YWxpY2U6aHVudGVyMg==".into(),
            server_address: "registry.example.test".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
        };
        let shown = format!("{auth:?}");
        for secret in ["hunter2", "YWxpY2U6aHVudGVyMg==", "idtok", "regtok"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("alice"));
        assert!(shown.contains("[REDACTED]"));
    }
}
