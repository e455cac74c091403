//! Holds that end: confirm, cancel and expiry end to end (HTTP API, Kafka, consumer,
//! PostgreSQL, `order-events`), refusals on the order and as events, a cancel right after
//! the order's 202, a command before its order, redelivered commands, and no event for a
//! transaction that rolled back.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use orderflow_common::command::CommandKind;
use orderflow_common::events::{event_id, EventType, OrderEvent};
use orderflow_common::testing::eventually;

use crate::support::{command, fast_holds, message, placed_order, Stack};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn place(&self, body: Value) -> Uuid {
        let response = self.http.post(format!("{}/order", self.base)).json(&body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202);
        response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().parse().unwrap()
    }

    /// POSTs a command; returns its command_id.
    async fn command(&self, order: Uuid, kind: &str, body: Option<Value>) -> Uuid {
        let mut request = self.http.post(format!("{}/orders/{order}/{kind}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202, "{kind} {order}");
        response.json::<Value>().await.unwrap()["command_id"].as_str().unwrap().parse().unwrap()
    }

    async fn order(&self, id: Uuid) -> Option<Value> {
        let response = self.http.get(format!("{}/orders/{id}", self.base)).send().await.unwrap();
        (response.status().as_u16() == 200).then_some(response.json().await.unwrap())
    }

    /// Waits until the order is stored with `status` (and, if given, that many commands decided).
    async fn wait_status(&self, id: Uuid, status: &str, decided: usize) -> Value {
        eventually(Duration::from_secs(30), &format!("order {id} to be {status} with {decided} commands decided"), || async {
            let order = self.order(id).await?;
            let done = order["commands"].as_array().unwrap().iter().filter(|c| c["outcome"] != "pending").count();
            (order["status"] == status && done >= decided).then_some(order)
        })
        .await
    }

    async fn inventory(&self, product: &str) -> Value {
        self.http.get(format!("{}/inventory/{product}", self.base)).send().await.unwrap().json().await.unwrap()
    }
}

async fn start(stack: &Stack) -> Api {
    Api { base: stack.start_api().await, http: reqwest::Client::new() }
}

fn stock(inventory: &Value) -> [i64; 5] {
    ["available_quantity", "reserved_quantity", "total_quantity", "sold_quantity", "received_quantity"].map(|k| inventory[k].as_i64().unwrap())
}

fn by_id(events: &[OrderEvent]) -> HashMap<Uuid, &OrderEvent> {
    events.iter().map(|e| (e.event_id, e)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_and_cancel_end_holds_and_late_commands_are_refused_visibly() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD003", 10).await;
    let consumer = stack.start_consumer(fast_holds).await;
    let api = start(&stack).await;

    let a = api.place(json!({"customer_id": "A", "product_id": "PROD003", "quantity": 3, "amount": 30})).await;
    let b = api.place(json!({"customer_id": "B", "product_id": "PROD003", "quantity": 2, "amount": 20, "hold_seconds": 600})).await;
    let placed_b = api.wait_status(b, "reserved", 0).await;
    let placed_a = api.wait_status(a, "reserved", 0).await;
    let hold = |order: &Value| {
        let at = |k: &str| chrono::DateTime::parse_from_rfc3339(order[k].as_str().unwrap()).unwrap();
        (at("expires_at") - at("processed_at")).num_seconds()
    };
    assert_eq!((hold(&placed_a), hold(&placed_b)), (900, 600), "default hold, and the order's own");
    assert_eq!(stock(&api.inventory("PROD003").await), [5, 5, 10, 0, 10]);

    let confirm_a = api.command(a, "confirm", None).await;
    let confirmed = api.wait_status(a, "confirmed", 1).await;
    assert_eq!(confirmed["reason"], "confirm_command");
    assert_eq!(stock(&api.inventory("PROD003").await), [5, 2, 7, 3, 10], "confirm moves held units to sold");

    let cancel_b = api.command(b, "cancel", Some(json!({"customer_id": "B"}))).await;
    let cancelled = api.wait_status(b, "cancelled", 1).await;
    assert_eq!(cancelled["reason"], "cancel_command");
    assert_eq!(stock(&api.inventory("PROD003").await), [7, 0, 7, 3, 10], "cancel gives the units back");

    // Too late: refused, visible on the order, nothing moves.
    let cancel_a = api.command(a, "cancel", None).await;
    let confirm_b = api.command(b, "confirm", None).await;
    let a_now = api.wait_status(a, "confirmed", 2).await;
    let b_now = api.wait_status(b, "cancelled", 2).await;
    let refusal = |order: &Value, id: Uuid| {
        let c = order["commands"].as_array().unwrap().iter().find(|c| c["command_id"] == id.to_string()).unwrap().clone();
        (c["outcome"].as_str().unwrap().to_owned(), c["reason"].as_str().map(str::to_owned))
    };
    assert_eq!(refusal(&a_now, cancel_a), ("refused".into(), Some("already_confirmed".into())));
    assert_eq!(refusal(&b_now, confirm_b), ("refused".into(), Some("hold_cancelled".into())));
    assert_eq!(refusal(&a_now, confirm_a), ("applied".into(), None));
    assert_eq!(stock(&api.inventory("PROD003").await), [7, 0, 7, 3, 10]);
    stack.assert_invariants().await;

    // Every change as an event, keyed by customer, with its stable id.
    let expected = [
        (event_id(a, EventType::Reserved), EventType::Reserved, None),
        (event_id(b, EventType::Reserved), EventType::Reserved, None),
        (event_id(confirm_a, EventType::Confirmed), EventType::Confirmed, None),
        (event_id(cancel_b, EventType::Cancelled), EventType::Cancelled, None),
        (event_id(cancel_a, EventType::CancelRefused), EventType::CancelRefused, Some("already_confirmed")),
        (event_id(confirm_b, EventType::ConfirmRefused), EventType::ConfirmRefused, Some("hold_cancelled")),
    ];
    let events = stack.wait_for_event_ids(&expected.map(|(id, ..)| id), Duration::from_secs(20)).await;
    let events = by_id(&events);
    for (id, kind, reason) in expected {
        let event = events[&id];
        assert_eq!((event.kind, event.reason.as_deref()), (kind, reason), "{event:?}");
        assert_eq!(event.product_id.as_deref(), Some("PROD003"));
    }
    assert!(events[&event_id(b, EventType::Reserved)].expires_at.is_some());
    assert_eq!(events[&event_id(confirm_a, EventType::Confirmed)].quantity, Some(3));
    let totals = consumer.stats.totals();
    assert_eq!((totals.confirmed, totals.cancelled, totals.refused), (1, 1, 2));
    assert!(totals.events_published >= 6);
    for series in ["orders_confirmed_total", "orders_cancelled_total", r#"commands_refused_total{kind="cancel",reason="already_confirmed"}"#] {
        assert!(consumer.metric(series).await.is_some_and(|v| v >= 1.0), "{series}");
    }
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_right_after_the_orders_202_cancels_it() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD004", 5).await;
    let consumer = stack.start_consumer(fast_holds).await;
    let api = start(&stack).await;
    let mut orders = Vec::new();
    for i in 0..5 {
        let customer = format!("FAST{i}");
        let id = api.place(json!({"customer_id": customer, "product_id": "PROD004", "quantity": 1, "amount": 1})).await;
        // No wait: the order may still be in Kafka, so the client names its customer.
        api.command(id, "cancel", Some(json!({"customer_id": customer}))).await;
        orders.push(id);
    }
    for id in orders {
        let order = api.wait_status(id, "cancelled", 1).await;
        assert_eq!(order["commands"][0]["outcome"], "applied", "{order}");
    }
    assert_eq!(stock(&api.inventory("PROD004").await), [5, 0, 5, 0, 5]);
    stack.assert_invariants().await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_hold_expires_its_units_come_back_and_a_late_confirm_is_refused() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD005", 4).await;
    let consumer = stack.start_consumer(fast_holds).await;
    let api = start(&stack).await;
    let short = api.place(json!({"customer_id": "S", "product_id": "PROD005", "quantity": 3, "amount": 3, "hold_seconds": 1})).await;
    let long = api.place(json!({"customer_id": "L", "product_id": "PROD005", "quantity": 1, "amount": 1})).await;
    api.wait_status(long, "reserved", 0).await;
    let expired = api.wait_status(short, "expired", 0).await;
    assert_eq!(expired["reason"], "hold_expired");
    assert_eq!(stock(&api.inventory("PROD005").await), [3, 1, 4, 0, 4], "only the short hold's units came back");

    let late = api.command(short, "confirm", None).await;
    let refused = api.wait_status(short, "expired", 1).await;
    assert_eq!((refused["commands"][0]["outcome"].as_str(), refused["commands"][0]["reason"].as_str()), (Some("refused"), Some("hold_expired")));
    let ids = [event_id(short, EventType::Reserved), event_id(short, EventType::Expired), event_id(late, EventType::ConfirmRefused)];
    let events = stack.wait_for_event_ids(&ids, Duration::from_secs(20)).await;
    let expired_event = by_id(&events)[&ids[1]].clone();
    assert_eq!((expired_event.quantity, expired_event.reason.as_deref()), (Some(3), Some("hold_expired")));
    assert_eq!(events.iter().filter(|e| e.kind == EventType::Expired).count(), 1, "expired once");
    stack.assert_invariants().await;
    assert_eq!(consumer.stats.totals().expired, 1);
    assert!(consumer.metric("orders_expired_total").await.is_some_and(|v| v >= 1.0));
    consumer.stop().await;
}

/// A confirm whose hold is past its deadline expires the order on the spot, even if the
/// sweeper has not come by: the outcome depends on the clock, not on the sweeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_confirm_expires_the_hold_itself_when_the_sweeper_has_not() {
    let stack = Stack::start(2).await;
    stack.set_stock("PROD006", 2).await;
    let order = placed_order("LATE", "PROD006", 2);
    let held = orderflow_common::order::PlacedOrder { hold_seconds: Some(1), ..order.clone() };
    let producer = stack.kafka_producer();
    // A sweeper that never runs within the test.
    let consumer = stack.start_consumer(|s| s.holds.sweep_interval_ms = 3_600_000).await;
    stack.publish_raw(&producer, &[message(&held)]).await;
    consumer.wait_processed(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let confirm = command(CommandKind::Confirm, &order);
    stack.publish_command(&producer, &confirm).await;
    consumer.wait_processed(2, Duration::from_secs(30)).await;
    let client = stack.pool.get().await.unwrap();
    let row = client.query_one("SELECT status, reason FROM orders WHERE order_id = $1", &[&order.order_id]).await.unwrap();
    assert_eq!((row.get::<_, &str>(0), row.get::<_, &str>(1)), ("expired", "hold_expired"));
    let row = client.query_one("SELECT outcome, reason FROM order_commands WHERE command_id = $1", &[&confirm.command_id]).await.unwrap();
    assert_eq!((row.get::<_, &str>(0), row.get::<_, &str>(1)), ("refused", "hold_expired"));
    stack.assert_invariants().await;
    // The expiry went through the outbox, the refusal with the batch.
    let ids = [event_id(order.order_id, EventType::Expired), event_id(confirm.command_id, EventType::ConfirmRefused)];
    stack.wait_for_event_ids(&ids, Duration::from_secs(20)).await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_before_its_order_waits_and_is_applied_right_after_the_placement() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD007", 3).await;
    let consumer = stack.start_consumer(fast_holds).await;
    let producer = stack.kafka_producer();
    let order = placed_order("EARLY", "PROD007", 2);
    let cancel = command(CommandKind::Cancel, &order);
    stack.publish_command(&producer, &cancel).await;
    eventually(Duration::from_secs(30), "the cancel to be parked", || async {
        let client = stack.pool.get().await.unwrap();
        let row = client.query_opt("SELECT outcome FROM order_commands WHERE command_id = $1", &[&cancel.command_id]).await.unwrap();
        row.filter(|row| row.get::<_, &str>(0) == "pending").map(|_| ())
    })
    .await;
    assert_eq!(consumer.stats.totals().parked, 1);

    stack.publish_raw(&producer, &[message(&order)]).await;
    let status = eventually(Duration::from_secs(30), "the order to be placed and cancelled", || async {
        let client = stack.pool.get().await.unwrap();
        let row = client.query_opt("SELECT status FROM orders WHERE order_id = $1", &[&order.order_id]).await.unwrap()?;
        Some(row.get::<_, String>(0))
    })
    .await;
    assert_eq!(status, "cancelled", "placed first, then the parked cancel, in one transaction");
    let client = stack.pool.get().await.unwrap();
    let outcome: String = client.query_one("SELECT outcome FROM order_commands WHERE command_id = $1", &[&cancel.command_id]).await.unwrap().get(0);
    assert_eq!(outcome, "applied");
    stack.assert_invariants().await;
    let ids = [event_id(order.order_id, EventType::Reserved), event_id(cancel.command_id, EventType::Cancelled)];
    stack.wait_for_event_ids(&ids, Duration::from_secs(20)).await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_command_is_decided_once_and_never_refused() {
    let stack = Stack::start(2).await;
    stack.set_stock("PROD008", 5).await;
    let producer = stack.kafka_producer();
    let order = placed_order("REDO", "PROD008", 2);
    let confirm = command(CommandKind::Confirm, &order);
    stack.publish_raw(&producer, &[message(&order)]).await;
    stack.publish_command(&producer, &confirm).await;
    // In the same batch, and again in a later one.
    stack.publish_command(&producer, &confirm).await;
    let consumer = stack.start_consumer(fast_holds).await;
    consumer.wait_processed(3, Duration::from_secs(30)).await;
    stack.publish_command(&producer, &confirm).await;
    consumer.wait_processed(4, Duration::from_secs(30)).await;

    let totals = consumer.stats.totals();
    assert_eq!((totals.confirmed, totals.refused), (1, 0), "{totals:?}");
    let client = stack.pool.get().await.unwrap();
    let row = client.query_one("SELECT status, sold_quantity FROM orders JOIN inventory USING (product_id) WHERE order_id = $1", &[&order.order_id]).await.unwrap();
    assert_eq!((row.get::<_, &str>(0), row.get::<_, i64>(1)), ("confirmed", 2));
    stack.assert_invariants().await;
    let confirmed = event_id(confirm.command_id, EventType::Confirmed);
    let events = stack.wait_for_event_ids(&[confirmed], Duration::from_secs(20)).await;
    assert!(events.iter().all(|e| e.kind != EventType::ConfirmRefused), "a redelivery is no refusal");
    // The later redelivery re-published the rebuilt event under the same id.
    assert!(events.iter().filter(|e| e.event_id == confirmed).count() >= 2, "rebuilt and published again");
    consumer.stop().await;
}

/// A transaction that fails after deciding (here a trigger refuses the command's row) rolls
/// back, and its events are never published: they are built from what committed only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_for_a_change_that_rolled_back() {
    let stack = Stack::start(2).await;
    stack.set_stock("PROD009", 5).await;
    let producer = stack.kafka_producer();
    let order = placed_order("RB", "PROD009", 1);
    let confirm = command(CommandKind::Confirm, &order);
    let consumer = stack.start_consumer(fast_holds).await;
    stack.publish_raw(&producer, &[message(&order)]).await;
    consumer.wait_processed(1, Duration::from_secs(30)).await;
    stack
        .execute(
            "CREATE FUNCTION refuse_commands() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'test refuses commands' USING ERRCODE = 'check_violation'; END $$; \
             CREATE TRIGGER refuse_commands BEFORE INSERT ON order_commands FOR EACH ROW EXECUTE FUNCTION refuse_commands();",
        )
        .await;
    stack.publish_command(&producer, &confirm).await;
    eventually(Duration::from_secs(30), "the confirm's transaction to fail", || async {
        consumer.metric(r#"consumer_permanent_errors_total{sqlstate="23514"}"#).await.filter(|n| *n >= 3.0)
    })
    .await;
    let events = stack.read_events(usize::MAX, Duration::from_secs(2)).await;
    assert!(events.iter().any(|e| e.event_id == event_id(order.order_id, EventType::Reserved)));
    assert!(events.iter().all(|e| e.command_id != Some(confirm.command_id)), "no event of the rolled-back confirm: {events:?}");
    let status: String =
        stack.pool.get().await.unwrap().query_one("SELECT status FROM orders WHERE order_id = $1", &[&order.order_id]).await.unwrap().get(0);
    assert_eq!(status, "reserved");

    stack.execute("DROP TRIGGER refuse_commands ON order_commands").await;
    stack.wait_for_event_ids(&[event_id(confirm.command_id, EventType::Confirmed)], Duration::from_secs(20)).await;
    stack.assert_invariants().await;
    consumer.stop().await;
}
