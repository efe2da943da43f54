//! What the operator's flags contribute to every VoiceCluster's objects.

/// Images the operator uses when a VoiceCluster names none.
#[derive(Clone, Debug)]
pub struct Images {
    /// signal-node image.
    pub signal: String,
    /// media-node image.
    pub media: String,
}

/// Operator-wide settings that shape the objects.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Default images.
    pub images: Images,
    /// Where pods reach the Directory; pods get no address when unset.
    pub directory_url: Option<String>,
}
