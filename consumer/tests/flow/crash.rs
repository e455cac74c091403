use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::Rng;

use crate::support::{message, placed_order, Stack};

// Large enough that four lives of a consumer writing ~100k orders/s cannot finish it.
const ORDERS: i64 = 100_000;

fn spawn_consumer(stack: &Stack) -> Child {
    Command::new(env!("CARGO_BIN_EXE_consumer"))
        .envs(stack.consumer_env())
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
/// order is in the database exactly once and no stock was taken twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let stack = Stack::start(8).await;
    for product in 1..=10 {
        stack.set_stock(&format!("PROD{product:03}"), 1500).await;
    }
    let orders: Vec<_> = (0..ORDERS)
        .map(|i| placed_order(&format!("C{}", i % 997), &format!("PROD{:03}", 1 + i % 10), 1 + (i % 3) as i32))
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
