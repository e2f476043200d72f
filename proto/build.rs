//! Compile icae/v1/*.proto with protox (no system protoc) and generate the tonic code and
//! the descriptor set (for server reflection) into OUT_DIR.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=icae");
    let fds = protox::compile(["icae/v1/icae.proto"], ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("icae_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // A request that does not decode is INVALID_ARGUMENT (see src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
