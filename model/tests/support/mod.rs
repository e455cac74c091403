//! Shared by the traced runs of the real consumer binary: a test broker and database, the
//! binary with the protocol trace on, and the traces read back.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use uuid::Uuid;

use orderflow_common::command::{CommandKind, OrderCommand};
use orderflow_common::events::EVENTS_TOPIC;
use orderflow_common::order::{Line, Lines, NewOrder, PlacedOrder};
use orderflow_common::protocol_trace::{self, Record};
use orderflow_common::testing::{TestBroker, TestDatabase};
use orderflow_common::{db, DEAD_LETTER_TOPIC};
use orderflow_model::replay::{validate, ReplayReport};

pub const TOPIC: &str = "orders-placed";

pub fn consumer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let binary = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps").join("consumer");
    assert!(binary.exists(), "{} is missing: `cargo build -p orderflow-consumer` first (nextest --workspace builds it)", binary.display());
    binary
}

pub fn order(customer: &str, lines: &[(&str, i32)], hold_seconds: Option<u32>) -> PlacedOrder {
    let lines: Vec<Line> = lines.iter().map(|(p, q)| Line { product_id: (*p).into(), quantity: *q, amount_cents: 100 }).collect();
    let lines = if lines.len() == 1 { Lines::One(lines[0].clone()) } else { Lines::Cart(lines) };
    PlacedOrder::new(NewOrder { customer_id: customer.into(), lines, hold_seconds }, Uuid::now_v7(), Utc::now())
}

pub fn command(kind: CommandKind, order_id: Uuid, customer_id: &str) -> OrderCommand {
    OrderCommand { command: kind, command_id: Uuid::now_v7(), order_id, customer_id: customer_id.into(), issued_at: Utc::now() }
}

pub struct Run {
    pub broker: TestBroker,
    pub database: TestDatabase,
    pub pool: deadpool_postgres::Pool,
    pub dir: PathBuf,
    pub stock: Vec<(&'static str, i64)>,
}

impl Run {
    pub fn spawn(&self, n: usize, extra: &[(&str, &str)]) -> Child {
        let mut kafka = self.broker.kafka_settings();
        kafka.topic = self.broker.name(TOPIC);
        let config: Vec<String> = kafka.extra.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let log = std::fs::File::create(self.dir.join(format!("{n}.log"))).expect("log file");
        Command::new(consumer_binary())
            .env("DATABASE_URL", &self.database.url)
            .env("KAFKA_BROKERS", self.broker.bootstrap_servers())
            .env("KAFKA_TOPIC", &kafka.topic)
            .env("KAFKA_CONFIG", config.join(","))
            .env("KAFKA_GROUP_ID", self.broker.name("orderflow-consumer"))
            .env("DEAD_LETTER_TOPIC", self.broker.name(DEAD_LETTER_TOPIC))
            .env("ORDER_EVENTS_TOPIC", self.broker.name(EVENTS_TOPIC))
            .env(protocol_trace::VARIABLE, self.dir.join("traces"))
            .env("CONSUMER_ADMIN_ADDR", "127.0.0.1:0")
            .env("KAFKA_SESSION_TIMEOUT_MS", "3000")
            .env("BATCH_SIZE", "500")
            .env("SWEEP_INTERVAL_MS", "100")
            .env("OUTBOX_RELAY_INTERVAL_MS", "200")
            .env("PARKED_COMMAND_TTL_SECONDS", "1")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("consumer binary starts")
    }

    pub fn traces(&self) -> Vec<Vec<Record>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("traces"))
            .map(|entries| entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().map(|path| protocol_trace::parse(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).collect()
    }

    pub fn validate(&self) -> ReplayReport {
        validate(&self.stock, &self.traces()).unwrap_or_else(|divergence| panic!("traces in {}: {divergence}", self.dir.display()))
    }
}


impl Run {
    /// A fresh broker (orders topic with `partitions`), a migrated database with `stock`, and
    /// a trace directory named after `name`.
    pub async fn start(name: &str, partitions: i32, stock: &[(&'static str, i64)]) -> Self {
        let topics = [(TOPIC.to_owned(), partitions), (DEAD_LETTER_TOPIC.to_owned(), 1), (EVENTS_TOPIC.to_owned(), 1)];
        let broker = TestBroker::start(&topics).await;
        let database = TestDatabase::create().await;
        let pool = db::pool(&database.settings()).unwrap();
        db::migrate(&pool).await.unwrap();
        let client = pool.get().await.unwrap();
        for (product, units) in stock {
            client
                .execute(
                    "UPDATE inventory SET available_quantity = $2, reserved_quantity = 0, total_quantity = $2, sold_quantity = 0, received_quantity = $2 WHERE product_id = $1",
                    &[product, units],
                )
                .await
                .unwrap();
        }
        let dir = std::env::temp_dir().join(format!("orderflow-model-{name}-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { broker, database, pool, dir, stock: stock.to_vec() }
    }

    pub fn producer(&self) -> FutureProducer {
        rdkafka::ClientConfig::new().set("bootstrap.servers", self.broker.bootstrap_servers()).set("enable.idempotence", "true").create().unwrap()
    }

    /// Publishes (key, payload) pairs to the orders topic, each acknowledged.
    pub async fn publish(&self, producer: &FutureProducer, messages: &[(String, Vec<u8>)]) {
        let topic = self.broker.name(TOPIC);
        let sends = messages.iter().map(|(key, payload)| producer.send(FutureRecord::to(&topic).key(key.as_bytes()).payload(payload), Timeout::After(Duration::from_secs(10))));
        for result in futures::future::join_all(sends).await {
            result.expect("broker acknowledged");
        }
    }
}

pub use orderflow_common::testing::stop;

pub fn payload<T: serde::Serialize>(key: &str, value: &T) -> (String, Vec<u8>) {
    (key.to_owned(), serde_json::to_vec(value).unwrap())
}

pub fn orders_and_commands(orders: &[PlacedOrder], commands: &[OrderCommand]) -> Vec<(String, Vec<u8>)> {
    orders.iter().map(|o| payload(&o.customer_id, o)).chain(commands.iter().map(|c| payload(&c.customer_id, c))).collect()
}
