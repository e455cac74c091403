use std::time::Duration;

use serde_json::Value;

use orderflow_common::testing::eventually;

use crate::support::{message, placed_order, Stack};

/// A permanent database error, here a CHECK constraint one order violates, is loud and
/// never skips an order: /ready is 503 naming the SQLSTATE and the constraint, the metrics
/// show it, and the stuck batch is neither written nor committed past. It stays stuck
/// longer than max.poll.interval.ms without this member leaving the group (fetching paused,
/// polling on). Once the constraint is dropped, every order is applied exactly once, by
/// the same member, including those published while it was stuck, and /ready is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_loud_and_the_batch_goes_through_once_it_is_fixed() {
    let stack = Stack::start(2).await;
    stack.set_stock("PROD001", 100).await;
    stack.execute("ALTER TABLE orders ADD CONSTRAINT no_poison CHECK (customer_id <> 'POISON')").await;
    let mut orders: Vec<_> = (0..20).map(|i| placed_order(&format!("C{i}"), "PROD001", 1)).collect();
    orders.insert(10, placed_order("POISON", "PROD001", 1));
    stack.publish_raw(&stack.kafka_producer(), &orders.iter().map(message).collect::<Vec<_>>()).await;

    let consumer = stack
        .start_consumer(|s| {
            s.batch.permanent_retry_ms = 200;
            // librdkafka's minimum is the session timeout (3 s here); fetching pauses after 400 ms.
            s.group.max_poll_interval_ms = 4000;
        })
        .await;
    let ready: Value = eventually(Duration::from_secs(30), "/ready to turn 503", || async {
        let (status, body) = consumer.admin_get("/ready").await;
        (status == 503).then(|| serde_json::from_str(&body).unwrap())
    })
    .await;
    assert_eq!(ready["writes"]["ok"], false, "{ready}");
    assert_eq!(ready["writes"]["sqlstate"], "23514", "{ready}");
    let error = ready["writes"]["error"].as_str().unwrap();
    assert!(error.contains("23514") && error.contains("no_poison"), "the error is named in full: {error}");
    assert_eq!((ready["kafka"]["ok"].clone(), ready["database"]["ok"].clone()), (Value::Bool(true), Value::Bool(true)));
    assert_eq!(consumer.metric("consumer_writes_stuck").await, Some(1.0));

    // Orders arriving while stuck wait behind the stuck batch (fetching is paused; any
    // already fetched are kept for the next batch).
    let later: Vec<_> = (0..10).map(|i| placed_order(&format!("L{i}"), "PROD002", 1)).collect();
    stack.publish_raw(&stack.kafka_producer(), &later.iter().map(message).collect::<Vec<_>>()).await;

    // Stuck for longer than max.poll.interval.ms: nothing more is written, nothing skipped.
    let written = stack.order_count().await;
    assert!(written < 21);
    let errors_before = consumer.metric(r#"consumer_permanent_errors_total{sqlstate="23514"}"#).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(stack.order_count().await, written, "the order count does not move while stuck");
    let errors_after = consumer.metric(r#"consumer_permanent_errors_total{sqlstate="23514"}"#).await.unwrap();
    assert!(errors_after > errors_before, "retried slowly and counted: {errors_before} -> {errors_after}");
    assert_eq!(consumer.admin_get("/ready").await.0, 503);

    stack.execute("ALTER TABLE orders DROP CONSTRAINT no_poison").await;
    stack.wait_for_orders(31, Duration::from_secs(30)).await;
    assert_eq!(stack.status_counts("PROD001").await, (21, 0, 0));
    assert_eq!(stack.status_counts("PROD002").await.0, 10);
    stack.assert_invariants().await;
    eventually(Duration::from_secs(10), "/ready to be 200 again", || async { (consumer.admin_get("/ready").await.0 == 200).then_some(()) }).await;
    assert_eq!(consumer.metric("consumer_writes_stuck").await, Some(0.0));
    // Had the loop not polled while stuck, librdkafka would have left the group (and
    // reported it at the next poll, right after the write): the partitions would have been
    // revoked and the batch read again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(consumer.metric(r#"kafka_consumer_errors_total{code="PollExceeded"}"#).await, None, "max.poll.interval.ms was never exceeded");
    assert_eq!(consumer.stats.totals().already_applied, 0, "no redelivery: the member kept its partitions");
    consumer.stop().await;
}
