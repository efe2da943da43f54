//! `crds/` is generated from the Rust types and never edited by hand: this
//! test fails when the checked-in CRD differs from what the code generates.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_voicecluster-operator");
const CRD_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/voicecluster.io_voiceclusters.yaml"
);

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let out = Command::new(BIN)
        .arg("crd")
        .output()
        .expect("run the operator");
    assert!(out.status.success(), "`crd` failed: {:?}", out);
    let generated = String::from_utf8(out.stdout).expect("utf-8 YAML");
    let checked_in = std::fs::read_to_string(CRD_FILE).unwrap_or_default();
    assert!(
        generated == checked_in,
        "crds/ drifted from the Rust types; regenerate with:\n  \
         cargo run -q -p voicecluster-operator -- crd > crds/voicecluster.io_voiceclusters.yaml"
    );
}

#[test]
fn crd_has_the_names_users_type() {
    let out = Command::new(BIN)
        .arg("crd")
        .output()
        .expect("run the operator");
    let yaml = String::from_utf8_lossy(&out.stdout);
    for want in [
        "name: voiceclusters.voicecluster.io",
        "- vc",
        "kind: VoiceCluster",
        "name: v1alpha1",
        "status: {}",
        "x-kubernetes-validations",
    ] {
        assert!(yaml.contains(want), "CRD lacks {want:?}");
    }
}
