//! The stale batch of issue #14, with the real binary: a partition revoked while a batch is
//! in flight, written by another member who commits past the batch, and assigned back; then
//! the stale batch finishes. Its positions must not be recorded: the group's committed offset
//! of that partition never moves backwards. (The model checker found it; before the fix,
//! `finish` recorded the stale positions because the partition was assigned again.)
//!
//! Member A writes as a database role that may not touch the tables, so each of its part
//! transactions fails with a permanent error (42501) and its first batch stays in flight,
//! retried every 200 ms while its loop keeps polling. Member B joins (cooperative-sticky: one
//! partition moves to B), applies that partition's messages and more published to it, commits
//! past A's batch, and leaves: the partition goes back to A. Then A's role gets its grants,
//! A's batch commits and finishes. Both members run with the protocol trace on, which shows
//! every offset commit in order.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use uuid::Uuid;

use orderflow_common::protocol_trace::{self, Record, Step};
use orderflow_common::testing::eventually;

use crate::support::{message, placed_order, stop, Stack};
use crate::traced::read_traces;

fn spawn(stack: &Stack, dir: &std::path::Path, database_url: &str, name: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_consumer"))
        .envs(stack.consumer_env())
        .env("DATABASE_URL", database_url)
        .env(protocol_trace::VARIABLE, dir.join("traces"))
        .env("CONSUMER_ADMIN_ADDR", "127.0.0.1:0")
        .env("KAFKA_SESSION_TIMEOUT_MS", "3000")
        .env("KAFKA_MAX_POLL_INTERVAL_MS", "6000")
        .env("PERMANENT_ERROR_RETRY_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("consumer binary starts")
}

/// The member whose trace shows partitions assigned, other than `known`.
async fn member_with_partitions(dir: &std::path::Path, known: &[Uuid]) -> (Uuid, Vec<i32>) {
    eventually(Duration::from_secs(30), "a member with partitions", || async {
        read_traces(dir).into_iter().find_map(|(member, records)| {
            let assigned: Vec<i32> = records
                .iter()
                .filter_map(|r| match &r.step {
                    Step::Assigned { partitions } => Some(partitions.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            (!known.contains(&member) && !assigned.is_empty()).then_some((member, assigned))
        })
    })
    .await
}

/// A database role of the test's own, dropped with its privileges even when the test fails
/// (roles are cluster-wide and would outlive the test's database).
struct Role {
    name: String,
    database_url: String,
}

impl Drop for Role {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.database_url.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP OWNED BY {name}; DROP ROLE {name}")).await.ok()
            })
        })
        .join();
    }
}


fn steps(dir: &std::path::Path, member: Uuid) -> Vec<Record> {
    read_traces(dir).into_iter().find(|(m, _)| *m == member).map(|(_, records)| records).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_batch_never_moves_the_committed_offset_backwards() {
    let stack = Stack::start(2).await;
    stack.set_stock("PROD001", 1_000).await;
    let dir = std::env::temp_dir().join(format!("orderflow-stale-batch-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let role = Role { name: format!("orderflow_stale_{}", Uuid::now_v7().simple()), database_url: stack.database.url.clone() };
    let role = &role.name;
    // May start (migrations already applied: refinery asserts its table and reads its
    // history) but not write.
    stack.execute(&format!("CREATE ROLE {role} LOGIN; GRANT CREATE ON SCHEMA public TO {role}; GRANT SELECT ON refinery_schema_history TO {role};")).await;
    let url_a = stack.database.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url_a, stack.database.url, "the test database URL names the postgres user");

    let producer = stack.kafka_producer();
    let first: Vec<_> = (0..20).map(|i| placed_order(&format!("S{i}"), "PROD001", 1)).collect();
    stack.publish_raw(&producer, &first.iter().map(message).collect::<Vec<_>>()).await;

    let a = spawn(&stack, &dir, &url_a, "a");
    let (member_a, _) = member_with_partitions(&dir, &[]).await;
    eventually(Duration::from_secs(30), "A's batch failing on its permissions", || async {
        steps(&dir, member_a).iter().any(|r| matches!(r.step, Step::PartFailed { .. })).then_some(())
    })
    .await;

    let b = spawn(&stack, &dir, &stack.database.url, "b");
    let (member_b, moved) = member_with_partitions(&dir, &[member_a]).await;
    let partition = moved[0];
    // More for the moved partition: B commits well past A's stale batch.
    for i in 0..10 {
        let order = placed_order(&format!("M{i}"), "PROD001", 1);
        let (key, payload) = message(&order);
        producer
            .send(FutureRecord::to(&stack.topic).partition(partition).key(key.as_bytes()).payload(&payload), Timeout::After(Duration::from_secs(10)))
            .await
            .expect("broker acknowledged");
    }
    let committed_by_b = eventually(Duration::from_secs(60), "B committing the moved partition", || async {
        steps(&dir, member_b).iter().rev().find_map(|r| match &r.step {
            Step::OffsetsCommitted { offsets, .. } => offsets.iter().find(|p| p.partition == partition && p.offset >= 10).map(|p| p.offset),
            _ => None,
        })
    })
    .await;
    stop(b).await;
    // Back to A, whose first batch is still in flight.
    eventually(Duration::from_secs(60), "the partition assigned back to A", || async {
        let records = steps(&dir, member_a);
        let revoked = records.iter().position(|r| matches!(&r.step, Step::Revoked { partitions } if partitions.contains(&partition)))?;
        records[revoked..].iter().any(|r| matches!(&r.step, Step::Assigned { partitions } if partitions.contains(&partition))).then_some(())
    })
    .await;
    assert!(!steps(&dir, member_a).iter().any(|r| matches!(r.step, Step::OffsetsRecorded { .. })), "A's first batch is still in flight");
    stack.execute(&format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role};")).await;
    eventually(Duration::from_secs(60), "A's stale batch finishing", || async {
        steps(&dir, member_a).iter().any(|r| matches!(r.step, Step::OffsetsRecorded { .. })).then_some(())
    })
    .await;
    stack.wait_for_orders(30, Duration::from_secs(60)).await;
    stop(a).await;

    // Every commit of every member, in order: per partition, never backwards.
    let mut commits: Vec<(i64, Uuid, &'static str, i32, i64)> = Vec::new();
    for (member, records) in read_traces(&dir) {
        let name = if member == member_a { "A" } else { "B" };
        for record in records {
            if let Step::OffsetsCommitted { offsets, .. } = &record.step {
                commits.extend(offsets.iter().map(|p| (record.at_us, member, name, p.partition, p.offset)));
            }
        }
    }
    commits.sort();
    let mut group: BTreeMap<i32, i64> = BTreeMap::new();
    for (_, _, name, p, offset) in &commits {
        let before = group.insert(*p, *offset).unwrap_or(0);
        assert!(*offset >= before, "P{p}'s committed offset moved backwards from {before} to {offset} ({name}); B had committed at least {committed_by_b}; traces in {}", dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
