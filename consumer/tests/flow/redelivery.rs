use std::time::Duration;

use crate::support::{message, placed_order, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_delivered_twice_changes_nothing_the_second_time() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD005", 10).await;
    let order = placed_order("CUST-DUP", "PROD005", 4);
    let producer = stack.kafka_producer();
    // Twice in a row (likely one batch), then again after a pause (a later batch).
    stack.publish_raw(&producer, &[message(&order), message(&order)]).await;
    let consumer = stack.start_consumer(|_| {}).await;
    consumer.wait_processed(2, Duration::from_secs(30)).await;
    stack.publish_raw(&producer, &[message(&order)]).await;
    consumer.wait_processed(3, Duration::from_secs(30)).await;

    assert_eq!(stack.order_count().await, 1);
    assert_eq!(stack.status_counts("PROD005").await, (1, 0, 0));
    stack.assert_invariants().await;
    let totals = consumer.stats.totals();
    assert_eq!((totals.reserved, totals.already_applied), (1, 2), "both redeliveries recognised, none applied");
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_everything_from_offset_zero_changes_nothing() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD006", 150).await;
    let orders: Vec<_> = (0..400).map(|i| placed_order(&format!("C{}", i % 37), "PROD006", 1 + i % 2)).collect();
    let producer = stack.kafka_producer();
    stack.publish_raw(&producer, &orders.iter().map(message).collect::<Vec<_>>()).await;

    let first = stack.start_consumer(|s| s.batch.max_messages = 64).await;
    stack.wait_for_orders(400, Duration::from_secs(60)).await;
    first.stop().await;
    let before = snapshot(&stack).await;

    // A new group starts from the earliest offset: every batch is delivered again.
    let replay = stack
        .start_consumer(|s| {
            s.group.group_id = stack.group("orderflow-replay");
            s.batch.max_messages = 64;
        })
        .await;
    replay.wait_processed(400, Duration::from_secs(60)).await;
    let totals = replay.stats.totals();
    assert_eq!((totals.already_applied, totals.reserved, totals.rejected), (400, 0, 0));
    assert_eq!(snapshot(&stack).await, before);
    stack.assert_invariants().await;
    replay.stop().await;
}

/// Inventory and orders as text, timestamps included: equal means nothing was touched.
async fn snapshot(stack: &Stack) -> String {
    let client = stack.pool.get().await.unwrap();
    let inventory: String = client
        .query_one("SELECT string_agg(i::text, ';' ORDER BY product_id) FROM inventory i", &[])
        .await
        .unwrap()
        .get(0);
    let orders: String = client
        .query_one("SELECT string_agg(o::text, ';' ORDER BY order_id) FROM orders o", &[])
        .await
        .unwrap()
        .get(0);
    format!("{inventory}\n{orders}")
}
