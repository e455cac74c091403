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

/// Slowloris: many connections that send half a request line and stall. The API keeps
/// answering meanwhile, and closes the stalled connections after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_and_do_not_block_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|s| s.limits.client_header_timeout_ms = 1000).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"POST /order HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        stalled.push(stream);
    }
    let response = app.get("/health").await;
    assert_eq!(response.status().as_u16(), 200, "served while 200 clients stall");

    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut closed = 0;
    for stream in &mut stalled {
        let mut buffer = [0u8; 256];
        // The server answered 408 and closed, or just closed: either way a read ends.
        match tokio::time::timeout(std::time::Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, stalled.len(), "every stalled connection was cut off");
}
