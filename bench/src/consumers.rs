//! Where a run's consumer time went: counters scraped from every consumer's `/metrics`
//! before and after the run, summed over the group. This is how the scaling runs tell lock
//! conflicts and their backoff apart from batches that shrink when partitions are split.

use std::collections::HashMap;

use anyhow::Context;
use serde::Serialize;

/// The counters of one consumer, or of the whole group when summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counters {
    pub batches: f64,
    pub messages: f64,
    pub batch_seconds: f64,
    pub lock_conflicts: f64,
    pub backoff_seconds: f64,
}

impl std::ops::Sub for Counters {
    type Output = Self;
    fn sub(self, before: Self) -> Self {
        Self {
            batches: self.batches - before.batches,
            messages: self.messages - before.messages,
            batch_seconds: self.batch_seconds - before.batch_seconds,
            lock_conflicts: self.lock_conflicts - before.lock_conflicts,
            backoff_seconds: self.backoff_seconds - before.backoff_seconds,
        }
    }
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, other: Self) {
        self.batches += other.batches;
        self.messages += other.messages;
        self.batch_seconds += other.batch_seconds;
        self.lock_conflicts += other.lock_conflicts;
        self.backoff_seconds += other.backoff_seconds;
    }
}

/// What the report shows for one run: the group's counters over the run, and what they mean.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub consumers: usize,
    pub counters: Counters,
    pub mean_batch_size: f64,
    pub mean_batch_ms: f64,
    /// Backoff after lock conflicts as a share of all batch write time of the group.
    pub backoff_share: f64,
}

impl Breakdown {
    pub fn new(consumers: usize, counters: Counters) -> Self {
        let per_batch = |total: f64| {
            if counters.batches > 0.0 {
                total / counters.batches
            } else {
                0.0
            }
        };
        Self {
            consumers,
            counters,
            mean_batch_size: per_batch(counters.messages),
            mean_batch_ms: per_batch(counters.batch_seconds) * 1000.0,
            backoff_share: if counters.batch_seconds > 0.0 {
                counters.backoff_seconds / counters.batch_seconds
            } else {
                0.0
            },
        }
    }
}

/// The admin URLs of `count` consumers started by `scripts/up.sh`: consecutive ports from
/// `first` (e.g. http://127.0.0.1:8081).
pub fn admin_urls(first: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let (base, port) = first
        .trim_end_matches('/')
        .rsplit_once(':')
        .context("consumer admin URL has no port")?;
    let port: u16 = port.parse().context("consumer admin URL port")?;
    Ok((0..count)
        .map(|i| format!("{base}:{}", port + i as u16))
        .collect())
}

/// Sums the counters of every consumer. A consumer that does not answer counts as zero and
/// is named on stderr: the breakdown is then partial, never made up.
pub async fn scrape(urls: &[String]) -> Counters {
    let client = reqwest::Client::new();
    let mut total = Counters::default();
    for url in urls {
        let text = match client
            .get(format!("{url}/metrics"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(error) => {
                eprintln!("consumer metrics not read from {url}: {error}");
                continue;
            }
        };
        total += parse(&text);
    }
    total
}

/// Reads the counters from Prometheus text: unlabelled series by name, labelled ones summed
/// (or, for the backoff, taken for the lock-conflict cause only).
pub fn parse(text: &str) -> Counters {
    let mut values: HashMap<&str, f64> = HashMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = match series.split_once('{') {
            Some((name, labels)) if name == "consumer_backoff_microseconds_total" => {
                if !labels.contains("cause=\"lock_conflict\"") {
                    continue;
                }
                name
            }
            Some((name, _)) => name,
            None => series,
        };
        *values.entry(name).or_default() += value;
    }
    let get = |name: &str| values.get(name).copied().unwrap_or(0.0);
    Counters {
        batches: get("consumer_batch_size_count"),
        messages: get("consumer_batch_size_sum"),
        batch_seconds: get("consumer_batch_duration_seconds_sum"),
        lock_conflicts: get("lock_conflicts_total"),
        backoff_seconds: get("consumer_backoff_microseconds_total") / 1e6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_group_counters_from_prometheus_text() {
        let text = "# TYPE lock_conflicts_total counter\n\
                    lock_conflicts_total 12\n\
                    consumer_backoff_microseconds_total{cause=\"lock_conflict\"} 250000\n\
                    consumer_backoff_microseconds_total{cause=\"database_error\"} 9000000\n\
                    consumer_batch_size_bucket{le=\"+Inf\"} 4\n\
                    consumer_batch_size_sum 4000\n\
                    consumer_batch_size_count 4\n\
                    consumer_batch_duration_seconds_sum 0.5\n\
                    consumer_batch_duration_seconds_count 4\n";
        let counters = parse(text);
        assert_eq!(
            counters,
            Counters {
                batches: 4.0,
                messages: 4000.0,
                batch_seconds: 0.5,
                lock_conflicts: 12.0,
                backoff_seconds: 0.25
            }
        );
        let breakdown = Breakdown::new(2, counters);
        assert_eq!(breakdown.mean_batch_size, 1000.0);
        assert_eq!(breakdown.mean_batch_ms, 125.0);
        assert_eq!(breakdown.backoff_share, 0.5);
    }

    #[test]
    fn consecutive_admin_ports() {
        assert_eq!(
            admin_urls("http://127.0.0.1:8081", 3).unwrap(),
            [
                "http://127.0.0.1:8081",
                "http://127.0.0.1:8082",
                "http://127.0.0.1:8083"
            ]
        );
        assert!(admin_urls("http://127.0.0.1", 1).is_err());
    }
}
