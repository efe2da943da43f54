//! `spec.billing`: the rate table calls are priced by.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One entry of the rate table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rate {
    /// Destination number prefix; the longest matching prefix wins. Empty
    /// matches every destination.
    #[schemars(length(max = 32), regex(pattern = r"^\+?[0-9]*$"))]
    pub prefix: String,
    /// Price per minute as a decimal string (no float rounding in bills).
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"))]
    pub price_per_minute: String,
    /// Billing increment: durations are rounded up to a multiple of it.
    #[serde(default = "default_increment")]
    #[schemars(range(min = 1, max = 3600))]
    pub increment_seconds: i32,
}

fn default_increment() -> i32 {
    60
}

/// Pricing of calls. Applies live: running members price calls answered
/// after a change (`status.config.effectiveUnixMs`) with the new table, and
/// the calls answered before it with the old one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingSpec {
    /// ISO 4217 currency code of the prices.
    #[serde(default = "default_currency")]
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
    /// The rate table; each prefix at most once (the API server enforces
    /// it as a list map keyed by prefix).
    #[serde(default)]
    #[schemars(
        length(max = 10000),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["prefix"])
    )]
    pub rates: Vec<Rate>,
}

fn default_currency() -> String {
    "EUR".to_string()
}

impl Default for BillingSpec {
    fn default() -> Self {
        Self {
            currency: default_currency(),
            rates: Vec::new(),
        }
    }
}
