//! The committed CRD YAML in `istio/crds/` must be exactly what the Rust types generate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../istio/crds/portcullis-crds.yaml")
}

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = portcullis_reconciler::crd::crds_yaml().unwrap();
    let path = committed_path();
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with reconciler/src/crd.rs; regenerate it with \
         `PORTCULLIS_BLESS=1 cargo test -p portcullis-reconciler --test crds` \
         (or `portcullis crds > istio/crds/portcullis-crds.yaml`)",
        path.display()
    );
}
