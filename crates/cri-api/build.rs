//! Compiles `proto/runtime/v1/api.proto` with protox (pure Rust; Debian's protoc 3.21 cannot
//! parse the `debug_redact` option the file uses) and generates prost messages plus tonic client
//! and server code. Default stubs make every RPC the server does not implement answer
//! `Unimplemented`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../../proto");
    let api = proto_root.join("runtime/v1/api.proto");
    println!("cargo:rerun-if-changed={}", api.display());

    let fds = protox::compile([&api], [&proto_root])?;

    // Keep the descriptor so tests can check the schema field by field.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("cri_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .generate_default_stubs(true)
        // AuthConfig gets a hand-written Debug that redacts its secrets (see lib.rs).
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_fds(fds)?;
    Ok(())
}
