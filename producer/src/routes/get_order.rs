use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiError;

/// An order as stored. `quantity` and `amount` are the order's totals over its lines;
/// `product_id` is set for a single-line order only (null for a cart).
#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredOrder {
    order_id: Uuid,
    customer_id: String,
    product_id: Option<String>,
    quantity: i64,
    amount: f64,
    /// reserved, rejected, confirmed, cancelled or expired; all but reserved are final.
    status: String,
    /// Why the status is what it is: null while reserved; insufficient_stock or
    /// unknown_product (rejected; a cart is rejected whole, its short lines say which),
    /// confirm_command, cancel_command, hold_expired. A cart's lines all share its status.
    reason: Option<String>,
    created_at: DateTime<Utc>,
    processed_at: DateTime<Utc>,
    /// When the hold ends unless confirmed or cancelled (null for rejected orders, and for
    /// holds taken before holds could end).
    expires_at: Option<DateTime<Utc>>,
    /// When the status last changed.
    status_changed_at: DateTime<Utc>,
    /// Every line, in the order the client gave them; a single-line order has one.
    lines: Vec<StoredLine>,
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

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoredLine {
    /// 1-based, in the order the client gave the lines.
    line_no: i16,
    product_id: String,
    quantity: i32,
    amount: f64,
    /// On a rejected cart: why this line could not be served when the cart's turn came
    /// (`insufficient_stock`, `unknown_product`); null on lines that would have fitted, and
    /// on single-line orders (see `reason`).
    problem: Option<String>,
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
                    created_at, processed_at, expires_at, status_changed_at, line_count \
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
    let product_id: Option<String> = row.get("product_id");
    let lines = match (&product_id, row.get::<_, i16>("line_count")) {
        (Some(product_id), 1) => vec![StoredLine {
            line_no: 1,
            product_id: product_id.clone(),
            quantity: row.get("quantity"),
            amount: row.get("amount"),
            problem: None,
        }],
        // A cart: its lines were committed with its row, in the same transaction.
        _ => client
            .query(
                "SELECT line_no, product_id, quantity, amount::float8 AS amount, problem \
                 FROM order_lines WHERE order_id = $1 ORDER BY line_no",
                &[&order_id],
            )
            .await?
            .iter()
            .map(|line| StoredLine {
                line_no: line.get("line_no"),
                product_id: line.get("product_id"),
                quantity: line.get("quantity"),
                amount: line.get("amount"),
                problem: line.get("problem"),
            })
            .collect(),
    };
    // Totals in cents: adding the lines' amounts as floats would show 0.30000000000000004.
    let cents: i64 = lines.iter().map(|line| (line.amount * 100.0).round() as i64).sum();
    Ok(HttpResponse::Ok().json(StoredOrder {
        order_id: row.get("order_id"),
        customer_id: row.get("customer_id"),
        product_id,
        quantity: lines.iter().map(|line| i64::from(line.quantity)).sum(),
        amount: cents as f64 / 100.0,
        status: row.get("status"),
        reason: row.get("reason"),
        created_at: row.get("created_at"),
        processed_at: row.get("processed_at"),
        expires_at: row.get("expires_at"),
        status_changed_at: row.get("status_changed_at"),
        commands,
        lines,
    }))
}
