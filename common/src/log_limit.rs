//! Rate limiting of repeated log lines: while the broker is down the same errors repeat
//! dozens of times a second, and 36,000 identical lines in 13 minutes bury everything else.
//! One line per kind per interval, carrying how many repeats were left out since the last.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval the services use: one line per error kind per 10 s.
pub const EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    kinds: Mutex<BTreeMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

impl LogLimiter {
    /// `const`, so each call site can keep its own `static`.
    pub const fn new(every: Duration) -> Self {
        Self { every, kinds: Mutex::new(BTreeMap::new()) }
    }

    /// `Some(suppressed)` when a line of this kind should be logged now, with the number of
    /// repeats left out since the previous one; `None` when this one is left out.
    pub fn allow(&self, kind: &str) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    pub fn allow_at(&self, kind: &str, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while counting; the counts
        // are still usable.
        let mut kinds = self.kinds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match kinds.get_mut(kind) {
            Some(window) if now.saturating_duration_since(window.logged_at) < self.every => {
                window.suppressed += 1;
                None
            }
            Some(window) => {
                let suppressed = std::mem::take(&mut window.suppressed);
                window.logged_at = now;
                Some(suppressed)
            }
            None => {
                kinds.insert(kind.to_owned(), Window { logged_at: now, suppressed: 0 });
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_the_count_left_out() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(limiter.allow_at("broker down", at(0)), Some(0));
        // 46 a second for ten seconds, as the broker outage produced.
        let logged = (1..460).filter(|i| limiter.allow_at("broker down", at(i * 1000 / 46)).is_some()).count();
        assert_eq!(logged, 0);
        // Another kind is not held back by the first.
        assert_eq!(limiter.allow_at("commit failed", at(5000)), Some(0));
        assert_eq!(limiter.allow_at("broker down", at(10_000)), Some(459));
        assert_eq!(limiter.allow_at("broker down", at(10_001)), None);
        assert_eq!(limiter.allow_at("broker down", at(25_000)), Some(1));
    }
}
