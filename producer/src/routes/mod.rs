//! One file per route.

mod get_inventory;
mod get_order;
mod health;
mod metrics;
mod place_batch;
mod place_order;

pub use get_inventory::get_inventory;
pub use get_order::get_order;
pub use health::{health, ready};
pub use metrics::metrics;
pub use place_batch::{place_batch, MAX_BATCH_ORDERS};
pub use place_order::place_order;

use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;

/// The slow path's parse: the body is known to be JSON (the extractor checked its syntax).
fn parse(body: &str) -> Result<Value, ApiError> {
    serde_json::from_str(body).map_err(|error| ApiError::MalformedJson(error.to_string()))
}
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct AcceptedOrder {
    pub order_id: Uuid,
    pub status: &'static str,
}

impl AcceptedOrder {
    fn new(order_id: Uuid) -> Self {
        Self { order_id, status: "accepted" }
    }
}
