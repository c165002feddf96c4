//! Compiles KServe's v2 gRPC protocol (proto/grpc_predict_v2.proto) into the server's messages
//! and service trait, and ONNX's model format (proto/onnx.proto) into the messages
//! `maas export --format onnx` writes: protox parses the .proto files in pure Rust, so no `protoc`
//! is needed.
//!
//! Two additions for Triton's clients, made here rather than in the generated files:
//!
//! - The calls of proto/triton_extensions.proto (RepositoryIndex, ModelStatistics: Triton's,
//!   which KServe's protocol lacks) join `GRPCInferenceService`, where Triton serves them.
//! - Triton's `tritonclient` sends the load and unload calls with Triton's numbering
//!   (`repository_name = 1; model_name = 2; parameters = 3`), where KServe's messages have
//!   `model_name = 1`. Fields 2 and 3 are unused in KServe's, so these requests also read them
//!   (`triton_model_name`, `triton_parameters`: a map whose values are read as bytes, which a
//!   message value is on the wire), and both clients work.

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, MessageOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_grpc()?;
    compile_onnx()
}

/// ONNX's messages (package `onnx` -> `$OUT_DIR/onnx.rs`, included by src/onnx.rs): prost's
/// messages only, no service.
fn compile_onnx() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/onnx.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut descriptors = protox::compile([proto], ["proto"])?;
    for file in &mut descriptors.file {
        // No comments in the code: the .proto is the documentation, and its indented examples
        // would become doctests.
        file.source_code_info = None;
    }
    tonic_prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}

/// KServe's gRPC protocol with Triton's additions (`$OUT_DIR/inference.rs`).
fn compile_grpc() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/grpc_predict_v2.proto",
        "proto/triton_extensions.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut descriptors = protox::compile(protos, ["proto"])?;
    let mut triton_methods = Vec::new();
    for file in &mut descriptors.file {
        file.service.retain_mut(|service| {
            if service.name() != "TritonExtensions" {
                return true;
            }
            triton_methods.append(&mut service.method);
            false
        });
    }
    let service = descriptors
        .file
        .iter_mut()
        .flat_map(|f| f.service.iter_mut())
        .find(|s| s.name() == "GRPCInferenceService")
        .ok_or("proto/grpc_predict_v2.proto has no GRPCInferenceService")?;
    assert_eq!(
        triton_methods.len(),
        2,
        "proto/triton_extensions.proto changed"
    );
    service.method.append(&mut triton_methods);
    for file in &mut descriptors.file {
        // The file has no comments to carry into the code, and the fields added below have no
        // source location.
        file.source_code_info = None;
        for message in &mut file.message_type {
            let name = message.name().to_string();
            if name == "RepositoryModelLoadRequest" || name == "RepositoryModelUnloadRequest" {
                add_triton_fields(message, &format!(".inference.{name}"));
            }
        }
    }
    tonic_prost_build::configure()
        .build_client(false)
        // prost's codec with the checks of src/serve/grpc/codec.rs on every request.
        .codec_path("crate::serve::grpc::codec::BoundedCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

fn field(name: &str, number: i32, label: Label, kind: Type) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        json_name: None,
        number: Some(number),
        label: Some(label as i32),
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

fn add_triton_fields(message: &mut DescriptorProto, full_name: &str) {
    assert!(
        message.field.iter().all(|f| f.number() == 1),
        "{full_name}: KServe's message changed; check the Triton fields added here"
    );
    message
        .field
        .push(field("triton_model_name", 2, Label::Optional, Type::String));
    message.nested_type.push(DescriptorProto {
        name: Some("TritonParametersEntry".into()),
        field: vec![
            field("key", 1, Label::Optional, Type::String),
            field("value", 2, Label::Optional, Type::Bytes),
        ],
        options: Some(MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut parameters = field("triton_parameters", 3, Label::Repeated, Type::Message);
    parameters.type_name = Some(format!("{full_name}.TritonParametersEntry"));
    message.field.push(parameters);
}
