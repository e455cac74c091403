//! The dashboard end to end: a consumer reports itself into consumer_status, the producer's
//! snapshot task reads it with the inventory rows, and GET /dashboard/events streams it,
//! holds' ends (confirmed, cancelled, expired, refused commands) and sold stock included.

use std::time::Duration;

use serde_json::{json, Value};

use orderflow_common::testing::eventually;
use orderflow_producer::Application as Producer;

use crate::support::{fast_holds, Stack};

/// Reads server-sent events until `wanted` accepts a snapshot; returns that snapshot.
async fn next_snapshot_where(response: &mut reqwest::Response, buffer: &mut String, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.strip_prefix("event: snapshot\ndata: ") {
                let snapshot: Value = serde_json::from_str(data.trim_end()).expect("snapshot is JSON");
                if wanted(&snapshot) {
                    return snapshot;
                }
            }
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk()).await.expect("a matching snapshot within 30 s");
        buffer.push_str(std::str::from_utf8(&chunk.expect("stream read").expect("stream open")).expect("UTF-8"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_streams_consumers_outcomes_and_the_stock_of_hot_products() {
    let stack = Stack::start(4).await;
    let consumer = stack
        .start_consumer(|settings| {
            fast_holds(settings);
            settings.status_report_ms = 200;
        })
        .await;
    let mut settings = orderflow_producer::Settings::new(stack.kafka(), stack.database.settings());
    settings.dashboard.refresh_ms = 200;
    let producer = Producer::build(settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}", producer.port());
    tokio::spawn(producer.run_until_stopped());
    let http = reqwest::Client::new();

    let mut events = http.get(format!("{base}/dashboard/events?products=PROD005")).send().await.unwrap();
    assert_eq!(events.status().as_u16(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let port = u64::from(consumer.admin_port);
    let before = next_snapshot_where(&mut events, &mut buffer, |s| {
        s["consumers"].as_array().is_some_and(|c| c.iter().any(|c| c["admin_port"] == port && c["partitions"].as_array().is_some_and(|p| p.len() == 4)))
    })
    .await;
    // The watched product is there before any order for it, with its stock.
    let watched = before["products"].as_array().unwrap().iter().find(|p| p["product_id"] == "PROD005").expect("watched product shown");
    assert_eq!(watched["available"], 150);
    assert_eq!(watched["hot"], false);
    assert_eq!(before["consumers"][0]["state"], "running");
    assert_eq!(before["consumers"][0]["ready"], true);

    let orders: Vec<Value> = (0..30).map(|i| json!({"customer_id": format!("C{i}"), "product_id": "PROD004", "quantity": 2, "amount": 5})).collect();
    let response = http.post(format!("{base}/orders/batch")).json(&orders).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let placed: Value = response.json().await.unwrap();
    let ids: Vec<String> = placed["orders"].as_array().unwrap().iter().map(|o| o["order_id"].as_str().unwrap().to_owned()).collect();
    let unknown = json!({"customer_id": "X", "product_id": "NO-SUCH-PRODUCT", "quantity": 1, "amount": 1});
    assert_eq!(http.post(format!("{base}/order")).json(&unknown).send().await.unwrap().status().as_u16(), 202);

    // Totals are counters; the busiest products come from each report's interval, so they
    // may show one snapshot later than the totals that include them.
    let after = next_snapshot_where(&mut events, &mut buffer, |s| {
        s["totals"]["reserved"] == 30
            && s["totals"]["rejected"] == 1
            && s["products"].as_array().is_some_and(|p| p.iter().any(|p| p["product_id"] == "PROD004"))
    })
    .await;
    assert_eq!(after["totals"]["accepted"], 31);
    let hot = after["products"].as_array().unwrap().iter().find(|p| p["product_id"] == "PROD004").unwrap_or_else(|| panic!("hot product shown: {after}"));
    assert_eq!(hot["hot"], true);
    assert_eq!(hot["reserved"], 60);
    assert_eq!(hot["available"], 400 - 60);
    assert_eq!((hot["sold"].as_i64(), hot["received"].as_i64()), (Some(0), Some(400)));
    assert!(after["products"].as_array().unwrap().iter().any(|p| p["product_id"] == "PROD005"), "the watched product stays");
    // Latency was measured for the committed orders at some point; rates came from counters.
    let consumer_row: (i64,) = {
        let client = stack.pool.get().await.unwrap();
        let row = client.query_one("SELECT count(*) FROM consumer_status", &[]).await.unwrap();
        (row.get(0),)
    };
    assert_eq!(consumer_row.0, 1, "one row per consumer");
    let with_latency = next_snapshot_where(&mut events, &mut buffer, |_| true).await;
    for series in ["accepted", "reserved", "rejected", "confirmed", "cancelled", "expired", "refused"] {
        assert!(with_latency["rates"].as_object().unwrap().contains_key(series), "the chart has {series}");
    }

    // Holds end: 5 confirmed (10 units sold), 2 cancelled (4 units back), a confirm of a
    // cancelled order refused, and a 1 s hold of another product expired by the sweeper.
    let command = |id: &str, kind: &str| {
        let (request, what) = (http.post(format!("{base}/orders/{id}/{kind}")), format!("{kind} {id}"));
        async move { assert_eq!(request.send().await.unwrap().status().as_u16(), 202, "{what}") }
    };
    for id in &ids[..5] {
        command(id, "confirm").await;
    }
    for id in &ids[5..7] {
        command(id, "cancel").await;
    }
    let short = json!({"customer_id": "S", "product_id": "PROD005", "quantity": 3, "amount": 3, "hold_seconds": 1});
    assert_eq!(http.post(format!("{base}/order")).json(&short).send().await.unwrap().status().as_u16(), 202);
    let ended = next_snapshot_where(&mut events, &mut buffer, |s| {
        s["totals"]["confirmed"] == 5 && s["totals"]["cancelled"] == 2 && s["totals"]["expired"] == 1
    })
    .await;
    assert_eq!(ended["totals"]["refused"], 0);
    let hot = ended["products"].as_array().unwrap().iter().find(|p| p["product_id"] == "PROD004").expect("hot product shown");
    let stock = ["available", "reserved", "sold", "total", "received"].map(|k| hot[k].as_i64().unwrap());
    assert_eq!(stock, [340 + 4, 60 - 10 - 4, 10, 390, 400], "available, reserved, sold, total, received");
    let watched = ended["products"].as_array().unwrap().iter().find(|p| p["product_id"] == "PROD005").unwrap();
    assert_eq!((watched["available"].as_i64(), watched["reserved"].as_i64()), (Some(150), Some(0)), "the expired hold's units are back");
    // A late confirm of a cancelled order is refused, and counted as such.
    command(&ids[5], "confirm").await;
    next_snapshot_where(&mut events, &mut buffer, |s| s["totals"]["refused"] == 1).await;

    // A graceful stop removes the member's row, so it is not listed as gone.
    consumer.stop().await;
    eventually(Duration::from_secs(10), "status row removed", || async {
        let client = stack.pool.get().await.unwrap();
        let count: i64 = client.query_one("SELECT count(*) FROM consumer_status", &[]).await.unwrap().get(0);
        (count == 0).then_some(())
    })
    .await;
    let gone = next_snapshot_where(&mut events, &mut buffer, |s| s["consumers"].as_array().is_some_and(Vec::is_empty)).await;
    assert!(gone["gone"].as_array().unwrap().is_empty(), "{gone}");
}
