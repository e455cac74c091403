use std::time::Duration;

use serde_json::json;

use orderflow_consumer::dead_letters::{HEADER_ERROR, HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC};

use orderflow_common::testing::eventually;

use crate::support::{message, placed_order, read_topic, Stack};

/// A broken client writing straight to the topic: garbage, wrong JSON and schema-invalid
/// orders sit between good ones on the same partition. The bad ones go to orders-dlq with
/// headers naming the error and their source; the good ones around them are processed.
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

    let letters = read_topic(stack.broker.bootstrap_servers(), stack.dead_letter_topic.clone(), 4).await;
    assert_eq!(letters.len(), 4);
    let header = |headers: &[(String, String)], key: &str| headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let offsets: Vec<String> = letters.iter().map(|(_, _, h)| header(h, HEADER_OFFSET).unwrap()).collect();
    assert_eq!(offsets, ["1", "2", "4", "5"], "dead letters keep their source offsets, in order");
    for (key, _, headers) in &letters {
        assert_eq!(key.as_deref(), Some(&b"SAME-CUSTOMER"[..]));
        assert_eq!(header(headers, HEADER_PARTITION).as_deref(), Some("0"));
        assert_eq!(header(headers, HEADER_TOPIC).as_deref(), Some(stack.topic.as_str()));
        assert!(!header(headers, HEADER_ERROR).unwrap().is_empty());
    }
    assert_eq!(letters[0].1.as_deref(), Some(&b"\x00\xffnot json at all"[..]), "the payload is kept as it arrived");
    assert!(header(&letters[2].2, HEADER_ERROR).unwrap().contains("quantity"));
    consumer.stop().await;
}

/// Letters whose cause was fixed (here: valid orders sitting in the dead-letter topic) are
/// re-emitted once, processed, and a second replay finds nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_once_their_cause_is_fixed() {
    use rdkafka::producer::FutureRecord;
    let stack = Stack::start(2).await;
    let fixed: Vec<_> = (0..3).map(|i| placed_order(&format!("FIXED{i}"), "PROD008", 1)).collect();
    let producer = stack.kafka_producer();
    for order in &fixed {
        let (key, payload) = message(order);
        let record = FutureRecord::to(&stack.dead_letter_topic).key(key.as_bytes()).payload(&payload);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    let settings = stack.consumer_settings();
    let replayed = orderflow_consumer::replay::replay(&settings, None).await.unwrap();
    assert_eq!(replayed, 3);
    assert_eq!(orderflow_consumer::replay::replay(&settings, None).await.unwrap(), 0, "replay resumes after what it did");

    let consumer = stack.start_consumer(|_| {}).await;
    stack.wait_for_orders(3, Duration::from_secs(30)).await;
    assert_eq!(stack.status_counts("PROD008").await, (3, 0, 0));
    consumer.stop().await;
}

/// A letter the dead-letter topic cannot take (larger than its producer's message.max.bytes)
/// is retried every second; the letters of the same batch that went through are not sent
/// again with it. Resending the whole batch put a copy of them in orders-dlq per retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retry_resends_only_the_letters_that_failed() {
    use orderflow_common::testing::topic_message_count;
    let stack = Stack::start(1).await;
    // The orders topic takes what the dead-letter producer (1 MB limit) will refuse.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack.broker.bootstrap_servers())
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    let messages = vec![
        ("K".to_owned(), b"not json 1".to_vec()),
        ("K".to_owned(), vec![b'x'; 1_500_000]),
        ("K".to_owned(), b"not json 2".to_vec()),
    ];
    stack.publish_raw(&producer, &messages).await;

    // One fetch, so one batch, takes all three: the letters that go through must share a
    // batch with the one that does not.
    let consumer = stack
        .start_consumer(|s| {
            s.batch.drain_timeout_ms = 1000;
            s.kafka.extra.0.push(("max.partition.fetch.bytes".into(), "10000000".into()));
        })
        .await;
    let dlq = &stack.dead_letter_topic;
    eventually(Duration::from_secs(30), "two letters in the dead-letter topic", || async {
        (topic_message_count(&stack.broker.bootstrap_servers(), dlq).await >= 2).then_some(())
    })
    .await;
    // Several retries of the refused letter.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(topic_message_count(&stack.broker.bootstrap_servers(), dlq).await, 2, "the two small letters exactly once");
    assert_eq!(consumer.stats.totals().failed, 0, "the batch is not done while a letter is missing");
    consumer.stop().await;
}
