use actix_web::{web, HttpResponse};
use deadpool_postgres::Pool;

use super::{inventory_json, INVENTORY_COLUMNS};
use crate::error::ApiError;

#[utoipa::path(get, path = "/inventory/{product_id}", params(("product_id" = String, Path)),
    responses((status = 200, description = "stock of the product", body = crate::openapi::Inventory), (status = 400, description = "bad path parameter", body = crate::openapi::ErrorBody),
        (status = 404, description = "unknown or not processed yet", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = crate::openapi::ErrorBody)))]
/// GET /inventory/{product_id}
pub async fn get_inventory(product_id: web::Path<String>, pool: web::Data<Pool>) -> Result<HttpResponse, ApiError> {
    let client = pool.get().await?;
    let sql = format!("SELECT {INVENTORY_COLUMNS} FROM inventory WHERE product_id = $1");
    let Some(row) = client.query_opt(&sql, &[&product_id.as_str()]).await? else {
        return Err(ApiError::NotFound(format!("product {:?}", product_id.as_str())));
    };
    Ok(HttpResponse::Ok().json(inventory_json(&row)))
}
