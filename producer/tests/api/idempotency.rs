use serde_json::{json, Value};

use crate::helpers::{assert_json_error, order, spawn_app};

async fn post_with_key(client: &reqwest::Client, url: &str, key: &str, body: &Value) -> reqwest::Response {
    client.post(url).header("Idempotency-Key", key).json(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_key_gets_the_same_id_on_any_instance() {
    let app = spawn_app().await;
    let body = order("C1", "PROD001", 2);
    let first = post_with_key(&app.client, &format!("{}/order", app.address), "key-1", &body).await;
    assert_eq!(first.status().as_u16(), 202);
    let first: Value = first.json().await.unwrap();

    // Field order and spacing differ, the order is the same: still a retry.
    let reordered = json!({"amount": 19.99, "quantity": 2, "product_id": "PROD001", "customer_id": "C1"});
    let again = post_with_key(&app.client, &format!("{}/order", app.address), "key-1", &reordered).await;
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["order_id"], first["order_id"]);

    // A second instance (or the same one after a restart) knows the key too.
    let sibling = app.start_sibling(|_| {}).await;
    let elsewhere: Value = post_with_key(&app.client, &format!("{sibling}/order"), "key-1", &body).await.json().await.unwrap();
    assert_eq!(elsewhere["order_id"], first["order_id"]);
    assert_eq!(app.published().await, 1, "one message, whatever the retries");

    // Without a key every request is new.
    app.post("/order", &body).await;
    app.post("/order", &body).await;
    assert_eq!(app.published().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_body_is_422_and_publishes_nothing() {
    let app = spawn_app().await;
    let url = format!("{}/order", app.address);
    assert_eq!(post_with_key(&app.client, &url, "key-2", &order("C1", "PROD001", 1)).await.status().as_u16(), 202);
    assert_json_error(post_with_key(&app.client, &url, "key-2", &order("C1", "PROD001", 3)).await, 422).await;
    // The same key on the batch route is another request too.
    let batch = json!([order("C1", "PROD001", 1)]);
    assert_json_error(post_with_key(&app.client, &format!("{}/orders/batch", app.address), "key-2", &batch).await, 422).await;
    let too_long = "k".repeat(256);
    assert_json_error(post_with_key(&app.client, &url, &too_long, &order("C1", "PROD001", 1)).await, 400).await;
    assert_json_error(post_with_key(&app.client, &url, "has space", &order("C1", "PROD001", 1)).await, 400).await;
    assert_eq!(app.published().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_retry_returns_the_same_ids() {
    let app = spawn_app().await;
    let url = format!("{}/orders/batch", app.address);
    let batch = json!((0..20).map(|i| order(&format!("C{i}"), "PROD002", 1)).collect::<Vec<_>>());
    let first: Value = post_with_key(&app.client, &url, "batch-1", &batch).await.json().await.unwrap();
    let again: Value = post_with_key(&app.client, &url, "batch-1", &batch).await.json().await.unwrap();
    assert_eq!(first["orders"], again["orders"]);
    assert_eq!(again["accepted"], 20);
    assert_eq!(app.published().await, 20);
}

/// The first attempt could not reach the broker (503, maybe partly published). The retry
/// publishes exactly the orders the first attempt meant, with the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_503_publishes_the_original_orders() {
    let app = spawn_app().await;
    let broken = app
        .start_sibling(|s| {
            s.kafka.brokers = "127.0.0.1:1".into();
            s.publish.timeout_ms = 500;
        })
        .await;
    let body = order("C9", "PROD003", 1);
    assert_json_error(post_with_key(&app.client, &format!("{broken}/order"), "key-3", &body).await, 503).await;
    let stored: Value = app
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT orders FROM idempotency_keys WHERE idempotency_key = 'key-3'", &[])
        .await
        .unwrap()
        .get(0);
    let retried: Value = post_with_key(&app.client, &format!("{}/order", app.address), "key-3", &body).await.json().await.unwrap();
    assert_eq!(retried["order_id"], stored[0]["order_id"]);
    assert_eq!(app.published().await, 1);
}

/// A key with bytes outside visible ASCII used to be read as "no key", so each retry placed
/// the order again. It is a 400 naming the header, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_bytes_outside_visible_ascii_is_400_not_ignored() {
    use reqwest::header::HeaderValue;
    let app = spawn_app().await;
    let body = order("C1", "PROD001", 1);
    let keys = [
        HeaderValue::from_bytes("clé-1".as_bytes()).unwrap(),
        HeaderValue::from_bytes(b"key\xff2").unwrap(),
        HeaderValue::from_bytes(b"key\t3").unwrap(),
    ];
    for key in keys {
        for (path, body) in [("/order", body.clone()), ("/orders/batch", json!([body.clone()]))] {
            let response = app.client.post(format!("{}{path}", app.address)).header("Idempotency-Key", key.clone()).json(&body).send().await.unwrap();
            let error = assert_json_error(response, 400).await;
            assert!(error["error"].as_str().unwrap().contains("Idempotency-Key"), "{path} {key:?}: {error}");
        }
    }
    assert_eq!(app.published().await, 0);
}

/// A control character other than tab never reaches the handler: the HTTP parser refuses
/// the request. Still a 400, and still nothing published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_control_character_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let body = serde_json::to_vec(&order("C1", "PROD001", 1)).unwrap();
    let host = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST /order HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nIdempotency-Key: key\x01four\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(app.published().await, 0);
}
