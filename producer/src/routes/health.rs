use std::time::Duration;

use actix_web::{web, HttpResponse};
use deadpool_postgres::Pool;
use serde_json::json;

use orderflow_common::db;

use crate::publisher::OrderPublisher;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/health", responses((status = 200, description = "alive", body = crate::openapi::Status)))]
/// GET /health: the process is alive and serving.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Kafka and the database are reachable", body = serde_json::Value),
    (status = 503, description = "Kafka or the database is not reachable", body = serde_json::Value)))]
/// GET /ready: Kafka metadata and the database are both reachable, so orders can be taken.
pub async fn ready(publisher: web::Data<OrderPublisher>, pool: web::Data<Pool>) -> HttpResponse {
    let kafka = {
        let publisher = publisher.into_inner();
        tokio::task::spawn_blocking(move || publisher.check_topic(CHECK_TIMEOUT))
    };
    let database = tokio::time::timeout(CHECK_TIMEOUT, db::ping(&pool));
    let (kafka, database) = tokio::join!(kafka, database);
    let kafka = match kafka {
        Ok(Ok(partitions)) => json!({"ok": true, "partitions": partitions}),
        Ok(Err(error)) => json!({"ok": false, "error": error}),
        Err(error) => json!({"ok": false, "error": error.to_string()}),
    };
    let database = match database {
        Ok(Ok(())) => json!({"ok": true}),
        Ok(Err(error)) => json!({"ok": false, "error": orderflow_common::errors::Chain(&error).to_string()}),
        Err(_) => json!({"ok": false, "error": "timed out"}),
    };
    let ready = kafka["ok"] == true && database["ok"] == true;
    let body = json!({"status": if ready { "ready" } else { "not ready" }, "kafka": kafka, "database": database});
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
