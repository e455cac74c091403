//! A shutdown that cannot finish still ends when asked twice.

use std::process::Command;
use std::time::Duration;

use uuid::Uuid;

use orderflow_common::protocol_trace::Step;

use crate::support::{message, placed_order, stop, wait_exit, Stack};
use crate::traced::{spawn_traced, wait_for_assignment, wait_for_step};

fn sigterm(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// The batch in hand waits on a row that a person's open transaction holds, and the drain
/// timeout is 10 minutes, so the first SIGTERM's graceful shutdown waits. A second SIGTERM
/// ends the process at once (exit 130, as after Ctrl-C), and nothing is lost: the offset was
/// never committed, so the next consumer applies the order once the row is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_a_shutdown_that_cannot_finish() {
    let dir = std::env::temp_dir().join(format!("orderflow-shutdown-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let stack = Stack::start(2).await;
    stack.set_stock("PROD001", 10).await;
    let mut client = stack.pool.get().await.unwrap();
    let lock = client.transaction().await.unwrap();
    lock.execute("SELECT 1 FROM inventory WHERE product_id = 'PROD001' FOR UPDATE", &[]).await.unwrap();
    let order = placed_order("C1", "PROD001", 1);
    stack.publish_raw(&stack.kafka_producer(), &[message(&order)]).await;

    let mut first = spawn_traced(&stack, &dir, 1, &[("DRAIN_TIMEOUT_MS", "600000")]);
    let member = wait_for_assignment(&dir, &[]).await;
    wait_for_step(&dir, member, "a part failing on the held lock", |step| matches!(step, Step::PartFailed { conflict: true, .. })).await;
    sigterm(first.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(first.try_wait().unwrap().is_none(), "the first SIGTERM waits for the batch in hand (drain timeout 10 min)");
    sigterm(first.id());
    let exit = wait_exit(first, Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(130), "a second SIGTERM ends the shutdown at once: {exit:?}");
    assert_eq!(stack.order_count().await, 0, "the held row let nothing through");

    lock.rollback().await.unwrap();
    let second = spawn_traced(&stack, &dir, 2, &[]);
    stack.wait_for_orders(1, Duration::from_secs(60)).await;
    stop(second).await;
    stack.assert_invariants().await;
    let _ = std::fs::remove_dir_all(&dir);
}
