use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_when_everything_is_up() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    let response = app.get("/ready").await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["kafka"]["partitions"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_database_but_still_alive() {
    let app = spawn_app_with(|settings| {
        settings.database.url = "postgres://postgres@127.0.0.1:1/none".into();
        settings.database.timeout_ms = 500;
    })
    .await;
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    let response = app.get("/ready").await;
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["database"]["ok"], false);
    assert_eq!(body["kafka"]["ok"], true);
}
