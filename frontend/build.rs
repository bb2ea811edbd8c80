//! Compiles the vendored ONNX schema (`proto/onnx.proto`, the onnx-ml superset) into Rust
//! types with prost. protox parses the schema in pure Rust, so no `protoc` is needed.

use std::path::PathBuf;

fn main() {
    let proto_dir = PathBuf::from("proto");
    let proto = proto_dir.join("onnx.proto");
    // SequenceProto / MapProto / OptionalProto: the conformance cases' non-tensor data files.
    let data = proto_dir.join("onnx-data.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-changed={}", data.display());
    println!("cargo:rerun-if-changed=build.rs");

    let fds = match protox::compile([&proto, &data], [&proto_dir]) {
        Ok(fds) => fds,
        Err(e) => panic!("cannot parse {}: {e}", proto.display()),
    };
    let mut config = prost_build::Config::new();
    // The schema's comments are indented prose that rustdoc would run as doctests.
    config.disable_comments(["."]);
    if let Err(e) = config.compile_fds(fds) {
        panic!("cannot generate Rust code for {}: {e}", proto.display());
    }
}
