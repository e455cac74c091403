//! GET /admin/inventory: every product, paged by product_id (keyset paging, stable while
//! rows change).

use actix_web::{web, HttpRequest, HttpResponse};
use deadpool_postgres::Pool;
use serde::Deserialize;
use serde_json::json;

use orderflow_common::admin_auth::AdminToken;

use super::{inventory_json, require_admin, INVENTORY_COLUMNS};
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    limit: Option<i64>,
    /// The last product_id of the previous page.
    after: Option<String>,
}

#[utoipa::path(get, path = "/admin/inventory", security(("admin_token" = [])),
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 1000), ("after" = Option<String>, Query, description = "last product_id of the previous page")),
    responses((status = 200, description = "a page of inventory, by product_id", body = crate::openapi::InventoryPage), (status = 400, description = "invalid input", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = crate::openapi::ErrorBody),
        (status = 403, description = "admin routes disabled (no ADMIN_TOKEN)", body = crate::openapi::ErrorBody),
        (status = 413, description = "body too large", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = crate::openapi::ErrorBody)))]
pub async fn list_inventory(
    request: HttpRequest,
    token: web::Data<AdminToken>,
    page: web::Query<Page>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&request, &token)?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be from 1 to 1000".into()));
    }
    let after = page.after.clone().unwrap_or_default();
    let client = pool.get().await?;
    let sql = format!("SELECT {INVENTORY_COLUMNS} FROM inventory WHERE product_id > $1 ORDER BY product_id LIMIT $2");
    let rows = client.query(&sql, &[&after, &limit]).await?;
    let next_after = (rows.len() as i64 == limit).then(|| rows.last().map(|row| row.get::<_, String>("product_id"))).flatten();
    let items: Vec<_> = rows.iter().map(inventory_json).collect();
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_after": next_after})))
}
