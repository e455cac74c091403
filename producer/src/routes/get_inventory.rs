use actix_web::{web, HttpResponse};
use deadpool_postgres::Pool;

use super::{inventory_json, INVENTORY_COLUMNS};
use crate::error::ApiError;

/// GET /inventory/{product_id}
pub async fn get_inventory(product_id: web::Path<String>, pool: web::Data<Pool>) -> Result<HttpResponse, ApiError> {
    let client = pool.get().await?;
    let sql = format!("SELECT {INVENTORY_COLUMNS} FROM inventory WHERE product_id = $1");
    let Some(row) = client.query_opt(&sql, &[&product_id.as_str()]).await? else {
        return Err(ApiError::NotFound(format!("product {:?}", product_id.as_str())));
    };
    Ok(HttpResponse::Ok().json(inventory_json(&row)))
}
