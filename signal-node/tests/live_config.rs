//! A member restarted while no operator answers: it starts on the live
//! configuration version it kept on its volume (users and rates), not on
//! the users file it was started with.

// Test set-up: a failure there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use voicecluster_api::config::{ha1, hash};
use voicecluster_api::grpc::{BillingConfig, ClusterConfig, ConfigUser, LiveSettings, RateConfig};
use voicecluster_directory_client::config::Offered;
use voicecluster_signal_node::live_config;
use voicecluster_signal_node::testing::ALICE;

mod common;

use common::*;

/// Version 3 as a member kept it: carol is the only user.
fn kept_version() -> Offered {
    let config = ClusterConfig {
        users: vec![ConfigUser {
            name: "carol".into(),
            ha1: ha1("carol", "voice.test", "c1"),
            display_name: "Carol".into(),
        }],
        billing: Some(BillingConfig {
            currency: "EUR".into(),
            rates: vec![RateConfig {
                prefix: String::new(),
                price_per_minute: "0.30".into(),
                increment_seconds: 1,
            }],
        }),
        settings: Some(LiveSettings {
            log_level: "info".into(),
            media_timeout_seconds: 30,
            leg_stats_seconds: 10,
        }),
    };
    Offered {
        version: 3,
        hash: hash(&config),
        effective_unix_ms: 1_700_000_000_000,
        config: Arc::new(config),
        delta: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_without_the_operator_starts_on_the_version_it_kept() {
    let dir = std::env::temp_dir().join(format!("vc-kept-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let kept = dir.join("live-config.bin");
    live_config::save(&kept, &kept_version()).unwrap();
    // The Directory's address, where nothing answers.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--directory-url",
        &dead,
        "--cluster",
        "demo",
        "--pod-name",
        "demo-signal-0",
        "--pod-namespace",
        "voice",
        "--live-config-file",
        &kept.display().to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let server = Server::start_with("Locally", &args);
    server
        .metric_reaching("voicecluster_config_applied_version", 3.0)
        .await;
    assert!(
        server.sipp.registers(("carol", "c1")),
        "carol, a user of the kept version, registers"
    );
    assert!(
        !server.sipp.registers(ALICE),
        "alice, only in the users file, does not"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
