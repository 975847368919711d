//! Files generated from the code must not drift from it, and the dependency graph must hold
//! one k8s-openapi (two would mean two incompatible sets of Kubernetes types).

use std::path::PathBuf;

use vecodex_operator::crd::crd_yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crd_copies_match_the_binary() {
    let generated = crd_yaml();
    for path in [
        "deploy/crd.yaml",
        "chart/vecodex-operator/crds/vecodexset.yaml",
    ] {
        let on_disk = std::fs::read_to_string(root().join(path)).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{path} differs from `vecodex-operator crd`; regenerate it with\n  cargo run -q -- crd > {path}"
        );
    }
}

#[test]
fn one_k8s_openapi_in_the_lock_file() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock is committed");
    let versions: Vec<&str> = lock
        .split("[[package]]")
        .filter(|p| p.contains("name = \"k8s-openapi\"\n"))
        .filter_map(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .collect();
    assert_eq!(
        versions.len(),
        1,
        "several k8s-openapi versions in Cargo.lock: {versions:?}; pin with `cargo update -p k8s-openapi@<new> --precise 0.28.0`"
    );
}

#[test]
fn seed_example_sample_is_the_original_verbatim() {
    use sha2::{Digest, Sha256};
    let sample = std::fs::read(root().join("deploy/samples/vecodexset-example.yaml")).unwrap();
    let digest: String = Sha256::digest(&sample)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // sha256 of ../shared/reference/vecodexset-example.yaml, the original operator's example.
    assert_eq!(
        digest, "23bb75ecce8a701912ac44e54fe903cf4f55fc1d22a26b5a1945009b9b643d2b",
        "the seed example must stay byte for byte the original"
    );
}

#[test]
fn chart_app_version_follows_the_crate() {
    let chart = std::fs::read_to_string(root().join("chart/vecodex-operator/Chart.yaml")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        chart.contains(&format!("appVersion: \"{version}\"")),
        "Chart.yaml appVersion must be {version}"
    );
}
