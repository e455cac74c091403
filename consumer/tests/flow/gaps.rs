//! Gaps in the log: data the broker dropped before the group consumed it must stop that
//! partition, loudly, until an operator acknowledges the loss.
//!
//! The mock broker keeps about 5 MiB per partition and drops the oldest message sets past
//! that. Valid orders are at most a few hundred bytes, so the filler here is valid orders
//! padded with JSON whitespace to 256 KiB each: 30 of them overflow a partition, and every
//! message that survives is still an order that reaches PostgreSQL, so counts are exact.
//! So these tests always run on a mock of their own, even with ORDERFLOW_TEST_KAFKA_BROKERS.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::Value;

use orderflow_common::testing::eventually;

use crate::support::{message, placed_order, Stack, TOPIC};

const TOKEN: &str = "gap-t0ken";
const PADDED_BYTES: usize = 256 * 1024;
const FILLER: usize = 30;

/// A valid order message of about `PADDED_BYTES`: whitespace between JSON tokens is allowed.
fn padded(customer: &str) -> Vec<u8> {
    let (_, payload) = message(&placed_order(customer, "PROD001", 1));
    let mut padded = Vec::with_capacity(PADDED_BYTES + payload.len());
    padded.push(b'{');
    padded.resize(PADDED_BYTES, b' ');
    padded.extend_from_slice(&payload[1..]);
    padded
}

fn small(customer: &str) -> Vec<u8> {
    message(&placed_order(customer, "PROD001", 1)).1
}

/// Publishes to one partition, one message at a time, so each is its own message set and
/// the broker drops them one by one.
async fn publish(producer: &FutureProducer, partition: i32, payloads: impl IntoIterator<Item = Vec<u8>>) {
    for payload in payloads {
        producer
            .send(FutureRecord::<(), _>::to(TOPIC).partition(partition).payload(&payload), Timeout::After(Duration::from_secs(10)))
            .await
            .expect("broker acknowledged");
    }
}

/// (log start, end) of a partition, as the broker reports them.
async fn watermarks(stack: &Stack, partition: i32) -> (i64, i64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let bootstrap = stack.broker.bootstrap_servers();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "orderflow-test-watermarks")
            .create()
            .unwrap();
        consumer.fetch_watermarks(TOPIC, partition, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap()
}

/// The offset the consumers' group has committed on a partition, if any.
async fn committed(stack: &Stack, partition: i32) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let bootstrap = stack.broker.bootstrap_servers();
    let group = stack.consumer_settings().group.group_id;
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(TOPIC, partition);
        let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
        committed.find_partition(TOPIC, partition).and_then(|element| element.offset().to_raw()).filter(|offset| *offset >= 0)
    })
    .await
    .unwrap()
}

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(port: u16) -> Self {
        Self { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Waits for /status to list `count` open gaps and returns them.
    async fn open_gaps(&self, count: usize) -> Vec<Value> {
        eventually(Duration::from_secs(30), &format!("{count} open gap(s) in /status"), || async {
            let (_, status) = self.get("/status").await;
            let open = status["gaps"]["open"].as_array().cloned().unwrap_or_default();
            (open.len() == count).then_some(open)
        })
        .await
    }
}

/// The metrics recorder is process-wide; nextest runs each test in a process of its own, so
/// the gauge seen here is this test's.
fn gauge_line(partition: i32, missing: i64) -> String {
    format!("consumer_offset_gap_messages{{partition=\"{partition}\"}} {missing}")
}

/// A consumer stops, the broker drops data it had not consumed yet, and the next consumer
/// of the group reports exactly what is missing, applies nothing past it until the gap is
/// acknowledged, then reads on from the log start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_unconsumed_data_stops_the_partition_until_acknowledged() {
    let stack = Stack::start_on_mock(1).await;
    stack.set_stock("PROD001", 1_000_000).await;
    let producer = stack.kafka_producer();

    let first = stack.start_consumer(|s| s.admin_token = Some(TOKEN.into())).await;
    publish(&producer, 0, (0..20).map(|i| small(&format!("C{i}")))).await;
    stack.wait_for_orders(20, Duration::from_secs(30)).await;
    first.stop().await;

    publish(&producer, 0, (0..FILLER).map(|i| padded(&format!("F{i}")))).await;
    publish(&producer, 0, (0..20).map(|i| small(&format!("T{i}")))).await;
    let (log_start, end) = watermarks(&stack, 0).await;
    assert!(log_start > 20, "the broker dropped messages the group had not consumed: log start {log_start}");
    let missing = log_start - 20;

    let second = stack.start_consumer(|s| s.admin_token = Some(TOKEN.into())).await;
    let admin = Admin::new(second.admin_port);
    let open = admin.open_gaps(1).await;
    assert_eq!(open[0]["partition"], 0);
    assert_eq!(open[0]["topic"], TOPIC);
    assert_eq!((open[0]["from"].as_i64(), open[0]["to"].as_i64()), (Some(20), Some(log_start)));
    assert_eq!(open[0]["missing"].as_i64(), Some(missing));

    let (code, ready) = admin.get("/ready").await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["gaps"][0]["partition"], 0);
    assert_eq!(ready["gaps"][0]["missing"].as_i64(), Some(missing));
    assert!(admin.metrics().await.contains(&gauge_line(0, missing)), "gap gauge");

    // Nothing after the gap is applied while it is open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.order_count().await, 20, "no order from past the gap while it is open");

    assert_eq!(admin.post("/gaps/0/acknowledge", None).await.0, 401);
    assert_eq!(admin.post("/gaps/0/acknowledge", Some("wrong")).await.0, 401);
    assert_eq!(admin.post("/gaps/7/acknowledge", Some(TOKEN)).await.0, 404);
    let (code, acknowledged) = admin.post("/gaps/0/acknowledge", Some(TOKEN)).await;
    assert_eq!(code, 200, "{acknowledged}");
    assert_eq!(acknowledged["missing"].as_i64(), Some(missing));
    assert_eq!(admin.post("/gaps/0/acknowledge", Some(TOKEN)).await.0, 404, "acknowledged once");

    stack.wait_for_orders(20 + end - log_start, Duration::from_secs(30)).await;
    stack.assert_invariants().await;
    let (code, ready) = admin.get("/ready").await;
    assert_eq!(code, 200, "{ready}");
    let (_, status) = admin.get("/status").await;
    assert!(status["gaps"]["open"].as_array().unwrap().is_empty());
    let record = &status["gaps"]["acknowledged"][0];
    assert_eq!((record["partition"].as_i64(), record["from"].as_i64(), record["to"].as_i64()), (Some(0), Some(20), Some(log_start)));
    assert_eq!(record["missing"].as_i64(), Some(missing));
    assert!(record["acknowledged_at"].is_string(), "{record}");
    assert!(admin.metrics().await.contains(&gauge_line(0, 0)), "gauge back to 0");
    second.stop().await;

    // The group has moved past the gap for good: its next member finds none.
    let third = stack.start_consumer(|s| s.admin_token = Some(TOKEN.into())).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, ready) = Admin::new(third.admin_port).get("/ready").await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(stack.order_count().await, 20 + end - log_start);
    third.stop().await;
}

/// A new group on a partition whose log no longer starts at 0 has lost [0, log start); the
/// other partition, whose log is complete, is read from 0 meanwhile. Neither /resume nor a
/// pause and resume starts the gapped partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_reports_a_log_that_no_longer_starts_at_zero_and_other_partitions_go_on() {
    let stack = Stack::start_on_mock(2).await;
    stack.set_stock("PROD001", 1_000_000).await;
    let producer = stack.kafka_producer();
    publish(&producer, 0, (0..FILLER).map(|i| padded(&format!("F{i}")))).await;
    publish(&producer, 0, (0..5).map(|i| small(&format!("T{i}")))).await;
    publish(&producer, 1, (0..10).map(|i| small(&format!("P{i}")))).await;
    let (log_start, end) = watermarks(&stack, 0).await;
    assert!(log_start > 0, "the broker dropped the oldest messages of partition 0");
    assert_eq!(watermarks(&stack, 1).await, (0, 10));

    let consumer = stack.start_consumer(|s| s.admin_token = Some(TOKEN.into())).await;
    let admin = Admin::new(consumer.admin_port);
    let open = admin.open_gaps(1).await;
    assert_eq!(open[0]["partition"], 0);
    assert_eq!((open[0]["from"].as_i64(), open[0]["to"].as_i64()), (Some(0), Some(log_start)));
    assert_eq!(open[0]["missing"].as_i64(), Some(log_start));
    assert_eq!(admin.get("/ready").await.0, 503);

    // Partition 1 is not held up by partition 0.
    stack.wait_for_orders(10, Duration::from_secs(30)).await;
    assert_eq!(admin.post("/pause", Some(TOKEN)).await.0, 200);
    assert_eq!(admin.post("/resume", Some(TOKEN)).await.0, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.order_count().await, 10, "/resume does not start a gapped partition");
    assert_eq!(admin.open_gaps(1).await[0]["partition"], 0);

    // Acknowledged while the consumer is paused: the partition stays paused until /resume.
    assert_eq!(admin.post("/pause", Some(TOKEN)).await.0, 200);
    assert_eq!(committed(&stack, 0).await, None);
    assert_eq!(admin.post("/gaps/0/acknowledge", Some(TOKEN)).await.0, 200);
    // Committed by the acknowledgement itself (nothing of partition 0 has been processed),
    // so no other member of the group finds the gap again.
    assert_eq!(committed(&stack, 0).await, Some(log_start));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.order_count().await, 10, "a paused consumer stays paused after an acknowledgement");
    assert_eq!(admin.get("/ready").await.0, 200);
    assert_eq!(admin.post("/resume", Some(TOKEN)).await.0, 200);
    stack.wait_for_orders(10 + end - log_start, Duration::from_secs(30)).await;
    stack.assert_invariants().await;
    consumer.stop().await;
}

/// A running member that falls behind retention (here: paused while the broker drops what
/// it has not read) stops at the gap when it reads on, instead of jumping over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_consumer_that_falls_behind_retention_stops_at_the_gap() {
    let stack = Stack::start_on_mock(1).await;
    stack.set_stock("PROD001", 1_000_000).await;
    let producer = stack.kafka_producer();
    let consumer = stack.start_consumer(|s| s.admin_token = Some(TOKEN.into())).await;
    let admin = Admin::new(consumer.admin_port);
    publish(&producer, 0, (0..20).map(|i| small(&format!("C{i}")))).await;
    stack.wait_for_orders(20, Duration::from_secs(30)).await;
    assert_eq!(admin.post("/pause", Some(TOKEN)).await.0, 200);

    publish(&producer, 0, (0..FILLER).map(|i| padded(&format!("F{i}")))).await;
    publish(&producer, 0, (0..20).map(|i| small(&format!("T{i}")))).await;
    let (log_start, end) = watermarks(&stack, 0).await;
    assert!(log_start > 20, "the broker dropped messages the consumer had not read: log start {log_start}");

    assert_eq!(admin.post("/resume", Some(TOKEN)).await.0, 200);
    let open = admin.open_gaps(1).await;
    assert_eq!((open[0]["from"].as_i64(), open[0]["to"].as_i64()), (Some(20), Some(log_start)));
    assert_eq!(open[0]["missing"].as_i64(), Some(log_start - 20));
    assert_eq!(admin.get("/ready").await.0, 503);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.order_count().await, 20, "nothing past the gap while it is open");

    assert_eq!(admin.post("/gaps/0/acknowledge", Some(TOKEN)).await.0, 200);
    stack.wait_for_orders(20 + end - log_start, Duration::from_secs(30)).await;
    assert_eq!(admin.get("/ready").await.0, 200);
    consumer.stop().await;
}

/// A gap belongs to the partition, not to the member: when a rebalance moves a gapped
/// partition, the old owner stops reporting it and the new owner reports it, until it is
/// acknowledged there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gapped_partition_that_moves_is_reported_by_its_new_owner() {
    let stack = Stack::start_on_mock(2).await;
    stack.set_stock("PROD001", 1_000_000).await;
    let producer = stack.kafka_producer();
    for partition in [0, 1] {
        publish(&producer, partition, (0..FILLER).map(|i| padded(&format!("F{partition}-{i}")))).await;
    }
    let log_starts = [watermarks(&stack, 0).await, watermarks(&stack, 1).await];
    assert!(log_starts.iter().all(|(start, _)| *start > 0), "{log_starts:?}");

    let first = stack.start_consumer(|s| s.admin_token = Some(TOKEN.into())).await;
    let first_admin = Admin::new(first.admin_port);
    assert_eq!(first_admin.open_gaps(2).await.len(), 2);

    let second = stack.start_consumer(|s| s.admin_token = Some(TOKEN.into())).await;
    let second_admin = Admin::new(second.admin_port);
    // Each member owns one partition after the rebalance and reports that partition's gap.
    let (first_gap, second_gap) = (first_admin.open_gaps(1).await, second_admin.open_gaps(1).await);
    let (first_partition, second_partition) = (first_gap[0]["partition"].as_i64().unwrap(), second_gap[0]["partition"].as_i64().unwrap());
    assert_ne!(first_partition, second_partition);
    let moved = second_partition as usize;
    assert_eq!(second_gap[0]["missing"].as_i64(), Some(log_starts[moved].0), "the new owner counts [0, log start)");
    assert_eq!(second_admin.get("/ready").await.0, 503);

    for (admin, partition) in [(&first_admin, first_partition), (&second_admin, second_partition)] {
        let (code, body) = admin.post(&format!("/gaps/{partition}/acknowledge"), Some(TOKEN)).await;
        assert_eq!(code, 200, "{body}");
    }
    let remaining: i64 = log_starts.iter().map(|(start, end)| end - start).sum();
    stack.wait_for_orders(remaining, Duration::from_secs(30)).await;
    assert_eq!(first_admin.get("/ready").await.0, 200);
    assert_eq!(second_admin.get("/ready").await.0, 200);
    first.stop().await;
    second.stop().await;
}
