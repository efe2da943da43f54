//! Checks every voicecluster binary must pass, run against the built `voicecluster-operator`.
//! Serving and graceful shutdown need an API server: the end-to-end tests
//! (tests/e2e) cover them with the operator running in the cluster.

use std::process::Command;

use voicecluster_telemetry::testing::{assert_help, assert_version};

const BIN: &str = env!("CARGO_BIN_EXE_voicecluster-operator");

#[test]
fn version_prints_name_and_crate_version() {
    assert_version(BIN, "voicecluster-operator", env!("CARGO_PKG_VERSION"));
}

#[test]
fn help_documents_the_common_flags() {
    assert_help(BIN);
}

#[test]
fn without_a_reachable_api_server_it_exits_with_a_clear_error() {
    let out = Command::new(BIN)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("VC_ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .expect("run the operator");
    assert!(!out.status.success(), "it should fail: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connecting to the Kubernetes API"),
        "stderr says what failed: {stderr}"
    );
}
