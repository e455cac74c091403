use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde_json::json;

use orderflow_producer::Application as Producer;

use crate::support::Stack;

/// A flash sale: 2000 concurrent single orders from 2000 customers for one product with
/// stock 300, consumed by two group members whose workers contend for the same row lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_orders_for_300_units_reserve_exactly_300() {
    let stack = Stack::start(16).await;
    stack.set_stock("PROD001", 300).await;
    // Small batches so that the two members really interleave on the hot row.
    let small_batches = |s: &mut orderflow_consumer::Settings| {
        s.batch.max_messages = 50;
        s.batch.workers = 2;
    };
    let first = stack.start_consumer(small_batches).await;
    let second = stack.start_consumer(small_batches).await;

    let mut settings = orderflow_producer::Settings::new(stack.kafka(), stack.database.settings());
    settings.limits.per_ip_per_second = 0;
    settings.limits.global_per_second = 0;
    let producer = Producer::build(settings).await.unwrap();
    let url = format!("http://127.0.0.1:{}/order", producer.port());
    tokio::spawn(producer.run_until_stopped());

    let http = reqwest::Client::new();
    let statuses: Vec<u16> = stream::iter(0..2000)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let body = json!({"customer_id": format!("RACE-{i:04}"), "product_id": "PROD001", "quantity": 1, "amount": 9.99});
                http.post(url).json(&body).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
            }
        })
        .buffer_unordered(400)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "every order accepted");

    stack.wait_for_orders(2000, Duration::from_secs(120)).await;
    let (reserved, insufficient, other) = stack.status_counts("PROD001").await;
    assert_eq!((reserved, insufficient, other), (300, 1700, 0));
    stack.assert_invariants().await;
    let row = stack
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT available_quantity, reserved_quantity FROM inventory WHERE product_id = 'PROD001'", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 300));
    // The stats move just after the database commit that the count above saw.
    let processed = || first.stats.totals().processed + second.stats.totals().processed;
    orderflow_common::testing::eventually(Duration::from_secs(10), "both members' stats to count every order", || async {
        (processed() >= 2000).then_some(())
    })
    .await;
    first.stop().await;
    second.stop().await;
}
