//! What the database says about a run: when every accepted order was finalized, the
//! accept-to-finalized latencies, throughput per second, and the correctness checks.
//! A run's orders are those with order_id >= the run's floor (UUIDv7 sort by time).

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub finalized: i64,
    pub reserved: i64,
    pub rejected: i64,
    /// First accept to last finalized, from the database's timestamps.
    pub end_to_end_seconds: f64,
    pub end_to_end_per_second: f64,
    pub latency: Latency,
    /// Orders finalized per second since the first accept, every 100 ms (500 ms average).
    pub timeline: Vec<(f64, i64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Checks {
    pub accepted: i64,
    pub accepted_and_present: i64,
    /// Orders in the run's range that no 202 accounted for (e.g. retried after a 503).
    pub unexpected: i64,
    pub oversold_units: i64,
    pub invariant_violations: i64,
}

impl Checks {
    pub fn passed(&self) -> bool {
        self.accepted == self.accepted_and_present && self.unexpected == 0 && self.oversold_units == 0 && self.invariant_violations == 0
    }
}

/// The bench polls and checks with range and `= ANY` queries on a table that may hold
/// millions of rows. Without statistics (autovacuum off, or a table that just grew) the planner
/// takes them for large and scans the whole table in parallel, stealing a core from the very
/// run being measured. Autovacuum keeps statistics fresh in a normal installation; this makes
/// the bench independent of it.
pub async fn refresh_planner_statistics(pool: &Pool) -> anyhow::Result<()> {
    let client = pool.get().await?;
    let autovacuum: String = client.query_one("SHOW autovacuum", &[]).await?.get(0);
    if autovacuum != "on" {
        eprintln!("note: autovacuum is {autovacuum} on this server; running ANALYZE so that the planner has statistics");
    }
    client.batch_execute("ANALYZE orders; ANALYZE inventory").await?;
    Ok(())
}

/// Waits until `expected` orders of the run are in the database, or `timeout`.
/// Orders in the database placed after `floor`.
pub async fn count_since(pool: &Pool, floor: Uuid) -> anyhow::Result<i64> {
    let row = pool.get().await?.query_one("SELECT count(*) FROM orders WHERE order_id >= $1", &[&floor]).await?;
    Ok(row.get(0))
}

pub async fn wait_finalized(pool: &Pool, floor: Uuid, expected: i64, timeout: Duration) -> anyhow::Result<i64> {
    let started = Instant::now();
    let mut count = 0;
    loop {
        // Tolerates a restarting database (chaos runs): an error is just another poll.
        match pool.get().await {
            Ok(client) => match client.query_one("SELECT count(*) FROM orders WHERE order_id >= $1", &[&floor]).await {
                Ok(row) => count = row.get(0),
                Err(error) => eprintln!("poll failed: {error}"),
            },
            Err(error) => eprintln!("poll failed: {error}"),
        }
        if count >= expected || started.elapsed() > timeout {
            return Ok(count);
        }
        // Timings come from database timestamps, so polling often buys nothing but load.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn outcome(pool: &Pool, floor: Uuid) -> anyhow::Result<Outcome> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'reserved'), \
                    coalesce(extract(epoch FROM max(processed_at) - min(created_at))::float8, 0), \
                    coalesce(percentile_cont(0.50) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)::float8), 0), \
                    coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)::float8), 0), \
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)::float8), 0), \
                    coalesce(max(extract(epoch FROM processed_at - created_at))::float8, 0) \
             FROM orders WHERE order_id >= $1",
            &[&floor],
        )
        .await?;
    let (finalized, reserved): (i64, i64) = (row.get(0), row.get(1));
    let seconds: f64 = row.get(2);
    let bins: Vec<(i64, i64)> = client
        .query(
            "WITH run AS (SELECT created_at, processed_at FROM orders WHERE order_id >= $1), \
                  start AS (SELECT min(created_at) AS t0 FROM run) \
             SELECT floor(extract(epoch FROM processed_at - t0) * 10)::int8 AS bin, count(*) \
             FROM run, start GROUP BY 1 ORDER BY 1",
            &[&floor],
        )
        .await?
        .iter()
        .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
        .collect();
    let timeline = smoothed_rate(&bins);
    let ms = |i: usize| row.get::<_, f64>(i) * 1000.0;
    Ok(Outcome {
        finalized,
        reserved,
        rejected: finalized - reserved,
        end_to_end_seconds: seconds,
        end_to_end_per_second: if seconds > 0.0 { finalized as f64 / seconds } else { 0.0 },
        latency: Latency { p50_ms: ms(3), p95_ms: ms(4), p99_ms: ms(5), max_ms: ms(6) },
        timeline,
    })
}

/// Orders/s every 100 ms, averaged over a 500 ms window. All orders of one transaction share
/// its `processed_at`, so raw 100 ms bins jump between zero and a whole batch; one-second bins
/// leave a two-second run with two points.
fn smoothed_rate(bins: &[(i64, i64)]) -> Vec<(f64, i64)> {
    let Some(last) = bins.iter().map(|(bin, _)| *bin).max() else { return Vec::new() };
    let mut counts = vec![0_i64; usize::try_from(last).unwrap_or(0) + 1];
    for (bin, count) in bins {
        if let Ok(index) = usize::try_from(*bin) {
            counts[index] += count;
        }
    }
    (0..counts.len())
        .map(|i| {
            let window = &counts[i.saturating_sub(2)..(i + 3).min(counts.len())];
            let rate = window.iter().sum::<i64>() as f64 / (window.len() as f64 * 0.1);
            (i as f64 / 10.0, rate.round() as i64)
        })
        .collect()
}

/// Exactly once: every accepted id is present and nothing else is in the run's range.
/// No oversell: for the run's products, stock adds up and what is reserved is exactly the
/// run's reserved orders (stock was reset to `stock` with nothing reserved before the run).
pub async fn checks(pool: &Pool, floor: Uuid, accepted: &[Uuid], stock: &[(String, i64)]) -> anyhow::Result<Checks> {
    let client = pool.get().await?;
    let mut present = 0_i64;
    for chunk in accepted.chunks(50_000) {
        let ids = chunk.to_vec();
        present += client.query_one("SELECT count(*) FROM orders WHERE order_id = ANY($1)", &[&ids]).await?.get::<_, i64>(0);
    }
    let in_range: i64 = client.query_one("SELECT count(*) FROM orders WHERE order_id >= $1", &[&floor]).await?.get(0);
    let (products, initial): (Vec<String>, Vec<i64>) = stock.iter().cloned().unzip();
    let row = client
        .query_one(
            "WITH s AS (SELECT * FROM unnest($2::text[], $3::int8[]) AS s(product_id, stock)), \
                  r AS (SELECT product_id, sum(quantity)::int8 AS units FROM orders \
                        WHERE order_id >= $1 AND status = 'reserved' GROUP BY product_id) \
             SELECT coalesce(sum(greatest(coalesce(r.units, 0) - s.stock, 0)), 0)::int8, \
                    count(*) FILTER (WHERE i.available_quantity < 0 OR i.reserved_quantity < 0 \
                        OR i.available_quantity + i.reserved_quantity <> i.total_quantity \
                        OR i.total_quantity <> s.stock OR i.reserved_quantity <> coalesce(r.units, 0)) \
             FROM s JOIN inventory i USING (product_id) LEFT JOIN r USING (product_id)",
            &[&floor, &products, &initial],
        )
        .await?;
    Ok(Checks {
        accepted: accepted.len() as i64,
        accepted_and_present: present,
        unexpected: in_range - present,
        oversold_units: row.get(0),
        invariant_violations: row.get(1),
    })
}

/// Resets the given products' stock (creating catalogue products that do not exist).
pub async fn set_stock(pool: &Pool, stock: &[(String, i64)]) -> anyhow::Result<()> {
    let client = pool.get().await?;
    let (products, quantities): (Vec<String>, Vec<i64>) = stock.iter().cloned().unzip();
    client
        .execute(
            "INSERT INTO inventory (product_id, product_name, available_quantity, reserved_quantity, total_quantity) \
             SELECT p, 'bench ' || p, q, 0, q FROM unnest($1::text[], $2::int8[]) AS s(p, q) \
             ON CONFLICT (product_id) DO UPDATE SET available_quantity = excluded.available_quantity, \
                 reserved_quantity = 0, total_quantity = excluded.total_quantity, updated_at = now()",
            &[&products, &quantities],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::smoothed_rate;

    #[test]
    fn smoothing_spreads_a_batch_over_its_window() {
        // One batch of 1000 in the third bin, nothing else for half a second.
        let rate = smoothed_rate(&[(2, 1000), (6, 0)]);
        assert_eq!(rate.len(), 7);
        assert_eq!(rate[0], (0.0, 3333)); // window of three bins at the edge: 1000 / 0.3 s
        assert_eq!(rate[2], (0.2, 2000)); // full window: 1000 / 0.5 s
        assert_eq!(rate[5].1, 0);
        assert!(smoothed_rate(&[]).is_empty());
    }
}
