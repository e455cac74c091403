use actix_web::{web, HttpResponse};
use deadpool_postgres::Pool;
use orderflow_common::metrics::PrometheusHandle;

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
/// GET /metrics: Prometheus text format.
pub async fn metrics(handle: web::Data<PrometheusHandle>, pool: web::Data<Pool>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(orderflow_common::metrics::render(&handle, &pool))
}
