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
    /// reserved, rejected, confirmed, cancelled or expired; all but reserved are final.
    status: String,
    /// Why the status is what it is: null while reserved; insufficient_stock or
    /// unknown_product (rejected), confirm_command, cancel_command, hold_expired.
    reason: Option<String>,
    created_at: DateTime<Utc>,
    processed_at: DateTime<Utc>,
    /// When the hold ends unless confirmed or cancelled (null for rejected orders, and for
    /// holds taken before holds could end).
    expires_at: Option<DateTime<Utc>>,
    /// When the status last changed.
    status_changed_at: DateTime<Utc>,
    /// Confirm and cancel commands for this order, oldest first, refusals included.
    commands: Vec<StoredCommand>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredCommand {
    command_id: Uuid,
    /// confirm or cancel.
    kind: String,
    /// applied, refused, or pending (waiting for its order).
    outcome: String,
    /// For refusals: hold_expired, hold_cancelled, already_confirmed, order_rejected,
    /// unknown_order.
    reason: Option<String>,
    issued_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
}

#[utoipa::path(get, path = "/orders/{order_id}", params(("order_id" = uuid::Uuid, Path, description = "the id from the 202")),
    responses((status = 200, description = "the stored order", body = StoredOrder), (status = 400, description = "bad path parameter", body = crate::openapi::ErrorBody),
        (status = 404, description = "unknown or not processed yet", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = crate::openapi::ErrorBody)))]
/// GET /orders/{order_id}: the order as stored, with its commands, or 404 while it is
/// unknown or not yet processed.
pub async fn get_order(path: web::Path<String>, pool: web::Data<Pool>) -> Result<HttpResponse, ApiError> {
    let order_id: Uuid = path
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("order_id {:?} is not a UUID", path.as_str())))?;
    let client = pool.get().await?;
    let id: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&order_id];
    // Pipelined on one connection: one round trip for both.
    let (order, commands) = tokio::try_join!(
        client.query_opt(
            "SELECT order_id, customer_id, product_id, quantity, amount::float8 AS amount, status, reason, \
                    created_at, processed_at, expires_at, status_changed_at \
             FROM orders WHERE order_id = $1",
            &id,
        ),
        client.query(
            "SELECT command_id, kind, outcome, reason, issued_at, received_at, decided_at \
             FROM order_commands WHERE order_id = $1 ORDER BY received_at, command_id",
            &id,
        ),
    )?;
    let Some(row) = order else {
        return Err(ApiError::NotFound(format!("order {order_id} (unknown or not processed yet)")));
    };
    let commands = commands
        .iter()
        .map(|c| StoredCommand {
            command_id: c.get("command_id"),
            kind: c.get("kind"),
            outcome: c.get("outcome"),
            reason: c.get("reason"),
            issued_at: c.get("issued_at"),
            received_at: c.get("received_at"),
            decided_at: c.get("decided_at"),
        })
        .collect();
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
        expires_at: row.get("expires_at"),
        status_changed_at: row.get("status_changed_at"),
        commands,
    }))
}
