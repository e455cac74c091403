use serde_json::{json, Value};

use crate::helpers::{assert_json_error, order, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_accepted_in_request_order() {
    let app = spawn_app().await;
    let batch: Vec<Value> = (0..250).map(|i| order(&format!("CUST{i}"), "PROD002", 1)).collect();
    let response = app.post("/orders/batch", &json!(batch)).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 250);
    let ids: Vec<&str> = body["orders"].as_array().unwrap().iter().map(|o| o["order_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 250);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "UUIDv7 ids are handed out in request order");
    sorted.dedup();
    assert_eq!(sorted.len(), 250);
    assert_eq!(app.published().await, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_entry_rejects_the_batch_names_each_problem_and_publishes_nothing() {
    let app = spawn_app().await;
    let mut batch: Vec<Value> = (0..10).map(|i| order(&format!("C{i}"), "PROD001", 1)).collect();
    batch[3] = json!({"customer_id": "C3", "product_id": "PROD001", "quantity": 0, "amount": 1});
    batch[7] = json!({"customer_id": "", "product_id": "PROD001", "quantity": 1, "amount": 1.234});
    batch[9] = json!("not an order");
    let error = assert_json_error(app.post("/orders/batch", &json!(batch)).await, 400).await;
    let mut found: Vec<(u64, String)> = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["index"].as_u64().unwrap(), d["field"].as_str().unwrap().to_owned()))
        .collect();
    found.sort();
    let expected: Vec<(u64, String)> =
        vec![(3, "quantity".into()), (7, "amount".into()), (7, "customer_id".into()), (9, "".into())];
    assert_eq!(found, expected);
    assert_eq!(app.published().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_limits() {
    let app = spawn_app().await;
    assert_json_error(app.post("/orders/batch", &json!([])).await, 400).await;
    assert_json_error(app.post("/orders/batch", &order("C", "P", 1)).await, 400).await;
    let too_many: Vec<Value> = (0..5001).map(|i| order(&format!("C{i}"), "PROD001", 1)).collect();
    assert_json_error(app.post("/orders/batch", &json!(too_many)).await, 400).await;
    let huge = format!("[{}]", vec![r#"{"customer_id":"C","product_id":"P","quantity":1,"amount":1}"#; 80_000].join(","));
    assert_json_error(app.post_raw("/orders/batch", huge).await, 413).await;
    assert_eq!(app.published().await, 0);
    let max: Vec<Value> = (0..5000).map(|i| order(&format!("C{i}"), "PROD001", 1)).collect();
    assert_eq!(app.post("/orders/batch", &json!(max)).await.status().as_u16(), 202);
    assert_eq!(app.published().await, 5000);
}
