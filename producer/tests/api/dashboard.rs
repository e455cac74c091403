//! GET /dashboard, its event stream and its assets, on the producer alone.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{assert_json_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_page_is_served_and_a_bad_product_list_is_a_400_naming_the_problem() {
    let app = spawn_app().await;
    let page = app.get("/dashboard").await;
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/dashboard/events") && html.contains("/dashboard/assets/uPlot.iife.min.js"));

    let empty = assert_json_error(app.get("/dashboard/events?products=PROD001,,PROD002").await, 400).await;
    assert!(empty["error"].as_str().unwrap().contains("products[1]"), "{empty}");
    let many: Vec<String> = (0..21).map(|i| format!("P{i}")).collect();
    let too_many = assert_json_error(app.get(&format!("/dashboard/events?products={}", many.join(","))).await, 400).await;
    assert!(too_many["error"].as_str().unwrap().contains("at most 20"), "{too_many}");
    assert_json_error(app.get("/dashboard/events?product=PROD001").await, 400).await;
    assert_json_error(app.post_raw("/dashboard/events", "").await, 405).await;
}

#[tokio::test]
async fn the_chart_library_comes_from_the_configured_directory_or_a_404_says_how_to_install_it() {
    let dir = std::env::temp_dir().join(format!("orderflow-assets-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("uPlot.iife.min.js"), "var uPlot = function () {};").unwrap();
    let app = spawn_app_with(|settings| settings.dashboard.assets_dir = dir.clone()).await;
    let script = app.get("/dashboard/assets/uPlot.iife.min.js").await;
    assert_eq!(script.status().as_u16(), 200);
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert_eq!(script.text().await.unwrap(), "var uPlot = function () {};");
    let missing = assert_json_error(app.get("/dashboard/assets/uPlot.min.css").await, 404).await;
    assert!(missing["error"].as_str().unwrap().contains("npm ci"), "{missing}");
    // Only the library's files, nothing else from that directory or above it.
    assert_json_error(app.get("/dashboard/assets/..%2F..%2Fetc%2Fpasswd").await, 404).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_event_stream_sends_the_history_then_snapshots_with_this_producers_accepted_orders() {
    let app = spawn_app_with(|settings| settings.dashboard.refresh_ms = 100).await;
    let placed = app.post("/order", &crate::helpers::order("C1", "PROD001", 1)).await;
    assert_eq!(placed.status().as_u16(), 202);
    let mut events = app.get("/dashboard/events?products=PROD002").await;
    assert_eq!(events.status().as_u16(), 200);
    let mut text = String::new();
    let mut read = 0;
    // The snapshot made before the order may come first; the next ones count it.
    let snapshot = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            text.push_str(std::str::from_utf8(&events.chunk().await.unwrap().expect("stream open")).unwrap());
            while let Some(at) = text[read..].find("event: snapshot\ndata: ").map(|at| at + read) {
                let Some(end) = text[at..].find("\n\n") else { break };
                read = at + end;
                let snapshot: Value = serde_json::from_str(&text[at + "event: snapshot\ndata: ".len()..at + end]).unwrap();
                if snapshot["totals"]["accepted"] == 1 {
                    return snapshot;
                }
            }
        }
    })
    .await
    .expect("a snapshot counting the order within 20 s");
    assert!(text.starts_with("event: history\ndata: ["), "history comes first: {}", &text[..text.len().min(80)]);
    assert_eq!(snapshot["consumers"], serde_json::json!([]));
    let product = &snapshot["products"][0];
    assert_eq!(product["product_id"], "PROD002");
    assert_eq!(product["available"], 500);
    assert_eq!(snapshot["problems"], serde_json::json!([]), "the table exists and is readable");
}
