//! The reservation statements are prepared once per connection and run for the life of
//! the consumer. PostgreSQL switches a prepared statement to a generic plan after a few
//! runs, chosen for the table sizes of that moment and blind to the array parameter's
//! length. A consumer that started on a small catalogue then kept a sequential scan with a
//! linear `= ANY($1)` search after the catalogue grew to 100,000 products: about a
//! millisecond per order. Every execution must be planned for its own parameters.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use orderflow_common::command::Inbound;
use orderflow_common::db;
use orderflow_common::order::{Line, Lines, ValidOrder};
use orderflow_common::testing::TestDatabase;
use orderflow_consumer::stats::Stats;
use orderflow_consumer::worker_pool::WorkerPool;

fn line(product: &str) -> Line {
    Line { product_id: product.into(), quantity: 1, amount_cents: 100 }
}

fn order(product: &str) -> ValidOrder {
    ValidOrder { order_id: Uuid::now_v7(), customer_id: "CUST1".into(), lines: Lines::One(line(product)), placed_at: Utc::now(), hold_seconds: None }
}

fn cart(products: &[&str]) -> ValidOrder {
    let lines = Lines::Cart(products.iter().map(|p| line(p)).collect());
    ValidOrder { order_id: Uuid::now_v7(), customer_id: "CUST1".into(), lines, placed_at: Utc::now(), hold_seconds: None }
}

#[tokio::test]
async fn reservation_statements_are_never_run_with_a_generic_plan() {
    let database = TestDatabase::create().await;
    let mut settings = database.settings();
    // One connection: the prepared statements inspected below are the ones the writes used.
    settings.pool_size = 1;
    let pool = db::pool(&settings).expect("pool");
    db::migrate(&pool).await.expect("migrations");
    let writer = WorkerPool::new(pool.clone(), 1, Arc::new(Stats::default()));
    let never = CancellationToken::new();

    // Well past the five custom plans after which PostgreSQL considers a generic one.
    for _ in 0..12 {
        let batch = vec![order("PROD001"), order("PROD002"), order("NO-SUCH-PRODUCT"), cart(&["PROD003", "PROD004"])]
            .into_iter()
            .map(Inbound::Order)
            .collect::<Vec<_>>();
        writer.write(&batch, &never).await.expect("written");
    }

    let client = pool.get().await.expect("connection");
    let rows = client
        .query("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements", &[])
        .await
        .expect("prepared statements");
    let reservation: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)))
        .filter(|(statement, _, _)| statement.contains("inventory") || statement.contains("orders") || statement.contains("order_lines"))
        .collect();
    assert!(reservation.len() >= 5, "the reservation statements were prepared, the cart lines' insert too: {reservation:?}");
    for (statement, generic, custom) in &reservation {
        assert_eq!(*generic, 0, "generic plan used for {statement}");
        assert!(*custom >= 12, "planned for every execution: {custom} custom plans for {statement}");
    }
}

/// On a catalogue of 100,000 products, the stock update of a part over 1,500 of them probes
/// the primary key. With PostgreSQL's default random_page_cost (4, for spinning disks) it
/// was a hash join over a sequential scan of the whole table: 58.6 ms against 10.9 ms
/// (db.rs sets 1.1 for our sessions).
#[tokio::test]
async fn the_stock_update_of_a_wide_part_probes_the_primary_key() {
    let database = TestDatabase::create().await;
    let pool = db::pool(&database.settings()).expect("pool");
    db::migrate(&pool).await.expect("migrations");
    let client = pool.get().await.expect("connection");
    client
        .batch_execute(
            "INSERT INTO inventory (product_id, product_name, available_quantity, total_quantity, received_quantity) \
             SELECT 'CAT' || lpad(i::text, 6, '0'), 'catalogue item', 100, 100, 100 FROM generate_series(0, 99999) AS i; \
             ANALYZE inventory",
        )
        .await
        .expect("catalogue");
    // The arrays go in as literals: a parameterized EXPLAIN may plan generically, with an
    // array of unknown length (10 rows), which always probes; the consumer's executions are
    // planned for their real lengths (plan_cache_mode, above).
    let products: Vec<String> = (0..1500).map(|i| format!("CAT{:06}", i * 66)).collect();
    let zeros = format!("'{{{}}}'", vec!["0"; products.len()].join(","));
    let mut statement = orderflow_consumer::reservation::MOVE_STOCK.to_owned();
    for parameter in ["$5", "$4", "$3", "$2"] {
        statement = statement.replace(parameter, &zeros);
    }
    let statement = statement.replace("$1", &format!("'{{{}}}'", products.join(",")));
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {statement}"), &[])
        .await
        .expect("explain")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    // A probe per product is a nested loop over the array. A hash join reads the whole table
    // and a merge join walks the whole index (both seen at random_page_cost 4).
    assert!(plan.contains("Nested Loop") && plan.contains("inventory_pkey"), "one primary-key probe per product:\n{plan}");
}
