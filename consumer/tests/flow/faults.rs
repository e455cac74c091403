use std::time::Duration;

use crate::support::{message, placed_order, Stack};

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
