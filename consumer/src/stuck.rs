//! Writes stuck on a permanent database error (a CHECK the orders violate, a missing column):
//! retrying cannot help until someone changes the schema or the data, so while it lasts
//! /ready is red, naming the error, and `consumer_writes_stuck` is 1.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Default)]
pub struct StuckWrites {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Parts of the batch in flight that are stuck (each part is its own transaction).
    parts: usize,
    last: Option<PermanentFailure>,
}

/// The latest permanent error, for /ready.
#[derive(Debug, Clone, Serialize)]
pub struct PermanentFailure {
    pub error: String,
    pub sqlstate: String,
    pub since: DateTime<Utc>,
    pub orders: usize,
}

/// Held by a part while it is stuck; dropping it (the part committed, or was abandoned at
/// shutdown) clears the state once no part is stuck.
pub struct StuckGuard<'a>(&'a StuckWrites);

impl StuckWrites {
    pub fn enter(&self) -> StuckGuard<'_> {
        let mut inner = self.lock();
        inner.parts += 1;
        metrics::gauge!("consumer_writes_stuck").set(1.0);
        StuckGuard(self)
    }

    /// Records the latest error; `since` is kept from the first one of this stuck period.
    pub fn report(&self, error: String, sqlstate: &str, orders: usize) {
        let mut inner = self.lock();
        let since = inner.last.as_ref().map_or_else(Utc::now, |last| last.since);
        inner.last = Some(PermanentFailure { error, sqlstate: sqlstate.to_owned(), since, orders });
    }

    pub fn current(&self) -> Option<PermanentFailure> {
        self.lock().last.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for StuckGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.parts -= 1;
        if inner.parts == 0 {
            inner.last = None;
            metrics::gauge!("consumer_writes_stuck").set(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_until_the_last_stuck_part_gets_through() {
        let stuck = StuckWrites::default();
        let first = stuck.enter();
        stuck.report("ERROR 23514: violates check constraint".into(), "23514", 3);
        let second = stuck.enter();
        stuck.report("ERROR 42703: column does not exist".into(), "42703", 2);
        drop(first);
        let current = stuck.current().expect("one part is still stuck");
        assert_eq!(current.sqlstate, "42703");
        drop(second);
        assert!(stuck.current().is_none());
    }
}
