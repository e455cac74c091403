use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_json_error, order, spawn_app, spawn_app_with, TOPIC};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_order_is_accepted_with_a_uuid_v7_and_published_once() {
    let app = spawn_app().await;
    let response = app.post("/order", &order("CUST001", "PROD001", 5)).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    let id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(app.published().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_field_gets_a_400_naming_it_and_nothing_is_published() {
    let app = spawn_app().await;
    let long = "x".repeat(65);
    let cases = [
        (json!({"product_id": "P", "quantity": 1, "amount": 1}), "customer_id"),
        (json!({"customer_id": "", "product_id": "P", "quantity": 1, "amount": 1}), "customer_id"),
        (json!({"customer_id": long, "product_id": "P", "quantity": 1, "amount": 1}), "customer_id"),
        (json!({"customer_id": "C\u{7}", "product_id": "P", "quantity": 1, "amount": 1}), "customer_id"),
        (json!({"customer_id": "C", "product_id": 12, "quantity": 1, "amount": 1}), "product_id"),
        (json!({"customer_id": "C", "product_id": "P", "quantity": 0, "amount": 1}), "quantity"),
        (json!({"customer_id": "C", "product_id": "P", "quantity": 10001, "amount": 1}), "quantity"),
        (json!({"customer_id": "C", "product_id": "P", "quantity": 1.5, "amount": 1}), "quantity"),
        (json!({"customer_id": "C", "product_id": "P", "quantity": "1", "amount": 1}), "quantity"),
        (json!({"customer_id": "C", "product_id": "P", "quantity": 1, "amount": -1}), "amount"),
        (json!({"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1.005}), "amount"),
        (json!({"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1e12}), "amount"),
        (json!({"customer_id": "C", "product_id": "P", "quantity": 1, "amount": 1, "extra": true}), "extra"),
    ];
    for (body, field) in cases {
        let error = assert_json_error(app.post("/order", &body).await, 400).await;
        let named: Vec<&str> = error["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
        assert_eq!(named, [field], "for {body}");
    }
    assert_eq!(app.published().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_json_errors() {
    let app = spawn_app().await;
    assert_json_error(app.post_raw("/order", "{\"customer_id\": ").await, 400).await;
    assert_json_error(app.post_raw("/order", "").await, 400).await;
    assert_json_error(app.post_raw("/order", "[1, 2]").await, 400).await;
    assert_json_error(app.post_raw("/order", "null").await, 400).await;
    let too_big = format!("{{\"customer_id\": \"{}\"}}", "x".repeat(64 * 1024));
    assert_json_error(app.post_raw("/order", too_big).await, 413).await;
    assert_eq!(app.published().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    assert_json_error(app.get("/nope").await, 404).await;
    assert_json_error(app.get("/order").await, 405).await;
    let wrong_method = app.post("/inventory/PROD001", &json!({})).await;
    assert_eq!(wrong_method.headers()["allow"], "GET");
    assert_json_error(wrong_method, 405).await;
    let trace = app.client.request(reqwest::Method::TRACE, format!("{}/health", app.address)).send().await.unwrap();
    assert_json_error(trace, 405).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_gets_503_and_no_claim() {
    // Nothing listens on port 1: the message can never be acknowledged.
    let app = spawn_app_with(|settings| {
        settings.kafka.brokers = "127.0.0.1:1".into();
        settings.publish.timeout_ms = 700;
    })
    .await;
    let started = std::time::Instant::now();
    let error = assert_json_error(app.post("/order", &order("C", "PROD001", 1)).await, 503).await;
    assert!(error.get("order_id").is_none(), "a 503 claims no order id: {error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "answers within the publish deadline");
    assert_eq!(app.published().await, 0, "the test cluster got nothing either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(|settings| settings.limits.per_ip_per_second = 3).await;
    // All six at once: the limiter refills one request every 333 ms, and six requests sent
    // one after the other span that on a broker that takes ~100 ms to acknowledge (tansu).
    let order = order("C", "PROD001", 1);
    let responses = futures::future::join_all((0..6).map(|_| app.post("/order", &order))).await;
    let mut statuses = Vec::new();
    for response in responses {
        statuses.push(response.status().as_u16());
        if response.status().as_u16() == 429 {
            let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry_after >= 1);
            assert_json_error(response, 429).await;
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 3, "{statuses:?}");
    assert!(statuses.contains(&429));
    assert_eq!(app.published().await, 3);
    // Probes are never limited.
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    let _ = TOPIC;
}

/// The broker goes away: orders get 503, never 202. It comes back (an empty dev broker on the
/// same address): the API recovers by itself, without a restart. Always on a mock of its
/// own, even with ORDERFLOW_TEST_KAFKA_BROKERS set: the test stops and restarts the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_recovers_by_itself_when_the_broker_returns() {
    use orderflow_common::dev_broker::DevBroker;
    let broker = DevBroker::start("127.0.0.1:0".parse().unwrap(), &[(TOPIC.into(), 4)]).await.unwrap();
    let addr = broker.addr();
    let app = spawn_app_with(|s| {
        s.kafka.brokers = addr.to_string();
        s.kafka.topic = TOPIC.into();
        s.kafka.extra = Default::default();
        s.publish.timeout_ms = 1500;
    })
    .await;
    assert_eq!(app.post("/order", &order("C", "PROD001", 1)).await.status().as_u16(), 202);

    drop(broker);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..3 {
        assert_json_error(app.post("/order", &order("C", "PROD001", 1)).await, 503).await;
    }

    let _back = DevBroker::start(addr, &[(TOPIC.into(), 4)]).await.expect("same address again");
    let recovered = orderflow_common::testing::eventually(std::time::Duration::from_secs(60), "a 202 after the broker returned", || async {
        (app.post("/order", &order("C", "PROD001", 1)).await.status().as_u16() == 202).then_some(())
    })
    .await;
    let _ = recovered;
}
