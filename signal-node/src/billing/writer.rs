//! The driver's side of billing: the records of finished calls the
//! endpoint hands out are priced and appended to the member's bill file.
//! A failed write keeps the bill and tries again before the next one, so
//! a full disk delays bills and loses none.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;

use super::{Bill, BillStore, RateTable, bill};
use crate::calls::CallRecord;

/// Bills shared between the SIP loop (writer) and the management API (reader).
pub type SharedBills = Arc<Mutex<BillStore>>;

/// Rate tables kept besides the newest: a call is priced with the table in
/// force when it was answered, and calls last hours, not versions.
const RATE_HISTORY: usize = 16;

/// Prices records and writes their bills.
pub struct BillWriter {
    /// The newest rate table and the time from which it holds.
    rates: (SystemTime, RateTable),
    /// The tables before it, oldest first.
    older: Vec<(SystemTime, RateTable)>,
    store: SharedBills,
    /// Bills a failed write left behind; written before the next one.
    pending: Vec<Bill>,
    write_errors: Counter,
}

impl BillWriter {
    /// Bills with `rates` into `store`, counting failed writes in `write_errors`.
    pub fn new(rates: RateTable, store: SharedBills, write_errors: Counter) -> Self {
        Self {
            rates: (SystemTime::UNIX_EPOCH, rates),
            older: Vec::new(),
            store,
            pending: Vec::new(),
            write_errors,
        }
    }

    /// Calls answered from `since` on are priced with `rates`.
    pub fn set_rates(&mut self, since: SystemTime, rates: RateTable) {
        let previous = std::mem::replace(&mut self.rates, (since, rates));
        self.older.push(previous);
        // A table that holds from later than the new one (a restart on a
        // kept version) is covered by it.
        self.older.retain(|(from, _)| *from < since);
        if self.older.len() > RATE_HISTORY {
            self.older.remove(0);
        }
    }

    /// The table in force at `at`: the newest that holds from then or
    /// before, else the oldest kept.
    fn rates_at(&self, at: SystemTime) -> &RateTable {
        if self.rates.0 <= at {
            return &self.rates.1;
        }
        self.older
            .iter()
            .rev()
            .find(|(since, _)| *since <= at)
            .or_else(|| self.older.first())
            .map_or(&self.rates.1, |(_, r)| r)
    }

    /// Bills one finished call, at the rates in force when it was answered
    /// (when it started, for a call never answered).
    pub fn record(&mut self, record: &CallRecord) {
        let at = record.answered.unwrap_or(record.started);
        let priced = bill(record, self.rates_at(at));
        self.pending.push(priced);
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(b) = self.pending.first().cloned() {
            if let Err(e) = store.append(b) {
                tracing::error!(error = %e, path = %store.path().display(), pending = self.pending.len(), "cannot write a bill; kept for the next attempt");
                self.write_errors.inc();
                return;
            }
            self.pending.remove(0);
        }
    }
}
