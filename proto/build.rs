//! Generates the gRPC code from `proto/farm.proto` with a vendored protoc,
//! so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free in edition 2021: build scripts are single-threaded here.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/farm.proto");
    // Every stub decodes through crate::codec (prost's codec, with a count of
    // a request's fields before it is built).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("farm_descriptor.bin");
    tonic_prost_build::configure()
        .codec_path("crate::codec::BoundedCodec")
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&["proto/farm.proto"], &["proto"])?;
    // Every message's canonical proto3 JSON (serde), with the .proto's own
    // field names (snake_case, as a printer may choose) and every field
    // present, defaults included, so a reader never meets a missing key.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".stylefarm"])?;
    Ok(())
}
