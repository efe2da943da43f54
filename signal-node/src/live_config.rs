//! A member's side of the live configuration: a version the Directory
//! offered is checked whole ([`check`]: users, rates, the log filter)
//! before anything of it is used, then swapped in at once by the driver
//! between two SIP messages, so no call sees half of it; and the last version applied is kept on the member's
//! volume ([`save`], [`load`]) so a restart without the operator starts on it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use voicecluster_api::config::users::{check_display_name, check_ha1, check_user_name};
use voicecluster_api::grpc::ConfigUser;
use voicecluster_directory_client::config::Offered;
use voicecluster_telemetry::metrics::register_all;
use voicecluster_telemetry::{LogFilter, ParsedFilter};

use crate::billing::RateTable;
use crate::digest::{Account, Users};

/// What `/metrics` says of the live configuration.
#[derive(Clone)]
pub struct ConfigMetrics {
    /// The version in use.
    pub applied_version: Gauge,
    /// Time to check and swap in a version.
    pub apply_seconds: Histogram,
    /// Versions refused.
    pub refused: Counter,
}

impl Default for ConfigMetrics {
    fn default() -> Self {
        Self {
            applied_version: Gauge::default(),
            // From 10 µs: a handful of users; up to ~0.3 s: 100,000.
            apply_seconds: Histogram::new(exponential_buckets(0.000_01, 3.0, 12)),
            refused: Counter::default(),
        }
    }
}

impl ConfigMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        register_all(
            registry,
            &[
                (
                    "voicecluster_config_applied_version",
                    "The live configuration version this member uses",
                    &m.applied_version,
                ),
                (
                    "voicecluster_config_apply_seconds",
                    "Time to check a configuration version and swap it in",
                    &m.apply_seconds,
                ),
                (
                    "voicecluster_config_refused",
                    "Configuration versions this member refused",
                    &m.refused,
                ),
            ],
        );
        m
    }
}

/// A version that passed every check, ready to swap in.
pub struct Checked {
    /// The users, whole or what changed since the version in force.
    pub users: Users,
    /// The rate table.
    pub rates: RateTable,
    /// From when its rates hold.
    pub effective: SystemTime,
    /// The log filter to put in force; None: the one in force stays.
    pub log_filter: Option<ParsedFilter>,
}

/// The version a member has in force, by number and hash: a version that
/// came as a delta on top of it is checked and put in force as that delta
/// alone, so a one-user change costs one user's work however many users
/// the cluster has.
#[derive(Debug, Default)]
pub struct InForce {
    applied: Option<(i64, String)>,
}

impl InForce {
    /// Checks all of `offered` that is not in force yet, its log level
    /// against the member's filter `log`; the first thing wrong is the
    /// reason it fails.
    pub fn check(&self, offered: &Offered, log: &LogFilter) -> Result<Checked, String> {
        let on_top = offered.delta.as_deref().filter(|d| {
            self.applied
                .as_ref()
                .is_some_and(|(v, h)| d.applies_to((*v, h)))
        });
        let users = match on_top {
            Some(d) => changed_users(&d.delta.upsert, &d.delta.remove)?,
            None => Users::Whole(whole_users(&offered.config.users)?),
        };
        let c = &offered.config;
        // A version from an operator that sent no settings changes no filter.
        let log_filter = match &c.settings {
            Some(s) => log.prepare(&s.log_level)?,
            None => None,
        };
        let billing = c
            .billing
            .as_ref()
            .ok_or_else(|| "no rate table".to_string())?;
        let rates = RateTable::from_config(billing)?;
        let effective = SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(offered.effective_unix_ms).unwrap_or(0));
        Ok(Checked {
            users,
            rates,
            effective,
            log_filter,
        })
    }

    /// Records that `offered` is in force now.
    pub fn applied(&mut self, offered: &Offered) {
        self.applied = Some((offered.version, offered.hash.clone()));
    }
}

fn checked_user(u: &ConfigUser) -> Result<(String, Account), String> {
    check_user_name(&u.name)?;
    check_ha1(&u.ha1).map_err(|e| format!("user {:?}: {e}", u.name))?;
    check_display_name(&u.display_name).map_err(|e| format!("user {:?}: {e}", u.name))?;
    let account = Account {
        ha1: u.ha1.to_ascii_lowercase(),
        display_name: (!u.display_name.is_empty()).then(|| u.display_name.clone()),
    };
    Ok((u.name.clone(), account))
}

fn whole_users(list: &[ConfigUser]) -> Result<HashMap<String, Account>, String> {
    let mut users = HashMap::with_capacity(list.len());
    for u in list {
        let (name, account) = checked_user(u)?;
        if users.insert(name, account).is_some() {
            return Err(format!("user {:?} twice", u.name));
        }
    }
    Ok(users)
}

fn changed_users(upsert: &[ConfigUser], remove: &[String]) -> Result<Users, String> {
    let mut seen = HashSet::with_capacity(upsert.len());
    let upsert = upsert
        .iter()
        .map(|u| {
            if !seen.insert(u.name.as_str()) {
                return Err(format!("user {:?} twice", u.name));
            }
            checked_user(u)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Users::Changed {
        upsert,
        remove: remove.to_vec(),
    })
}

/// Keeps `offered` at `path`, replacing the file whole (written beside it,
/// synced, renamed), so a crash leaves the old version or the new one.
pub fn save(path: &Path, offered: &Offered) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&offered.to_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The version kept at `path`, if there is one that checks.
pub fn load(path: &Path) -> Option<Offered> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the kept configuration");
            return None;
        }
    };
    match Offered::from_bytes(&bytes) {
        Ok(o) => {
            tracing::info!(path = %path.display(), version = o.version, "starting on the kept configuration");
            Some(o)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the kept configuration does not check; waiting for the operator's");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use voicecluster_api::config::{ha1, hash};
    use voicecluster_api::grpc::{
        BillingConfig, ClusterConfig, ConfigDelta, LiveSettings, RateConfig,
    };
    use voicecluster_directory_client::config::OfferedDelta;

    use super::*;

    fn offered(users: Vec<ConfigUser>, price: &str) -> Offered {
        with_log_level(users, price, "info")
    }

    fn with_log_level(users: Vec<ConfigUser>, price: &str, log_level: &str) -> Offered {
        let config = ClusterConfig {
            users,
            billing: Some(BillingConfig {
                currency: "EUR".into(),
                rates: vec![RateConfig {
                    prefix: String::new(),
                    price_per_minute: price.into(),
                    increment_seconds: 1,
                }],
            }),
            settings: Some(LiveSettings {
                log_level: log_level.into(),
                media_timeout_seconds: 30,
                leg_stats_seconds: 10,
            }),
        };
        Offered {
            version: 4,
            hash: hash(&config),
            effective_unix_ms: 1_700_000_000_000,
            config: Arc::new(config),
            delta: None,
        }
    }

    fn user(name: &str, ha1: &str) -> ConfigUser {
        ConfigUser {
            name: name.into(),
            ha1: ha1.into(),
            display_name: String::new(),
        }
    }

    #[test]
    fn a_version_is_checked_whole_and_the_first_fault_is_the_reason() {
        let good = ha1("alice", "voice.test", "pw");
        let log = LogFilter::detached("info");
        let c = InForce::default()
            .check(&offered(vec![user("alice", &good)], "0.05"), &log)
            .unwrap();
        assert!(c.log_filter.is_none(), "the level in force stays");
        assert_eq!(
            c.users,
            Users::Whole(HashMap::from([(
                "alice".to_string(),
                Account::ha1(good.clone())
            )]))
        );
        assert_eq!(
            c.effective,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        let fault = |o: Offered| InForce::default().check(&o, &log).err().unwrap();
        assert!(fault(offered(vec![user("a:b", &good)], "0.05")).contains("SIP user part"));
        assert!(fault(offered(vec![user("bob", "short")], "0.05")).contains("32 hex"));
        assert!(fault(offered(vec![user("alice", &good)], "lots")).contains("lots"));
        let r = offered(vec![], "0.05").result(&Err("why".into()));
        assert!(r.failed && r.reason == "why" && r.version == 4);
    }

    #[test]
    fn a_log_level_is_checked_with_the_rest_and_a_bad_one_refuses_the_version() {
        let log = LogFilter::detached("info");
        let alice = || vec![user("alice", &ha1("alice", "voice.test", "pw"))];
        let debug = "info,voicecluster_signal_node=debug";
        let c = InForce::default()
            .check(&with_log_level(alice(), "0.05", debug), &log)
            .unwrap();
        assert_eq!(c.log_filter.unwrap().directives(), debug);
        // A directive that does not parse: the whole version is refused,
        // the reason names it, and the filter in force is untouched.
        let why = InForce::default()
            .check(&with_log_level(alice(), "0.05", "info,sip=chatty"), &log)
            .err()
            .unwrap();
        assert!(why.contains("log level \"info,sip=chatty\""), "{why}");
        assert_eq!(log.directives(), "info");
        let r = with_log_level(alice(), "0.05", "info,sip=chatty").result(&Err(why.clone()));
        assert!(r.failed && r.reason == why);
        // Settings absent (an older operator): nothing to swap.
        let mut old = offered(alice(), "0.05");
        Arc::make_mut(&mut old.config).settings = None;
        assert!(
            InForce::default()
                .check(&old, &log)
                .unwrap()
                .log_filter
                .is_none()
        );
    }

    /// Version 5: `base` with `d` applied, as the Directory client
    /// rebuilds it.
    fn on_top(base: &Offered, d: ConfigDelta) -> Offered {
        let config = voicecluster_api::config::apply(&base.config, &d);
        Offered {
            version: base.version + 1,
            hash: hash(&config),
            effective_unix_ms: base.effective_unix_ms,
            config: Arc::new(config),
            delta: Some(Arc::new(OfferedDelta {
                base_version: base.version,
                base_hash: base.hash.clone(),
                delta: d,
            })),
        }
    }

    #[test]
    fn a_delta_on_the_version_in_force_is_checked_and_applied_alone() {
        let log = LogFilter::detached("info");
        let (a, b) = (ha1("alice", "r", "pw"), ha1("bob", "r", "pw"));
        let v4 = offered(vec![user("alice", &a), user("bob", &b)], "0.05");
        let carol = ha1("carol", "r", "pw").to_ascii_uppercase();
        let d = ConfigDelta {
            upsert: vec![ConfigUser {
                display_name: "Carol C.".into(),
                ..user("carol", &carol)
            }],
            remove: vec!["bob".into()],
            ..ConfigDelta::default()
        };
        let v5 = on_top(&v4, d.clone());
        let mut in_force = InForce::default();
        // Nothing in force: the whole list, whatever way it came.
        assert!(matches!(
            in_force.check(&v5, &log).unwrap().users,
            Users::Whole(u) if u.len() == 2 && u.contains_key("carol")
        ));
        in_force.applied(&v4);
        assert_eq!(
            in_force.check(&v5, &log).unwrap().users,
            Users::Changed {
                upsert: vec![(
                    "carol".into(),
                    Account {
                        ha1: carol.to_ascii_lowercase(),
                        display_name: Some("Carol C.".into()),
                    }
                )],
                remove: vec!["bob".into()],
            }
        );
        // A bad user in the delta refuses the version as in the whole.
        let bad = on_top(
            &v4,
            ConfigDelta {
                upsert: vec![user("dave", "short")],
                ..ConfigDelta::default()
            },
        );
        assert!(in_force.check(&bad, &log).err().unwrap().contains("32 hex"));
        // A display name that would break the From line: refused too.
        let injected = ConfigUser {
            display_name: "Eve\r\nX-Evil: 1".into(),
            ..user("eve", &a)
        };
        let why = in_force
            .check(
                &on_top(
                    &v4,
                    ConfigDelta {
                        upsert: vec![injected],
                        ..ConfigDelta::default()
                    },
                ),
                &log,
            )
            .err()
            .unwrap();
        assert!(why.contains("control character"), "{why}");
        // On another version in force (v4 refused, say): the whole again.
        in_force.applied(&v5);
        assert!(matches!(
            in_force.check(&on_top(&v4, d), &log).unwrap().users,
            Users::Whole(_)
        ));
    }

    #[test]
    fn the_kept_version_survives_a_restart_and_a_torn_file_is_ignored() {
        let dir = std::env::temp_dir().join(format!("vc-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.bin");
        assert!(load(&path).is_none());
        let o = offered(vec![user("alice", &ha1("alice", "x", "y"))], "0.05");
        save(&path, &o).unwrap();
        assert_eq!(load(&path).unwrap(), o);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load(&path).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
