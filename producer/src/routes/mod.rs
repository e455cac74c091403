//! One file per route.

pub(crate) mod admin_inventory;
pub(crate) mod admin_products;
pub(crate) mod get_inventory;
pub(crate) mod get_order;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod order_command;
pub(crate) mod place_batch;
pub(crate) mod place_order;

pub use admin_inventory::list_inventory;
pub use admin_products::{create_product, restock};
pub use get_inventory::get_inventory;
pub use get_order::get_order;
pub use health::{health, ready};
pub use metrics::metrics;
pub use order_command::{cancel_order, confirm_order};
pub use place_batch::{place_batch, MAX_BATCH_ORDERS};
pub use place_order::place_order;

use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;

/// The inventory row as every route shows it.
const INVENTORY_COLUMNS: &str =
    "product_id, product_name, available_quantity, reserved_quantity, total_quantity, sold_quantity, received_quantity, updated_at";

fn inventory_json(row: &tokio_postgres::Row) -> Value {
    serde_json::json!({
        "product_id": row.get::<_, String>("product_id"),
        "product_name": row.get::<_, String>("product_name"),
        "available_quantity": row.get::<_, i64>("available_quantity"),
        "reserved_quantity": row.get::<_, i64>("reserved_quantity"),
        "total_quantity": row.get::<_, i64>("total_quantity"),
        "sold_quantity": row.get::<_, i64>("sold_quantity"),
        "received_quantity": row.get::<_, i64>("received_quantity"),
        "updated_at": row.get::<_, chrono::DateTime<chrono::Utc>>("updated_at"),
    })
}

/// Admin routes need the bearer token; the token itself is never logged.
fn require_admin(request: &actix_web::HttpRequest, token: &orderflow_common::admin_auth::AdminToken) -> Result<(), ApiError> {
    let authorization = request.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    Ok(token.check(authorization)?)
}

/// 202, marked when it repeats the answer to an earlier request with the same key.
fn accepted(replayed: bool) -> actix_web::HttpResponseBuilder {
    let mut response = actix_web::HttpResponse::Accepted();
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    response
}

/// The Idempotency-Key header, if the client sent one. A value with bytes outside visible
/// ASCII is a 400: taking it as "no key" made a retry place the orders again.
fn idempotency_key(request: &actix_web::HttpRequest) -> Result<Option<&str>, ApiError> {
    match request.headers().get(crate::idempotency::HEADER) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| crate::idempotency::invalid_key()),
    }
}

/// The slow path's parse: the body is known to be JSON (the extractor checked its syntax).
fn parse(body: &str) -> Result<Value, ApiError> {
    serde_json::from_str(body).map_err(|error| ApiError::MalformedJson(error.to_string()))
}
use uuid::Uuid;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedOrder {
    pub order_id: Uuid,
    pub status: &'static str,
}

impl AcceptedOrder {
    fn new(order_id: Uuid) -> Self {
        Self { order_id, status: "accepted" }
    }
}
