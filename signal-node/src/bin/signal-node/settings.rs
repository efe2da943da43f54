//! What SIP serves on and where call legs come from, from the flags and
//! the VoiceCluster spec the operator mounts.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use voicecluster_api::VoiceClusterSpec;
use voicecluster_api::voicecluster::{BillingSpec, CallLegMode};
use voicecluster_media_node::engine::MediaEngine;
use voicecluster_media_node::ports::PortPool;
use voicecluster_media_node::relay::Relay;
use voicecluster_media_node::service::LegService;
use voicecluster_signal_node::leg_providers::{DirectoryView, Legs};

use crate::Args;

fn parse_ports(s: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("RTP ports {s:?}: expected min-max"))?;
    Ok((a.trim().parse()?, b.trim().parse()?))
}

/// What SIP serves on, from the flags and the spec.
pub(crate) struct SipSettings {
    pub(crate) addr: SocketAddr,
    /// The address in Via and Contact.
    pub(crate) advertised: SocketAddr,
    pub(crate) domain: String,
    pub(crate) mode: CallLegMode,
    pub(crate) rtp_ports: (u16, u16),
    pub(crate) capacity: usize,
    pub(crate) billing: BillingSpec,
}

pub(crate) fn sip_settings(args: &Args) -> anyhow::Result<Option<SipSettings>> {
    let spec: Option<VoiceClusterSpec> =
        match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Some(serde_json::from_str(&text).with_context(|| {
                    format!("parsing {} as a VoiceCluster spec", path.display())
                })?)
            }
            None => None,
        };
    let port = spec
        .as_ref()
        .and_then(|s| u16::try_from(s.sip.port).ok())
        .unwrap_or(5060);
    let addr = match (args.sip_addr, &spec) {
        (Some(a), _) => a,
        (None, Some(_)) => SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port),
        (None, None) => return Ok(None),
    };
    let advertised_ip = if addr.ip().is_unspecified() {
        args.pod_ip
            .ok_or_else(|| anyhow::anyhow!("SIP listens on {addr}: set POD_IP to advertise"))?
    } else {
        addr.ip()
    };
    let rtp_ports = match &args.rtp_ports {
        Some(r) => parse_ports(r)?,
        None => spec.as_ref().map_or(Ok((20000, 29999)), |s| {
            let r = &s.media.rtp_port_range;
            Ok::<_, anyhow::Error>((u16::try_from(r.min)?, u16::try_from(r.max)?))
        })?,
    };
    let mode = args
        .call_leg_mode
        .or(spec.as_ref().map(|s| s.signal.call_leg_mode))
        .unwrap_or(CallLegMode::Locally);
    let capacity = spec
        .as_ref()
        .and_then(|s| usize::try_from(s.media.capacity).ok())
        .unwrap_or(1000);
    let billing = spec.as_ref().map(|s| s.billing.clone()).unwrap_or_default();
    let domain = args
        .sip_domain
        .clone()
        .or_else(|| spec.map(|s| s.sip.domain))
        .unwrap_or_else(|| "voicecluster.local".to_string());
    Ok(Some(SipSettings {
        addr,
        advertised: SocketAddr::new(advertised_ip, addr.port()),
        domain,
        mode,
        rtp_ports,
        capacity,
        billing,
    }))
}

/// Where calls' legs come from, by mode; for `LocallyForOthers` also the
/// service to offer other members.
pub(crate) fn call_legs(
    s: &SipSettings,
    args: &Args,
    directory: Option<DirectoryView>,
    member: String,
) -> anyhow::Result<(Legs, Option<LegService>)> {
    if s.mode == CallLegMode::Remotely {
        if directory.is_none() && args.call_leg_providers.is_empty() {
            tracing::warn!("Remotely without a Directory or VC_CALL_LEG_PROVIDERS: calls get 503");
        }
        let legs = Legs::remote(args.call_leg_providers.clone(), directory, member);
        return Ok((legs, None));
    }
    let (min, max) = s.rtp_ports;
    let pool = PortPool::new(min, max)?;
    let relay = Relay::new(pool, s.capacity, Duration::from_secs(30));
    let bind = s.advertised.ip();
    let engine = MediaEngine::new(relay, bind, args.media_public_ip.unwrap_or(bind));
    let service = LegService::new(engine, s.capacity);
    tracing::info!(mode = ?s.mode, ports = %format!("{min}-{max}"), "call legs in this process");
    let offered = (s.mode == CallLegMode::LocallyForOthers).then(|| service.clone());
    Ok((Legs::local(service, member), offered))
}
