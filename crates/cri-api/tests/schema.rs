//! The CRI wire contract, checked field by field.
//!
//! `../shared/cri-api/schema-v0.36.0.txt` (next to the repository) lists every RPC, message
//! field (name, number, label, type) and enum value of k8s.io/cri-api v0.36.0. This test renders
//! the descriptor compiled from `proto/runtime/v1/api.proto` in the same format and demands the
//! two sets be identical, so a typo in a field number or type cannot slip through.
//! `SLUICE_CRI_SCHEMA=/path/to/list` points it elsewhere. When the list is missing the test
//! fails with a message saying so: a contract check that cannot run must not pass.

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

fn schema_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_CRI_SCHEMA") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/cri-api/schema-v0.36.0.txt")
}

fn scalar_name(t: Type) -> &'static str {
    match t {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Group | Type::Message | Type::Enum => "?",
    }
}

fn field_type(f: &prost_types::FieldDescriptorProto) -> String {
    match f.r#type() {
        Type::Message | Type::Enum => f.type_name().trim_start_matches('.').to_string(),
        t => scalar_name(t).to_string(),
    }
}

fn render_enum(prefix: &str, e: &EnumDescriptorProto, out: &mut Vec<String>) {
    let name = format!("{prefix}.{}", e.name());
    out.push(format!("enum {name}"));
    for v in &e.value {
        out.push(format!("  value {name}.{} = {}", v.name(), v.number()));
    }
}

fn render_message(prefix: &str, m: &DescriptorProto, out: &mut Vec<String>) {
    let name = format!("{prefix}.{}", m.name());
    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    out.push(format!("message {name}"));
    for f in &m.field {
        let (label, ty) = match f.label() {
            Label::Repeated => {
                let entry = f.type_name().rsplit('.').next().unwrap_or_default();
                match m.nested_type.iter().find(|n| {
                    n.name() == entry && n.options.as_ref().is_some_and(|o| o.map_entry())
                }) {
                    Some(entry) => (
                        "map",
                        format!(
                            "map<{},{}>",
                            field_type(&entry.field[0]),
                            field_type(&entry.field[1])
                        ),
                    ),
                    None => ("repeated", field_type(f)),
                }
            }
            Label::Optional if f.proto3_optional() => ("proto3_optional", field_type(f)),
            Label::Optional => ("optional", field_type(f)),
            Label::Required => ("required", field_type(f)),
        };
        out.push(format!(
            "  field {name}.{} = {} {label} {ty}",
            f.name(),
            f.number()
        ));
    }
    for n in &m.nested_type {
        render_message(&name, n, out);
    }
    for e in &m.enum_type {
        render_enum(&name, e, out);
    }
}

fn render(fds: &FileDescriptorSet) -> Vec<String> {
    let mut out = Vec::new();
    for file in fds.file.iter().filter(|f| f.package() == "runtime.v1") {
        out.push(format!("package {}", file.package()));
        let pkg = file.package();
        for s in &file.service {
            out.push(format!("service {}", s.name()));
            for m in &s.method {
                let stream = |b: bool| if b { "stream " } else { "" };
                out.push(format!(
                    "  rpc {}.{}({}{}) returns ({}{})",
                    s.name(),
                    m.name(),
                    stream(m.client_streaming()),
                    m.input_type().trim_start_matches('.'),
                    stream(m.server_streaming()),
                    m.output_type().trim_start_matches('.'),
                ));
            }
        }
        for e in &file.enum_type {
            render_enum(pkg, e, &mut out);
        }
        for m in &file.message_type {
            render_message(pkg, m, &mut out);
        }
    }
    out
}

fn compiled() -> Vec<String> {
    let fds = FileDescriptorSet::decode(cri_api::FILE_DESCRIPTOR_SET).expect("descriptor decodes");
    render(&fds)
}

#[test]
fn proto_matches_cri_v0_36_0_field_for_field() {
    let path = schema_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "\n\n*** CRI SCHEMA LIST NOT FOUND at {} ({e}) ***\n\
             The wire-contract check cannot run. Put the shared/ directory next to the \
             repository or set SLUICE_CRI_SCHEMA=/path/to/schema-v0.36.0.txt.\n\n",
            path.display()
        )
    });
    let expected: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let actual: BTreeSet<String> = compiled().into_iter().collect();

    let missing: Vec<_> = expected.difference(&actual).collect();
    let extra: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "proto differs from {}:\nmissing from our proto:\n{missing:#?}\nnot in upstream:\n{extra:#?}",
        path.display()
    );

    let rpcs = actual.iter().filter(|l| l.starts_with("  rpc ")).count();
    assert_eq!(rpcs, 41, "CRI v0.36.0 has 41 RPCs");
}

#[test]
fn rendering_detects_a_wrong_field_number() {
    // Guard the guard: a descriptor with one field renumbered must render differently.
    let mut fds =
        FileDescriptorSet::decode(cri_api::FILE_DESCRIPTOR_SET).expect("descriptor decodes");
    let before = render(&fds);
    let file = fds
        .file
        .iter_mut()
        .find(|f| f.package() == "runtime.v1")
        .expect("runtime.v1 file");
    let msg = file
        .message_type
        .iter_mut()
        .find(|m| m.name() == "PortMapping")
        .expect("PortMapping");
    msg.field[0].number = Some(99);
    let after = render(&fds);
    assert_ne!(before, after);
    assert!(after.contains(
        &"  field runtime.v1.PortMapping.protocol = 99 optional runtime.v1.Protocol".to_string()
    ));
}
