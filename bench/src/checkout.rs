//! The `checkout` workload's second half: after a flash sale with short holds, every reserved
//! order is confirmed (50%), cancelled (25%) or left to expire (25%), through the public API,
//! and each kind is timed from the database: a command from `issued_at` (the API) to
//! `decided_at` (the consumer's commit), an expiry from `expires_at` to the release.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::load::LoadSettings;
use crate::measure::Latency;
use crate::workload::Order;

/// The checkout's orders ask for this hold, so the quarter left alone expires within the run.
/// Long enough for every command to be sent and applied before it: with 10 s, one run sent
/// its 120,000 commands over 59 s (the API's per-client limit, 2,000/s) and 106,850 of them
/// came after their hold had expired.
pub const HOLD_SECONDS: i64 = 60;

/// Commands go out from this many loopback addresses (127.0.0.2, ...): the API limits each
/// client address (RATE_LIMIT_PER_IP, 2,000/s by default), and a checkout is many customers,
/// not one client. The global limit (RATE_LIMIT_GLOBAL) still applies.
const SOURCE_ADDRESSES: u8 = 16;

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckoutOutcome {
    pub reserved: usize,
    pub confirms_sent: usize,
    pub cancels_sent: usize,
    pub left_to_expire: usize,
    /// Commands answered 202, per second of sending.
    pub commands_per_second: f64,
    pub failed_commands: usize,
    pub confirmed: i64,
    pub cancelled: i64,
    pub expired: i64,
    /// Commands the consumer refused (e.g. a confirm that came after its hold expired).
    pub refused: i64,
    pub confirm_latency: Latency,
    pub cancel_latency: Latency,
    /// How long after `expires_at` a hold was released.
    pub expiry_lateness: Latency,
    /// Per product: sold = confirmed units, nothing left reserved, and available + sold = stock.
    pub checks_passed: bool,
}

/// The flash-sale bodies with `hold_seconds` on every order.
pub fn bodies(orders: &[Order], batch_size: usize) -> Vec<(usize, String)> {
    let with_hold = |order: &Order| {
        let mut json = order.to_json();
        json["hold_seconds"] = Value::from(HOLD_SECONDS);
        json
    };
    orders
        .chunks(batch_size.max(1))
        .map(|chunk| {
            let body = if batch_size == 1 { with_hold(&chunk[0]) } else { Value::Array(chunk.iter().map(with_hold).collect()) };
            (chunk.len(), body.to_string())
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Confirm,
    Cancel,
}

/// 50% confirm, 25% cancel, 25% left alone, chosen by `seed`.
fn plan(mut reserved: Vec<Uuid>, seed: u64) -> (Vec<(Uuid, Kind)>, usize) {
    reserved.sort_unstable();
    reserved.shuffle(&mut StdRng::seed_from_u64(seed));
    let (confirms, rest) = reserved.split_at(reserved.len() / 2);
    let (cancels, left) = rest.split_at(rest.len() / 2);
    let mut commands: Vec<(Uuid, Kind)> = confirms.iter().map(|id| (*id, Kind::Confirm)).chain(cancels.iter().map(|id| (*id, Kind::Cancel))).collect();
    // Mixed, so that both kinds are sent over the whole sending time and timed alike.
    commands.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(1)));
    (commands, left.len())
}

/// Sends the commands, waits until no hold of the run is left, and measures.
pub async fn run(settings: &LoadSettings, pool: &Pool, products: &[String], stock: &[(String, i64)], seed: u64, timeout: Duration) -> anyhow::Result<CheckoutOutcome> {
    let reserved: Vec<Uuid> = pool
        .get()
        .await?
        .query("SELECT order_id FROM orders WHERE product_id = ANY($1) AND status = 'reserved'", &[&products])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let total_reserved = reserved.len();
    let (commands, left_to_expire) = plan(reserved, seed);
    let confirms_sent = commands.iter().filter(|(_, kind)| *kind == Kind::Confirm).count();
    let cancels_sent = commands.len() - confirms_sent;
    eprintln!("checkout: {total_reserved} holds: {confirms_sent} confirms, {cancels_sent} cancels, {left_to_expire} left to expire");

    let (accepted, failed, elapsed) = send(settings, commands).await;
    let commands_per_second = accepted as f64 / elapsed.as_secs_f64().max(1e-9);
    eprintln!("checkout: {accepted} commands accepted at {commands_per_second:.0}/s, {failed} failed");

    // Every hold ends: by a command, or by the sweeper after HOLD_SECONDS.
    let started = Instant::now();
    loop {
        let row = pool.get().await?.query_one("SELECT count(*) FROM orders WHERE product_id = ANY($1) AND status = 'reserved'", &[&products]).await?;
        let left: i64 = row.get(0);
        if left == 0 || started.elapsed() > timeout {
            if left > 0 {
                eprintln!("checkout: {left} holds still reserved after {} s", timeout.as_secs());
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let client = pool.get().await?;
    let counts = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'confirmed'), count(*) FILTER (WHERE status = 'cancelled'), \
                    count(*) FILTER (WHERE status = 'expired') FROM orders WHERE product_id = ANY($1)",
            &[&products],
        )
        .await?;
    let refused = client
        .query_one(
            "SELECT count(*) FROM order_commands c JOIN orders o USING (order_id) WHERE o.product_id = ANY($1) AND c.outcome = 'refused'",
            &[&products],
        )
        .await?
        .get(0);
    let latency = |sql: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one(sql, &[&products]).await?;
            let ms = |i: usize| row.get::<_, Option<f64>>(i).unwrap_or(0.0) * 1000.0;
            anyhow::Ok(Latency { p50_ms: ms(0), p95_ms: ms(1), p99_ms: ms(2), max_ms: ms(3) })
        }
    };
    let confirm_latency = latency(COMMAND_LATENCY_CONFIRM).await?;
    let cancel_latency = latency(COMMAND_LATENCY_CANCEL).await?;
    let expiry_lateness = latency(EXPIRY_LATENESS).await?;
    let checks_passed = check_stock(pool, stock).await?;
    Ok(CheckoutOutcome {
        reserved: total_reserved,
        confirms_sent,
        cancels_sent,
        left_to_expire,
        commands_per_second,
        failed_commands: failed,
        confirmed: counts.get(0),
        cancelled: counts.get(1),
        expired: counts.get(2),
        refused,
        confirm_latency,
        cancel_latency,
        expiry_lateness,
        checks_passed,
    })
}

const COMMAND_LATENCY_CONFIRM: &str = "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.95) WITHIN GROUP (ORDER BY s), \
            percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s) \
     FROM (SELECT extract(epoch FROM c.decided_at - c.issued_at)::float8 AS s FROM order_commands c JOIN orders o USING (order_id) \
           WHERE o.product_id = ANY($1) AND c.kind = 'confirm' AND c.decided_at IS NOT NULL) t";
const COMMAND_LATENCY_CANCEL: &str = "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.95) WITHIN GROUP (ORDER BY s), \
            percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s) \
     FROM (SELECT extract(epoch FROM c.decided_at - c.issued_at)::float8 AS s FROM order_commands c JOIN orders o USING (order_id) \
           WHERE o.product_id = ANY($1) AND c.kind = 'cancel' AND c.decided_at IS NOT NULL) t";
const EXPIRY_LATENESS: &str = "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.95) WITHIN GROUP (ORDER BY s), \
            percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s) \
     FROM (SELECT extract(epoch FROM status_changed_at - expires_at)::float8 AS s FROM orders \
           WHERE product_id = ANY($1) AND status = 'expired') t";

/// Per product: what was sold is exactly the confirmed units, nothing is still reserved, and
/// available + sold is the stock the run created.
async fn check_stock(pool: &Pool, stock: &[(String, i64)]) -> anyhow::Result<bool> {
    let (products, initial): (Vec<String>, Vec<i64>) = stock.iter().cloned().unzip();
    let bad: i64 = pool
        .get()
        .await?
        .query_one(
            "SELECT count(*) FROM unnest($1::text[], $2::int8[]) AS s(product_id, stock) \
             JOIN inventory i USING (product_id) \
             WHERE i.reserved_quantity <> 0 OR i.available_quantity + i.sold_quantity <> s.stock \
                OR i.sold_quantity <> (SELECT coalesce(sum(quantity), 0) FROM orders o \
                                        WHERE o.product_id = s.product_id AND o.status = 'confirmed')",
            &[&products, &initial],
        )
        .await?
        .get(0);
    Ok(bad == 0)
}

/// POSTs every command from `clients * 8` concurrent senders (a command is one small request
/// each); retries a 5xx or a transport error up to three times. Returns (accepted, failed,
/// elapsed).
async fn send(settings: &LoadSettings, commands: Vec<(Uuid, Kind)>) -> (usize, usize, Duration) {
    let base = settings.producer_url.trim_end_matches('/').to_owned();
    // Other loopback source addresses only when the API is on this machine's loopback.
    let local = base.contains("://127.0.0.1") || base.contains("://localhost");
    let clients: Vec<reqwest::Client> = (0..if local { SOURCE_ADDRESSES } else { 1 })
        .map(|i| {
            let builder = reqwest::Client::builder().pool_max_idle_per_host(settings.clients * 8);
            let builder = if local { builder.local_address(std::net::IpAddr::from([127, 0, 0, 2 + i])) } else { builder };
            builder.build().expect("http client")
        })
        .collect();
    let commands = Arc::new(commands);
    let next = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Mutex::new((0_usize, 0_usize)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..settings.clients * 8)
        .map(|sender| {
            let client = clients[sender % clients.len()].clone();
            let (base, commands, next, counts) = (base.clone(), commands.clone(), next.clone(), counts.clone());
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((order_id, kind)) = commands.get(index) else { break };
                    let verb = if *kind == Kind::Confirm { "confirm" } else { "cancel" };
                    let url = format!("{base}/orders/{order_id}/{verb}");
                    let mut ok = false;
                    let mut attempts = 0;
                    while attempts < 3 {
                        match client.post(&url).send().await {
                            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                                ok = true;
                                break;
                            }
                            // The API's per-client rate limit: wait and send again, not a failure.
                            Ok(response) if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                            Ok(response) if response.status().is_client_error() => break,
                            _ => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                        attempts += 1;
                    }
                    let mut counts = counts.lock().expect("counts lock");
                    if ok {
                        counts.0 += 1;
                    } else {
                        counts.1 += 1;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let (accepted, failed) = *counts.lock().expect("counts lock");
    (accepted, failed, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_confirmed_a_quarter_cancelled_a_quarter_left() {
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
        let (commands, left) = plan(ids.clone(), 42);
        assert_eq!(commands.iter().filter(|(_, k)| *k == Kind::Confirm).count(), 500);
        assert_eq!(commands.iter().filter(|(_, k)| *k == Kind::Cancel).count(), 250);
        assert_eq!(left, 250);
        let early = &commands[..100];
        assert!(early.iter().any(|(_, k)| *k == Kind::Confirm) && early.iter().any(|(_, k)| *k == Kind::Cancel), "kinds mixed over the sending");
        // Every id at most once, and the same seed gives the same plan.
        let mut seen: Vec<Uuid> = commands.iter().map(|(id, _)| *id).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 750);
        assert_eq!(plan(ids, 42).0, commands);
    }

    #[test]
    fn every_order_asks_for_the_short_hold() {
        let order = Order { customer_id: "C".into(), lines: vec![crate::workload::OrderLine { product_id: "P".into(), quantity: 1, amount: 1.0 }] };
        let bodies = bodies(&[order.clone(), order], 2);
        let parsed: Value = serde_json::from_str(&bodies[0].1).unwrap();
        assert!(parsed.as_array().unwrap().iter().all(|o| o["hold_seconds"] == HOLD_SECONDS));
    }
}
