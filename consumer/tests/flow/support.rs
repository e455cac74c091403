use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use orderflow_common::config::KafkaSettings;
use orderflow_common::db;
use orderflow_common::command::{CommandKind, OrderCommand};
use orderflow_common::events::OrderEvent;
use orderflow_common::order::{Line, Lines, NewOrder, PlacedOrder};
use orderflow_common::testing::{eventually, TestBroker, TestDatabase};
use orderflow_consumer::stats::Stats;
use orderflow_consumer::supervision::RunError;
use orderflow_consumer::{Application, Settings};

pub const TOPIC: &str = "orders-placed";
pub use orderflow_common::events::EVENTS_TOPIC;

pub struct Stack {
    pub broker: TestBroker,
    pub pool: Pool,
    pub database: TestDatabase,
    /// The orders topic and the dead-letter topic under this test's names (see `TestBroker::name`).
    pub topic: String,
    pub dead_letter_topic: String,
    /// `order-events` under this test's name; one partition, so `read_topic` sees it all.
    pub events_topic: String,
}

impl Stack {
    /// A broker with `partitions` on the orders topic and a migrated, seeded database.
    pub async fn start(partitions: i32) -> Self {
        Self::on(TestBroker::start(&Self::topics(partitions)).await).await
    }

    /// Like `start`, but always on a mock cluster of the test's own (mock-only behaviour).
    pub async fn start_on_mock(partitions: i32) -> Self {
        Self::on(TestBroker::mock(&Self::topics(partitions)).await).await
    }

    fn topics(partitions: i32) -> [(String, i32); 3] {
        [(TOPIC.into(), partitions), (orderflow_common::DEAD_LETTER_TOPIC.into(), 1), (EVENTS_TOPIC.into(), 1)]
    }

    async fn on(broker: TestBroker) -> Self {
        let database = TestDatabase::create().await;
        let pool = db::pool(&database.settings()).unwrap();
        db::migrate(&pool).await.unwrap();
        let (topic, dead_letter_topic) = (broker.name(TOPIC), broker.name(orderflow_common::DEAD_LETTER_TOPIC));
        let events_topic = broker.name(EVENTS_TOPIC);
        Self { broker, pool, database, topic, dead_letter_topic, events_topic }
    }

    pub fn kafka(&self) -> KafkaSettings {
        self.broker.kafka_settings()
    }

    /// A consumer group id for this test (`base` in production).
    pub fn group(&self, base: &str) -> String {
        self.broker.name(base)
    }

    pub fn consumer_settings(&self) -> Settings {
        let mut settings = Settings::new(self.kafka(), self.database.settings());
        settings.group.group_id = self.group(&settings.group.group_id);
        settings.dead_letter_topic = self.dead_letter_topic.clone();
        settings.holds.events_topic = self.events_topic.clone();
        settings.group.session_timeout_ms = 3000;
        settings.batch.max_wait_ms = 10;
        settings
    }

    /// The environment of a consumer binary on this stack: database, broker, topics, group.
    pub fn consumer_env(&self) -> Vec<(&'static str, String)> {
        let settings = self.consumer_settings();
        let extra: Vec<String> = settings.kafka.extra.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        vec![
            ("DATABASE_URL", self.database.url.clone()),
            ("KAFKA_BROKERS", settings.kafka.brokers),
            ("KAFKA_TOPIC", settings.kafka.topic),
            ("KAFKA_CONFIG", extra.join(",")),
            ("KAFKA_GROUP_ID", settings.group.group_id),
            ("DEAD_LETTER_TOPIC", settings.dead_letter_topic),
            ("ORDER_EVENTS_TOPIC", settings.holds.events_topic),
        ]
    }

    pub async fn start_consumer(&self, customize: impl FnOnce(&mut Settings)) -> RunningConsumer {
        let mut settings = self.consumer_settings();
        customize(&mut settings);
        let app = Application::build(settings).await.expect("consumer starts");
        let (shutdown, stats, admin_port) = (app.shutdown_token(), app.stats(), app.admin_port());
        RunningConsumer { shutdown, stats, admin_port, task: tokio::spawn(app.run_until_stopped()) }
    }

    pub async fn set_stock(&self, product: &str, quantity: i64) {
        self.pool
            .get()
            .await
            .unwrap()
            .execute(
                "UPDATE inventory SET available_quantity = $2, reserved_quantity = 0, total_quantity = $2, \
                        sold_quantity = 0, received_quantity = $2 \
                 WHERE product_id = $1",
                &[&product, &quantity],
            )
            .await
            .unwrap();
    }

    pub async fn execute(&self, sql: &str) {
        self.pool.get().await.unwrap().batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    pub async fn order_count(&self) -> i64 {
        self.pool.get().await.unwrap().query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0)
    }

    pub async fn wait_for_orders(&self, expected: i64, timeout: Duration) {
        eventually(timeout, &format!("{expected} orders in the database"), || async {
            (self.order_count().await >= expected).then_some(())
        })
        .await;
        assert_eq!(self.order_count().await, expected, "no more orders than were sent");
    }

    /// Every inventory row adds up (received = available + reserved + sold), what it holds
    /// reserved is exactly the sum of the lines of its reserved orders and what it sold the
    /// sum of the lines of its confirmed ones, carts included (the `order_items` view): an
    /// order applied twice, a hold released twice, stock moved for an order that did not
    /// change, or a cart that moved some lines but not others breaks one of them. Also: every
    /// cart has exactly its line_count lines.
    pub async fn assert_invariants(&self) {
        let client = self.pool.get().await.unwrap();
        let broken = client
            .query(
                "SELECT i.product_id, i.available_quantity, i.reserved_quantity, i.total_quantity, i.sold_quantity, i.received_quantity, \
                        coalesce(sum(o.quantity) FILTER (WHERE o.status = 'reserved'), 0)::bigint AS reserved_lines, \
                        coalesce(sum(o.quantity) FILTER (WHERE o.status = 'confirmed'), 0)::bigint AS confirmed_lines \
                 FROM inventory i LEFT JOIN order_items o ON o.product_id = i.product_id \
                 GROUP BY i.product_id \
                 HAVING i.available_quantity < 0 OR i.reserved_quantity < 0 OR i.sold_quantity < 0 \
                     OR i.available_quantity + i.reserved_quantity <> i.total_quantity \
                     OR i.available_quantity + i.reserved_quantity + i.sold_quantity <> i.received_quantity \
                     OR i.reserved_quantity <> coalesce(sum(o.quantity) FILTER (WHERE o.status = 'reserved'), 0) \
                     OR i.sold_quantity <> coalesce(sum(o.quantity) FILTER (WHERE o.status = 'confirmed'), 0)",
                &[],
            )
            .await
            .unwrap();
        let broken: Vec<String> = broken.iter().map(|row| format!("{row:?}")).collect();
        assert!(broken.is_empty(), "inventory invariants broken: {broken:?}");
        let carts = client
            .query(
                "SELECT o.order_id, o.line_count, count(l.line_no) FROM orders o LEFT JOIN order_lines l USING (order_id) \
                 GROUP BY o.order_id HAVING (o.line_count > 1 AND count(l.line_no) <> o.line_count) \
                     OR (o.line_count = 1 AND count(l.line_no) > 0)",
                &[],
            )
            .await
            .unwrap();
        assert!(carts.is_empty(), "orders whose lines do not match their line_count: {carts:?}");
        let reserved_with_problems: i64 = client
            .query_one("SELECT count(*) FROM order_items WHERE status = 'reserved' AND problem IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(reserved_with_problems, 0, "a reserved cart has a line marked short");
    }

    pub async fn status_counts(&self, product: &str) -> (i64, i64, i64) {
        let row = self
            .pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'reserved'), \
                        count(*) FILTER (WHERE status = 'rejected' AND reason = 'insufficient_stock'), \
                        count(*) FILTER (WHERE status = 'rejected' AND reason <> 'insufficient_stock') \
                 FROM orders WHERE product_id = $1",
                &[&product],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    pub fn kafka_producer(&self) -> FutureProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// Publishes raw payloads as a broken or test client would, bypassing the API.
    pub async fn publish_raw(&self, producer: &FutureProducer, messages: &[(String, Vec<u8>)]) {
        let sends = messages.iter().map(|(key, payload)| {
            producer.send(FutureRecord::to(&self.topic).key(key.as_bytes()).payload(payload), Timeout::After(Duration::from_secs(10)))
        });
        for result in futures::future::join_all(sends).await {
            result.expect("broker acknowledged");
        }
    }
}

impl Stack {
    /// The events of `order-events` so far, waiting up to `timeout` for at least `at_least`.
    pub async fn read_events(&self, at_least: usize, timeout: Duration) -> Vec<OrderEvent> {
        read_topic_for(self.broker.bootstrap_servers(), self.events_topic.clone(), at_least, timeout)
            .await
            .into_iter()
            .map(|(_, payload, _)| serde_json::from_slice(&payload.expect("events have payloads")).expect("events parse"))
            .collect()
    }

    /// Waits until `order-events` holds an event with each of `ids`; returns all events.
    pub async fn wait_for_event_ids(&self, ids: &[Uuid], timeout: Duration) -> Vec<OrderEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Everything there is: the topic may hold more than these events.
            let events = self.read_events(usize::MAX, Duration::from_millis(1500)).await;
            let seen: std::collections::HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
            let missing: Vec<&Uuid> = ids.iter().filter(|id| !seen.contains(id)).collect();
            if missing.is_empty() {
                return events;
            }
            assert!(tokio::time::Instant::now() < deadline, "events missing after {timeout:?}: {} of {}, e.g. {:?}", missing.len(), ids.len(), missing[0]);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The API on this stack's broker and database; returns its base URL.
    pub async fn start_api(&self) -> String {
        let producer = orderflow_producer::Application::build(orderflow_producer::Settings::new(self.kafka(), self.database.settings()))
            .await
            .expect("producer starts");
        let base = format!("http://127.0.0.1:{}", producer.port());
        tokio::spawn(producer.run_until_stopped());
        base
    }

    pub async fn publish_command(&self, producer: &FutureProducer, command: &OrderCommand) {
        let payload = serde_json::to_vec(command).unwrap();
        self.publish_raw(producer, &[(command.customer_id.clone(), payload)]).await;
    }
}

/// A consumer for the lifecycle tests: a fast sweeper and relay, quick permanent retries.
/// One single-unit order per product, as the worker pool gets them from a batch.
pub fn one_order_each(products: &[&str]) -> Vec<orderflow_common::command::Inbound> {
    products
        .iter()
        .map(|product| {
            let lines = Lines::One(Line { product_id: (*product).into(), quantity: 1, amount_cents: 100 });
            orderflow_common::command::Inbound::Order(orderflow_common::order::ValidOrder {
                order_id: Uuid::now_v7(),
                customer_id: "C1".into(),
                lines,
                placed_at: Utc::now(),
                hold_seconds: None,
            })
        })
        .collect()
}

pub fn fast_holds(settings: &mut Settings) {
    settings.holds.sweep_interval_ms = 100;
    settings.holds.outbox_relay_interval_ms = 200;
    settings.batch.permanent_retry_ms = 200;
}

pub fn command(kind: CommandKind, order: &PlacedOrder) -> OrderCommand {
    OrderCommand { command: kind, command_id: Uuid::now_v7(), order_id: order.order_id, customer_id: order.customer_id.clone(), issued_at: Utc::now() }
}

pub fn placed_order(customer: &str, product: &str, quantity: i32) -> PlacedOrder {
    PlacedOrder::new(NewOrder::single(customer, product, quantity, 1999), Uuid::now_v7(), Utc::now())
}

/// A cart of `(product, quantity)` lines, 2 or more, products distinct.
pub fn placed_cart(customer: &str, lines: &[(&str, i32)]) -> PlacedOrder {
    assert!(lines.len() > 1, "a cart has two lines or more");
    let lines = lines.iter().map(|(product, quantity)| Line { product_id: (*product).into(), quantity: *quantity, amount_cents: 250 }).collect();
    PlacedOrder::new(NewOrder { customer_id: customer.into(), lines: Lines::Cart(lines), hold_seconds: None }, Uuid::now_v7(), Utc::now())
}

pub fn message(order: &PlacedOrder) -> (String, Vec<u8>) {
    (order.customer_id.clone(), serde_json::to_vec(order).unwrap())
}

pub struct RunningConsumer {
    pub admin_port: u16,
    pub shutdown: CancellationToken,
    pub stats: Arc<Stats>,
    pub task: JoinHandle<Result<(), RunError>>,
}

impl RunningConsumer {
    /// Stops as SIGTERM would and waits for the final commit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("consumer stops in time").unwrap();
        outcome.expect("consumer stops cleanly");
    }

    /// GET on the admin server: status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://127.0.0.1:{}{path}", self.admin_port)).await.expect("admin server answers");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// One series' value from /metrics, e.g. `consumer_lag{partition="0"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines().find_map(|line| line.rsplit_once(' ').filter(|(name, _)| *name == series).and_then(|(_, value)| value.parse().ok()))
    }

    pub async fn wait_processed(&self, expected: u64, timeout: Duration) {
        eventually(timeout, &format!("consumer to process {expected} messages"), || async {
            (self.stats.totals().processed >= expected).then_some(())
        })
        .await;
    }
}

/// Every message of a one-partition topic, from the beginning: (key, payload, headers).
pub async fn read_topic(bootstrap: String, topic: String, expected: usize) -> Vec<(Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, String)>)> {
    read_topic_for(bootstrap, topic, expected, Duration::from_secs(20)).await
}

/// `read_topic`, giving up after `timeout` with what it found.
pub async fn read_topic_for(
    bootstrap: String,
    topic: String,
    expected: usize,
    timeout: Duration,
) -> Vec<(Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, String)>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "orderflow-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning).unwrap();
        consumer.assign(&list).unwrap();
        let deadline = std::time::Instant::now() + timeout;
        let mut found = Vec::new();
        while found.len() < expected && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                let headers = message
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
                    .unwrap_or_default();
                found.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec), headers));
            }
        }
        found
    })
    .await
    .unwrap()
}

/// Waits for a process that is expected to end within `within` (a fault switch aborts it,
/// or a signal stops it); SIGKILLs it and fails the test if it does not.
pub async fn wait_exit(mut child: std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the consumer did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub use orderflow_common::testing::stop;
