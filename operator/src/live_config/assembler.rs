//! Assembles a cluster's configuration once per change of its sources:
//! reconciles and the Directory's feed ask often (every status write), and
//! hashing 100,000 HA1s each time would be waste.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use voicecluster_api::VoiceCluster;

use super::sources::{Assembly, Lookup, assemble, fingerprint};

/// A configuration with its hash or why there is none, and what each user
/// source gave.
pub type Assembled = Arc<Assembly>;

/// The last assembly per cluster, by the fingerprint of what it read.
#[derive(Default)]
pub struct Assembler {
    last: Mutex<HashMap<(String, String), (String, Assembled)>>,
}

impl Assembler {
    /// The configuration of `vc` from its sources in `lookup`.
    pub fn get(&self, vc: &VoiceCluster, lookup: &impl Lookup) -> Assembled {
        let inputs = fingerprint(vc, lookup);
        let key = (vc.namespace().unwrap_or_default(), vc.name_any());
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((i, a)) = last.get(&key)
            && *i == inputs
        {
            return Arc::clone(a);
        }
        let assembled: Assembled = Arc::new(assemble(vc, lookup));
        last.insert(key, (inputs, Arc::clone(&assembled)));
        assembled
    }
}
