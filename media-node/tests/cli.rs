//! Checks every voicecluster binary must pass, run against the built `media-node`.

use voicecluster_telemetry::testing::{
    assert_help, assert_serves_admin_then_stops, assert_version,
};

const BIN: &str = env!("CARGO_BIN_EXE_media-node");

#[test]
fn version_prints_name_and_crate_version() {
    assert_version(BIN, "media-node", env!("CARGO_PKG_VERSION"));
}

#[test]
fn help_documents_the_common_flags() {
    assert_help(BIN);
}

#[tokio::test]
async fn serves_admin_endpoints_and_stops_on_sigterm() {
    assert_serves_admin_then_stops(BIN, "media-node", env!("CARGO_PKG_VERSION"), "TERM").await;
}

#[tokio::test]
async fn stops_gracefully_on_sigint_too() {
    assert_serves_admin_then_stops(BIN, "media-node", env!("CARGO_PKG_VERSION"), "INT").await;
}
