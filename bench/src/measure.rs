//! What the database says about a run: when every accepted order was finalized, the
//! accept-to-finalized latencies, throughput per second, and the correctness checks.
//!
//! A run's orders are its single-line orders (`orders.product_id` among its products) and its
//! carts (a line in `order_lines` for one of its products; a cart's own product_id is NULL).
//! `run_orders` gives both; without carts its second half finds nothing through an index.
//!
//! A run's orders are the orders of the run's own products: every run creates products named
//! `BENCH-<run id>-<step>-...` that exist nowhere else (`create_stock` refuses a product that
//! already exists). Every query here is scoped by those product ids, so orders and stock that
//! were in the database before (a person's PROD001, earlier runs, ids from a clock that jumped)
//! are neither counted nor changed. An order-id floor is not enough: UUIDv7 ids are only as
//! ordered as the clocks that made them, and other ids need not be v7 at all.

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

/// The run's orders (`$1` = its products) as a FROM item with the given columns of `orders`:
/// single-line orders by product, then carts with a line for one of them. A cart's row has
/// a NULL product_id, so no order is in both halves.
fn run_orders(columns: &str) -> String {
    format!(
        "(SELECT {columns} FROM orders WHERE product_id = ANY($1) \
          UNION ALL \
          SELECT {columns} FROM orders WHERE order_id IN (SELECT order_id FROM order_lines WHERE product_id = ANY($1)))"
    )
}

/// Counts the run's orders. Two counts rather than `run_orders`: the bench polls this every
/// second during the run, and on the flash-sale path it must cost what it always did.
const COUNT_RUN: &str = "SELECT (SELECT count(*) FROM orders WHERE product_id = ANY($1)) \
     + (SELECT count(DISTINCT order_id) FROM order_lines WHERE product_id = ANY($1))";

/// Orders of the run's `products` in the database.
pub async fn count(pool: &Pool, products: &[String]) -> anyhow::Result<i64> {
    let row = pool.get().await?.query_one(COUNT_RUN, &[&products]).await?;
    Ok(row.get(0))
}

/// Statistics that know the run's products: at the bench's first ANALYZE they did not exist,
/// so the planner takes them for a handful of rows. Run after the orders are finalized, before
/// the queries that read all of them, outside anything measured.
pub async fn analyze_orders(pool: &Pool) -> anyhow::Result<()> {
    pool.get().await?.batch_execute("ANALYZE orders").await?;
    Ok(())
}

/// Waits until `expected` orders of the run's `products` are in the database, or `timeout`.
pub async fn wait_finalized(pool: &Pool, products: &[String], expected: i64, timeout: Duration) -> anyhow::Result<i64> {
    let started = Instant::now();
    let mut count = 0;
    loop {
        // Tolerates a restarting database (chaos runs): an error is just another poll.
        match pool.get().await {
            Ok(client) => match client.query_one(COUNT_RUN, &[&products]).await {
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

pub async fn outcome(pool: &Pool, products: &[String]) -> anyhow::Result<Outcome> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE status = 'reserved'), \
                    coalesce(extract(epoch FROM max(processed_at) - min(created_at))::float8, 0), \
                    coalesce(percentile_cont(0.50) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)::float8), 0), \
                    coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)::float8), 0), \
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at)::float8), 0), \
                    coalesce(max(extract(epoch FROM processed_at - created_at))::float8, 0) \
                 FROM {} AS run",
                run_orders("status, created_at, processed_at")
            ),
            &[&products],
        )
        .await?;
    let (finalized, reserved): (i64, i64) = (row.get(0), row.get(1));
    let seconds: f64 = row.get(2);
    let bins: Vec<(i64, i64)> = client
        .query(
            // The start as a scalar subquery: evaluated once whatever the estimates. As a CTE
            // joined to the run, stale statistics (no rows for products that did not exist at
            // the last ANALYZE) made it a nested loop over 200k x 200k rows.
            &format!(
                "SELECT floor(extract(epoch FROM processed_at - (SELECT min(created_at) FROM {} AS first)) * 10)::int8 AS bin, count(*) \
                 FROM {} AS run GROUP BY 1 ORDER BY 1",
                run_orders("created_at"),
                run_orders("processed_at")
            ),
            &[&products],
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

/// Exactly once: every accepted id is present and nothing else is among the run's orders.
/// No oversell: for the run's products, stock adds up and what is reserved is exactly the
/// run's reserved orders (the products were created with `stock` and nothing reserved).
pub async fn checks(pool: &Pool, accepted: &[Uuid], stock: &[(String, i64)]) -> anyhow::Result<Checks> {
    let client = pool.get().await?;
    let (products, initial): (Vec<String>, Vec<i64>) = stock.iter().cloned().unzip();
    let mut present = 0_i64;
    for chunk in accepted.chunks(50_000) {
        let ids = chunk.to_vec();
        present += client
            .query_one(&format!("SELECT count(*) FROM {} AS run WHERE order_id = ANY($2)", run_orders("order_id")), &[&products, &ids])
            .await?
            .get::<_, i64>(0);
    }
    let in_run: i64 = client.query_one(COUNT_RUN, &[&products]).await?.get(0);
    // Per product, the lines of reserved orders, carts included (the order_items view).
    let row = client
        .query_one(
            "WITH s AS (SELECT * FROM unnest($1::text[], $2::int8[]) AS s(product_id, stock)), \
                  r AS (SELECT product_id, sum(quantity)::int8 AS units FROM order_items \
                        WHERE product_id = ANY($1) AND status = 'reserved' GROUP BY product_id) \
             SELECT coalesce(sum(greatest(coalesce(r.units, 0) - s.stock, 0)), 0)::int8, \
                    count(*) FILTER (WHERE i.available_quantity < 0 OR i.reserved_quantity < 0 \
                        OR i.available_quantity + i.reserved_quantity <> i.total_quantity \
                        OR i.total_quantity <> s.stock OR i.reserved_quantity <> coalesce(r.units, 0)) \
             FROM s JOIN inventory i USING (product_id) LEFT JOIN r USING (product_id)",
            &[&products, &initial],
        )
        .await?;
    Ok(Checks {
        accepted: accepted.len() as i64,
        accepted_and_present: present,
        unexpected: in_run - present,
        oversold_units: row.get(0),
        invariant_violations: row.get(1),
    })
}

/// Creates the run's products with their stock, the way the seed migration does (an
/// `inventory` row). Never overwrites: if any of them exists already, nothing is created and
/// this fails, so stock that a person (or another run) set is never touched.
pub async fn create_stock(pool: &Pool, stock: &[(String, i64)]) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    let (products, quantities): (Vec<String>, Vec<i64>) = stock.iter().cloned().unzip();
    let transaction = client.transaction().await?;
    let created = transaction
        .execute(
            "INSERT INTO inventory (product_id, product_name, available_quantity, reserved_quantity, total_quantity, received_quantity) \
             SELECT p, 'orderflow bench product', q, 0, q, q FROM unnest($1::text[], $2::int8[]) AS s(p, q) \
             ON CONFLICT (product_id) DO NOTHING",
            &[&products, &quantities],
        )
        .await?;
    if created != products.len() as u64 {
        // Dropping the transaction rolls back what was inserted.
        anyhow::bail!(
            "{} of the bench's {} product ids already exist (first: {}); the bench creates products of its own and never overwrites stock",
            products.len() as u64 - created,
            products.len(),
            products.first().map_or("", String::as_str)
        );
    }
    transaction.commit().await?;
    Ok(())
}

/// Deletes the run's orders and products, and nothing else.
pub async fn remove(pool: &Pool, products: &[String]) -> anyhow::Result<(u64, u64)> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    // Carts first, with their lines, then single-line orders.
    let carts = transaction
        .execute(
            "WITH carts AS (SELECT DISTINCT order_id FROM order_lines WHERE product_id = ANY($1)), \
                  lines AS (DELETE FROM order_lines l USING carts c WHERE l.order_id = c.order_id), \
                  commands AS (DELETE FROM order_commands d USING carts c WHERE d.order_id = c.order_id) \
             DELETE FROM orders o USING carts c WHERE o.order_id = c.order_id",
            &[&products],
        )
        .await?;
    // The commands of the run's single-line orders (a cart's went with it above).
    transaction
        .execute(
            "DELETE FROM order_commands c USING orders o WHERE o.order_id = c.order_id AND o.product_id = ANY($1)",
            &[&products],
        )
        .await?;
    let orders = carts + transaction.execute("DELETE FROM orders WHERE product_id = ANY($1)", &[&products]).await?;
    let inventory = transaction.execute("DELETE FROM inventory WHERE product_id = ANY($1)", &[&products]).await?;
    transaction.commit().await?;
    // The deleted rows stay in the tables as dead tuples until a vacuum. With autovacuum off
    // (as on the machine these numbers come from) they piled up: after a dozen runs `orders`
    // held 3.1M dead rows (743 MB) for 60,000 live ones, and every later run read through them
    // (4 consumers on the catalog: 968 us of PostgreSQL CPU per order against 168 before).
    // Vacuumed here, each run starts where the first one did. VACUUM changes no data.
    client
        .batch_execute("VACUUM (ANALYZE) orders, order_lines, order_commands, inventory, order_events_outbox")
        .await?;
    Ok((orders, inventory))
}

/// The product ids of `stock`.
pub fn products(stock: &[(String, i64)]) -> Vec<String> {
    stock.iter().map(|(product, _)| product.clone()).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use orderflow_common::db;
    use orderflow_common::testing::TestDatabase;
    use uuid::Uuid;

    use super::{checks, count, create_stock, outcome, products, remove, smoothed_rate, wait_finalized};
    use crate::workload::{product_prefix, Workload};

    /// The database after the README's examples and more: a person's PROD001 with stock they
    /// set and a reservation, and an order whose id sorts after every UUIDv7 made today (an id
    /// from a clock that was ahead, or not v7 at all). A run must neither count nor change them.
    #[tokio::test]
    async fn a_run_sees_and_changes_only_its_own_products() {
        let database = TestDatabase::create().await;
        let pool = db::pool(&database.settings()).expect("pool");
        db::migrate(&pool).await.expect("migrate");
        let client = pool.get().await.expect("connection");
        client
            .batch_execute(
                "UPDATE inventory SET available_quantity = 37, reserved_quantity = 5, total_quantity = 42, received_quantity = 42 WHERE product_id = 'PROD001'; \
                 INSERT INTO orders (order_id, customer_id, product_id, quantity, amount, status, reason, created_at, processed_at) VALUES \
                 ('ffffffff-ffff-7fff-bfff-ffffffffffff', 'CUST001', 'PROD001', 5, 6499.95, 'reserved', NULL, now() - interval '18 hours', now() - interval '18 hours'), \
                 ('00000000-0000-7000-8000-000000000001', 'CUST002', 'PROD002', 1, 29.99, 'rejected', 'insufficient_stock', now() - interval '1 day', now() - interval '1 day')",
            )
            .await
            .expect("a used database");
        let snapshot = "SELECT (SELECT array_agg(i::text ORDER BY product_id) FROM inventory i), (SELECT array_agg(o::text ORDER BY order_id) FROM orders o)";
        let before: (Vec<String>, Vec<String>) = client.query_one(snapshot, &[]).await.map(|row| (row.get(0), row.get(1))).expect("snapshot");

        // A person's product is never overwritten, not even partly.
        let orders = Workload::FlashSale.orders(300, 1, &product_prefix("20261125T000000-abcd", "1"));
        let stock = Workload::FlashSale.stock(&orders);
        let mut clash = stock.clone();
        clash.push(("PROD001".to_owned(), 1_000));
        assert!(create_stock(&pool, &clash).await.is_err(), "created stock over PROD001");
        create_stock(&pool, &stock).await.expect("the run's products");

        // The run's orders, applied as the consumer would: reserve if the stock is there.
        let mut accepted = Vec::new();
        for order in &orders {
            let id = Uuid::now_v7();
            client
                .execute(
                    "WITH r AS (UPDATE inventory SET available_quantity = available_quantity - $3, reserved_quantity = reserved_quantity + $3 \
                                WHERE product_id = $2 AND available_quantity >= $3 RETURNING 1) \
                     INSERT INTO orders (order_id, customer_id, product_id, quantity, amount, status, reason, created_at) \
                     SELECT $1, $4, $2, $3, 1, CASE WHEN EXISTS (SELECT 1 FROM r) THEN 'reserved' ELSE 'rejected' END, \
                            CASE WHEN EXISTS (SELECT 1 FROM r) THEN NULL ELSE 'insufficient_stock' END, now() - interval '10 ms'",
                    &[&id, &order.single().product_id, &order.single().quantity, &order.customer_id],
                )
                .await
                .expect("apply an order");
            accepted.push(id);
        }

        let ours = products(&stock);
        let n = orders.len() as i64;
        assert_eq!(count(&pool, &ours).await.expect("count"), n);
        assert_eq!(wait_finalized(&pool, &ours, n, Duration::ZERO).await.expect("wait"), n);
        let outcome = outcome(&pool, &ours).await.expect("outcome");
        assert_eq!(outcome.finalized, n);
        assert!(outcome.rejected > 0 && outcome.reserved > 0, "{outcome:?}");
        assert!(outcome.latency.max_ms < 60_000.0, "an older order was counted: {outcome:?}");
        assert!(outcome.end_to_end_seconds < 60.0, "an older order was counted: {outcome:?}");
        let checks = checks(&pool, &accepted, &stock).await.expect("checks");
        assert!(checks.passed(), "{checks:?}");
        assert_eq!(checks.unexpected, 0);

        // An order the run did not place, for one of its products, fails the check.
        client
            .execute(
                "INSERT INTO orders (order_id, customer_id, product_id, quantity, amount, status, reason, created_at) \
                 VALUES ($1, 'X', $2, 1, 1, 'rejected', 'insufficient_stock', now())",
                &[&Uuid::now_v7(), &ours[0]],
            )
            .await
            .expect("a stray order");
        assert_eq!(checks_unexpected(&pool, &accepted, &stock).await, 1);

        // A cart is the run's if one of its lines is: counted once, and removed with its lines.
        let cart = Uuid::now_v7();
        client
            .batch_execute(&format!(
                "INSERT INTO orders (order_id, customer_id, line_count, status, reason, created_at) \
                 VALUES ('{cart}', 'X', 2, 'rejected', 'insufficient_stock', now()); \
                 INSERT INTO order_lines (order_id, line_no, product_id, quantity, amount, problem) VALUES \
                 ('{cart}', 1, '{}', 1, 1, 'insufficient_stock'), ('{cart}', 2, '{}', 1, 1, NULL)",
                ours[0], ours[1]
            ))
            .await
            .expect("a cart");
        assert_eq!(count(&pool, &ours).await.expect("count"), n + 2);
        assert_eq!(checks_unexpected(&pool, &accepted, &stock).await, 2);
        assert_eq!(super::outcome(&pool, &ours).await.expect("outcome").finalized, n + 2);

        let (deleted_orders, deleted_products) = remove(&pool, &ours).await.expect("remove");
        assert_eq!((deleted_orders, deleted_products), (orders.len() as u64 + 2, stock.len() as u64));
        let lines: i64 = client.query_one("SELECT count(*) FROM order_lines", &[]).await.expect("lines").get(0);
        assert_eq!(lines, 0, "the cart's lines went with it");
        let after: (Vec<String>, Vec<String>) = client.query_one(snapshot, &[]).await.map(|row| (row.get(0), row.get(1))).expect("snapshot");
        assert_eq!(before, after, "the run changed rows it did not create");
    }

    async fn checks_unexpected(pool: &deadpool_postgres::Pool, accepted: &[Uuid], stock: &[(String, i64)]) -> i64 {
        checks(pool, accepted, stock).await.expect("checks").unexpected
    }

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
