//! Carts: orders with several lines, reserved all or nothing, first come first served with
//! single-line orders, exactly once under redelivery.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use orderflow_common::testing::eventually;
use orderflow_producer::Application as Producer;

use crate::support::{message, placed_cart, placed_order, read_topic, Stack};

/// A producer on the stack's broker and database, without rate limits; its base URL.
async fn start_producer(stack: &Stack) -> String {
    let mut settings = orderflow_producer::Settings::new(stack.kafka(), stack.database.settings());
    settings.limits.per_ip_per_second = 0;
    settings.limits.global_per_second = 0;
    let producer = Producer::build(settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", producer.port());
    tokio::spawn(producer.run_until_stopped());
    base
}

async fn place(http: &reqwest::Client, base: &str, body: Value) -> String {
    let response = http.post(format!("{base}/order")).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202, "{body}");
    response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned()
}

async fn fetch(http: &reqwest::Client, base: &str, id: &str) -> Value {
    eventually(Duration::from_secs(30), "order to be processed", || async {
        let response = http.get(format!("{base}/orders/{id}")).send().await.unwrap();
        if response.status().as_u16() == 404 {
            return None;
        }
        assert_eq!(response.status().as_u16(), 200);
        Some(response.json::<Value>().await.unwrap())
    })
    .await
}

/// (available, reserved) of a product.
async fn stock(stack: &Stack, product: &str) -> (i64, i64) {
    let row = stack
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT available_quantity, reserved_quantity FROM inventory WHERE product_id = $1", &[&product])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn line(product: &str, quantity: i64, amount: f64) -> Value {
    json!({"product_id": product, "quantity": quantity, "amount": amount})
}

/// One line short rejects the whole cart, and no other line's stock moves; GET shows each
/// line and which one was short. The same cart with enough stock takes every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_short_line_rejects_the_whole_cart_and_no_stock_moves() {
    let stack = Stack::start(4).await;
    for (product, units) in [("PROD001", 10), ("PROD002", 1), ("PROD003", 10)] {
        stack.set_stock(product, units).await;
    }
    let consumer = stack.start_consumer(|_| {}).await;
    let base = start_producer(&stack).await;
    let http = reqwest::Client::new();
    // One customer: one partition, so these are applied in the order they were placed.
    let cart = |second: i64| json!({"customer_id": "CART-1", "lines": [line("PROD001", 3, 10.5), line("PROD002", second, 0.1), line("PROD003", 4, 0.2)]});

    let short = place(&http, &base, cart(2)).await;
    let rejected = fetch(&http, &base, &short).await;
    assert_eq!((rejected["status"].as_str(), rejected["reason"].as_str()), (Some("rejected"), Some("insufficient_stock")));
    let problems: Vec<Value> = rejected["lines"].as_array().unwrap().iter().map(|l| l["problem"].clone()).collect();
    assert_eq!(problems, [Value::Null, json!("insufficient_stock"), Value::Null], "only the short line is named");
    for (product, expected) in [("PROD001", (10, 0)), ("PROD002", (1, 0)), ("PROD003", (10, 0))] {
        assert_eq!(stock(&stack, product).await, expected, "{product} untouched");
    }

    let fits = place(&http, &base, cart(1)).await;
    let reserved = fetch(&http, &base, &fits).await;
    assert_eq!(reserved["status"], "reserved");
    assert_eq!(reserved["product_id"], Value::Null, "a cart has no single product");
    assert_eq!(reserved["quantity"], 8);
    assert_eq!(reserved["amount"], 10.8);
    assert_eq!(
        reserved["lines"],
        json!([
            {"line_no": 1, "product_id": "PROD001", "quantity": 3, "amount": 10.5, "problem": null},
            {"line_no": 2, "product_id": "PROD002", "quantity": 1, "amount": 0.1, "problem": null},
            {"line_no": 3, "product_id": "PROD003", "quantity": 4, "amount": 0.2, "problem": null},
        ])
    );
    for (product, expected) in [("PROD001", (7, 3)), ("PROD002", (0, 1)), ("PROD003", (6, 4))] {
        assert_eq!(stock(&stack, product).await, expected, "{product} after the cart");
    }

    // An unknown product line rejects the cart as unknown_product and is named.
    let unknown = place(&http, &base, json!({"customer_id": "CART-1", "lines": [line("PROD001", 1, 1.0), line("NO-SUCH", 1, 1.0)]})).await;
    let unknown = fetch(&http, &base, &unknown).await;
    assert_eq!(unknown["reason"], "unknown_product");
    assert_eq!(unknown["lines"][1]["problem"], "unknown_product");
    assert_eq!(stock(&stack, "PROD001").await, (7, 3));

    // A single-line order shows today's fields and its one line; so does a one-line cart.
    let single = place(&http, &base, json!({"customer_id": "CART-1", "product_id": "PROD003", "quantity": 2, "amount": 6499.95})).await;
    let single = fetch(&http, &base, &single).await;
    assert_eq!((single["product_id"].as_str(), single["quantity"].as_i64(), single["amount"].as_f64()), (Some("PROD003"), Some(2), Some(6499.95)));
    assert_eq!(single["lines"], json!([{"line_no": 1, "product_id": "PROD003", "quantity": 2, "amount": 6499.95, "problem": null}]));
    let one_line = place(&http, &base, json!({"customer_id": "CART-1", "lines": [line("PROD003", 1, 2.0)]})).await;
    assert_eq!(fetch(&http, &base, &one_line).await["product_id"], "PROD003", "stored as a single-line order");

    stack.assert_invariants().await;
    consumer.stop().await;
}

/// Carts against single-line orders on two hot products, from two consumers with small
/// batches, 300 units each: 600 single-line orders per product and 600 carts of both.
/// Demand on each product is four times its stock, so both sell out; nothing is oversold and
/// every product's reserved stock is exactly the lines of its reserved orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_race_single_line_orders_for_two_hot_products_without_overselling() {
    let stack = Stack::start(16).await;
    stack.set_stock("PROD001", 300).await;
    stack.set_stock("PROD002", 300).await;
    let small_batches = |s: &mut orderflow_consumer::Settings| {
        s.batch.max_messages = 50;
        s.batch.workers = 2;
    };
    let first = stack.start_consumer(small_batches).await;
    let second = stack.start_consumer(small_batches).await;
    let base = start_producer(&stack).await;
    let http = reqwest::Client::new();

    let bodies: Vec<Value> = (0..1800)
        .map(|i| match i % 3 {
            0 => json!({"customer_id": format!("RACE-{i:04}"), "product_id": "PROD001", "quantity": 1, "amount": 9.99}),
            1 => json!({"customer_id": format!("RACE-{i:04}"), "product_id": "PROD002", "quantity": 1, "amount": 9.99}),
            _ => json!({"customer_id": format!("RACE-{i:04}"), "lines": [line("PROD001", 1, 9.99), line("PROD002", 1, 9.99)]}),
        })
        .collect();
    let statuses: Vec<u16> = stream::iter(bodies)
        .map(|body| {
            let (http, url) = (http.clone(), format!("{base}/order"));
            async move { http.post(url).json(&body).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(300)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "every order accepted");

    stack.wait_for_orders(1800, Duration::from_secs(120)).await;
    stack.assert_invariants().await;
    assert_eq!(stock(&stack, "PROD001").await, (0, 300));
    assert_eq!(stock(&stack, "PROD002").await, (0, 300));
    let client = stack.pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE line_count = 2 AND status = 'reserved'), \
                    count(*) FILTER (WHERE line_count = 2 AND status = 'rejected' AND reason = 'insufficient_stock'), \
                    count(*) FILTER (WHERE status = 'rejected' AND reason <> 'insufficient_stock') \
             FROM orders",
            &[],
        )
        .await
        .unwrap();
    let (carts_reserved, carts_rejected, other): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(carts_reserved + carts_rejected, 600);
    assert_eq!(other, 0);
    // A rejected cart names at least one short line, and only on a product that had run out.
    let unnamed: i64 = client
        .query_one(
            "SELECT count(*) FROM orders o WHERE o.line_count = 2 AND o.status = 'rejected' \
             AND NOT EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.order_id AND l.problem = 'insufficient_stock')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unnamed, 0);
    first.stop().await;
    second.stop().await;
}

/// On one partition, in one batch split four ways: a cart links PROD001, PROD002 and
/// PROD003, which single-line orders before and after it also want, and a later cart links
/// PROD003 and PROD004. They must all be decided in one transaction, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_spanning_products_other_orders_in_the_batch_touch_is_decided_in_offset_order() {
    let stack = Stack::start(1).await;
    for (product, units) in [("PROD001", 2), ("PROD002", 1), ("PROD003", 5), ("PROD004", 3), ("PROD005", 10)] {
        stack.set_stock(product, units).await;
    }
    let orders = vec![
        placed_order("C", "PROD001", 1),                                         // reserved: PROD001 1 left
        placed_cart("C", &[("PROD001", 1), ("PROD002", 1), ("PROD003", 2)]),     // reserved: 0, 0, 3 left
        placed_order("C", "PROD002", 1),                                         // rejected: PROD002 is out
        placed_order("C", "PROD003", 3),                                         // reserved: PROD003 0 left
        placed_cart("C", &[("PROD003", 1), ("PROD004", 1)]),                     // rejected: line 1 short
        placed_order("C", "PROD004", 3),                                         // reserved: the cart took nothing
        placed_order("C", "PROD005", 1),                                         // reserved, another component
        placed_cart("C", &[("PROD004", 1), ("PROD001", 1)]),                     // rejected: both lines short
    ];
    let producer = stack.kafka_producer();
    stack.publish_raw(&producer, &orders.iter().map(message).collect::<Vec<_>>()).await;
    // A long first wait: all eight must be in the first batch (they are in the broker already).
    let consumer = stack
        .start_consumer(|s| {
            s.batch.workers = 4;
            s.batch.max_wait_ms = 1000;
        })
        .await;
    stack.wait_for_orders(8, Duration::from_secs(30)).await;

    let client = stack.pool.get().await.unwrap();
    let mut outcomes = Vec::new();
    for order in &orders {
        let row = client
            .query_one("SELECT status, coalesce(reason, ''), processed_at FROM orders WHERE order_id = $1", &[&order.order_id])
            .await
            .unwrap();
        outcomes.push((row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, chrono::DateTime<chrono::Utc>>(2)));
    }
    let decided: Vec<(&str, &str)> = outcomes.iter().map(|(s, r, _)| (s.as_str(), r.as_str())).collect();
    assert_eq!(
        decided,
        [
            ("reserved", ""),
            ("reserved", ""),
            ("rejected", "insufficient_stock"),
            ("reserved", ""),
            ("rejected", "insufficient_stock"),
            ("reserved", ""),
            ("reserved", ""),
            ("rejected", "insufficient_stock"),
        ]
    );
    // The linked orders were written by one statement of one transaction (same part).
    let linked: Vec<_> = [0, 1, 2, 3, 4, 5, 7].iter().map(|&i| outcomes[i].2).collect();
    assert!(linked.windows(2).all(|w| w[0] == w[1]), "one transaction for the component: {linked:?}");
    let problems = |id| {
        let client = &client;
        async move {
            client
                .query("SELECT coalesce(problem, '') FROM order_lines WHERE order_id = $1 ORDER BY line_no", &[&id])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<_, String>(0))
                .collect::<Vec<String>>()
        }
    };
    assert_eq!(problems(orders[1].order_id).await, ["", "", ""]);
    assert_eq!(problems(orders[4].order_id).await, ["insufficient_stock", ""]);
    assert_eq!(problems(orders[7].order_id).await, ["insufficient_stock", "insufficient_stock"]);
    for (product, expected) in [("PROD001", (0, 2)), ("PROD002", (0, 1)), ("PROD003", (0, 5)), ("PROD004", (0, 3)), ("PROD005", (9, 1))] {
        assert_eq!(stock(&stack, product).await, expected, "{product}");
    }
    stack.assert_invariants().await;
    consumer.stop().await;
}

/// A cart delivered twice in one batch and again later, then the whole topic replayed by a
/// new group: applied once, its lines written once, nothing touched the second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_cart_is_applied_once() {
    let stack = Stack::start(4).await;
    stack.set_stock("PROD005", 10).await;
    stack.set_stock("PROD006", 10).await;
    let cart = placed_cart("CUST-DUP", &[("PROD005", 4), ("PROD006", 3)]);
    let others: Vec<_> = (0..100)
        .map(|i| match i % 3 {
            0 => placed_cart(&format!("C{i}"), &[("PROD006", 1), ("PROD005", 1)]),
            1 => placed_order(&format!("C{i}"), "PROD005", 1),
            _ => placed_order(&format!("C{i}"), "PROD006", 1),
        })
        .collect();
    let producer = stack.kafka_producer();
    stack.publish_raw(&producer, &[message(&cart), message(&cart)]).await;
    stack.publish_raw(&producer, &others.iter().map(message).collect::<Vec<_>>()).await;
    let consumer = stack.start_consumer(|s| s.batch.max_messages = 16).await;
    consumer.wait_processed(102, Duration::from_secs(30)).await;
    stack.publish_raw(&producer, &[message(&cart)]).await;
    consumer.wait_processed(103, Duration::from_secs(30)).await;
    stack.wait_for_orders(101, Duration::from_secs(10)).await;
    let totals = consumer.stats.totals();
    assert_eq!(totals.already_applied, 2, "both redeliveries recognised");
    let lines: i64 = stack.pool.get().await.unwrap().query_one("SELECT count(*) FROM order_lines", &[]).await.unwrap().get(0);
    assert_eq!(lines, 2 + 34 * 2, "every cart's lines once");
    stack.assert_invariants().await;
    consumer.stop().await;
    let before = snapshot(&stack).await;

    let replay = stack
        .start_consumer(|s| {
            s.group.group_id = stack.group("orderflow-replay");
            s.batch.max_messages = 16;
        })
        .await;
    replay.wait_processed(103, Duration::from_secs(60)).await;
    let totals = replay.stats.totals();
    assert_eq!((totals.already_applied, totals.reserved, totals.rejected), (103, 0, 0));
    assert_eq!(snapshot(&stack).await, before);
    stack.assert_invariants().await;
    replay.stop().await;
}

/// A cart message that breaks the rules (a product twice) is a dead letter naming the line;
/// the orders around it go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cart_message_is_a_dead_letter_naming_the_line() {
    let stack = Stack::start(1).await;
    let good = placed_cart("SAME", &[("PROD002", 1), ("PROD003", 1)]);
    let mut duplicate = serde_json::to_value(placed_cart("SAME", &[("PROD002", 1), ("PROD003", 1)])).unwrap();
    duplicate["lines"][1]["product_id"] = json!("PROD002");
    let producer = stack.kafka_producer();
    stack.publish_raw(&producer, &[("SAME".into(), serde_json::to_vec(&duplicate).unwrap()), message(&good)]).await;
    let consumer = stack.start_consumer(|_| {}).await;
    consumer.wait_processed(2, Duration::from_secs(30)).await;
    stack.wait_for_orders(1, Duration::from_secs(10)).await;
    let letters = read_topic(stack.broker.bootstrap_servers(), stack.dead_letter_topic.clone(), 1).await;
    let error = letters[0].2.iter().find(|(k, _)| k == orderflow_consumer::dead_letters::HEADER_ERROR).unwrap().1.clone();
    assert!(error.contains("lines[1].product_id"), "{error}");
    stack.assert_invariants().await;
    consumer.stop().await;
}

/// Inventory, orders and lines as text, timestamps included: equal means nothing was touched.
async fn snapshot(stack: &Stack) -> String {
    let client = stack.pool.get().await.unwrap();
    let mut text = String::new();
    for table in ["inventory i ORDER BY product_id", "orders o ORDER BY order_id", "order_lines l ORDER BY order_id, line_no"] {
        let alias = table.split(' ').nth(1).unwrap();
        let (name, order) = table.split_once(" ORDER BY ").unwrap();
        let row = client.query_one(&format!("SELECT string_agg({alias}::text, ';' ORDER BY {order}) FROM {name}"), &[]).await.unwrap();
        text.push_str(&row.get::<_, Option<String>>(0).unwrap_or_default());
        text.push('\n');
    }
    text
}
