//! Bills: every finished call priced from the VoiceCluster's rate table and
//! written durably (append-only JSON lines, fsync'd) before it is served.
//!
//! Money is kept in millionths of the currency unit (the precision the
//! rate table allows) so no bill carries float rounding.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use voicecluster_api::voicecluster::{BillingSpec, Rate};

use crate::calls::CallRecord;

/// A rate with its price parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ParsedRate {
    prefix: String,
    micros_per_minute: u64,
    increment: u64,
}

/// Parses a decimal price with at most 6 decimals into millionths.
pub fn parse_price(s: &str) -> Result<u64, String> {
    let (units, frac) = s.split_once('.').unwrap_or((s, ""));
    if units.is_empty()
        || frac.len() > 6
        || !units.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "price {s:?} is not a decimal with at most 6 decimals"
        ));
    }
    let units: u64 = units
        .parse()
        .map_err(|_| format!("price {s:?} is too large"))?;
    let frac: u64 = format!("{frac:0<6}").parse().unwrap_or(0);
    units
        .checked_mul(1_000_000)
        .and_then(|u| u.checked_add(frac))
        .ok_or_else(|| format!("price {s:?} is too large"))
}

/// Millionths as a decimal string with at least two decimals.
pub fn format_micros(m: u64) -> String {
    let s = format!("{}.{:06}", m / 1_000_000, m % 1_000_000);
    let trimmed = s.trim_end_matches('0');
    let decimals = trimmed.len() - trimmed.find('.').map_or(trimmed.len(), |i| i + 1);
    if decimals < 2 {
        format!("{}{}", trimmed, "0".repeat(2 - decimals))
    } else {
        trimmed.to_string()
    }
}

/// The rate table of one VoiceCluster.
#[derive(Clone, Debug)]
pub struct RateTable {
    currency: String,
    rates: Vec<ParsedRate>,
}

/// What a call costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// The matching prefix, if any rate matched.
    pub prefix: Option<String>,
    /// Seconds billed: the duration rounded up to the increment.
    pub billed_seconds: u64,
    /// Cost in millionths.
    pub cost_micros: u64,
    /// Price per minute applied, in millionths.
    pub micros_per_minute: u64,
    /// The increment applied.
    pub increment_seconds: u64,
}

impl RateTable {
    /// From the spec; a price that does not parse is an error (the CRD
    /// schema already refuses it, so only a hand-made config gets here).
    pub fn from_spec(spec: &BillingSpec) -> Result<Self, String> {
        let rates = spec
            .rates
            .iter()
            .map(|r: &Rate| {
                Ok(ParsedRate {
                    prefix: r.prefix.trim_start_matches('+').to_string(),
                    micros_per_minute: parse_price(&r.price_per_minute)?,
                    increment: u64::try_from(r.increment_seconds.max(1)).unwrap_or(60),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            currency: spec.currency.clone(),
            rates,
        })
    }

    /// From a live configuration's rate table: the same checks as
    /// [`Self::from_spec`], and an increment that is no positive number of
    /// seconds is an error too (a config the operator never makes).
    pub fn from_config(b: &voicecluster_api::grpc::BillingConfig) -> Result<Self, String> {
        if let Some(r) = b.rates.iter().find(|r| r.increment_seconds < 1) {
            return Err(format!(
                "rate {:?}: increment {} s",
                r.prefix, r.increment_seconds
            ));
        }
        Self::from_spec(&BillingSpec {
            currency: b.currency.clone(),
            rates: b
                .rates
                .iter()
                .map(|r| Rate {
                    prefix: r.prefix.clone(),
                    price_per_minute: r.price_per_minute.clone(),
                    increment_seconds: r.increment_seconds,
                })
                .collect(),
        })
    }

    /// The currency of every price.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// Prices a call to `destination` that lasted `duration`: the longest
    /// matching prefix, the duration rounded up to its increment.
    pub fn price(&self, destination: &str, duration: Duration) -> Price {
        let dest = destination.trim_start_matches('+');
        let Some(rate) = self
            .rates
            .iter()
            .filter(|r| dest.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
        else {
            return Price {
                prefix: None,
                billed_seconds: 0,
                cost_micros: 0,
                micros_per_minute: 0,
                increment_seconds: 0,
            };
        };
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let step_ms = rate.increment * 1000;
        let billed_seconds = ms.div_ceil(step_ms) * rate.increment;
        // Round half up to the millionth.
        let cost = (u128::from(rate.micros_per_minute) * u128::from(billed_seconds) + 30) / 60;
        Price {
            prefix: Some(rate.prefix.clone()),
            billed_seconds,
            cost_micros: u64::try_from(cost).unwrap_or(u64::MAX),
            micros_per_minute: rate.micros_per_minute,
            increment_seconds: rate.increment,
        }
    }
}

/// One bill, as stored and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bill {
    /// The caller's Call-ID.
    pub call_id: String,
    /// Caller user.
    pub caller: String,
    /// Callee user (the destination priced).
    pub callee: String,
    /// INVITE received (RFC 3339).
    pub start: String,
    /// Answer (RFC 3339), if answered.
    pub answer: Option<String>,
    /// End (RFC 3339).
    pub end: String,
    /// Answer to end, in milliseconds.
    pub duration_ms: u64,
    /// Why the call ended.
    pub disconnect_reason: String,
    /// Prefix of the rate applied.
    pub rate_prefix: Option<String>,
    /// Price per minute applied.
    pub price_per_minute: String,
    /// Billing increment applied, in seconds.
    pub increment_seconds: u64,
    /// Seconds billed.
    pub billed_seconds: u64,
    /// What the call costs.
    pub cost: String,
    /// Currency of the cost.
    pub currency: String,
    /// End as Unix milliseconds, for `since` queries.
    pub end_unix_ms: u64,
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map_or_else(|_| "invalid".to_string(), |ts| ts.to_string())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The bill of a finished call.
pub fn bill(record: &CallRecord, rates: &RateTable) -> Bill {
    let duration = record
        .answered
        .and_then(|a| record.ended.duration_since(a).ok())
        .unwrap_or_default();
    let price = rates.price(&record.callee, duration);
    Bill {
        call_id: record.call_id.clone(),
        caller: record.caller.clone(),
        callee: record.callee.clone(),
        start: rfc3339(record.started),
        answer: record.answered.map(rfc3339),
        end: rfc3339(record.ended),
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        disconnect_reason: record.reason.clone(),
        rate_prefix: price.prefix,
        price_per_minute: format_micros(price.micros_per_minute),
        increment_seconds: price.increment_seconds,
        billed_seconds: price.billed_seconds,
        cost: format_micros(price.cost_micros),
        currency: rates.currency().to_string(),
        end_unix_ms: unix_ms(record.ended),
    }
}

/// Append-only bill file plus an index of it.
pub struct BillStore {
    path: PathBuf,
    file: File,
    bills: Vec<Bill>,
    by_call_id: HashMap<String, usize>,
}

impl BillStore {
    /// Opens (or creates) `path` and loads the bills in it. A torn last
    /// line (a crash mid-write) is skipped with a warning: its call was
    /// never reported as billed.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut bills = Vec::new();
        if let Ok(f) = File::open(path) {
            for (n, line) in BufReader::new(f).lines().enumerate() {
                let line = line?;
                match serde_json::from_str::<Bill>(&line) {
                    Ok(b) => bills.push(b),
                    Err(e) => {
                        tracing::warn!(line = n + 1, error = %e, "skipping an unreadable bill line")
                    }
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let by_call_id = bills
            .iter()
            .enumerate()
            .map(|(i, b)| (b.call_id.clone(), i))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            bills,
            by_call_id,
        })
    }

    /// Writes a bill and syncs it to disk before it is served.
    pub fn append(&mut self, bill: Bill) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&bill).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.by_call_id
            .insert(bill.call_id.clone(), self.bills.len());
        self.bills.push(bill);
        Ok(())
    }

    /// The bill of a call.
    pub fn get(&self, call_id: &str) -> Option<&Bill> {
        self.by_call_id.get(call_id).map(|&i| &self.bills[i])
    }

    /// Bills of calls that ended at or after `since_unix_ms`.
    pub fn since(&self, since_unix_ms: u64) -> Vec<Bill> {
        self.bills
            .iter()
            .filter(|b| b.end_unix_ms >= since_unix_ms)
            .cloned()
            .collect()
    }

    /// Where the bills are.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

mod writer;
pub use writer::{BillWriter, SharedBills};

#[cfg(test)]
mod tests;
