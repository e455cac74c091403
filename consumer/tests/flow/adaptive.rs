//! The parts a batch is split into adapt to lock conflicts (concurrency.rs): a batch that
//! met a held row halves them, a clean batch adds one back, up to WORKERS.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use orderflow_common::command::Inbound;
use orderflow_common::db;
use orderflow_common::testing::TestDatabase;
use orderflow_consumer::stats::Stats;
use orderflow_consumer::worker_pool::WorkerPool;

const PRODUCTS: [&str; 4] = ["PROD001", "PROD002", "PROD003", "PROD004"];

fn batch() -> Vec<Inbound> {
    super::support::one_order_each(&PRODUCTS)
}

/// Writes one batch over the four products while another transaction holds PROD001's row
/// for 300 ms; returns the lock conflicts the batch met.
async fn write_against_a_held_row(writer: &WorkerPool, pool: &deadpool_postgres::Pool) -> u64 {
    let mut client = pool.get().await.unwrap();
    let held = client.transaction().await.unwrap();
    held.execute("SELECT 1 FROM inventory WHERE product_id = 'PROD001' FOR UPDATE", &[]).await.unwrap();
    let never = CancellationToken::new();
    let messages = batch();
    let write = writer.write(&messages, &never);
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.rollback().await.unwrap();
    };
    let (written, ()) = tokio::join!(write, release);
    written.expect("written").applied.lock_conflicts
}

async fn writer(adaptive: bool) -> (TestDatabase, deadpool_postgres::Pool, WorkerPool) {
    let database = TestDatabase::create().await;
    let pool = db::pool(&database.settings()).expect("pool");
    db::migrate(&pool).await.expect("migrations");
    let writer = WorkerPool::new(pool.clone(), 4, Arc::new(Stats::default())).with_adaptive_parts(adaptive);
    (database, pool, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicted_batch_halves_the_parts_and_clean_batches_add_them_back_one_by_one() {
    let (_database, pool, writer) = writer(true).await;
    let never = CancellationToken::new();
    assert_eq!(writer.parts(), 4, "a consumer starts with all its workers");
    writer.write(&batch(), &never).await.expect("written");
    assert_eq!(writer.parts(), 4, "a clean batch keeps them");

    assert!(write_against_a_held_row(&writer, &pool).await > 0, "the held row was met");
    assert_eq!(writer.parts(), 2, "halved after a conflicted batch");
    assert!(write_against_a_held_row(&writer, &pool).await > 0);
    assert_eq!(writer.parts(), 1);
    assert!(write_against_a_held_row(&writer, &pool).await > 0);
    assert_eq!(writer.parts(), 1, "never fewer than one");

    for expected in [2, 3, 4, 4] {
        writer.write(&batch(), &never).await.expect("written");
        assert_eq!(writer.parts(), expected, "one more per clean batch, up to WORKERS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_adaptive_workers_off_a_conflicted_batch_keeps_all_parts() {
    let (_database, pool, writer) = writer(false).await;
    assert!(write_against_a_held_row(&writer, &pool).await > 0);
    assert_eq!(writer.parts(), 4);
}
