//! Generates the gRPC code from `proto/farm.proto` with a vendored protoc,
//! so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free in edition 2021: build scripts are single-threaded here.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/farm.proto");
    // Every stub decodes through crate::codec (prost's codec, with a count of
    // a request's fields before it is built).
    tonic_prost_build::configure().codec_path("crate::codec::BoundedCodec").compile_protos(&["proto/farm.proto"], &["proto"])?;
    Ok(())
}
