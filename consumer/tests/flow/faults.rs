use std::time::Duration;

use crate::support::{message, placed_cart, placed_order, Stack};

/// An ops person's manual UPDATE holds PROD004's row lock in an open transaction. The
/// consumer's NOWAIT attempts conflict and are retried; nothing is processed for that
/// product meanwhile, nothing is rejected for it, and everything lands after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_held_row_lock_delays_but_never_loses_or_rejects() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD004", 1000).await;
    let mut ops = stack.pool.get().await.unwrap();
    let manual = ops.transaction().await.unwrap();
    manual
        .execute("UPDATE inventory SET product_name = product_name WHERE product_id = 'PROD004'", &[])
        .await
        .unwrap();

    let consumer = stack.start_consumer(|_| {}).await;
    let orders: Vec<_> = (0..200).map(|i| placed_order(&format!("C{i}"), "PROD004", 1)).collect();
    stack.publish_raw(&stack.kafka_producer(), &orders.iter().map(message).collect::<Vec<_>>()).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(stack.order_count().await, 0, "no order of the locked product is written while the lock is held");
    let conflicts = consumer.stats.totals().lock_conflicts;
    assert!(conflicts > 0, "the consumer kept trying");

    manual.rollback().await.unwrap();
    stack.wait_for_orders(200, Duration::from_secs(30)).await;
    assert_eq!(stack.status_counts("PROD004").await, (200, 0, 0), "all reserved, none wrongly rejected");
    stack.assert_invariants().await;
    consumer.stop().await;
}

/// One worker, so that every product of a batch is in one part. While PROD004's row is held
/// elsewhere, the part's other components go ahead (`Locking::Available`): PROD005's orders
/// land at once. A cart over PROD004 and PROD006 waits with PROD004, and so does every later
/// order on PROD006, so each product's orders still apply in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_stops_only_its_own_component_of_a_part() {
    let stack = Stack::start(1).await;
    for product in ["PROD004", "PROD005", "PROD006"] {
        stack.set_stock(product, 1000).await;
    }
    let mut ops = stack.pool.get().await.unwrap();
    let manual = ops.transaction().await.unwrap();
    manual
        .execute("UPDATE inventory SET product_name = product_name WHERE product_id = 'PROD004'", &[])
        .await
        .unwrap();

    let mut orders: Vec<_> = (0..50).map(|i| placed_order(&format!("C{i}"), "PROD004", 1)).collect();
    orders.extend((0..50).map(|i| placed_order(&format!("D{i}"), "PROD005", 1)));
    orders.push(placed_cart("E", &[("PROD004", 1), ("PROD006", 1)]));
    orders.extend((0..10).map(|i| placed_order(&format!("F{i}"), "PROD006", 1)));
    stack.publish_raw(&stack.kafka_producer(), &orders.iter().map(message).collect::<Vec<_>>()).await;
    // Started after the publish, with a long batch wait: all 111 messages in one batch.
    let consumer = stack
        .start_consumer(|settings| {
            settings.batch.workers = 1;
            settings.batch.max_wait_ms = 1000;
        })
        .await;

    stack.wait_for_orders(50, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.status_counts("PROD005").await, (50, 0, 0), "the free product's orders went ahead");
    assert_eq!(stack.order_count().await, 50, "the held product, the cart linking it and PROD006 behind the cart all wait");
    assert!(consumer.stats.totals().lock_conflicts > 0);

    manual.rollback().await.unwrap();
    stack.wait_for_orders(111, Duration::from_secs(30)).await;
    assert_eq!(stack.status_counts("PROD004").await, (50, 0, 0));
    let reserved_006: i64 = stack
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT reserved_quantity FROM inventory WHERE product_id = 'PROD006'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reserved_006, 11, "the cart's line and the ten orders behind it");
    stack.assert_invariants().await;
    consumer.stop().await;
}

/// The outcome of every asynchronous offset commit comes back to the consumer's
/// commit_callback (async_commit.rs; rust-rdkafka's own async commit never reported it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_of_each_async_offset_commit_is_reported() {
    use std::sync::atomic::Ordering;
    use orderflow_consumer::async_commit::{ACCEPTED, REFUSED};

    let stack = Stack::start(2).await;
    stack.set_stock("PROD004", 1000).await;
    let consumer = stack.start_consumer(|_| {}).await;
    let orders: Vec<_> = (0..100).map(|i| placed_order(&format!("C{i}"), "PROD004", 1)).collect();
    stack.publish_raw(&stack.kafka_producer(), &orders.iter().map(message).collect::<Vec<_>>()).await;
    stack.wait_for_orders(100, Duration::from_secs(30)).await;
    orderflow_common::testing::eventually(Duration::from_secs(10), "an offset commit reported back", || async {
        (ACCEPTED.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    assert_eq!(REFUSED.load(Ordering::Relaxed), 0, "no rebalance here, so no commit is refused");
    consumer.stop().await;
}
