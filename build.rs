//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so that building needs no
//! system `protoc`. The descriptor set is also written to `OUT_DIR` for server reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/bulkimport/v1/import_service.proto";
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds migrations/ at compile time but does not tell cargo about them:
    // without this, a new migration is left out of the binary until something else changes.
    println!("cargo:rerun-if-changed=migrations");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("bulkimport_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Chunks arrive as `Bytes`, handed to the pipeline without a copy.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
