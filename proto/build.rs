//! Compiles `meshlat/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates
//! prost messages plus tonic clients and servers, as tonic's own `codegen/` does.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "meshlat/v1/job.proto",
        "meshlat/v1/agent.proto",
        "meshlat/v1/operator.proto",
        "meshlat/v1/federation.proto",
        "meshlat/v1/state.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("meshlat_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Generated `connect` helpers need tonic's transport; binaries build their own channels.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
