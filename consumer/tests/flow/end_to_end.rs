use std::time::Duration;

use serde_json::{json, Value};

use orderflow_common::testing::eventually;
use orderflow_producer::Application as Producer;

use crate::support::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_over_http_end_up_reserved_or_rejected() {
    let stack = Stack::start(8).await;
    stack.set_stock("PROD003", 10).await;
    let consumer = stack.start_consumer(|_| {}).await;
    let producer = Producer::build(orderflow_producer::Settings::new(stack.kafka(), stack.database.settings())).await.unwrap();
    let base = format!("http://127.0.0.1:{}", producer.port());
    tokio::spawn(producer.run_until_stopped());
    let http = reqwest::Client::new();

    let place = |body: Value| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let response = http.post(format!("{base}/order")).json(&body).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 202);
            response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned()
        }
    };
    let fits = place(json!({"customer_id": "A", "product_id": "PROD003", "quantity": 7, "amount": 70})).await;
    let too_big = place(json!({"customer_id": "A", "product_id": "PROD003", "quantity": 4, "amount": 40})).await;
    let exact = place(json!({"customer_id": "A", "product_id": "PROD003", "quantity": 3, "amount": 30})).await;
    let unknown = place(json!({"customer_id": "B", "product_id": "PROD999", "quantity": 1, "amount": 1})).await;
    let batch: Value = http
        .post(format!("{base}/orders/batch"))
        .json(&json!([
            {"customer_id": "C", "product_id": "PROD004", "quantity": 2, "amount": 5.5},
            {"customer_id": "D", "product_id": "PROD004", "quantity": 1, "amount": 0}
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(batch["accepted"], 2);

    let fetch = |id: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            eventually(Duration::from_secs(30), "order to be processed", || async {
                let response = http.get(format!("{base}/orders/{id}")).send().await.unwrap();
                if response.status().as_u16() == 404 {
                    return None;
                }
                Some(response.json::<Value>().await.unwrap())
            })
            .await
        }
    };
    // Same customer, same partition: offset order decides who gets the stock.
    assert_eq!(fetch(fits).await["status"], "reserved");
    let rejected = fetch(too_big).await;
    assert_eq!((rejected["status"].as_str(), rejected["reason"].as_str()), (Some("rejected"), Some("insufficient_stock")));
    assert_eq!(fetch(exact).await["status"], "reserved");
    let unknown = fetch(unknown).await;
    assert_eq!(unknown["reason"], "unknown_product");
    for entry in batch["orders"].as_array().unwrap() {
        assert_eq!(fetch(entry["order_id"].as_str().unwrap().to_owned()).await["status"], "reserved");
    }

    let inventory: Value = http.get(format!("{base}/inventory/PROD003")).send().await.unwrap().json().await.unwrap();
    assert_eq!(inventory["available_quantity"], 0);
    assert_eq!(inventory["reserved_quantity"], 10);
    assert_eq!(inventory["total_quantity"], 10);
    stack.assert_invariants().await;

    // The stats move just after the database commit the queries above saw.
    consumer.wait_processed(6, Duration::from_secs(10)).await;
    let status: Value = consumer.stats.totals().into_json();
    assert_eq!(status["reserved"], 4);
    assert_eq!(status["rejected"], 2);
    let metrics = orderflow_common::metrics::render(&orderflow_common::metrics::install(), &stack.pool);
    for expected in ["orders_reserved_total", r#"orders_rejected_total{reason="unknown_product"}"#, "consumer_batch_size_bucket", "consumer_batch_duration_seconds_bucket"] {
        assert!(metrics.contains(expected), "missing {expected}");
    }
    consumer.stop().await;
}

trait IntoJson {
    fn into_json(self) -> Value;
}

impl<T: serde::Serialize> IntoJson for T {
    fn into_json(self) -> Value {
        serde_json::to_value(self).unwrap()
    }
}
