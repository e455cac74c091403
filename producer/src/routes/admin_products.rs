//! Product administration (bearer token): create a product, restock one.

use actix_web::{web, HttpRequest, HttpResponse};
use deadpool_postgres::Pool;
use serde::Deserialize;
use serde_json::json;
use tokio_postgres::error::SqlState;

use orderflow_common::admin_auth::AdminToken;
use orderflow_common::order::validate_id;

use super::{inventory_json, require_admin, INVENTORY_COLUMNS};
use crate::error::ApiError;

const MAX_STOCK_CHANGE: i64 = 1_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    product_id: String,
    product_name: String,
    #[serde(deserialize_with = "orderflow_common::order::deserialize_whole_number")]
    quantity: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    #[serde(deserialize_with = "orderflow_common::order::deserialize_whole_number")]
    quantity: i64,
}

#[utoipa::path(post, path = "/admin/products", request_body = crate::openapi::NewProduct, security(("admin_token" = [])),
    responses((status = 201, description = "created", body = crate::openapi::Inventory),
        (status = 409, description = "product exists", body = crate::openapi::ErrorBody), (status = 400, description = "invalid input", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = crate::openapi::ErrorBody),
        (status = 403, description = "admin routes disabled (no ADMIN_TOKEN)", body = crate::openapi::ErrorBody),
        (status = 413, description = "body too large", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = crate::openapi::ErrorBody)))]
/// POST /admin/products: 201 with the new inventory row, 409 if the product exists.
pub async fn create_product(
    request: HttpRequest,
    token: web::Data<AdminToken>,
    body: web::Json<NewProduct>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&request, &token)?;
    let invalid = |field: &str, message: &str| ApiError::BadRequest(format!("{field} {message}"));
    validate_id(&body.product_id).map_err(|m| invalid("product_id", m))?;
    let name = &body.product_name;
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(invalid("product_name", "must be 1 to 200 characters, not all blank, no control characters"));
    }
    if !(0..=MAX_STOCK_CHANGE).contains(&body.quantity) {
        return Err(invalid("quantity", "must be an integer from 0 to 1000000000"));
    }
    let client = pool.get().await?;
    let sql = format!(
        "INSERT INTO inventory (product_id, product_name, available_quantity, reserved_quantity, total_quantity, received_quantity) \
         VALUES ($1, $2, $3, 0, $3, $3) RETURNING {INVENTORY_COLUMNS}"
    );
    match client.query_one(&sql, &[&body.product_id, &body.product_name, &body.quantity]).await {
        Ok(row) => {
            tracing::info!(product_id = %body.product_id, quantity = body.quantity, "product created");
            Ok(HttpResponse::Created().json(inventory_json(&row)))
        }
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(ApiError::Conflict(format!("product {:?} already exists", body.product_id)))
        }
        Err(error) => Err(error.into()),
    }
}

#[utoipa::path(post, path = "/admin/products/{product_id}/restock", request_body = crate::openapi::Restock, security(("admin_token" = [])),
    params(("product_id" = String, Path)),
    responses((status = 200, description = "restocked", body = crate::openapi::Restocked),
        (status = 404, description = "unknown product", body = crate::openapi::ErrorBody), (status = 400, description = "invalid input", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or wrong bearer token", body = crate::openapi::ErrorBody),
        (status = 403, description = "admin routes disabled (no ADMIN_TOKEN)", body = crate::openapi::ErrorBody),
        (status = 413, description = "body too large", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "database unavailable", body = crate::openapi::ErrorBody)))]
/// POST /admin/products/{product_id}/restock: adds to available, total and received stock. Waits for
/// the row lock (consumers retry around it), so it never fails on a busy product.
pub async fn restock(
    request: HttpRequest,
    token: web::Data<AdminToken>,
    product_id: web::Path<String>,
    body: web::Json<Restock>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&request, &token)?;
    if !(1..=MAX_STOCK_CHANGE).contains(&body.quantity) {
        return Err(ApiError::BadRequest("quantity must be an integer from 1 to 1000000000".into()));
    }
    let client = pool.get().await?;
    let sql = format!(
        "UPDATE inventory SET available_quantity = available_quantity + $2, total_quantity = total_quantity + $2, \
         received_quantity = received_quantity + $2, updated_at = now() WHERE product_id = $1 RETURNING {INVENTORY_COLUMNS}"
    );
    let Some(row) = client.query_opt(&sql, &[&product_id.as_str(), &body.quantity]).await? else {
        return Err(ApiError::NotFound(format!("product {:?}", product_id.as_str())));
    };
    tracing::info!(product_id = %product_id.as_str(), quantity = body.quantity, "product restocked");
    Ok(HttpResponse::Ok().json(json!({"restocked": body.quantity, "inventory": inventory_json(&row)})))
}
