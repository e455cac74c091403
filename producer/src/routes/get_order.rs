use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredOrder {
    order_id: Uuid,
    customer_id: String,
    product_id: String,
    quantity: i32,
    amount: f64,
    status: String,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    processed_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/orders/{order_id}", params(("order_id" = uuid::Uuid, Path, description = "the id from the 202")),
    responses((status = 200, description = "the stored order", body = StoredOrder), (status = 400, description = "bad path parameter", body = crate::openapi::ErrorBody),
        (status = 404, description = "unknown or not processed yet", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = crate::openapi::ErrorBody)))]
/// GET /orders/{order_id}: the order as stored, or 404 while it is unknown or not yet processed.
pub async fn get_order(path: web::Path<String>, pool: web::Data<Pool>) -> Result<HttpResponse, ApiError> {
    let order_id: Uuid = path
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order_id {:?} is not a UUID", path.as_str())))?;
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT order_id, customer_id, product_id, quantity, amount::float8 AS amount, status, reason, \
                    created_at, processed_at \
             FROM orders WHERE order_id = $1",
            &[&order_id],
        )
        .await?;
    let Some(row) = row else {
        return Err(ApiError::NotFound(format!("order {order_id} (unknown or not processed yet)")));
    };
    Ok(HttpResponse::Ok().json(StoredOrder {
        order_id: row.get("order_id"),
        customer_id: row.get("customer_id"),
        product_id: row.get("product_id"),
        quantity: row.get("quantity"),
        amount: row.get("amount"),
        status: row.get("status"),
        reason: row.get("reason"),
        created_at: row.get("created_at"),
        processed_at: row.get("processed_at"),
    }))
}
