//! Idempotency-Key: a retried request gets the same order ids (or command id) and creates no
//! second order (or command), across restarts and producer instances, because the record
//! lives in PostgreSQL.
//!
//! The record holds the placed orders themselves. If the first attempt failed to publish
//! (or published only part), a retry re-publishes exactly those messages; the consumer
//! applies each order_id once, so nothing is ever doubled.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::types::Json;

use orderflow_common::acked::Outgoing;
use orderflow_common::command::OrderCommand;
use orderflow_common::order::{Line, Lines, NewOrder, PlacedOrder};

use orderflow_common::errors::Chain;

use crate::error::ApiError;
use crate::publisher::OrderPublisher;

pub const HEADER: &str = "Idempotency-Key";

/// What to answer with, and whether it is a replay of an earlier request.
pub struct Published {
    pub orders: Vec<PlacedOrder>,
    pub replayed: bool,
}

/// Publishes `orders` under `key` (if any). `route` is part of the request identity: the
/// same key on another route is a different request, and therefore a mismatch.
pub async fn publish(
    key: Option<&str>,
    route: &str,
    orders: Vec<NewOrder>,
    publisher: &OrderPublisher,
    pool: &Pool,
) -> Result<Published, ApiError> {
    let placed_at = chrono::Utc::now();
    let hash = key.map(|_| request_hash(route, &orders));
    let placed: Vec<PlacedOrder> = orders.into_iter().map(|o| PlacedOrder::new(o, uuid::Uuid::now_v7(), placed_at)).collect();
    let (orders, replayed) = publish_keyed(key.zip(hash), placed, publisher, pool).await?;
    Ok(Published { orders, replayed })
}

/// Publishes one command under `key` (if any). The request's identity is the route (which
/// names the order and the command kind) and the customer_id the body gave, if any: a retry
/// re-publishes the stored command, with its command_id, so the consumer decides it once.
pub async fn publish_command(
    key: Option<&str>,
    route: &str,
    body_customer: Option<&str>,
    command: OrderCommand,
    publisher: &OrderPublisher,
    pool: &Pool,
) -> Result<(OrderCommand, bool), ApiError> {
    let hash = key.map(|_| {
        let mut hasher = Sha256::new();
        hasher.update(route.as_bytes());
        hasher.update(b"\0command\0");
        hasher.update(body_customer.unwrap_or("\0none").as_bytes());
        hasher.finalize().to_vec()
    });
    let (mut commands, replayed) = publish_keyed(key.zip(hash), vec![command], publisher, pool).await?;
    Ok((commands.remove(0), replayed))
}

/// The messages stored under the key (`idempotency_keys.orders` holds any message list: the
/// orders of an order route, the command of a command route), published unless the key was
/// already accepted. Without a key, `fresh` is simply published.
async fn publish_keyed<M>(keyed: Option<(&str, Vec<u8>)>, fresh: Vec<M>, publisher: &OrderPublisher, pool: &Pool) -> Result<(Vec<M>, bool), ApiError>
where
    M: Outgoing + Serialize + DeserializeOwned + std::fmt::Debug + Sync,
{
    let Some((key, hash)) = keyed else {
        publisher.publish(&fresh).await?;
        return Ok((fresh, false));
    };
    validate_key(key)?;
    let client = pool.get().await?;
    let claimed = client
        .execute(
            "INSERT INTO idempotency_keys (idempotency_key, request_hash, orders, state) VALUES ($1, $2, $3, 'pending') \
             ON CONFLICT (idempotency_key) DO NOTHING",
            &[&key, &hash, &Json(&fresh)],
        )
        .await?;
    let (messages, replayed, accepted) = if claimed == 1 {
        (fresh, false, false)
    } else {
        let row = client
            .query_one("SELECT request_hash, orders, state FROM idempotency_keys WHERE idempotency_key = $1", &[&key])
            .await?;
        if row.get::<_, Vec<u8>>(0) != hash {
            return Err(ApiError::IdempotencyMismatch);
        }
        let Json(stored): Json<Vec<M>> = row.get(1);
        (stored, true, row.get::<_, &str>(2) == "accepted")
    };
    drop(client);
    if !accepted {
        publisher.publish(&messages).await?;
        // If this fails the key stays pending, and a retry re-publishes the same messages:
        // harmless, so the client still gets its 202.
        if let Err(error) = mark_accepted(pool, key).await {
            tracing::warn!(error = %Chain(&error), "could not mark idempotency key accepted");
        }
    }
    Ok((messages, replayed))
}

async fn mark_accepted(pool: &Pool, key: &str) -> Result<(), ApiError> {
    pool.get()
        .await?
        .execute("UPDATE idempotency_keys SET state = 'accepted' WHERE idempotency_key = $1", &[&key])
        .await?;
    Ok(())
}

fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid_key());
    }
    Ok(())
}

/// The 400 for a key outside 1 to 255 bytes of 0x21-0x7E. Such a key is refused, never
/// ignored: a request treated as keyless would make every retry a new order.
pub fn invalid_key() -> ApiError {
    ApiError::BadRequest(format!("{HEADER} must be 1 to 255 visible ASCII characters"))
}

/// The request's identity: route plus the validated orders (so whitespace and field order
/// in the JSON do not matter). A single-line order hashes exactly as it did before carts, so
/// keys stored by an older producer still match their retries. A cart is marked by a 0x01
/// byte, which no product id can start with (ids have no control characters), then its line
/// count and lines.
fn request_hash(route: &str, orders: &[NewOrder]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    let line = |hasher: &mut Sha256, line: &Line| {
        for part in [line.product_id.as_bytes(), b"\0"] {
            hasher.update(part);
        }
        hasher.update(line.quantity.to_le_bytes());
        hasher.update(line.amount_cents.to_le_bytes());
    };
    for order in orders {
        for part in [order.customer_id.as_bytes(), b"\0"] {
            hasher.update(part);
        }
        match &order.lines {
            Lines::One(one) => line(&mut hasher, one),
            Lines::Cart(lines) => {
                hasher.update([1_u8]);
                hasher.update((lines.len() as u32).to_le_bytes());
                for each in lines {
                    line(&mut hasher, each);
                }
            }
        }
        // Only when present: keys stored before holds existed keep their hashes.
        if let Some(hold) = order.hold_seconds {
            hasher.update(b"hold");
            hasher.update(hold.to_le_bytes());
        }
    }
    hasher.finalize().to_vec()
}

/// Deletes keys older than `ttl`, every hour. A retry after that creates new orders.
pub fn spawn_expiry(pool: Pool, ttl: Duration) {
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        loop {
            hourly.tick().await;
            let Ok(client) = pool.get().await else { continue };
            let seconds = ttl.as_secs_f64();
            match client
                .execute("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)", &[&seconds])
                .await
            {
                Ok(deleted) if deleted > 0 => tracing::info!(deleted, "expired idempotency keys"),
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %Chain(&error), "idempotency key expiry failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_line_order_hashes_as_before_carts_and_a_cart_differs() {
        // The hash of this order as the producer computed it before carts existed.
        let mut before = Sha256::new();
        for part in [b"/order".as_slice(), b"C1", b"\0", b"P1", b"\0"] {
            before.update(part);
        }
        before.update(3_i32.to_le_bytes());
        before.update(1050_i64.to_le_bytes());
        let single = NewOrder::single("C1", "P1", 3, 1050);
        assert_eq!(request_hash("/order", std::slice::from_ref(&single)), before.finalize().to_vec());

        let line = |p: &str| Line { product_id: p.into(), quantity: 3, amount_cents: 1050 };
        let cart = NewOrder { customer_id: "C1".into(), lines: Lines::Cart(vec![line("P1"), line("P2")]), hold_seconds: None };
        let swapped = NewOrder { customer_id: "C1".into(), lines: Lines::Cart(vec![line("P2"), line("P1")]), hold_seconds: None };
        let two_orders = [NewOrder::single("C1", "P1", 3, 1050), NewOrder::single("C1", "P2", 3, 1050)];
        let hashes = [
            request_hash("/order", &[single]),
            request_hash("/order", &[cart]),
            request_hash("/order", &[swapped]),
            request_hash("/order", &two_orders),
        ];
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(hashes[i], hashes[j], "{i} and {j}");
            }
        }
    }
}
