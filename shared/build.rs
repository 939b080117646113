//! Generates the gRPC code and the encoded descriptor set (for server reflection) from `proto/`,
//! with the `protoc` shipped by `protoc-bin-vendored`, so no system protoc is needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let protos = [
        proto_root.join("ticketing/wallet/v1/wallet.proto"),
        proto_root.join("ticketing/reservation/v1/reservation.proto"),
        proto_root.join("ticketing/admission/v1/admission.proto"),
    ];
    let descriptor_path = PathBuf::from(env::var("OUT_DIR")?).join("ticketing_descriptor.bin");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(
            config,
            &protos,
            &[proto_root, protoc_bin_vendored::include_path()?],
        )?;

    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
