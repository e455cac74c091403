use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_when_everything_is_up() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    let response = app.get("/ready").await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["kafka"]["partitions"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_database_but_still_alive() {
    let app = spawn_app_with(|settings| {
        settings.database.url = "postgres://postgres@127.0.0.1:1/none".into();
        settings.database.timeout_ms = 500;
    })
    .await;
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    let response = app.get("/ready").await;
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["database"]["ok"], false);
    assert_eq!(body["kafka"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_orders_and_produce_latency() {
    let app = spawn_app().await;
    let order = crate::helpers::order("C", "PROD001", 1);
    assert_eq!(app.post("/order", &order).await.status().as_u16(), 202);
    assert_eq!(app.post("/order", &serde_json::json!({})).await.status().as_u16(), 400);
    let response = app.get("/metrics").await;
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    // The recorder is process-wide and other tests run in this process too, so check
    // presence and labels rather than exact totals.
    for expected in [
        r#"http_requests_total{route="/order",method="POST",status="202"}"#,
        r#"http_requests_total{route="/order",method="POST",status="400"}"#,
        "orders_accepted_total",
        r#"orders_refused_total{reason="validation"}"#,
        "kafka_produce_duration_seconds_bucket",
        r#"http_request_duration_seconds_bucket{route="/order""#,
        r#"db_pool_connections{state="in_use"}"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}
