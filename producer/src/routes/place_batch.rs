use actix_web::{web, HttpRequest, HttpResponse};
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{accepted, idempotency_key, parse};

use orderflow_common::order::{FieldError, NewOrder};

use super::AcceptedOrder;
use crate::dashboard::AcceptedCounter;
use crate::error::{count_refused, ApiError};
use crate::idempotency;
use crate::publisher::OrderPublisher;

pub const MAX_BATCH_ORDERS: usize = 5000;

#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    accepted: usize,
    orders: Vec<AcceptedOrder>,
}

/// POST /orders/batch: all or nothing at validation. Every entry is checked before anything
/// is published, and the 400 names each bad index and field.
#[utoipa::path(post, path = "/orders/batch", request_body = crate::openapi::OrderBatch,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "Retries with the same key and body get the same order ids")),
    responses((status = 202, description = "all accepted, in request order", body = BatchAccepted),
        (status = 400, description = "invalid input, or an Idempotency-Key that is not 1 to 255 visible ASCII characters", body = crate::openapi::ErrorBody),
        (status = 413, description = "body too large", body = crate::openapi::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another request", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "broker did not acknowledge, or database unavailable; nothing accepted", body = crate::openapi::ErrorBody)))]
#[tracing::instrument(name = "place batch", skip_all, fields(orders))]
pub async fn place_batch(
    request: HttpRequest,
    body: web::Json<Box<RawValue>>,
    publisher: web::Data<OrderPublisher>,
    pool: web::Data<Pool>,
    accepted_counter: web::Data<AcceptedCounter>,
) -> Result<HttpResponse, ApiError> {
    let (result, count) = match (validate_batch(body.get()), idempotency_key(&request)) {
        (Ok(orders), Ok(key)) => {
            let count = orders.len();
            tracing::Span::current().record("orders", count);
            (idempotency::publish(key, "/orders/batch", orders, &publisher, &pool).await, count)
        }
        (Ok(orders), Err(error)) => (Err(error), orders.len()),
        (Err((error, count)), _) => (Err(error), count),
    };
    match &result {
        Ok(published) => {
            metrics::counter!("orders_accepted_total").increment(published.orders.len() as u64);
            accepted_counter.add(published.orders.len());
        }
        Err(error) => count_refused(count, error),
    }
    let published = result?;
    let orders: Vec<AcceptedOrder> = published.orders.iter().map(|order| AcceptedOrder::new(order.order_id)).collect();
    Ok(accepted(published.replayed).json(BatchAccepted { accepted: orders.len(), orders }))
}

/// All orders, or the error and how many orders it refuses. Valid batches take the typed
/// fast path; anything else is parsed again field by field to name each problem.
fn validate_batch(body: &str) -> Result<Vec<NewOrder>, (ApiError, usize)> {
    if let Some(orders) = NewOrder::parse_valid_batch(body).filter(|o| (1..=MAX_BATCH_ORDERS).contains(&o.len())) {
        return Ok(orders);
    }
    let Value::Array(entries) = parse(body).map_err(|error| (error, 0))? else {
        return Err((ApiError::BadRequest("body must be a JSON array of orders".into()), 0));
    };
    if entries.is_empty() || entries.len() > MAX_BATCH_ORDERS {
        let error = format!("a batch holds 1 to {MAX_BATCH_ORDERS} orders, this one has {}", entries.len());
        return Err((ApiError::BadRequest(error), entries.len()));
    }
    let (orders, errors) = validate_all(&entries);
    if !errors.is_empty() {
        return Err((ApiError::Validation(errors), entries.len()));
    }
    Ok(orders)
}

fn validate_all(entries: &[Value]) -> (Vec<NewOrder>, Vec<FieldError>) {
    let mut orders = Vec::with_capacity(entries.len());
    let mut errors = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match NewOrder::from_json(entry) {
            Ok(order) => orders.push(order),
            Err(found) => errors.extend(found.into_iter().map(|error| FieldError { index: Some(index), ..error })),
        }
    }
    (orders, errors)
}
