//! The consumer's admin HTTP server: /health, /ready, /status, /metrics, and the operator's
//! POST routes /pause, /resume and /gaps/{partition}/acknowledge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use rdkafka::consumer::Consumer;
use deadpool_postgres::Pool;
use serde_json::json;

use orderflow_common::admin_auth::{AdminAuthError, AdminToken};
use orderflow_common::errors::Chain;
use orderflow_common::{db, kafka};

use crate::control::Control;
use crate::gaps::{GapError, Gaps};
use crate::offsets::ProcessedOffsets;
use crate::pipeline::OrderConsumer;
use crate::stats::Stats;
use crate::stuck::StuckWrites;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminState {
    pub control: Arc<Control>,
    pub gaps: Arc<Gaps>,
    pub offsets: Arc<ProcessedOffsets>,
    pub stuck: Arc<StuckWrites>,
    pub token: AdminToken,
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
        .route("/pause", web::post().to(pause))
        .route("/resume", web::post().to(resume))
        .route("/gaps/{partition}/acknowledge", web::post().to(acknowledge_gap))
        .default_service(web::to(|| async { HttpResponse::NotFound().json(json!({"error": "route not found"})) }));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the topic's metadata can be fetched, the database answers, writes are not
/// stuck on a permanent error, and no partition is stopped at a gap in the log.
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
        Ok(Err(error)) => Some(Chain(&error).to_string()),
        Err(_) => Some("timed out".to_owned()),
    };
    let gaps = state.gaps.open();
    let stuck = state.stuck.current();
    let ready = kafka_error.is_none() && database_error.is_none() && stuck.is_none() && gaps.is_empty();
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "kafka": {"ok": kafka_error.is_none(), "error": kafka_error},
        "database": {"ok": database_error.is_none(), "error": database_error},
        "writes": match &stuck {
            None => json!({"ok": true}),
            Some(failure) => json!({"ok": false, "error": failure.error, "sqlstate": failure.sqlstate, "since": failure.since, "orders": failure.orders}),
        },
        "gaps": gaps,
    });
    if ready {
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
        "state": if state.control.is_paused() { "paused" } else { "running" },
        "topic": state.topic,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "partitions": state.control.partitions(&assigned),
        "totals": state.stats.totals(),
        "batches": state.stats.recent_batches(),
        "gaps": {"open": state.gaps.open(), "acknowledged": state.gaps.acknowledged()},
    }))
}

/// POST /pause: stop fetching without leaving the group. Partitions stay assigned (and
/// newly assigned ones paused too) until POST /resume.
async fn pause(request: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    set_paused(&request, &state, true)
}

async fn resume(request: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    set_paused(&request, &state, false)
}

/// The bearer-token check of every POST route: `None` when the request may go on, else the
/// answer, 403 when no token is configured and 401 when the request's is missing or wrong.
fn refusal(request: &HttpRequest, state: &AdminState) -> Option<HttpResponse> {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let error = state.token.check(authorization).err()?;
    let status = match error {
        AdminAuthError::Disabled => StatusCode::FORBIDDEN,
        AdminAuthError::Unauthorized => StatusCode::UNAUTHORIZED,
    };
    Some(
        HttpResponse::build(status)
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"error": error.to_string()})),
    )
}

fn set_paused(request: &HttpRequest, state: &AdminState, paused: bool) -> HttpResponse {
    if let Some(refusal) = refusal(request, state) {
        return refusal;
    }
    state.control.set_paused(paused);
    let result = state.consumer.assignment().and_then(|assigned| {
        if paused {
            state.consumer.pause(&assigned)
        } else {
            // A partition stopped at a gap stays stopped until the gap is acknowledged.
            let mut resumable = rdkafka::TopicPartitionList::new();
            for element in assigned.elements().iter().filter(|e| !state.gaps.is_open(e.partition())) {
                resumable.add_partition(element.topic(), element.partition());
            }
            state.consumer.resume(&resumable)
        }
    });
    if let Err(error) = result {
        tracing::error!(error = %Chain(&error), paused, "changing the consumer state failed");
        return HttpResponse::InternalServerError().json(json!({"error": format!("kafka: {error}")}));
    }
    tracing::info!(paused, "consumer state changed by admin request");
    HttpResponse::Ok().json(json!({"state": if paused { "paused" } else { "running" }}))
}

/// POST /gaps/{partition}/acknowledge: the operator accepts that the gap's offsets are gone.
/// The log start is committed and the partition reads on from there (paused if the consumer
/// is paused).
async fn acknowledge_gap(request: HttpRequest, partition: web::Path<i32>, state: web::Data<AdminState>) -> HttpResponse {
    if let Some(refusal) = refusal(&request, &state) {
        return refusal;
    }
    let partition = partition.into_inner();
    match state.gaps.acknowledge(partition, &state.consumer, &state.offsets, &state.control).await {
        Ok(acknowledged) => HttpResponse::Ok().json(acknowledged),
        Err(error @ GapError::NotFound(_)) => HttpResponse::NotFound().json(json!({"error": error.to_string()})),
        Err(error) => {
            let error = Chain(&error).to_string();
            tracing::error!(partition, %error, "acknowledging a gap failed");
            HttpResponse::InternalServerError().json(json!({"error": error}))
        }
    }
}
