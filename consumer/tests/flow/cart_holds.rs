//! Holds on whole carts (issue #11 stage 2): confirm, cancel and expiry move every line's
//! stock together, a cancel right after the cart's 202 cancels it, and the events of
//! `order-events` carry the lines.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use orderflow_common::events::{event_id, EventLine, EventType, OrderEvent};
use orderflow_common::testing::eventually;

use crate::support::{fast_holds, Stack};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn place(&self, body: Value) -> Uuid {
        let response = self.http.post(format!("{}/order", self.base)).json(&body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202, "{body}");
        response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().parse().unwrap()
    }

    async fn command(&self, order: Uuid, kind: &str, body: Option<Value>) -> Uuid {
        let mut request = self.http.post(format!("{}/orders/{order}/{kind}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202, "{kind} {order}");
        response.json::<Value>().await.unwrap()["command_id"].as_str().unwrap().parse().unwrap()
    }

    async fn wait_status(&self, id: Uuid, status: &str, decided: usize) -> Value {
        eventually(Duration::from_secs(30), &format!("order {id} to be {status} with {decided} commands decided"), || async {
            let response = self.http.get(format!("{}/orders/{id}", self.base)).send().await.unwrap();
            if response.status().as_u16() != 200 {
                return None;
            }
            let order: Value = response.json().await.unwrap();
            let done = order["commands"].as_array().unwrap().iter().filter(|c| c["outcome"] != "pending").count();
            (order["status"] == status && done >= decided).then_some(order)
        })
        .await
    }

    /// [available, reserved, total, sold, received] of a product.
    async fn stock(&self, product: &str) -> [i64; 5] {
        let inventory: Value = self.http.get(format!("{}/inventory/{product}", self.base)).send().await.unwrap().json().await.unwrap();
        ["available_quantity", "reserved_quantity", "total_quantity", "sold_quantity", "received_quantity"].map(|k| inventory[k].as_i64().unwrap())
    }
}

fn line(product: &str, quantity: i64) -> Value {
    json!({"product_id": product, "quantity": quantity, "amount": 1.5})
}

fn lines(pairs: &[(&str, i32)]) -> Vec<EventLine> {
    pairs.iter().map(|(p, q)| EventLine { product_id: (*p).to_owned(), quantity: *q }).collect()
}

fn by_id(events: &[OrderEvent]) -> HashMap<Uuid, &OrderEvent> {
    events.iter().map(|e| (e.event_id, e)).collect()
}

fn hold_seconds(order: &Value) -> i64 {
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(order[k].as_str().unwrap()).unwrap();
    (at("expires_at") - at("processed_at")).num_seconds()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_and_cancel_move_every_line_of_a_cart_and_events_carry_the_lines() {
    let stack = Stack::start(4).await;
    for product in ["PROD004", "PROD005", "PROD006"] {
        stack.set_stock(product, 10).await;
    }
    let consumer = stack.start_consumer(fast_holds).await;
    let api = Api { base: stack.start_api().await, http: reqwest::Client::new() };

    let x = api.place(json!({"customer_id": "X", "lines": [line("PROD004", 2), line("PROD005", 3)]})).await;
    let y = api.place(json!({"customer_id": "Y", "hold_seconds": 600, "lines": [line("PROD004", 1), line("PROD006", 4)]})).await;
    let z = api.place(json!({"customer_id": "Z", "product_id": "PROD004", "quantity": 1, "amount": 1})).await;
    let placed_x = api.wait_status(x, "reserved", 0).await;
    let placed_y = api.wait_status(y, "reserved", 0).await;
    api.wait_status(z, "reserved", 0).await;
    assert_eq!((hold_seconds(&placed_x), hold_seconds(&placed_y)), (900, 600), "a cart holds like a single-line order");
    assert_eq!(api.stock("PROD004").await, [6, 4, 10, 0, 10]);

    // Separate batches: the commands find their carts' lines in order_lines.
    let confirm_x = api.command(x, "confirm", None).await;
    api.wait_status(x, "confirmed", 1).await;
    assert_eq!(api.stock("PROD004").await, [6, 2, 8, 2, 10], "the confirm sold the cart's PROD004 line");
    assert_eq!(api.stock("PROD005").await, [7, 0, 7, 3, 10], "and its PROD005 line, in the same transaction");
    stack.assert_invariants().await;

    let cancel_y = api.command(y, "cancel", None).await;
    api.wait_status(y, "cancelled", 1).await;
    assert_eq!(api.stock("PROD004").await, [7, 1, 8, 2, 10], "the cancel gave the cart's PROD004 line back");
    assert_eq!(api.stock("PROD006").await, [10, 0, 10, 0, 10], "and its PROD006 line");
    stack.assert_invariants().await;

    // Too late for both: refused, nothing moves.
    let cancel_x = api.command(x, "cancel", None).await;
    let refused = api.wait_status(x, "confirmed", 2).await;
    let decided = refused["commands"].as_array().unwrap().iter().find(|c| c["command_id"] == cancel_x.to_string()).unwrap().clone();
    assert_eq!((decided["outcome"].as_str(), decided["reason"].as_str()), (Some("refused"), Some("already_confirmed")));
    assert_eq!(api.stock("PROD005").await, [7, 0, 7, 3, 10]);

    let x_lines = lines(&[("PROD004", 2), ("PROD005", 3)]);
    let y_lines = lines(&[("PROD004", 1), ("PROD006", 4)]);
    let expected = [
        (event_id(x, EventType::Reserved), x_lines.clone()),
        (event_id(y, EventType::Reserved), y_lines.clone()),
        (event_id(confirm_x, EventType::Confirmed), x_lines.clone()),
        (event_id(cancel_y, EventType::Cancelled), y_lines),
        (event_id(cancel_x, EventType::CancelRefused), x_lines),
    ];
    let single_id = event_id(z, EventType::Reserved);
    let mut ids: Vec<Uuid> = expected.iter().map(|(id, _)| *id).collect();
    ids.push(single_id);
    let events = stack.wait_for_event_ids(&ids, Duration::from_secs(20)).await;
    let events = by_id(&events);
    for (id, lines) in expected {
        let event = events[&id];
        assert_eq!(event.lines, lines, "{event:?}");
        assert_eq!((event.product_id.as_deref(), event.quantity), (None, None), "a cart has no single product: {event:?}");
    }
    assert!(events[&event_id(y, EventType::Reserved)].expires_at.is_some());
    let single = events[&single_id];
    assert_eq!((single.product_id.as_deref(), single.quantity), (Some("PROD004"), Some(1)), "single-line events keep their fields");
    assert_eq!(single.lines, lines(&[("PROD004", 1)]), "and carry their one line");
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_right_after_the_carts_202_cancels_every_line() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD007", 5).await;
    stack.set_stock("PROD008", 5).await;
    let consumer = stack.start_consumer(fast_holds).await;
    let api = Api { base: stack.start_api().await, http: reqwest::Client::new() };

    let cart = api.place(json!({"customer_id": "Q", "lines": [line("PROD007", 5), line("PROD008", 2)]})).await;
    // The cart may still be in Kafka: the body names its customer, so the command lands in
    // the cart's partition, after it.
    api.command(cart, "cancel", Some(json!({"customer_id": "Q"}))).await;
    let cancelled = api.wait_status(cart, "cancelled", 1).await;
    assert_eq!(cancelled["reason"], "cancel_command");
    assert_eq!(cancelled["lines"].as_array().unwrap().len(), 2);
    assert_eq!(api.stock("PROD007").await, [5, 0, 5, 0, 5]);
    assert_eq!(api.stock("PROD008").await, [5, 0, 5, 0, 5]);
    // Its units are back for the next customer: all five of PROD007.
    let next = api.place(json!({"customer_id": "R", "product_id": "PROD007", "quantity": 5, "amount": 1})).await;
    api.wait_status(next, "reserved", 0).await;
    stack.assert_invariants().await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cart_gives_back_every_line_and_a_late_confirm_is_refused() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD009", 10).await;
    stack.set_stock("PROD010", 10).await;
    let consumer = stack.start_consumer(fast_holds).await;
    let api = Api { base: stack.start_api().await, http: reqwest::Client::new() };

    // Two carts sharing PROD009 and a single-line order on it, all due within a second: the
    // sweeper sums the lines per product.
    let a = api.place(json!({"customer_id": "A", "hold_seconds": 1, "lines": [line("PROD009", 2), line("PROD010", 3)]})).await;
    let b = api.place(json!({"customer_id": "B", "hold_seconds": 1, "lines": [line("PROD010", 1), line("PROD009", 4)]})).await;
    let c = api.place(json!({"customer_id": "C", "product_id": "PROD009", "quantity": 1, "amount": 1, "hold_seconds": 1})).await;
    let keep = api.place(json!({"customer_id": "K", "lines": [line("PROD009", 1), line("PROD010", 1)]})).await;
    for id in [a, b, c] {
        let expired = api.wait_status(id, "expired", 0).await;
        assert_eq!(expired["reason"], "hold_expired");
    }
    api.wait_status(keep, "reserved", 0).await;
    assert_eq!(api.stock("PROD009").await, [9, 1, 10, 0, 10], "only the live cart's line is held");
    assert_eq!(api.stock("PROD010").await, [9, 1, 10, 0, 10]);
    stack.assert_invariants().await;

    let late = api.command(a, "confirm", None).await;
    let refused = api.wait_status(a, "expired", 1).await;
    assert_eq!((refused["commands"][0]["outcome"].as_str(), refused["commands"][0]["reason"].as_str()), (Some("refused"), Some("hold_expired")));
    assert_eq!(api.stock("PROD009").await, [9, 1, 10, 0, 10], "nothing moved");

    let ids = [event_id(a, EventType::Expired), event_id(b, EventType::Expired), event_id(c, EventType::Expired), event_id(late, EventType::ConfirmRefused)];
    let events = stack.wait_for_event_ids(&ids, Duration::from_secs(20)).await;
    let events = by_id(&events);
    assert_eq!(events[&ids[0]].lines, lines(&[("PROD009", 2), ("PROD010", 3)]));
    assert_eq!(events[&ids[1]].lines, lines(&[("PROD010", 1), ("PROD009", 4)]));
    assert_eq!((events[&ids[2]].product_id.as_deref(), events[&ids[2]].lines.len()), (Some("PROD009"), 1));
    assert_eq!(events[&ids[3]].reason.as_deref(), Some("hold_expired"));
    consumer.stop().await;
}
