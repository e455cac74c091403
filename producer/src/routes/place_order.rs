use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde_json::value::RawValue;

use super::parse;
use uuid::Uuid;

use orderflow_common::order::{NewOrder, PlacedOrder};

use super::AcceptedOrder;
use crate::error::{count_refused, ApiError};
use crate::publisher::OrderPublisher;

/// POST /order: validate, give the order a time-ordered id, publish, and answer 202 only
/// once the broker has acknowledged it.
#[tracing::instrument(name = "place order", skip_all, fields(order_id))]
pub async fn place_order(body: web::Json<Box<RawValue>>, publisher: web::Data<OrderPublisher>) -> Result<HttpResponse, ApiError> {
    let result = place(body.get(), &publisher).await;
    match &result {
        Ok(_) => metrics::counter!("orders_accepted_total").increment(1),
        Err(error) => count_refused(1, error),
    }
    result
}

async fn place(body: &str, publisher: &OrderPublisher) -> Result<HttpResponse, ApiError> {
    let order = match NewOrder::parse_valid(body) {
        Some(order) => order,
        None => NewOrder::from_json(&parse(body)?).map_err(ApiError::Validation)?,
    };
    let placed = PlacedOrder::new(order, Uuid::now_v7(), Utc::now());
    tracing::Span::current().record("order_id", tracing::field::display(placed.order_id));
    publisher.publish(std::slice::from_ref(&placed)).await?;
    Ok(HttpResponse::Accepted().json(AcceptedOrder::new(placed.order_id)))
}
