use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::Rng;

use orderflow_common::events::{event_id, EventType};
use uuid::Uuid;

use crate::support::{message, placed_cart, placed_order, wait_exit, Stack};

// Large enough that four lives of a consumer writing ~100k orders/s cannot finish it.
const ORDERS: i64 = 100_000;

fn spawn_consumer(stack: &Stack) -> Child {
    spawn_consumer_with(stack, &[])
}

fn spawn_consumer_with(stack: &Stack, extra: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_consumer"))
        .envs(stack.consumer_env())
        .envs(extra.iter().copied())
        .env("CONSUMER_ADMIN_ADDR", "127.0.0.1:0")
        .env("KAFKA_SESSION_TIMEOUT_MS", "3000")
        .env("BATCH_SIZE", "500")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("consumer binary starts")
}

/// The consumer process is SIGKILLed mid-stream four times and restarted; at the end every
/// order is in the database exactly once and no stock was taken twice. One order in ten is a
/// cart of three lines: the invariant check is cart-aware (per product, reserved stock is the
/// lines of reserved orders, and every cart has all its lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let stack = Stack::start(8).await;
    for product in 1..=10 {
        stack.set_stock(&format!("PROD{product:03}"), 1500).await;
    }
    let product = |n: i64| format!("PROD{:03}", 1 + n % 10);
    let orders: Vec<_> = (0..ORDERS)
        .map(|i| {
            let (customer, quantity) = (format!("C{}", i % 997), 1 + (i % 3) as i32);
            if i % 10 == 9 {
                let (a, b, c) = (product(i), product(i + 3), product(i + 7));
                placed_cart(&customer, &[(&a, quantity), (&b, 1), (&c, 1)])
            } else {
                placed_order(&customer, &product(i), quantity)
            }
        })
        .collect();
    let producer = stack.kafka_producer();
    stack.publish_raw(&producer, &orders.iter().map(message).collect::<Vec<_>>()).await;

    let mut kills = 0;
    let mut last_count = 0;
    while kills < 4 {
        let mut consumer = spawn_consumer(&stack);
        // Kill only once it is writing, at a random moment after that.
        orderflow_common::testing::eventually(Duration::from_secs(60), "progress after restart", || async {
            (stack.order_count().await > last_count).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..150))).await;
        consumer.kill().expect("SIGKILL");
        consumer.wait().unwrap();
        kills += 1;
        last_count = stack.order_count().await;
        if last_count == ORDERS {
            break;
        }
    }
    assert!(kills >= 1);
    assert!(last_count < ORDERS, "the kills happened mid-stream (processed {last_count} of {ORDERS})");

    let mut consumer = spawn_consumer(&stack);
    stack.wait_for_orders(ORDERS, Duration::from_secs(120)).await;
    stack.assert_invariants().await;
    let client = stack.pool.get().await.unwrap();
    let reserved_units: i64 = client
        .query_one("SELECT sum(reserved_quantity)::bigint FROM inventory", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reserved_units > 0 && reserved_units <= 15_000);

    // Graceful stop: SIGTERM finishes, commits and exits 0.
    let status = Command::new("kill").args(["-TERM", &consumer.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || consumer.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "consumer exits 0 on SIGTERM: {exit:?}");
}


async fn stop(mut consumer: Child) {
    let status = Command::new("kill").args(["-TERM", &consumer.id().to_string()]).status().unwrap();
    assert!(status.success());
    tokio::task::spawn_blocking(move || consumer.wait().unwrap()).await.unwrap();
}

/// Path (a): a placement's event is published by the batch loop after the commit. The
/// process dies (abort, as SIGKILL: nothing flushed) right after the commit, before the
/// publish. The batch's offsets were never committed, so after the restart the batch is
/// redelivered, its orders are found applied, and their events are rebuilt from the
/// stored rows and published with the ids they would have had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_batch_killed_between_commit_and_publish_come_out_after_the_restart() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD002", 30).await;
    let orders: Vec<_> = (0..40).map(|i| placed_order(&format!("K{i}"), "PROD002", 1)).collect();
    stack.publish_raw(&stack.kafka_producer(), &orders.iter().map(message).collect::<Vec<_>>()).await;

    let doomed = spawn_consumer_with(&stack, &[("ORDERFLOW_FAULT_AFTER_COMMIT", "batch")]);
    let exit = wait_exit(doomed, Duration::from_secs(60)).await;
    assert!(!exit.success(), "aborted: {exit:?}");
    let committed = stack.order_count().await;
    assert!(committed > 0, "the crash came after a commit");
    assert!(stack.read_events(usize::MAX, Duration::from_secs(2)).await.is_empty(), "and before any publish");

    let consumer = spawn_consumer(&stack);
    stack.wait_for_orders(40, Duration::from_secs(60)).await;
    let client = stack.pool.get().await.unwrap();
    let rows = client.query("SELECT order_id, status FROM orders", &[]).await.unwrap();
    let expected: Vec<Uuid> = rows
        .iter()
        .map(|row| {
            let kind = if row.get::<_, &str>(1) == "rejected" { EventType::Rejected } else { EventType::Reserved };
            event_id(row.get(0), kind)
        })
        .collect();
    let events = stack.wait_for_event_ids(&expected, Duration::from_secs(30)).await;
    assert_eq!(events.iter().filter(|e| e.kind == EventType::Rejected).count(), 10);
    stack.assert_invariants().await;
    stop(consumer).await;
}

/// Path (b): expiries are written to the outbox with the sweep's commit. The process dies
/// right after that commit, before relaying. No Kafka offset is behind an expiry; the rows
/// are, and the restarted consumer's periodic relay publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_events_of_a_sweeper_killed_after_its_commit_come_out_after_the_restart() {
    let stack = Stack::start(2).await;
    stack.set_stock("PROD003", 20).await;
    let orders: Vec<_> = (0..10)
        .map(|i| orderflow_common::order::PlacedOrder { hold_seconds: Some(1), ..placed_order(&format!("X{i}"), "PROD003", 2) })
        .collect();
    stack.publish_raw(&stack.kafka_producer(), &orders.iter().map(message).collect::<Vec<_>>()).await;

    let fast = [("SWEEP_INTERVAL_MS", "100"), ("OUTBOX_RELAY_INTERVAL_MS", "200")];
    let doomed = spawn_consumer_with(&stack, &[fast[0], fast[1], ("ORDERFLOW_FAULT_AFTER_COMMIT", "outbox")]);
    let exit = wait_exit(doomed, Duration::from_secs(60)).await;
    assert!(!exit.success(), "aborted: {exit:?}");
    let client = stack.pool.get().await.unwrap();
    let expired: i64 = client.query_one("SELECT count(*) FROM orders WHERE status = 'expired'", &[]).await.unwrap().get(0);
    let waiting: i64 = client.query_one("SELECT count(*) FROM order_events_outbox", &[]).await.unwrap().get(0);
    assert!(expired > 0 && waiting == expired, "committed with their events in the outbox: {expired} expired, {waiting} waiting");
    let before = stack.read_events(usize::MAX, Duration::from_secs(2)).await;
    assert!(before.iter().all(|e| e.kind != EventType::Expired), "nothing relayed before the crash");

    let consumer = spawn_consumer_with(&stack, &fast);
    let ids: Vec<Uuid> = orders.iter().map(|o| event_id(o.order_id, EventType::Expired)).collect();
    let events = stack.wait_for_event_ids(&ids, Duration::from_secs(30)).await;
    assert!(events.iter().filter(|e| e.kind == EventType::Expired).all(|e| e.reason.as_deref() == Some("hold_expired")));
    orderflow_common::testing::eventually(Duration::from_secs(10), "the outbox to be empty", || async {
        let left: i64 = client.query_one("SELECT count(*) FROM order_events_outbox", &[]).await.unwrap().get(0);
        (left == 0).then_some(())
    })
    .await;
    stack.assert_invariants().await;
    stop(consumer).await;
}
