//! Lanes (split.rs) and lane locks (reservation.rs): while a consumer meets other consumers
//! on its rows, its parts queue for each lane in PostgreSQL instead of failing NOWAIT on the
//! row and sleeping a backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use orderflow_common::command::Inbound;
use orderflow_common::db;
use orderflow_common::testing::TestDatabase;
use orderflow_consumer::reservation::LANE_LOCK_SPACE;
use orderflow_consumer::split::lane;
use orderflow_consumer::stats::Stats;
use orderflow_consumer::worker_pool::WorkerPool;

const PRODUCTS: [&str; 4] = ["PROD001", "PROD002", "PROD003", "PROD004"];
const HELD_FOR: Duration = Duration::from_millis(400);

fn batch() -> Vec<Inbound> {
    super::support::one_order_each(&PRODUCTS)
}

/// A writer that has just met another transaction on PROD001's row, so it is contended.
async fn contended_writer(lanes: bool) -> (TestDatabase, deadpool_postgres::Pool, WorkerPool) {
    let database = TestDatabase::create().await;
    let pool = db::pool(&database.settings()).expect("pool");
    db::migrate(&pool).await.expect("migrations");
    let writer = WorkerPool::new(pool.clone(), 4, Arc::new(Stats::default())).with_lanes(lanes);
    let mut client = pool.get().await.unwrap();
    let held = client.transaction().await.unwrap();
    held.execute("SELECT 1 FROM inventory WHERE product_id = 'PROD001' FOR UPDATE", &[]).await.unwrap();
    let never = CancellationToken::new();
    let messages = batch();
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        held.rollback().await.unwrap();
    };
    let (written, ()) = tokio::join!(writer.write(&messages, &never), release);
    assert!(written.expect("written").applied.lock_conflicts > 0, "the held row was met");
    drop(client);
    (database, pool, writer)
}

/// Another consumer's transaction: it holds PROD001's lane (as a contended consumer's part
/// does) and its row, for HELD_FOR. Returns the batch's conflicts and how long it took.
async fn write_while_another_consumer_holds_prod001(writer: &WorkerPool, pool: &deadpool_postgres::Pool) -> (u64, u64, Duration) {
    let mut client = pool.get().await.unwrap();
    let other = client.transaction().await.unwrap();
    let lane = lane("PROD001", 4) as i32;
    other.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LANE_LOCK_SPACE, &lane]).await.unwrap();
    other.execute("SELECT 1 FROM inventory WHERE product_id = 'PROD001' FOR UPDATE", &[]).await.unwrap();
    let never = CancellationToken::new();
    let messages = batch();
    let started = Instant::now();
    let release = async {
        tokio::time::sleep(HELD_FOR).await;
        other.commit().await.unwrap();
    };
    let (written, ()) = tokio::join!(writer.write(&messages, &never), release);
    let applied = written.expect("written").applied;
    (applied.lock_conflicts, applied.reserved, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_consumer_waits_for_the_lane_instead_of_conflicting_on_the_row() {
    let (_database, pool, writer) = contended_writer(true).await;
    let (conflicts, reserved, took) = write_while_another_consumer_holds_prod001(&writer, &pool).await;
    assert_eq!(conflicts, 0, "the part queued behind the lane's holder and found the row free");
    assert_eq!(reserved, 4, "every order reserved");
    assert!(took >= HELD_FOR, "it waited for the other transaction: {took:?}");
    // Still contended after a wait without conflicts: the next batch keeps its lanes, so it
    // too waits instead of failing on the row.
    let (conflicts, reserved, _) = write_while_another_consumer_holds_prod001(&writer, &pool).await;
    assert_eq!((conflicts, reserved), (0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lanes_off_the_same_batch_meets_the_row_and_retries() {
    let (_database, pool, writer) = contended_writer(false).await;
    let (conflicts, reserved, _) = write_while_another_consumer_holds_prod001(&writer, &pool).await;
    assert!(conflicts > 0, "no lane lock: the held row is a conflict");
    assert_eq!(reserved, 4, "and the retry still reserves every order");
}
