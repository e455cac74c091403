use std::time::Duration;

use serde_json::json;

use crate::support::{message, placed_order, Stack};

/// A broken client writing straight to the topic: garbage, wrong JSON and schema-invalid
/// orders sit between good ones on the same partition. The bad ones are skipped and
/// counted; the good ones around them are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_are_skipped_and_do_not_stop_the_partition() {
    let stack = Stack::start(1).await;
    let good: Vec<_> = (0..3).map(|_| placed_order("SAME-CUSTOMER", "PROD002", 1)).collect();
    let mut invalid_quantity = serde_json::to_value(placed_order("SAME-CUSTOMER", "PROD002", 1)).unwrap();
    invalid_quantity["quantity"] = json!(0);
    let key = || "SAME-CUSTOMER".to_owned();
    let messages = vec![
        message(&good[0]),
        (key(), b"\x00\xffnot json at all".to_vec()),
        (key(), br#"{"hello": "world"}"#.to_vec()),
        message(&good[1]),
        (key(), serde_json::to_vec(&invalid_quantity).unwrap()),
        (key(), Vec::new()),
        message(&good[2]),
    ];
    let producer = stack.kafka_producer();
    stack.publish_raw(&producer, &messages).await;

    let consumer = stack.start_consumer(|_| {}).await;
    consumer.wait_processed(7, Duration::from_secs(30)).await;
    stack.wait_for_orders(3, Duration::from_secs(10)).await;
    let totals = consumer.stats.totals();
    assert_eq!((totals.reserved, totals.failed), (3, 4));
    stack.assert_invariants().await;
    consumer.stop().await;
}
