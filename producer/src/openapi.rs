//! The OpenAPI document served at /openapi.json. Request types here mirror what the
//! handlers validate by hand (they parse JSON themselves to name every bad field).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "orderflow producer API", description = "Orders in, stock reserved: validated, published to Kafka, answered 202 once the broker acknowledged."),
    paths(
        routes::place_order::place_order, routes::place_batch::place_batch, routes::get_order::get_order,
        routes::order_command::confirm_order, routes::order_command::cancel_order,
        routes::get_inventory::get_inventory, routes::health::health, routes::health::ready, routes::metrics::metrics,
        routes::admin_products::create_product, routes::admin_products::restock, routes::admin_inventory::list_inventory,
    ),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("admin_token", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// An order to place: today's single-line shape, or a cart (`lines`). Not both.
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum OrderRequest {
    SingleLine(SingleLineOrder),
    Cart(CartOrder),
}

/// One product line.
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct SingleLineOrder {
    /// 1 to 64 characters, no control characters.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]+$", example = "CUST001")]
    customer_id: String,
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]+$", example = "PROD001")]
    product_id: String,
    #[schema(minimum = 1, maximum = 10000, example = 5)]
    quantity: i64,
    /// At most 2 decimals.
    #[schema(minimum = 0, maximum = 9999999999.99, multiple_of = 0.01, example = 6499.95)]
    amount: f64,
    /// How long the reservation holds, in seconds, before it expires unless confirmed or
    /// cancelled; absent or null: RESERVATION_TTL_SECONDS (900) of the consumer.
    #[schema(minimum = 1, maximum = 86400, example = 600, nullable = true)]
    hold_seconds: Option<i64>,
}

/// The optional body of `POST /orders/{order_id}/confirm` and `/cancel`.
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// The order's customer: required while the order is not processed yet (it may still be
    /// in Kafka), and must match once it is. Null counts as absent.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]+$", example = "CUST001", nullable = true)]
    customer_id: Option<String>,
}

/// A cart: reserved all or nothing. Each product at most once (a repeat is a 400 naming
/// `lines[i].product_id`). A cart of one line is stored as a single-line order.
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct CartOrder {
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]+$", example = "CUST001")]
    customer_id: String,
    /// 1 to 50 lines.
    #[schema(min_items = 1, max_items = 50)]
    lines: Vec<OrderLine>,
    /// How long the whole cart is held, in seconds, before it expires unless confirmed or
    /// cancelled; absent or null: RESERVATION_TTL_SECONDS (900) of the consumer.
    #[schema(minimum = 1, maximum = 86400, example = 600, nullable = true)]
    hold_seconds: Option<i64>,
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]+$", example = "PROD001")]
    product_id: String,
    #[schema(minimum = 1, maximum = 10000, example = 1)]
    quantity: i64,
    /// At most 2 decimals.
    #[schema(minimum = 0, maximum = 9999999999.99, multiple_of = 0.01, example = 19.99)]
    amount: f64,
}

/// 1 to 5000 orders (the derive cannot put item bounds on a newtype, so this is by hand).
pub struct OrderBatch;

impl utoipa::PartialSchema for OrderBatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(utoipa::openapi::Ref::from_schema_name("OrderRequest"))
            .min_items(Some(1))
            .max_items(Some(crate::routes::MAX_BATCH_ORDERS))
            .description(Some("1 to 5000 orders"))
            .into()
    }
}

impl ToSchema for OrderBatch {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        schemas.push(("OrderRequest".into(), <OrderRequest as utoipa::PartialSchema>::schema()));
        <OrderRequest as ToSchema>::schemas(schemas);
    }
}

/// Every error: what went wrong, and for validation each bad field (with its index in a batch).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: String,
    #[schema(nullable = false)]
    details: Option<Vec<FieldErrorDoc>>,
}

#[derive(Serialize, ToSchema)]
pub struct FieldErrorDoc {
    #[schema(nullable = false)]
    index: Option<u64>,
    field: String,
    message: String,
}

#[derive(Serialize, ToSchema)]
pub struct Inventory {
    product_id: String,
    product_name: String,
    available_quantity: i64,
    reserved_quantity: i64,
    /// Units on hand: available + reserved.
    total_quantity: i64,
    /// Units sold (confirmed holds).
    sold_quantity: i64,
    /// Initial stock plus restocks: always available + reserved + sold.
    received_quantity: i64,
    updated_at: String,
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]+$")]
    product_id: String,
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f\ud800-\udfff]*[^\s\u0000-\u001f\u007f-\u009f\ud800-\udfff][^\u0000-\u001f\u007f-\u009f\ud800-\udfff]*$")]
    product_name: String,
    #[schema(minimum = 0, maximum = 1000000000)]
    quantity: i64,
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    #[schema(minimum = 1, maximum = 1000000000)]
    quantity: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Restocked {
    restocked: i64,
    inventory: Inventory,
}

#[derive(Serialize, ToSchema)]
pub struct InventoryPage {
    items: Vec<Inventory>,
    /// Pass as `after` for the next page; null on the last one.
    next_after: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    status: String,
}

/// GET /openapi.json
pub async fn openapi_json() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(ApiDoc::openapi())
}
