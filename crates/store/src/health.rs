//! Whether the store is reachable, as the last call found it.
//!
//! During an outage every uncached request and every admin call fails; logging each would
//! flood the log at request rate. The transition is logged instead: one line when the store
//! goes down, one when it answers again. Each failed call is counted
//! (`keyward_store_errors_total`) and the state is a gauge (`keyward_store_up`).

use super::StoreError;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct StoreHealth {
    down: AtomicBool,
    errors: IntCounter,
    up_gauge: IntGauge,
}

impl StoreHealth {
    /// `errors` and `up` are the metrics' series (see `Metrics::store_series`).
    pub fn new(errors: IntCounter, up: IntGauge) -> StoreHealth {
        up.set(1);
        StoreHealth {
            down: AtomicBool::new(false),
            errors,
            up_gauge: up,
        }
    }

    /// Records the outcome of one store call (`None`: it succeeded).
    pub fn observe(&self, error: Option<&StoreError>) {
        match error {
            None => self.up(),
            Some(e) => {
                self.errors.inc();
                if e.is_outage() {
                    self.down(e);
                }
            }
        }
    }

    /// The store answered.
    pub fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            self.up_gauge.set(1);
            tracing::warn!("the store is reachable again");
        }
    }

    /// The store could not be reached.
    pub fn down(&self, error: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::AcqRel) {
            self.up_gauge.set(0);
            tracing::error!(
                error = %error,
                "the store is unreachable: uncached credentials and admin writes get 503 until it is back"
            );
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Counts a failure that never reached [`observe`](Self::observe) (a call given up on
    /// after a deadline).
    pub fn timed_out(&self) {
        self.errors.inc();
        self.down(&"no answer within the deadline");
    }
}
