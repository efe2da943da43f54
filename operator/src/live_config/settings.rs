//! The live settings of a VoiceCluster's configuration: the spec fields a
//! running pod applies without a restart (`spec.logLevel`,
//! `spec.media.mediaTimeoutSeconds`, `spec.media.legStatsSeconds`). Pure,
//! like the rest of the assembly.
//!
//! The log filter is not parsed here: the pods parse it with their own
//! `tracing-subscriber`, which decides what they accept, and a pod that
//! cannot parse it refuses the version, which rolls every pod back with the
//! reason in `status.config`.

use voicecluster_api::VoiceCluster;
use voicecluster_api::grpc::LiveSettings;

/// The settings `vc`'s pods apply live.
pub fn live_settings(vc: &VoiceCluster) -> LiveSettings {
    let media = &vc.spec.media;
    LiveSettings {
        log_level: vc.spec.log_level.clone(),
        // The schema keeps both in range; a negative one that got past it
        // becomes 0, which a media pod refuses for the timeout (legs would
        // time out at once) and takes as "no statistics" for the interval.
        media_timeout_seconds: u32::try_from(media.media_timeout_seconds).unwrap_or(0),
        leg_stats_seconds: u32::try_from(media.leg_stats_seconds).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::vc;

    #[test]
    fn the_settings_come_from_the_spec_with_its_defaults() {
        let plain = live_settings(&vc(serde_json::json!({"sip": {"domain": "x"}})));
        assert_eq!(
            plain,
            LiveSettings {
                log_level: "info".into(),
                media_timeout_seconds: 30,
                leg_stats_seconds: 10,
            }
        );
        let tuned = live_settings(&vc(serde_json::json!({
            "sip": {"domain": "x"},
            "logLevel": "info,voicecluster_signal_node=debug",
            "media": {"mediaTimeoutSeconds": 90, "legStatsSeconds": 0}
        })));
        assert_eq!(tuned.log_level, "info,voicecluster_signal_node=debug");
        assert_eq!(tuned.media_timeout_seconds, 90);
        assert_eq!(tuned.leg_stats_seconds, 0);
    }
}
