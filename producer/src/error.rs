//! The one mapping from errors to HTTP responses: every error is JSON, `{"error": "..."}`,
//! plus `details` naming each bad field where validation failed.

use actix_web::error::{JsonPayloadError, PathError};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use orderflow_common::admin_auth::AdminAuthError;
use orderflow_common::db::DbError;
use orderflow_common::errors::Chain;
use orderflow_common::order::FieldError;

use crate::publisher::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("order {0} not found: it is unknown or not processed yet; a command for a just-placed order must name its customer_id in the body")]
    UnknownOrder(uuid::Uuid),
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error(transparent)]
    Admin(#[from] AdminAuthError),
    #[error("{0}")]
    Conflict(String),
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("rate limit exceeded, retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("orders could not be published to Kafka; nothing was accepted")]
    Unavailable(#[from] PublishError),
    #[error("database unavailable")]
    Database(#[from] DbError),
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Database(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Database(error.into())
    }
}

impl ApiError {
    /// Short, fixed label for the `orders_refused_total` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation",
            Self::MalformedJson(_) | Self::BadRequest(_) => "bad_request",
            Self::PayloadTooLarge { .. } => "too_large",
            Self::NotFound(_) | Self::UnknownOrder(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Admin(_) => "unauthorized",
            Self::Conflict(_) => "conflict",
            Self::IdempotencyMismatch => "idempotency_mismatch",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "kafka_unavailable",
            Self::Database(_) => "database_unavailable",
        }
    }
}

/// Counts orders refused at the order routes, by reason.
pub fn count_refused(orders: usize, error: &ApiError) {
    metrics::counter!("orders_refused_total", "reason" => error.reason()).increment(orders as u64);
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::MalformedJson(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) | Self::UnknownOrder(_) => StatusCode::NOT_FOUND,
            Self::Admin(AdminAuthError::Disabled) => StatusCode::FORBIDDEN,
            Self::Admin(AdminAuthError::Unauthorized) => StatusCode::UNAUTHORIZED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            // The cause goes to the log, not to the client.
            Self::Unavailable(cause) => tracing::warn!(error = %Chain(cause), "publish failed"),
            Self::Database(cause) => tracing::warn!(error = %Chain(cause), "database request failed"),
            Self::RateLimited { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            Self::Admin(AdminAuthError::Unauthorized) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        match self {
            Self::Validation(details) => response.json(json!({"error": self.to_string(), "details": details})),
            _ => response.json(json!({"error": self.to_string()})),
        }
    }
}

/// actix's JSON extractor errors, as ours.
pub fn json_error(limit: usize) -> impl Fn(JsonPayloadError, &HttpRequest) -> actix_web::Error + Clone {
    move |error, _request| {
        match error {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                ApiError::PayloadTooLarge { limit }
            }
            JsonPayloadError::Deserialize(error) => ApiError::MalformedJson(error.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
        .into()
    }
}

pub fn query_error(error: actix_web::error::QueryPayloadError, _request: &HttpRequest) -> actix_web::Error {
    ApiError::BadRequest(format!("invalid query string: {error}")).into()
}

pub fn path_error(error: PathError, _request: &HttpRequest) -> actix_web::Error {
    ApiError::BadRequest(format!("invalid path parameter: {error}")).into()
}
