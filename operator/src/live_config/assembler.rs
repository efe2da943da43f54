//! Assembles a cluster's configuration once per change of its sources:
//! reconciles and the Directory's feed ask often (every status write), and
//! hashing 100,000 HA1s each time would be waste.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use voicecluster_api::VoiceCluster;
use voicecluster_api::config::hash;
use voicecluster_api::grpc::ClusterConfig;

use super::secrets::SecretCache;
use super::sources::{SourceError, assemble, users_secret};

/// A configuration with its hash, or why there is none.
pub type Assembled = Arc<Result<(Arc<ClusterConfig>, String), SourceError>>;

/// What the content depends on: the spec fields it reads and the Secret's
/// resource version.
#[derive(Clone, PartialEq, Eq)]
struct Inputs {
    domain: String,
    billing: String,
    secret: Option<(String, Option<String>)>,
}

/// The last assembly per cluster.
#[derive(Default)]
pub struct Assembler {
    last: Mutex<HashMap<(String, String), (Inputs, Assembled)>>,
}

impl Assembler {
    /// The configuration of `vc` from its sources in `secrets`.
    pub fn get(&self, vc: &VoiceCluster, secrets: &SecretCache) -> Assembled {
        let ns = vc.namespace().unwrap_or_default();
        let secret: Option<Arc<Secret>> = users_secret(vc).and_then(|n| secrets.get(&ns, n));
        let inputs = Inputs {
            domain: vc.spec.sip.domain.clone(),
            billing: serde_json::to_string(&vc.spec.billing).unwrap_or_default(),
            secret: users_secret(vc).map(|n| {
                (
                    n.to_string(),
                    secret.as_ref().and_then(|s| s.resource_version()),
                )
            }),
        };
        let key = (ns, vc.name_any());
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((i, a)) = last.get(&key)
            && *i == inputs
        {
            return Arc::clone(a);
        }
        let assembled: Assembled = Arc::new(assemble(vc, secret.as_deref()).map(|c| {
            let h = hash(&c);
            (Arc::new(c), h)
        }));
        last.insert(key, (inputs, Arc::clone(&assembled)));
        assembled
    }
}
