use std::time::Duration;

use serde_json::Value;

use crate::support::{message, placed_order, Stack};

/// Pause stops consumption without leaving the group, resume picks up where it stopped;
/// both need the bearer token, and /status shows state, partitions and recent batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_need_the_token_and_work() {
    let stack = Stack::start(2).await;
    let consumer = stack.start_consumer(|s| s.admin_token = Some("t0ken".into())).await;
    let admin = format!("http://127.0.0.1:{}", consumer.admin_port);
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>| {
        let mut request = http.post(format!("{admin}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(post("/pause", None).await.unwrap().status().as_u16(), 401);
    assert_eq!(post("/pause", Some("wrong")).await.unwrap().status().as_u16(), 401);
    let paused: Value = post("/pause", Some("t0ken")).await.unwrap().json().await.unwrap();
    assert_eq!(paused["state"], "paused");

    let orders: Vec<_> = (0..20).map(|i| placed_order(&format!("C{i}"), "PROD007", 1)).collect();
    stack.publish_raw(&stack.kafka_producer(), &orders.iter().map(message).collect::<Vec<_>>()).await;
    // Long enough for an unpaused consumer to have joined and processed everything.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(stack.order_count().await, 0, "nothing is consumed while paused");
    let status: Value = http.get(format!("{admin}/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["state"], "paused");
    assert_eq!(status["partitions"].as_array().unwrap().len(), 2, "still a member with its partitions: {status}");

    assert_eq!(post("/resume", Some("t0ken")).await.unwrap().status().as_u16(), 200);
    stack.wait_for_orders(20, Duration::from_secs(30)).await;
    consumer.wait_processed(20, Duration::from_secs(10)).await;
    let status: Value = http.get(format!("{admin}/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["state"], "running");
    let batches = status["batches"].as_array().unwrap();
    assert!(!batches.is_empty());
    let sizes: u64 = batches.iter().map(|b| b["size"].as_u64().unwrap()).sum();
    assert_eq!(sizes, 20);
    assert!(batches[0]["duration_ms"].as_f64().is_some() && batches[0]["lock_conflicts"].as_u64().is_some());
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_are_disabled_without_a_token() {
    let stack = Stack::start(1).await;
    let consumer = stack.start_consumer(|_| {}).await;
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/pause", consumer.admin_port))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("ADMIN_TOKEN"));
    consumer.stop().await;
}
