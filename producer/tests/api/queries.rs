use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{assert_json_error, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_of_a_seeded_product() {
    let app = spawn_app().await;
    let response = app.get("/inventory/PROD001").await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["product_id"], "PROD001");
    let (available, reserved, total) = (
        body["available_quantity"].as_i64().unwrap(),
        body["reserved_quantity"].as_i64().unwrap(),
        body["total_quantity"].as_i64().unwrap(),
    );
    assert_eq!(available + reserved, total);
    assert!(body["product_name"].as_str().is_some());
    assert_json_error(app.get("/inventory/NOPE").await, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_404_until_stored_then_returned() {
    let app = spawn_app().await;
    assert_json_error(app.get("/orders/not-a-uuid").await, 400).await;
    let id = Uuid::now_v7();
    assert_json_error(app.get(&format!("/orders/{id}")).await, 404).await;

    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO orders (order_id, customer_id, product_id, quantity, amount, status, reason, created_at) \
             VALUES ($1, 'C', 'PROD001', 2, 12.50, 'rejected', 'insufficient_stock', now())",
            &[&id],
        )
        .await
        .unwrap();
    let response = app.get(&format!("/orders/{id}")).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["order_id"], id.to_string());
    assert_eq!(body["status"], "rejected");
    assert_eq!(body["reason"], "insufficient_stock");
    assert_eq!(body["amount"], 12.5);
    assert_eq!(body["quantity"], 2);
    assert_eq!(body["lines"], serde_json::json!([{"line_no": 1, "product_id": "PROD001", "quantity": 2, "amount": 12.5, "problem": null}]));
}
