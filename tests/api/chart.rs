//! The Helm chart (helm/bulk-import): `helm/check_chart.py` lints it, renders it as `helm
//! install` would in several configurations, validates every manifest against Kubernetes'
//! schemas and checks what each one promises, with Helm's Go SDK (helm-python-sdk) and
//! kubernetes-validate: no helm binary and no cluster needed.
//!
//! Without those packages when the tests were built, this test is ignored, with the reason;
//! with `BULK_IMPORT_REQUIRE_TOOLS=1` (set by `.ci/run`, which installs them) it always runs,
//! and a missing package is a failure (see `build.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
#[cfg_attr(
    not(helm_tests),
    ignore = "helm-python-sdk or kubernetes-validate is not installed (.ci/run installs them)"
)]
fn the_helm_chart_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The venv `.ci/run` installs the packages into, else whatever python3 has them.
    let venv = root.join(".ci/tools/venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let output = Command::new(&python)
        .arg(root.join("helm/check_chart.py"))
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "helm/check_chart.py:\n{stdout}{stderr}"
    );
    println!("{stdout}");
}
