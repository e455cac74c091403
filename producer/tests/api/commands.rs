//! POST /orders/{id}/confirm and /cancel at the API: routing by the order's customer, the
//! 404 for an order the API cannot know yet, validation, Idempotency-Key; GET shows holds.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_json_error, order, spawn_app, TestApp};

async fn store_order(app: &TestApp, customer: &str) -> Uuid {
    let id = Uuid::now_v7();
    app.pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO orders (order_id, customer_id, product_id, quantity, amount, status, reason, created_at, expires_at) \
             VALUES ($1, $2, 'PROD001', 2, 12.50, 'reserved', NULL, now(), now() + interval '10 minutes')",
            &[&id, &customer],
        )
        .await
        .unwrap();
    id
}

async fn post_command(app: &TestApp, path: &str, key: Option<&str>, body: Option<&str>) -> reqwest::Response {
    let mut request = app.client.post(format!("{}{path}", app.address));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_owned());
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_a_stored_order_is_published_with_an_empty_body() {
    let app = spawn_app().await;
    let id = store_order(&app, "C7").await;
    for kind in ["confirm", "cancel"] {
        let response = post_command(&app, &format!("/orders/{id}/{kind}"), None, None).await;
        assert_eq!(response.status().as_u16(), 202, "{kind}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["order_id"], id.to_string());
        assert_eq!(body["status"], "accepted");
        assert!(body["command_id"].as_str().unwrap().parse::<Uuid>().is_ok());
    }
    // The order's customer, named again, is fine; another one is a conflict naming the field.
    let same = post_command(&app, &format!("/orders/{id}/cancel"), None, Some(r#"{"customer_id": "C7"}"#)).await;
    assert_eq!(same.status().as_u16(), 202);
    let other = assert_json_error(post_command(&app, &format!("/orders/{id}/cancel"), None, Some(r#"{"customer_id": "C8"}"#)).await, 409).await;
    assert!(other["error"].as_str().unwrap().contains("customer_id"), "{other}");
    assert_eq!(app.published().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_api_does_not_know_needs_its_customer_id() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let unknown = assert_json_error(post_command(&app, &format!("/orders/{id}/cancel"), None, None).await, 404).await;
    let message = unknown["error"].as_str().unwrap();
    assert!(message.contains("not processed yet") && message.contains("customer_id"), "{message}");
    assert_eq!(app.published().await, 0, "nothing published for a 404");

    // Named: published keyed by that customer (the order may still be in Kafka).
    let response = post_command(&app, &format!("/orders/{id}/cancel"), None, Some(r#"{"customer_id": "C9"}"#)).await;
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(app.published().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_naming_the_problem() {
    let app = spawn_app().await;
    let id = store_order(&app, "C1").await;
    assert_json_error(post_command(&app, "/orders/not-a-uuid/confirm", None, None).await, 400).await;
    for (body, field) in [(r#"{"customer_id": ""}"#, "customer_id"), (r#"{"customer_id": 5}"#, "customer_id"), (r#"{"why": "x"}"#, "why")] {
        let error = assert_json_error(post_command(&app, &format!("/orders/{id}/confirm"), None, Some(body)).await, 400).await;
        assert_eq!(error["details"][0]["field"], field, "{body}");
    }
    assert_json_error(post_command(&app, &format!("/orders/{id}/confirm"), None, Some("{oops")).await, 400).await;
    assert_json_error(post_command(&app, &format!("/orders/{id}/confirm"), None, Some("[]")).await, 400).await;
    let huge = format!(r#"{{"customer_id": "{}"}}"#, "x".repeat(10_000));
    assert_json_error(post_command(&app, &format!("/orders/{id}/confirm"), None, Some(&huge)).await, 413).await;
    assert_json_error(post_command(&app, &format!("/orders/{id}/confirm"), Some("bad key"), None).await, 400).await;
    assert_json_error(app.get(&format!("/orders/{id}/confirm")).await, 405).await;
    assert_eq!(app.published().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_key_republishes_nothing_new() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let body = r#"{"customer_id": "C3"}"#;
    let first: Value = post_command(&app, &format!("/orders/{id}/confirm"), Some("cmd-1"), Some(body)).await.json().await.unwrap();
    let again = post_command(&app, &format!("/orders/{id}/confirm"), Some("cmd-1"), Some(body)).await;
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["command_id"], first["command_id"]);
    assert_eq!(app.published().await, 1);
    // The same key for a cancel, or for another order, is another request.
    assert_json_error(post_command(&app, &format!("/orders/{id}/cancel"), Some("cmd-1"), Some(body)).await, 422).await;
    assert_json_error(post_command(&app, &format!("/orders/{}/confirm", Uuid::now_v7()), Some("cmd-1"), Some(body)).await, 422).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_shows_its_hold_and_commands_and_inventory_its_sold_units() {
    let app = spawn_app().await;
    let id = store_order(&app, "C1").await;
    let command = Uuid::now_v7();
    app.pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO order_commands (command_id, order_id, customer_id, kind, outcome, reason, issued_at, received_at, decided_at) \
             VALUES ($1, $2, 'C1', 'cancel', 'refused', 'already_confirmed', now(), now(), now())",
            &[&command, &id],
        )
        .await
        .unwrap();
    let body: Value = app.get(&format!("/orders/{id}")).await.json().await.unwrap();
    assert_eq!(body["status"], "reserved");
    assert!(body["expires_at"].as_str().is_some(), "{body}");
    assert!(body["status_changed_at"].as_str().is_some(), "{body}");
    assert_eq!(body["commands"][0]["command_id"], command.to_string());
    assert_eq!((body["commands"][0]["outcome"].as_str(), body["commands"][0]["reason"].as_str()), (Some("refused"), Some("already_confirmed")));

    let inventory: Value = app.get("/inventory/PROD001").await.json().await.unwrap();
    assert_eq!(inventory["sold_quantity"], 0);
    assert_eq!(inventory["received_quantity"], inventory["total_quantity"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_seconds_is_validated_like_the_other_fields() {
    let app = spawn_app().await;
    let mut held = order("C1", "PROD001", 1);
    held["hold_seconds"] = json!(60);
    assert_eq!(app.post("/order", &held).await.status().as_u16(), 202);
    held["hold_seconds"] = json!(0);
    let error = assert_json_error(app.post("/order", &held).await, 400).await;
    assert_eq!(error["details"][0]["field"], "hold_seconds");
    let mut fine = order("C1", "PROD001", 1);
    fine["hold_seconds"] = json!(86_400);
    let error = assert_json_error(app.post("/orders/batch", &json!([fine, held])).await, 400).await;
    assert_eq!((error["details"][0]["index"].as_u64(), error["details"][0]["field"].as_str()), (Some(1), Some("hold_seconds")));
    assert_eq!(app.published().await, 1);
}
