//! Runs of the real consumer binary with the protocol trace on (issue #14), kept apart from
//! their checks so that trace validation can replay the same runs through the model.
//!
//! `crash_run`: 4 partitions; 40 single-line orders for 30 units of PROD002, a confirm and a
//! cancel of two of them, 3 orders with a 1 s hold on PROD003, two carts competing for
//! PROD004 and PROD005, a cancel of an order that never comes, and an invalid message. The
//! first consumer runs with `ORDERFLOW_FAULT_AFTER_COMMIT=batch` and aborts right after its
//! first batch's commit, before publishing events or committing offsets. The second
//! redelivers that batch, writes the rest, lets the holds expire and the unknown order's
//! cancel be refused, publishes every event, and stops on SIGTERM.
//!
//! `rebalance_run`: members join and leave while orders keep coming, so partitions move with
//! batches in flight and the members' parts contend for the same hot row (NOWAIT conflicts,
//! retried). Member 1 starts alone. The test then holds the hot product's row lock, so member
//! 1's batch is stuck in flight (its loop polls on while it waits, `wait_for_write`, with
//! `KAFKA_MAX_POLL_INTERVAL_MS=4000`); member 2 joins, and member 1 gives partitions up with
//! that batch in flight; the lock goes. Member 1 leaves on SIGTERM; member 3 joins; then the
//! orders stop, and members 2 and 3 stop on SIGTERM.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use uuid::Uuid;

use orderflow_common::command::{CommandKind, OrderCommand};
use orderflow_common::events::{event_id, EventType};
use orderflow_common::order::PlacedOrder;
use orderflow_common::protocol_trace::{self, Record, Step};
use orderflow_common::testing::eventually;

use crate::support::{command, message, placed_cart, placed_order, stop, wait_exit, Stack};

/// Stock at the start of `crash_run`, by product.
pub const STOCK: [(&str, i64); 4] = [("PROD002", 30), ("PROD003", 20), ("PROD004", 5), ("PROD005", 5)];
/// Stock at the start of `rebalance_run`: one hot product that sells out, four that do not.
pub const REBALANCE_STOCK: [(&str, i64); 5] =
    [("PROD001", 150), ("PROD002", 100_000), ("PROD003", 100_000), ("PROD004", 100_000), ("PROD005", 100_000)];

pub struct TracedRun {
    pub stack: Stack,
    /// Holds `traces/<member>.jsonl` and each process's output (`<n>.log`).
    pub dir: PathBuf,
    /// The member that aborted after its first batch's commit (`crash_run`); the others
    /// stopped on SIGTERM.
    pub crashed: Option<Uuid>,
    /// Stock at the start, by product.
    pub stock: Vec<(&'static str, i64)>,
    /// Every member's trace, in the order the members started (UUIDv7 order).
    pub traces: Vec<(Uuid, Vec<Record>)>,
    /// Every placement published, valid ones only.
    pub orders: Vec<PlacedOrder>,
    /// The orders with a 1 s hold (expired by the sweeper).
    pub holds: Vec<Uuid>,
    /// Commands: in `crash_run` the confirm and the cancel of orders that exist, then the
    /// cancel of an order that never comes (parked, then refused `unknown_order`).
    pub commands: Vec<OrderCommand>,
    /// That last command's id.
    pub unknown_order_command: Option<Uuid>,
}

impl TracedRun {
    /// Every record of every member.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.traces.iter().flat_map(|(_, records)| records)
    }

    /// Removes the trace directory, unless `ORDERFLOW_TEST_KEEP_TRACES` is set (it is kept
    /// anyway when a check fails: the path is in the message).
    pub fn clean_up(&self) {
        if std::env::var_os("ORDERFLOW_TEST_KEEP_TRACES").is_some() {
            eprintln!("traces kept in {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A consumer binary on `stack` with the trace on, its output (warnings and errors) in
/// `dir/<n>.log`.
pub fn spawn_traced(stack: &Stack, dir: &Path, n: usize, extra: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{n}.log"))).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_consumer"))
        .envs(stack.consumer_env())
        .env(protocol_trace::VARIABLE, dir.join("traces"))
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

fn trace_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("traces"))
        .map(|entries| entries.map(|entry| entry.unwrap().path()).filter(|path| path.extension().is_some_and(|e| e == "jsonl")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Reads every `<member>.jsonl` under `dir/traces`, in member (start) order.
pub fn read_traces(dir: &Path) -> Vec<(Uuid, Vec<Record>)> {
    trace_files(dir)
        .into_iter()
        .map(|path| {
            let member: Uuid = path.file_stem().unwrap().to_str().unwrap().parse().expect("a trace file is named by its member");
            let text = std::fs::read_to_string(&path).unwrap();
            let records = protocol_trace::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (member, records)
        })
        .collect()
}

/// Runs the scenario above and returns the traces. Panics if the run itself goes wrong
/// (the first consumer does not abort, orders or events missing after a minute).
pub async fn crash_run() -> TracedRun {
    let dir = std::env::temp_dir().join(format!("orderflow-traced-crash-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let stack = Stack::start(4).await;
    for (product, stock) in STOCK {
        stack.set_stock(product, stock).await;
    }
    let mut orders: Vec<PlacedOrder> = (0..40).map(|i| placed_order(&format!("K{i}"), "PROD002", 1)).collect();
    let holds: Vec<PlacedOrder> =
        (0..3).map(|i| PlacedOrder { hold_seconds: Some(1), ..placed_order(&format!("H{i}"), "PROD003", 2) }).collect();
    orders.extend(holds.iter().cloned());
    orders.push(placed_cart("CART1", &[("PROD004", 2), ("PROD005", 1)]));
    orders.push(placed_cart("CART2", &[("PROD004", 4), ("PROD005", 1)]));
    let mut messages: Vec<(String, Vec<u8>)> = orders.iter().map(message).collect();
    messages.insert(7, ("BROKEN".to_owned(), br#"{"customer_id": "BROKEN", "quantity": "many"}"#.to_vec()));
    let producer = stack.kafka_producer();
    stack.publish_raw(&producer, &messages).await;
    // After their orders, in the same partitions (same keys).
    let stranger = OrderCommand { order_id: Uuid::now_v7(), customer_id: "NOBODY".into(), ..command(CommandKind::Cancel, &orders[2]) };
    let commands = vec![command(CommandKind::Confirm, &orders[0]), command(CommandKind::Cancel, &orders[1]), stranger];
    for command in &commands {
        stack.publish_command(&producer, command).await;
    }

    let doomed = spawn_traced(&stack, &dir, 1, &[("ORDERFLOW_FAULT_AFTER_COMMIT", "batch")]);
    let exit = wait_exit(doomed, Duration::from_secs(60)).await;
    assert!(!exit.success(), "the first consumer aborted at the fault point: {exit:?}");
    let crashed = match trace_files(&dir).as_slice() {
        [one] => one.file_stem().unwrap().to_str().unwrap().parse().unwrap(),
        other => panic!("one trace file after the first consumer, found {other:?}"),
    };

    let consumer = spawn_traced(&stack, &dir, 2, &[]);
    stack.wait_for_orders(orders.len() as i64, Duration::from_secs(60)).await;
    let client = stack.pool.get().await.unwrap();
    eventually(Duration::from_secs(30), "holds expired and no command pending", || async {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM orders WHERE status = 'expired'), \
                        (SELECT count(*) FROM order_commands WHERE outcome = 'pending'), \
                        (SELECT count(*) FROM order_commands), \
                        (SELECT count(*) FROM order_events_outbox)",
                &[],
            )
            .await
            .unwrap();
        let (expired, pending, commands_stored, outbox): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        (expired == holds.len() as i64 && pending == 0 && commands_stored == commands.len() as i64 && outbox == 0).then_some(())
    })
    .await;
    stack.wait_for_event_ids(&expected_events(&stack).await, Duration::from_secs(30)).await;
    stop(consumer).await;

    let traces = read_traces(&dir);
    assert_eq!(traces.len(), 2, "one trace per process in {}", dir.display());
    let unknown_order_command = commands.last().map(|c| c.command_id);
    let holds = holds.iter().map(|o| o.order_id).collect();
    TracedRun { stack, dir, crashed: Some(crashed), stock: STOCK.to_vec(), traces, holds, orders, commands, unknown_order_command }
}

/// Runs the rebalance scenario above and returns the traces.
pub async fn rebalance_run() -> TracedRun {
    let dir = std::env::temp_dir().join(format!("orderflow-traced-rebalance-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let stack = Stack::start(4).await;
    for (product, stock) in REBALANCE_STOCK {
        stack.set_stock(product, stock).await;
    }
    // Two workers for four components (PROD001, PROD002+PROD003 linked by carts, PROD004,
    // PROD005): parts hold several, so a held row lets the others go ahead.
    let small = [("BATCH_SIZE", "100"), ("WORKERS", "2"), ("KAFKA_MAX_POLL_INTERVAL_MS", "4000")];
    let done = tokio_util::sync::CancellationToken::new();
    let publish = async {
        let producer = stack.kafka_producer();
        let mut orders = Vec::new();
        // At most a minute of orders: the members' changes take a few seconds each.
        for wave in 0..600 {
            if done.is_cancelled() {
                break;
            }
            let batch: Vec<PlacedOrder> = (0..50)
                .map(|i| {
                    let n = wave * 50 + i;
                    let customer = format!("R{}", n % 1009);
                    if n % 10 == 9 {
                        placed_cart(&customer, &[("PROD002", 1), ("PROD003", 1)])
                    } else {
                        placed_order(&customer, &format!("PROD00{}", 1 + n % 5), 1)
                    }
                })
                .collect();
            stack.publish_raw(&producer, &batch.iter().map(message).collect::<Vec<_>>()).await;
            orders.extend(batch);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        orders
    };
    let members = async {
        let first = spawn_traced(&stack, &dir, 1, &small);
        let first_member = wait_for_assignment(&dir, &[]).await;
        let mut client = stack.pool.get().await.unwrap();
        let lock = client.transaction().await.unwrap();
        lock.execute("SELECT 1 FROM inventory WHERE product_id = 'PROD001' FOR UPDATE", &[]).await.unwrap();
        wait_for_step(&dir, first_member, "a part failing on the held lock", |step| matches!(step, Step::PartFailed { conflict: true, .. })).await;
        let second = spawn_traced(&stack, &dir, 2, &small);
        let second_member = wait_for_assignment(&dir, &[first_member]).await;
        wait_for_step(&dir, first_member, "a revoke", |step| matches!(step, Step::Revoked { partitions } if !partitions.is_empty())).await;
        lock.rollback().await.unwrap();
        stop(first).await;
        let third = spawn_traced(&stack, &dir, 3, &small);
        wait_for_assignment(&dir, &[first_member, second_member]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        done.cancel();
        (second, third)
    };
    let (orders, (second, third)) = tokio::join!(publish, members);
    stack.wait_for_orders(orders.len() as i64, Duration::from_secs(60)).await;
    stack.wait_for_event_ids(&expected_events(&stack).await, Duration::from_secs(30)).await;
    stop(second).await;
    stop(third).await;

    let traces = read_traces(&dir);
    assert_eq!(traces.len(), 3, "one trace per process in {}", dir.display());
    TracedRun {
        stack,
        dir,
        crashed: None,
        stock: REBALANCE_STOCK.to_vec(),
        traces,
        orders,
        holds: Vec::new(),
        commands: Vec::new(),
        unknown_order_command: None,
    }
}

/// Waits until a member other than `known` has a trace with partitions assigned; returns it.
pub async fn wait_for_assignment(dir: &Path, known: &[Uuid]) -> Uuid {
    eventually(Duration::from_secs(60), "a new member with partitions", || async {
        read_traces(dir).into_iter().find_map(|(member, records)| {
            let assigned = records.iter().any(|r| matches!(&r.step, Step::Assigned { partitions } if !partitions.is_empty()));
            (!known.contains(&member) && assigned).then_some(member)
        })
    })
    .await
}

/// Waits until `member` recorded a step that `matches`.
pub async fn wait_for_step(dir: &Path, member: Uuid, what: &str, matches: fn(&Step) -> bool) {
    eventually(Duration::from_secs(60), what, || async {
        let traces = read_traces(dir);
        let (_, records) = traces.iter().find(|(m, _)| *m == member)?;
        records.iter().any(|r| matches(&r.step)).then_some(())
    })
    .await
}


/// The event of every change in the database: each placement's, each expiry's and each
/// command's decision.
pub async fn expected_events(stack: &Stack) -> Vec<Uuid> {
    let client = stack.pool.get().await.unwrap();
    let mut ids = Vec::new();
    for row in client.query("SELECT order_id, status FROM orders", &[]).await.unwrap() {
        let (order_id, status): (Uuid, &str) = (row.get(0), row.get(1));
        ids.push(event_id(order_id, if status == "rejected" { EventType::Rejected } else { EventType::Reserved }));
        if status == "expired" {
            ids.push(event_id(order_id, EventType::Expired));
        }
    }
    for row in client.query("SELECT command_id, kind, outcome FROM order_commands", &[]).await.unwrap() {
        let (command_id, kind, outcome): (Uuid, &str, &str) = (row.get(0), row.get(1), row.get(2));
        let kind = match (kind, outcome) {
            ("confirm", "applied") => EventType::Confirmed,
            ("cancel", "applied") => EventType::Cancelled,
            ("confirm", _) => EventType::ConfirmRefused,
            _ => EventType::CancelRefused,
        };
        ids.push(event_id(command_id, kind));
    }
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len());
    ids
}

