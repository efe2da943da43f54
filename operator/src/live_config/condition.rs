//! The `ConfigApplied` condition, from `status.config`.

use voicecluster_api::voicecluster::ConfigStatus;

use super::status::FAILED;
use crate::conditions::{Reason, Verdict};

/// Whether every signal and media pod uses the configuration the sources give, and
/// if not, why and what to do.
pub fn config_applied(c: &ConfigStatus) -> Verdict {
    if let Some(e) = &c.error {
        return Verdict::new(
            false,
            Reason::SourceError,
            format!(
                "{e}; the pods keep configuration version {}. Fix the source.",
                c.version
            ),
        );
    }
    if let Some(r) = &c.rolled_back {
        return Verdict::new(
            false,
            Reason::RolledBack,
            format!(
                "configuration version {} failed on pod {}: {}; every pod was returned to the last good \
                 configuration (served as version {}). Fix the users Secret or spec.billing.",
                r.version, r.pod, r.reason, c.version
            ),
        );
    }
    if let Some(p) = c
        .pods
        .iter()
        .find(|p| p.state == FAILED && p.version == c.version)
    {
        return Verdict::new(
            false,
            Reason::ConfigFailed,
            format!(
                "configuration version {} failed on pod {}: {}; no earlier version to return to. \
                 Fix the users Secret or spec.billing.",
                c.version,
                p.pod,
                p.reason.as_deref().unwrap_or_default()
            ),
        );
    }
    let reporting = c.pods.len();
    if reporting == 0 {
        return Verdict::new(
            false,
            Reason::Applying,
            format!(
                "no pod has reported on configuration version {} yet",
                c.version
            ),
        );
    }
    if usize::try_from(c.current_pods).ok() != Some(reporting) {
        return Verdict::new(
            false,
            Reason::Applying,
            format!(
                "{} of {reporting} pods on configuration version {}",
                c.current_pods, c.version
            ),
        );
    }
    Verdict::new(
        true,
        Reason::Applied,
        format!(
            "{reporting} pods on configuration version {} ({} users)",
            c.version, c.users
        ),
    )
}

#[cfg(test)]
mod tests {
    use voicecluster_api::voicecluster::{PodConfig, RolledBackConfig};

    use super::*;

    fn pod(name: &str, version: i64, state: &str) -> PodConfig {
        PodConfig {
            pod: name.into(),
            version,
            state: state.into(),
            reason: (state == FAILED).then(|| "user \"a b\" is not a SIP user part".into()),
        }
    }

    #[test]
    fn the_condition_names_the_failing_pod_and_what_to_do() {
        let mut c = ConfigStatus {
            version: 3,
            users: 2,
            current_pods: 2,
            pods: vec![pod("sig-0", 3, "Applied"), pod("sig-1", 3, "Applied")],
            ..ConfigStatus::default()
        };
        assert_eq!(config_applied(&c).reason, Reason::Applied);
        c.current_pods = 1;
        c.pods[1] = pod("sig-1", 2, "Applied");
        assert_eq!(config_applied(&c).reason, Reason::Applying);
        c.rolled_back = Some(RolledBackConfig {
            version: 2,
            hash: "h".into(),
            pod: "sig-1".into(),
            reason: "user \"a b\" is not a SIP user part".into(),
        });
        let v = config_applied(&c);
        assert!(!v.status);
        assert_eq!(v.reason, Reason::RolledBack);
        assert!(
            v.message.contains("failed on pod sig-1") && v.message.contains("a b"),
            "{}",
            v.message
        );
        c.error = Some("the users Secret \"x\": line 2: expected user:password".into());
        let v = config_applied(&c);
        assert_eq!(v.reason, Reason::SourceError);
        assert!(v.message.contains("line 2"));
        let failed = ConfigStatus {
            version: 1,
            pods: vec![pod("sig-0", 1, FAILED)],
            ..ConfigStatus::default()
        };
        assert_eq!(config_applied(&failed).reason, Reason::ConfigFailed);
    }
}
