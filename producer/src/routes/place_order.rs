use actix_web::{web, HttpRequest, HttpResponse};
use deadpool_postgres::Pool;
use serde_json::value::RawValue;

use orderflow_common::order::NewOrder;

use super::{accepted, idempotency_key, parse, AcceptedOrder};
use crate::dashboard::AcceptedCounter;
use crate::error::{count_refused, ApiError};
use crate::idempotency;
use crate::publisher::OrderPublisher;

/// POST /order: validate, give the order a time-ordered id, publish, and answer 202 only
/// once the broker has acknowledged it. With an Idempotency-Key, a retry gets the same id.
#[utoipa::path(post, path = "/order", request_body = crate::openapi::OrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "Retries with the same key and body get the same order id")),
    responses((status = 202, description = "accepted: the broker has the order", body = AcceptedOrder),
        (status = 400, description = "invalid input, or an Idempotency-Key that is not 1 to 255 visible ASCII characters", body = crate::openapi::ErrorBody),
        (status = 413, description = "body too large", body = crate::openapi::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another request", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "broker did not acknowledge, or database unavailable; nothing accepted", body = crate::openapi::ErrorBody)))]
#[tracing::instrument(name = "place order", skip_all, fields(order_id))]
pub async fn place_order(
    request: HttpRequest,
    body: web::Json<Box<RawValue>>,
    publisher: web::Data<OrderPublisher>,
    pool: web::Data<Pool>,
    accepted: web::Data<AcceptedCounter>,
) -> Result<HttpResponse, ApiError> {
    let result = place(&request, body.get(), &publisher, &pool).await;
    match &result {
        Ok(_) => {
            metrics::counter!("orders_accepted_total").increment(1);
            accepted.add(1);
        }
        Err(error) => count_refused(1, error),
    }
    result
}

async fn place(request: &HttpRequest, body: &str, publisher: &OrderPublisher, pool: &Pool) -> Result<HttpResponse, ApiError> {
    let order = match NewOrder::parse_valid(body) {
        Some(order) => order,
        None => NewOrder::from_json(&parse(body)?).map_err(ApiError::Validation)?,
    };
    let published = idempotency::publish(idempotency_key(request)?, "/order", vec![order], publisher, pool).await?;
    let order_id = published.orders[0].order_id;
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    Ok(accepted(published.replayed).json(AcceptedOrder::new(order_id)))
}
