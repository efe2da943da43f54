//! The driver's side of billing: the records of finished calls the
//! endpoint hands out are priced and appended to the member's bill file.
//! A failed write keeps the bill and tries again before the next one, so
//! a full disk delays bills and loses none.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;

use super::{Bill, BillStore, RateTable, bill};
use crate::calls::CallRecord;

/// Bills shared between the SIP loop (writer) and the management API (reader).
pub type SharedBills = Arc<Mutex<BillStore>>;

/// Prices records and writes their bills.
pub struct BillWriter {
    rates: RateTable,
    store: SharedBills,
    /// Bills a failed write left behind; written before the next one.
    pending: Vec<Bill>,
    write_errors: Counter,
}

impl BillWriter {
    /// Bills with `rates` into `store`, counting failed writes in `write_errors`.
    pub fn new(rates: RateTable, store: SharedBills, write_errors: Counter) -> Self {
        Self {
            rates,
            store,
            pending: Vec::new(),
            write_errors,
        }
    }

    /// Bills one finished call.
    pub fn record(&mut self, record: &CallRecord) {
        self.pending.push(bill(record, &self.rates));
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
