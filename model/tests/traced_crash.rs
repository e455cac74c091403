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

mod support;

use std::time::Duration;

use uuid::Uuid;

use orderflow_common::command::CommandKind;
use orderflow_common::order::PlacedOrder;
use orderflow_common::protocol_trace;
use orderflow_common::testing::eventually;
use orderflow_model::replay::validate;

use support::{command, order, orders_and_commands, Run};

const STOCK: [(&str, i64); 4] = [("PROD002", 30), ("PROD003", 20), ("PROD004", 5), ("PROD005", 5)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traces_of_a_real_crash_run_validate_against_the_model() {
    let run = Run::start("traced-crash", 4, &STOCK).await;
    let client = run.pool.get().await.unwrap();

    let mut orders: Vec<PlacedOrder> = (0..40).map(|i| order(&format!("K{i}"), &[("PROD002", 1)], None)).collect();
    orders.extend((0..3).map(|i| order(&format!("H{i}"), &[("PROD003", 2)], Some(1))));
    orders.push(order("CART1", &[("PROD004", 2), ("PROD005", 1)], None));
    orders.push(order("CART2", &[("PROD004", 4), ("PROD005", 1)], None));
    let commands = [
        command(CommandKind::Confirm, orders[0].order_id, &orders[0].customer_id),
        command(CommandKind::Cancel, orders[1].order_id, &orders[1].customer_id),
        command(CommandKind::Cancel, Uuid::now_v7(), "NOBODY"),
    ];
    let mut messages = orders_and_commands(&orders, &[]);
    messages.insert(7, ("BROKEN".to_owned(), br#"{"customer_id": "BROKEN", "quantity": "many"}"#.to_vec()));
    // After their orders, in the same partitions (same keys).
    messages.extend(orders_and_commands(&[], &commands));
    run.publish(&run.producer(), &messages).await;

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
    support::stop(survivor).await;

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
