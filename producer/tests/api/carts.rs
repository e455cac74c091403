//! The cart shape of POST /order and POST /orders/batch: `lines` instead of product_id,
//! quantity and amount, 1 to 50 lines, each product once, errors naming the line.

use serde_json::{json, Value};

use crate::helpers::{assert_json_error, order, spawn_app};

fn line(product: &str, quantity: i64) -> Value {
    json!({"product_id": product, "quantity": quantity, "amount": 2.5})
}

fn cart(lines: Vec<Value>) -> Value {
    json!({"customer_id": "CUST-CART", "lines": lines})
}

/// The (field, index) of each problem in a 400.
async fn problems(response: reqwest::Response) -> Vec<(String, Option<u64>)> {
    let error = assert_json_error(response, 400).await;
    let mut found: Vec<(String, Option<u64>)> = error["details"]
        .as_array()
        .unwrap_or_else(|| panic!("details in {error}"))
        .iter()
        .map(|d| (d["field"].as_str().unwrap().to_owned(), d["index"].as_u64()))
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_is_accepted_and_published_as_one_message_with_its_lines() {
    let app = spawn_app().await;
    let response = app.post("/order", &cart(vec![line("PROD001", 1), line("PROD002", 3), line("PROD003", 10_000)])).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    assert_eq!(app.published().await, 1, "one message for the whole cart");

    let fifty: Vec<Value> = (0..50).map(|i| line(&format!("P{i}"), 1)).collect();
    assert_eq!(app.post("/order", &cart(fifty)).await.status().as_u16(), 202);
    let batch = json!([order("C1", "PROD001", 1), cart(vec![line("PROD001", 1), line("PROD002", 1)]), cart(vec![line("PROD004", 2)])]);
    let response = app.post("/orders/batch", &batch).await;
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["accepted"], 3);
    assert_eq!(app.published().await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_line_is_named_with_its_index_and_nothing_is_published() {
    let app = spawn_app().await;
    let no_lines = cart(vec![]);
    assert_eq!(problems(app.post("/order", &no_lines).await).await, [("lines".to_owned(), None)]);
    let too_many: Vec<Value> = (0..51).map(|i| line(&format!("P{i}"), 1)).collect();
    let error = assert_json_error(app.post("/order", &cart(too_many)).await, 400).await;
    assert_eq!(error["details"][0]["field"], "lines");
    assert!(error["details"][0]["message"].as_str().unwrap().contains("1 to 50"), "{error}");

    let bad = cart(vec![
        line("PROD001", 1),
        json!({"product_id": "PROD002", "quantity": 0, "amount": 1.001}),
        json!({"product_id": "", "quantity": 1, "amount": 1, "colour": "red"}),
        json!("not a line"),
    ]);
    let expected: Vec<(String, Option<u64>)> = ["lines[1].amount", "lines[1].quantity", "lines[2].colour", "lines[2].product_id", "lines[3]"]
        .iter()
        .map(|f| ((*f).to_owned(), None))
        .collect();
    assert_eq!(problems(app.post("/order", &bad).await).await, expected);

    // Each product at most once: the repeat is named, with the line it repeats.
    let twice = cart(vec![line("PROD001", 1), line("PROD002", 1), line("PROD001", 2)]);
    let error = assert_json_error(app.post("/order", &twice).await, 400).await;
    assert_eq!(error["details"][0]["field"], "lines[2].product_id");
    assert!(error["details"][0]["message"].as_str().unwrap().contains("lines[0]"), "{error}");

    // Mixed shapes are ambiguous.
    let mixed = json!({"customer_id": "C", "product_id": "PROD001", "quantity": 1, "amount": 1, "lines": [line("PROD002", 1)]});
    assert_eq!(problems(app.post("/order", &mixed).await).await, [("lines".to_owned(), None)]);
    let not_an_array = json!({"customer_id": "C", "lines": {"product_id": "PROD001"}});
    assert_eq!(problems(app.post("/order", &not_an_array).await).await, [("lines".to_owned(), None)]);

    // In a batch, each problem carries the entry's index too.
    let batch = json!([order("C", "PROD001", 1), cart(vec![line("PROD001", 1), line("PROD001", 1)]), order("C", "PROD001", 0)]);
    assert_eq!(
        problems(app.post("/orders/batch", &batch).await).await,
        [("lines[1].product_id".to_owned(), Some(1)), ("quantity".to_owned(), Some(2))]
    );
    assert_eq!(app.published().await, 0);
}

/// Idempotency-Key works for carts as for single-line orders: a retry of the same cart gets the
/// same id and publishes nothing new; the same key with the lines in another order, or with the
/// same lines sent as separate orders, is another request (422).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_a_cart_and_refuses_another_body() {
    let app = spawn_app().await;
    let url = format!("{}/order", app.address);
    let post = |key: &'static str, body: Value| {
        let (client, url) = (app.client.clone(), url.clone());
        async move { client.post(url).header("Idempotency-Key", key).json(&body).send().await.unwrap() }
    };
    let body = cart(vec![line("PROD001", 1), line("PROD002", 2)]);
    let first = post("cart-key", body.clone()).await;
    assert_eq!(first.status().as_u16(), 202);
    let first: Value = first.json().await.unwrap();
    let again = post("cart-key", body).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["order_id"], first["order_id"]);
    assert_eq!(app.published().await, 1);

    let swapped = cart(vec![line("PROD002", 2), line("PROD001", 1)]);
    assert_json_error(post("cart-key", swapped).await, 422).await;
    let batch_url = format!("{}/orders/batch", app.address);
    let split = json!([
        {"customer_id": "CUST-CART", "product_id": "PROD001", "quantity": 1, "amount": 2.5},
        {"customer_id": "CUST-CART", "product_id": "PROD002", "quantity": 2, "amount": 2.5},
    ]);
    let response = app.client.post(&batch_url).header("Idempotency-Key", "batch-key").json(&split).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let as_cart = json!([cart(vec![line("PROD001", 1), line("PROD002", 2)])]);
    let response = app.client.post(&batch_url).header("Idempotency-Key", "batch-key").json(&as_cart).send().await.unwrap();
    assert_json_error(response, 422).await;
    assert_eq!(app.published().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_takes_hold_seconds_validated_like_a_single_line_order() {
    let app = spawn_app().await;
    let mut held = cart(vec![line("PROD001", 1), line("PROD002", 1)]);
    held["hold_seconds"] = json!(120);
    assert_eq!(app.post("/order", &held).await.status().as_u16(), 202);
    held["hold_seconds"] = json!(86_401);
    assert_eq!(problems(app.post("/order", &held).await).await, [("hold_seconds".to_owned(), None)]);
    held["hold_seconds"] = json!(0);
    let batch = json!([order("C1", "PROD001", 1), held]);
    assert_eq!(problems(app.post("/orders/batch", &batch).await).await, [("hold_seconds".to_owned(), Some(1))]);
    assert_eq!(app.published().await, 1, "only the valid cart");
}
