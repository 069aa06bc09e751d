//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so that building needs no
//! system `protoc`. The descriptor set is also written to `OUT_DIR` for server reflection.
//!
//! It also tells the tests what this machine can run them against, so that a test whose
//! database or tool is missing is reported as ignored (with the reason) rather than passing:
//!
//! - `cfg(postgres_tests)`: `TEST_DATABASE_URL` names a PostgreSQL server;
//! - `cfg(grpcurl_tests)`, `cfg(buf_tests)`: the outside clients are installed, or
//!   `BULK_IMPORT_REQUIRE_TOOLS=1` (CI) asks for those tests whatever, so that a missing
//!   tool fails them;
//! - `cfg(nats_tests)`: `nats-server` is installed, which the relay's tests start on ports
//!   of their own (so that they can stop and start it), or CI asks;
//! - `cfg(browser_tests)`: Debian's `chromium` and `chromium-driver` are installed (the
//!   console's browser tests drive them), or CI asks; `cfg(firefox_tests)`: Debian's
//!   `firefox-esr` and `geckodriver` (built from crates.io by `.ci/run`), or CI asks;
//! - `cfg(helm_tests)`: the Python packages that check the Helm chart (`helm_python`,
//!   `kubernetes_validate`) import, in `.ci/tools/venv` or the system's python3; or CI asks.

use std::{env, path::PathBuf, process::Command};

/// Whether `tool --version` runs.
fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty())
}

fn test_environment() {
    for cfg in [
        "postgres_tests",
        "grpcurl_tests",
        "buf_tests",
        "helm_tests",
        "nats_tests",
        "browser_tests",
        "firefox_tests",
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo:rerun-if-env-changed=TEST_DATABASE_URL");
    println!("cargo:rerun-if-env-changed=BULK_IMPORT_REQUIRE_TOOLS");
    println!("cargo:rerun-if-env-changed=PATH");
    if env::var("TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        println!("cargo:rustc-cfg=postgres_tests");
    }
    let required = env::var("BULK_IMPORT_REQUIRE_TOOLS").as_deref() == Ok("1");
    if required || (installed("grpcurl") && installed("jq")) {
        println!("cargo:rustc-cfg=grpcurl_tests");
    }
    if required || installed("buf") {
        println!("cargo:rustc-cfg=buf_tests");
    }
    if required || installed("nats-server") {
        println!("cargo:rustc-cfg=nats_tests");
    }
    if required || (installed("chromedriver") && installed("chromium")) {
        println!("cargo:rustc-cfg=browser_tests");
    }
    if required || (installed("geckodriver") && installed("firefox-esr")) {
        println!("cargo:rustc-cfg=firefox_tests");
    }
    let venv = PathBuf::from(".ci/tools/venv/bin/python");
    println!("cargo:rerun-if-changed=.ci/tools/venv/bin/python");
    let chart_checker = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", "import helm_python, kubernetes_validate"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if required || chart_checker(&venv) || chart_checker("python3".as_ref()) {
        println!("cargo:rustc-cfg=helm_tests");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    test_environment();
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
