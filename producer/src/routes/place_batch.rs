use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use orderflow_common::order::{FieldError, NewOrder, PlacedOrder};

use super::AcceptedOrder;
use crate::error::{count_refused, ApiError};
use crate::publisher::OrderPublisher;

pub const MAX_BATCH_ORDERS: usize = 5000;

#[derive(Serialize)]
struct BatchAccepted {
    accepted: usize,
    orders: Vec<AcceptedOrder>,
}

/// POST /orders/batch: all or nothing at validation. Every entry is checked before anything
/// is published, and the 400 names each bad index and field.
#[tracing::instrument(name = "place batch", skip_all, fields(orders))]
pub async fn place_batch(body: web::Json<Value>, publisher: web::Data<OrderPublisher>) -> Result<HttpResponse, ApiError> {
    let Value::Array(entries) = body.into_inner() else {
        return Err(ApiError::BadRequest("body must be a JSON array of orders".into()));
    };
    if entries.is_empty() || entries.len() > MAX_BATCH_ORDERS {
        return Err(ApiError::BadRequest(format!(
            "a batch holds 1 to {MAX_BATCH_ORDERS} orders, this one has {}",
            entries.len()
        )));
    }
    tracing::Span::current().record("orders", entries.len());
    let result = place_all(&entries, &publisher).await;
    match &result {
        Ok(accepted) => metrics::counter!("orders_accepted_total").increment(accepted.accepted as u64),
        Err(error) => count_refused(entries.len(), error),
    }
    Ok(HttpResponse::Accepted().json(result?))
}

async fn place_all(entries: &[Value], publisher: &OrderPublisher) -> Result<BatchAccepted, ApiError> {
    let (orders, errors) = validate_all(entries);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let placed_at = Utc::now();
    let placed: Vec<PlacedOrder> =
        orders.into_iter().map(|order| PlacedOrder::new(order, Uuid::now_v7(), placed_at)).collect();
    publisher.publish(&placed).await?;
    let orders: Vec<AcceptedOrder> = placed.iter().map(|order| AcceptedOrder::new(order.order_id)).collect();
    Ok(BatchAccepted { accepted: orders.len(), orders })
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
