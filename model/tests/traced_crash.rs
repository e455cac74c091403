//! Trace validation of the real consumer binary (issue #14, part 3): a crash run with
//! ORDERFLOW_PROTOCOL_TRACE on, its members' traces replayed through the model's rules.
//!
//! The scenario is the consumer's traced crash run (consumer/tests/flow/traced.rs), rebuilt
//! here on the same test broker and database helpers: 4 partitions; 40 single-line orders for
//! 30 units, a confirm and a cancel, three 1 s holds that expire, two carts competing for the
//! same units, a cancel of an order that never comes (parked, then refused), an invalid
//! message. The first consumer aborts right after its first batch's commit (before its events
//! and offsets), the second redelivers that batch and drains the rest.
//!
//! The binary is target/<profile>/consumer, next to this test's deps/ directory: built by
//! `cargo nextest run --workspace` (or `cargo build -p orderflow-consumer`).

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
use orderflow_common::testing::{eventually, TestBroker, TestDatabase};
use orderflow_common::{db, DEAD_LETTER_TOPIC};
use orderflow_model::replay::{validate, ReplayReport};

const TOPIC: &str = "orders-placed";
const STOCK: [(&str, i64); 4] = [("PROD002", 30), ("PROD003", 20), ("PROD004", 5), ("PROD005", 5)];

fn consumer_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let binary = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps").join("consumer");
    assert!(binary.exists(), "{} is missing: `cargo build -p orderflow-consumer` first (nextest --workspace builds it)", binary.display());
    binary
}

fn order(customer: &str, lines: &[(&str, i32)], hold_seconds: Option<u32>) -> PlacedOrder {
    let lines: Vec<Line> = lines.iter().map(|(p, q)| Line { product_id: (*p).into(), quantity: *q, amount_cents: 100 }).collect();
    let lines = if lines.len() == 1 { Lines::One(lines[0].clone()) } else { Lines::Cart(lines) };
    PlacedOrder::new(NewOrder { customer_id: customer.into(), lines, hold_seconds }, Uuid::now_v7(), Utc::now())
}

fn command(kind: CommandKind, order_id: Uuid, customer_id: &str) -> OrderCommand {
    OrderCommand { command: kind, command_id: Uuid::now_v7(), order_id, customer_id: customer_id.into(), issued_at: Utc::now() }
}

struct Run {
    broker: TestBroker,
    database: TestDatabase,
    dir: PathBuf,
}

impl Run {
    fn spawn(&self, n: usize, extra: &[(&str, &str)]) -> Child {
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

    fn traces(&self) -> Vec<Vec<Record>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("traces"))
            .map(|entries| entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().map(|path| protocol_trace::parse(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).collect()
    }

    fn validate(&self) -> ReplayReport {
        validate(&STOCK, &self.traces()).unwrap_or_else(|divergence| panic!("traces in {}: {divergence}", self.dir.display()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traces_of_a_real_crash_run_validate_against_the_model() {
    let topics = [(TOPIC.to_owned(), 4), (DEAD_LETTER_TOPIC.to_owned(), 1), (EVENTS_TOPIC.to_owned(), 1)];
    let broker = TestBroker::start(&topics).await;
    let database = TestDatabase::create().await;
    let pool = db::pool(&database.settings()).unwrap();
    db::migrate(&pool).await.unwrap();
    let client = pool.get().await.unwrap();
    for (product, stock) in STOCK {
        client
            .execute(
                "UPDATE inventory SET available_quantity = $2, reserved_quantity = 0, total_quantity = $2, sold_quantity = 0, received_quantity = $2 WHERE product_id = $1",
                &[&product, &stock],
            )
            .await
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("orderflow-model-traced-crash-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = Run { broker, database, dir };

    let mut orders: Vec<PlacedOrder> = (0..40).map(|i| order(&format!("K{i}"), &[("PROD002", 1)], None)).collect();
    orders.extend((0..3).map(|i| order(&format!("H{i}"), &[("PROD003", 2)], Some(1))));
    orders.push(order("CART1", &[("PROD004", 2), ("PROD005", 1)], None));
    orders.push(order("CART2", &[("PROD004", 4), ("PROD005", 1)], None));
    let mut messages: Vec<(String, Vec<u8>)> = orders.iter().map(|o| (o.customer_id.clone(), serde_json::to_vec(o).unwrap())).collect();
    messages.insert(7, ("BROKEN".to_owned(), br#"{"customer_id": "BROKEN", "quantity": "many"}"#.to_vec()));
    let commands = [
        command(CommandKind::Confirm, orders[0].order_id, &orders[0].customer_id),
        command(CommandKind::Cancel, orders[1].order_id, &orders[1].customer_id),
        command(CommandKind::Cancel, Uuid::now_v7(), "NOBODY"),
    ];
    messages.extend(commands.iter().map(|c| (c.customer_id.clone(), serde_json::to_vec(c).unwrap())));
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", run.broker.bootstrap_servers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let topic = run.broker.name(TOPIC);
    for (key, payload) in &messages {
        producer.send(FutureRecord::to(&topic).key(key.as_bytes()).payload(payload), Timeout::After(Duration::from_secs(10))).await.expect("broker acknowledged");
    }

    // The first consumer aborts right after its first batch's commit.
    let mut doomed = run.spawn(1, &[("ORDERFLOW_FAULT_AFTER_COMMIT", "batch")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = doomed.try_wait().unwrap() {
            break exit;
        }
        if std::time::Instant::now() > deadline {
            doomed.kill().unwrap();
            panic!("the first consumer did not abort at the fault point within 60 s ({})", run.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!exit.success(), "the first consumer aborted at the fault point: {exit:?}");

    // The second drains everything: every order stored, holds expired, no command pending,
    // the outbox empty, and (from its trace) every change's event published.
    let survivor = run.spawn(2, &[]);
    eventually(Duration::from_secs(90), "the run drained", || async {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM orders WHERE status = 'expired'), \
                        (SELECT count(*) FROM order_commands WHERE outcome = 'pending'), (SELECT count(*) FROM order_commands), \
                        (SELECT count(*) FROM order_events_outbox)",
                &[],
            )
            .await
            .unwrap();
        let counts: (i64, i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        (counts == (orders.len() as i64, 3, 0, 3, 0) && run.validate().unpublished.is_empty()).then_some(())
    })
    .await;
    let status = Command::new("kill").args(["-TERM", &survivor.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let mut survivor = survivor;
        survivor.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(exit.success(), "the survivor stops cleanly on SIGTERM: {exit:?}");

    let report = run.validate();
    println!("{report:?}");
    assert_eq!(report.members, 2, "the crashed member and the survivor");
    assert_eq!(report.orders, orders.len());
    assert_eq!(report.commands, commands.len());
    assert!(report.unpublished.is_empty(), "every change's event published: {report:?}");

    // The same traces without the crashed member's committed part: the survivor finds its
    // orders applied by a transaction that never happened, which the model does not allow.
    let mut traces = run.traces();
    traces[0].retain(|r| !matches!(r.step, protocol_trace::Step::PartCommitted { .. }));
    let divergence = validate(&STOCK, &traces).expect_err("a trace without the crashed member's commit diverges");
    println!("{divergence}");
    let _ = std::fs::remove_dir_all(&run.dir);
}
