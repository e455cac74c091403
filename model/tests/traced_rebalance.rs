//! Trace validation of the real consumer binary under rebalances (issue #14, part 3): the
//! rebalance scenario of consumer/tests/flow/traced.rs rebuilt here, every member's trace
//! replayed through the model's rules.
//!
//! Member 1 starts alone while orders keep coming (one in ten a cart, the hot product selling
//! out). The test holds the hot product's row lock, so member 1's batch is stuck in flight
//! (its parts fail on NOWAIT and retry); member 2 joins and member 1 gives partitions up with
//! that batch in flight; the lock goes; member 1 leaves on SIGTERM, member 3 joins; then the
//! orders stop and members 2 and 3 stop on SIGTERM.
//!
//! Two workers per member (not the default 4): the hot product then shares its part with
//! other products, so while its row is held the part commits in several transactions (SKIP
//! LOCKED after the first conflict, `reservation::Locking::Available`): several
//! `part_committed` records of one part, each checked against `split::go_ahead`.

mod support;

use std::time::Duration;

use orderflow_common::order::PlacedOrder;
use orderflow_common::protocol_trace::Step;
use orderflow_common::testing::eventually;
use uuid::Uuid;

use support::{order, orders_and_commands, Run};

const STOCK: [(&str, i64); 5] = [("PROD001", 150), ("PROD002", 100_000), ("PROD003", 100_000), ("PROD004", 100_000), ("PROD005", 100_000)];

/// The members (trace files, in start order) once `count` of them have partitions assigned.
async fn members_with_partitions(run: &Run, count: usize) -> Vec<Uuid> {
    eventually(Duration::from_secs(60), &format!("{count} members with partitions"), || async {
        let traces = run.traces();
        let assigned: Vec<Uuid> = traces
            .iter()
            .filter(|records| records.iter().any(|r| matches!(&r.step, Step::Assigned { partitions } if !partitions.is_empty())))
            .filter_map(|records| records.first().map(|r| r.member))
            .collect();
        (assigned.len() >= count).then_some(assigned)
    })
    .await
}

async fn wait_for_step(run: &Run, member: Uuid, what: &str, matches: fn(&Step) -> bool) {
    eventually(Duration::from_secs(60), what, || async {
        run.traces().iter().flatten().any(|r| r.member == member && matches(&r.step)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traces_of_a_real_rebalance_run_validate_against_the_model() {
    let run = Run::start("traced-rebalance", 4, &STOCK).await;
    let small = [("BATCH_SIZE", "100"), ("KAFKA_MAX_POLL_INTERVAL_MS", "4000"), ("WORKERS", "2")];
    let done = tokio_util::sync::CancellationToken::new();
    let publish = async {
        let producer = run.producer();
        let mut orders: Vec<PlacedOrder> = Vec::new();
        for wave in 0..600 {
            if done.is_cancelled() {
                break;
            }
            let batch: Vec<PlacedOrder> = (0..50)
                .map(|i| {
                    let n = wave * 50 + i;
                    let customer = format!("R{}", n % 1009);
                    if n % 10 == 9 {
                        order(&customer, &[("PROD002", 1), ("PROD003", 1)], None)
                    } else {
                        order(&customer, &[(&format!("PROD00{}", 1 + n % 5), 1)], None)
                    }
                })
                .collect();
            run.publish(&producer, &orders_and_commands(&batch, &[])).await;
            orders.extend(batch);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        orders
    };
    let members = async {
        let first = run.spawn(1, &small);
        let first_member = members_with_partitions(&run, 1).await[0];
        let mut client = run.pool.get().await.unwrap();
        let lock = client.transaction().await.unwrap();
        lock.execute("SELECT 1 FROM inventory WHERE product_id = 'PROD001' FOR UPDATE", &[]).await.unwrap();
        wait_for_step(&run, first_member, "a part failing on the held lock", |step| matches!(step, Step::PartFailed { conflict: true, .. })).await;
        let second = run.spawn(2, &small);
        members_with_partitions(&run, 2).await;
        wait_for_step(&run, first_member, "a revoke", |step| matches!(step, Step::Revoked { partitions } if !partitions.is_empty())).await;
        lock.rollback().await.unwrap();
        support::stop(first).await;
        let third = run.spawn(3, &small);
        members_with_partitions(&run, 3).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        done.cancel();
        (second, third)
    };
    let (orders, (second, third)) = tokio::join!(publish, members);
    let client = run.pool.get().await.unwrap();
    eventually(Duration::from_secs(90), "every order stored and every change's event published", || async {
        let stored: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
        (stored == orders.len() as i64 && run.validate().unpublished.is_empty()).then_some(())
    })
    .await;
    support::stop(second).await;
    support::stop(third).await;

    let report = run.validate();
    println!("{report:?}");
    assert_eq!(report.members, 3);
    assert_eq!(report.orders, orders.len());
    assert!(report.unpublished.is_empty(), "{report:?}");
    assert!(report.partial_commits > 0, "the held row made no part commit in several transactions: {report:?}");
    let _ = std::fs::remove_dir_all(&run.dir);
}
