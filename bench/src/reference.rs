//! The two references, run on the same PostgreSQL in scratch databases:
//! the per-order design most order systems use, and the set-based ceiling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_postgres::Pool;
use rand::Rng;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use orderflow_common::command::Inbound;
use orderflow_common::order::{Line, Lines, ValidOrder};
use orderflow_consumer::stats::Stats;
use orderflow_consumer::worker_pool::WorkerPool;

use crate::workload::Order;

/// The classic design: each worker takes one order at a time and runs
/// BEGIN; SELECT ... FOR UPDATE NOWAIT; UPDATE inventory; INSERT order; COMMIT,
/// retrying lock conflicts with a short jittered pause. Returns the wall-clock time.
pub async fn per_order(pool: &Pool, orders: &[Order], workers: usize) -> anyhow::Result<Duration> {
    let orders = Arc::new(orders.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (pool, orders, next) = (pool.clone(), orders.clone(), next.clone());
            tokio::spawn(async move {
                let mut client = pool.get().await?;
                loop {
                    let Some(order) = orders.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok(()) };
                    let order_id = Uuid::now_v7();
                    while let Err(error) = place_one(&mut client, order, order_id).await {
                        if error.code() != Some(&SqlState::LOCK_NOT_AVAILABLE) {
                            return Err(anyhow::Error::from(error));
                        }
                        let pause = rand::rng().random_range(0..2000);
                        tokio::time::sleep(Duration::from_micros(pause)).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

async fn place_one(client: &mut deadpool_postgres::Object, order: &Order, order_id: Uuid) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    let lock = transaction
        .prepare_cached("SELECT available_quantity FROM inventory WHERE product_id = $1 FOR UPDATE NOWAIT")
        .await?;
    let line = order.single();
    let available: Option<i64> = transaction.query_opt(&lock, &[&line.product_id]).await?.map(|row| row.get(0));
    let (status, reason) = match available {
        None => ("rejected", Some("unknown_product")),
        Some(available) if available < line.quantity => ("rejected", Some("insufficient_stock")),
        Some(_) => {
            let update = transaction
                .prepare_cached(
                    "UPDATE inventory SET available_quantity = available_quantity - $2, \
                     reserved_quantity = reserved_quantity + $2, updated_at = now() WHERE product_id = $1",
                )
                .await?;
            transaction.execute(&update, &[&line.product_id, &line.quantity]).await?;
            ("reserved", None)
        }
    };
    let insert = transaction
        .prepare_cached(
            "INSERT INTO orders (order_id, customer_id, product_id, quantity, amount, status, reason, created_at, processed_at) \
             VALUES ($1, $2, $3, $4, ($5::float8)::numeric(12, 2), $6, $7, clock_timestamp(), clock_timestamp())",
        )
        .await?;
    let quantity = line.quantity as i32;
    transaction
        .execute(&insert, &[&order_id, &order.customer_id, &line.product_id, &quantity, &line.amount, &status, &reason])
        .await?;
    transaction.commit().await
}

/// The ceiling: the same orders written straight into PostgreSQL with the consumer's own
/// set-based transaction (sorted row locks once per batch, unnest insert, one UPDATE for all
/// products), split among `workers` by product. No HTTP, no Kafka.
pub async fn set_based(pool: &Pool, orders: &[Order], chunk: usize, workers: usize) -> anyhow::Result<Duration> {
    let writer = WorkerPool::new(pool.clone(), workers, Arc::new(Stats::default()));
    let never = CancellationToken::new();
    let started = Instant::now();
    for chunk in orders.chunks(chunk) {
        let batch: Vec<Inbound> = chunk
            .iter()
            .map(|order| {
                let line = order.single();
                let line = Line { product_id: line.product_id.clone(), quantity: line.quantity as i32, amount_cents: (line.amount * 100.0).round() as i64 };
                Inbound::Order(ValidOrder {
                    order_id: Uuid::now_v7(),
                    customer_id: order.customer_id.clone(),
                    lines: Lines::One(line),
                    placed_at: Utc::now(),
                    hold_seconds: None,
                })
            })
            .collect();
        writer.write(&batch, &never).await.map_err(|_| anyhow::anyhow!("set-based write abandoned"))?;
    }
    Ok(started.elapsed())
}
