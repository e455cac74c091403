use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;

use crate::error::ApiError;

#[derive(Serialize)]
struct Inventory {
    product_id: String,
    product_name: String,
    available_quantity: i64,
    reserved_quantity: i64,
    total_quantity: i64,
    updated_at: DateTime<Utc>,
}

/// GET /inventory/{product_id}
pub async fn get_inventory(product_id: web::Path<String>, pool: web::Data<Pool>) -> Result<HttpResponse, ApiError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT product_id, product_name, available_quantity, reserved_quantity, total_quantity, updated_at \
             FROM inventory WHERE product_id = $1",
            &[&product_id.as_str()],
        )
        .await?;
    let Some(row) = row else {
        return Err(ApiError::NotFound(format!("product {:?}", product_id.as_str())));
    };
    Ok(HttpResponse::Ok().json(Inventory {
        product_id: row.get("product_id"),
        product_name: row.get("product_name"),
        available_quantity: row.get("available_quantity"),
        reserved_quantity: row.get("reserved_quantity"),
        total_quantity: row.get("total_quantity"),
        updated_at: row.get("updated_at"),
    }))
}
