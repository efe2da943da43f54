#![allow(clippy::unwrap_used)]

use super::*;
use crate::grpc::{BillingConfig, LiveSettings};

fn user(name: &str, ha1: &str) -> ConfigUser {
    ConfigUser {
        name: name.to_string(),
        ha1: ha1.to_string(),
        display_name: String::new(),
    }
}

fn rate(prefix: &str, price: &str) -> RateConfig {
    RateConfig {
        prefix: prefix.to_string(),
        price_per_minute: price.to_string(),
        increment_seconds: 60,
    }
}

fn config(users: &[(&str, &str)], rates: &[(&str, &str)]) -> ClusterConfig {
    canonical(ClusterConfig {
        users: users.iter().map(|(n, h)| user(n, h)).collect(),
        billing: Some(BillingConfig {
            currency: "EUR".to_string(),
            rates: rates.iter().map(|(p, r)| rate(p, r)).collect(),
        }),
        settings: Some(settings("info", 30)),
    })
}

fn settings(log_level: &str, media_timeout_seconds: u32) -> LiveSettings {
    LiveSettings {
        log_level: log_level.to_string(),
        media_timeout_seconds,
        leg_stats_seconds: 10,
    }
}

#[test]
fn ha1_is_rfc_2617s() {
    // RFC 2617 §3.5's example: Mufasa, "testrealm@host.com", "Circle Of Life".
    assert_eq!(
        ha1("Mufasa", "testrealm@host.com", "Circle Of Life"),
        "939e7578ed9e3c518a452acee763bce9"
    );
}

#[test]
fn the_hash_names_the_content_not_the_order_it_came_in() {
    let a = config(
        &[("bob", "2"), ("alice", "1")],
        &[("49", "0.02"), ("", "0.05")],
    );
    let b = config(
        &[("alice", "1"), ("bob", "2")],
        &[("", "0.05"), ("49", "0.02")],
    );
    assert_eq!(hash(&a), hash(&b));
    assert_eq!(hash(&a).len(), 64);
    let c = config(
        &[("alice", "1"), ("bob", "3")],
        &[("", "0.05"), ("49", "0.02")],
    );
    assert_ne!(hash(&a), hash(&c));
}

#[test]
fn a_delta_carries_only_what_changed_and_rebuilds_the_target_exactly() {
    let from = config(
        &[("alice", "1"), ("bob", "2"), ("carol", "3")],
        &[("", "0.05")],
    );
    let to = config(
        &[("alice", "1"), ("bob", "9"), ("dave", "4")],
        &[("", "0.05")],
    );
    let d = delta(&from, &to);
    assert_eq!(d.upsert, [user("bob", "9"), user("dave", "4")]);
    assert_eq!(d.remove, ["carol"]);
    assert_eq!(d.billing, None, "the rates did not change");
    assert_eq!(hash(&apply(&from, &d)), hash(&to));

    let repriced = config(
        &[("alice", "1"), ("bob", "9"), ("dave", "4")],
        &[("", "0.07")],
    );
    let d = delta(&to, &repriced);
    assert!(d.upsert.is_empty() && d.remove.is_empty());
    assert_eq!(apply(&to, &d), repriced);
    // Against the wrong base the result is not the version: the hash shows.
    assert_ne!(hash(&apply(&from, &d)), hash(&repriced));
}

#[test]
fn a_one_user_change_among_many_is_small_on_the_wire() {
    let names: Vec<(String, String)> = (0..10_000)
        .map(|i| {
            (
                format!("user{i:05}"),
                ha1(&format!("user{i:05}"), "x", "pw"),
            )
        })
        .collect();
    let many = |extra: Option<(&str, &str)>| {
        let mut users: Vec<(&str, &str)> = names
            .iter()
            .map(|(n, h)| (n.as_str(), h.as_str()))
            .collect();
        users.extend(extra);
        config(&users, &[("", "0.05")])
    };
    let (from, to) = (many(None), many(Some(("zoe", "5"))));
    let wire = compress(&delta(&from, &to));
    assert!(wire.len() < 100, "{} bytes", wire.len());
    let back: ConfigDelta = decompress(&wire, "delta").unwrap();
    assert_eq!(hash(&apply(&from, &back)), hash(&to));
    let snapshot = compress(&to);
    let whole: ClusterConfig = decompress(&snapshot, "snapshot").unwrap();
    assert_eq!(whole, to);
}

#[test]
fn bytes_that_are_not_a_configuration_are_refused_with_the_reason() {
    assert!(matches!(
        decompress::<ClusterConfig>(b"not zstd at all", "snapshot"),
        Err(WireError::Compression(_))
    ));
    let garbage = zstd::bulk::compress(&[0xff; 64], 3).unwrap();
    assert!(matches!(
        decompress::<ClusterConfig>(&garbage, "snapshot"),
        Err(WireError::Decode("snapshot", _))
    ));
    // A small frame that inflates past the limit is cut off, not read.
    let bomb = zstd::bulk::compress(&vec![0u8; (MAX_DECODED_BYTES + 10) as usize], 19).unwrap();
    assert!(bomb.len() < 1 << 20);
    assert_eq!(
        decompress::<ClusterConfig>(&bomb, "snapshot"),
        Err(WireError::TooLarge)
    );
}

#[test]
fn a_settings_change_travels_in_the_delta_and_only_then() {
    let from = config(&[("alice", "1")], &[("", "0.05")]);
    // Users changed, settings did not: the delta carries none.
    let more = config(&[("alice", "1"), ("bob", "2")], &[("", "0.05")]);
    let d = delta(&from, &more);
    assert_eq!(d.settings, None);
    assert_eq!(apply(&from, &d).settings, from.settings);

    // The log level changed: the delta carries all the settings, and only
    // them; the version it rebuilds hashes like the target.
    let debug = ClusterConfig {
        settings: Some(settings("info,voicecluster_signal_node=debug", 30)),
        ..from.clone()
    };
    assert_ne!(hash(&debug), hash(&from), "the settings are in the hash");
    let d = delta(&from, &debug);
    assert!(d.upsert.is_empty() && d.remove.is_empty() && d.billing.is_none());
    assert_eq!(
        d.settings,
        Some(settings("info,voicecluster_signal_node=debug", 30))
    );
    let wire: ConfigDelta = decompress(&compress(&d), "delta").unwrap();
    assert_eq!(hash(&apply(&from, &wire)), hash(&debug));

    // A media timeout change alone is a change too.
    let slow = ClusterConfig {
        settings: Some(settings("info", 90)),
        ..from.clone()
    };
    let d = delta(&from, &slow);
    assert_eq!(
        d.settings.as_ref().map(|s| s.media_timeout_seconds),
        Some(90)
    );
    assert_eq!(apply(&from, &d), slow);
    // Applied to a base with other settings, the delta's settings win.
    assert_eq!(apply(&debug, &d).settings, slow.settings);
}

#[test]
fn a_version_from_before_settings_takes_them_from_a_delta() {
    // A pod that kept a version made before the operator sent settings.
    let old = ClusterConfig {
        settings: None,
        ..config(&[("alice", "1")], &[("", "0.05")])
    };
    let new = config(&[("alice", "1")], &[("", "0.05")]);
    let d = delta(&old, &new);
    assert_eq!(d.settings, new.settings);
    assert_eq!(hash(&apply(&old, &d)), hash(&new));
}
