//! POST /orders/{order_id}/confirm and /cancel: publish a command to `orders-placed`, keyed
//! by the order's customer_id, so that it lands in the order's partition after the order.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use orderflow_common::command::{CommandKind, OrderCommand};
use orderflow_common::order::{validate_id, FieldError};

use super::{accepted, idempotency_key};
use crate::error::ApiError;
use crate::idempotency;
use crate::publisher::OrderPublisher;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AcceptedCommand {
    pub order_id: Uuid,
    pub status: &'static str,
    /// The command's id: the `command_id` of its outcome on `GET /orders/{id}` and of its
    /// event in `order-events`.
    pub command_id: Uuid,
}

#[utoipa::path(post, path = "/orders/{order_id}/confirm", request_body(content = Option<crate::openapi::CommandRequest>, description = "optional; `customer_id` is required while the order is not processed yet"),
    params(("order_id" = uuid::Uuid, Path, description = "the id from the 202"),
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "Retries with the same key and body publish the same command")),
    responses((status = 202, description = "accepted: the broker has the command; its outcome shows on GET /orders/{order_id} and in order-events", body = AcceptedCommand),
        (status = 400, description = "invalid order_id, body, or Idempotency-Key", body = crate::openapi::ErrorBody),
        (status = 404, description = "order unknown or not processed yet, and the body names no customer_id", body = crate::openapi::ErrorBody),
        (status = 409, description = "customer_id differs from the order's", body = crate::openapi::ErrorBody),
        (status = 413, description = "body too large", body = crate::openapi::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another request", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "broker did not acknowledge, or database unavailable; nothing accepted", body = crate::openapi::ErrorBody)))]
#[tracing::instrument(name = "confirm order", skip_all, fields(order_id = %path.as_str()))]
/// POST /orders/{order_id}/confirm: the sale completes (the held units are sold), unless the
/// hold has ended meanwhile; then the confirm is refused and the refusal is on the order.
pub async fn confirm_order(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    publisher: web::Data<OrderPublisher>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ApiError> {
    command(CommandKind::Confirm, &request, &path, body, &publisher, &pool).await
}

#[utoipa::path(post, path = "/orders/{order_id}/cancel", request_body(content = Option<crate::openapi::CommandRequest>, description = "optional; `customer_id` is required while the order is not processed yet"),
    params(("order_id" = uuid::Uuid, Path, description = "the id from the 202"),
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "Retries with the same key and body publish the same command")),
    responses((status = 202, description = "accepted: the broker has the command; its outcome shows on GET /orders/{order_id} and in order-events", body = AcceptedCommand),
        (status = 400, description = "invalid order_id, body, or Idempotency-Key", body = crate::openapi::ErrorBody),
        (status = 404, description = "order unknown or not processed yet, and the body names no customer_id", body = crate::openapi::ErrorBody),
        (status = 409, description = "customer_id differs from the order's", body = crate::openapi::ErrorBody),
        (status = 413, description = "body too large", body = crate::openapi::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another request", body = crate::openapi::ErrorBody),
        (status = 429, description = "rate limited", body = crate::openapi::ErrorBody),
        (status = 503, description = "broker did not acknowledge, or database unavailable; nothing accepted", body = crate::openapi::ErrorBody)))]
#[tracing::instrument(name = "cancel order", skip_all, fields(order_id = %path.as_str()))]
/// POST /orders/{order_id}/cancel: the hold is released (its units are available again),
/// unless it has ended meanwhile; then the cancel is refused and the refusal is on the order.
pub async fn cancel_order(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    publisher: web::Data<OrderPublisher>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ApiError> {
    command(CommandKind::Cancel, &request, &path, body, &publisher, &pool).await
}

/// Largest accepted body: `{"customer_id": ...}` needs far less.
const MAX_COMMAND_BYTES: usize = 4096;

async fn command(
    kind: CommandKind,
    request: &HttpRequest,
    path: &str,
    body: web::Payload,
    publisher: &OrderPublisher,
    pool: &Pool,
) -> Result<HttpResponse, ApiError> {
    let result = match read_body(body).await {
        Ok(body) => publish(kind, request, path, &body, publisher, pool).await,
        Err(error) => Err(error),
    };
    match &result {
        Ok(_) => metrics::counter!("commands_accepted_total", "kind" => kind.as_str()).increment(1),
        Err(error) => metrics::counter!("commands_not_accepted_total", "kind" => kind.as_str(), "reason" => error.reason()).increment(1),
    }
    result
}

async fn publish(
    kind: CommandKind,
    request: &HttpRequest,
    path: &str,
    body: &[u8],
    publisher: &OrderPublisher,
    pool: &Pool,
) -> Result<HttpResponse, ApiError> {
    let order_id: Uuid = path.parse().map_err(|_| ApiError::BadRequest(format!("order_id {path:?} is not a UUID")))?;
    let named = body_customer(body)?;
    let key = idempotency_key(request)?;
    // The order's own customer decides the key, hence the partition: the same as the
    // order's, so the command is read after it. An order not stored yet may still be in
    // Kafka; then only the client can say whose it is.
    let stored: Option<String> = pool
        .get()
        .await?
        .query_opt("SELECT customer_id FROM orders WHERE order_id = $1", &[&order_id])
        .await?
        .map(|row| row.get(0));
    let customer_id = match (stored, named.as_deref()) {
        (Some(stored), Some(named)) if stored != named => {
            return Err(ApiError::Conflict(format!("customer_id {named:?} is not the customer of order {order_id}")));
        }
        (Some(stored), _) => stored,
        (None, Some(named)) => named.to_owned(),
        (None, None) => return Err(ApiError::UnknownOrder(order_id)),
    };
    let command = OrderCommand { command: kind, command_id: Uuid::now_v7(), order_id, customer_id, issued_at: Utc::now() };
    let route = format!("/orders/{order_id}/{}", kind.as_str());
    let (published, replayed) = idempotency::publish_command(key, &route, named.as_deref(), command, publisher, pool).await?;
    tracing::info!(command_id = %published.command_id, kind = kind.as_str(), replayed, "command accepted");
    Ok(accepted(replayed).json(AcceptedCommand { order_id, status: "accepted", command_id: published.command_id }))
}

/// Reads the body by hand, up to `MAX_COMMAND_BYTES`: actix's own extractors would answer
/// an oversized body with plain text, and every error here is JSON.
async fn read_body(mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| ApiError::BadRequest(format!("cannot read the body: {error}")))?;
        if body.len() + chunk.len() > MAX_COMMAND_BYTES {
            return Err(ApiError::PayloadTooLarge { limit: MAX_COMMAND_BYTES });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The optional body: empty, or `{"customer_id": "..."}` (null counts as absent).
fn body_customer(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(body).map_err(|error| ApiError::MalformedJson(error.to_string()))?;
    let Value::Object(object) = value else {
        return Err(ApiError::BadRequest("body must be a JSON object, {\"customer_id\": \"...\"}, or empty".into()));
    };
    let mut errors: Vec<FieldError> = object
        .keys()
        .filter(|key| key.as_str() != "customer_id")
        .map(|key| FieldError { index: None, field: key.clone(), message: "unknown field".into() })
        .collect();
    let customer = match object.get("customer_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => match validate_id(id) {
            Ok(_) => Some(id.clone()),
            Err(message) => {
                errors.push(FieldError { index: None, field: "customer_id".into(), message: message.into() });
                None
            }
        },
        Some(_) => {
            errors.push(FieldError { index: None, field: "customer_id".into(), message: "must be a string".into() });
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(customer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_optional_and_names_its_problems() {
        assert_eq!(body_customer(b"").unwrap(), None);
        assert_eq!(body_customer(b"  \n").unwrap(), None);
        assert_eq!(body_customer(b"{}").unwrap(), None);
        assert_eq!(body_customer(br#"{"customer_id": null}"#).unwrap(), None);
        assert_eq!(body_customer(br#"{"customer_id": "C1"}"#).unwrap().as_deref(), Some("C1"));
        for (body, field) in [(&br#"{"customer_id": ""}"#[..], "customer_id"), (br#"{"customer_id": 7}"#, "customer_id"), (br#"{"colour": "red"}"#, "colour")] {
            match body_customer(body) {
                Err(ApiError::Validation(errors)) => assert_eq!(errors[0].field, field),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(body_customer(b"{oops"), Err(ApiError::MalformedJson(_))));
        assert!(matches!(body_customer(b"[1]"), Err(ApiError::BadRequest(_))));
    }
}
