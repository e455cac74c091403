//! The consumer's admin HTTP server: /health, /ready and /status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use rdkafka::consumer::Consumer;
use deadpool_postgres::Pool;
use serde_json::json;

use orderflow_common::{db, kafka};

use crate::pipeline::OrderConsumer;
use crate::stats::Stats;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminState {
    pub consumer: Arc<OrderConsumer>,
    pub pool: Pool,
    pub stats: Arc<Stats>,
    pub topic: String,
    pub started: Instant,
    pub metrics: orderflow_common::metrics::PrometheusHandle,
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/status", web::get().to(status))
        .route("/metrics", web::get().to(metrics))
        .default_service(web::to(|| async { HttpResponse::NotFound().json(json!({"error": "route not found"})) }));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the topic's metadata can be fetched and the database answers.
async fn ready(state: web::Data<AdminState>) -> HttpResponse {
    let consumer = state.consumer.clone();
    let topic = state.topic.clone();
    let kafka = tokio::task::spawn_blocking(move || kafka::topic_partitions(consumer.client(), &topic, CHECK_TIMEOUT));
    let database = tokio::time::timeout(CHECK_TIMEOUT, db::ping(&state.pool));
    let (kafka, database) = tokio::join!(kafka, database);
    let kafka_error = match kafka {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error),
        Err(error) => Some(error.to_string()),
    };
    let database_error = match database {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some("timed out".to_owned()),
    };
    let body = json!({
        "status": if kafka_error.is_none() && database_error.is_none() { "ready" } else { "not ready" },
        "kafka": {"ok": kafka_error.is_none(), "error": kafka_error},
        "database": {"ok": database_error.is_none(), "error": database_error},
    });
    if kafka_error.is_none() && database_error.is_none() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(orderflow_common::metrics::render(&state.metrics, &state.pool))
}

async fn status(state: web::Data<AdminState>) -> HttpResponse {
    let assigned: Vec<i32> = state
        .consumer
        .assignment()
        .map(|list| list.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default();
    HttpResponse::Ok().json(json!({
        "state": "running",
        "topic": state.topic,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "assigned_partitions": assigned,
        "totals": state.stats.totals(),
    }))
}
