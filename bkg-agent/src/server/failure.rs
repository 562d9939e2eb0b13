//! The one shape of every API error, `{"error":{"code","message"}}`, with its HTTP status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::{ApiError, ErrorCode};

use crate::engine::run::RunError;
use crate::store::StoreError;

/// An API error ready to be sent.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for `Retry-After` (429 answers; 503 of a full queue, a spent disk budget or body budget).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, Failure>;

impl Failure {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    /// Syntactically broken input: bad JSON, a bad query string.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// Well-formed input with values the agent will not take.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    pub fn too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is over the limit of {limit_bytes} bytes"),
        )
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("this key is over its request rate; retry in {retry_after} s"),
            )
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, message)
    }

    /// The agent holds as many request bodies as it will at once; the client retries shortly.
    pub fn bodies_busy(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::unavailable(format!(
                "the agent is holding as many request bodies as it will at once; retry in {retry_after} s"
            ))
        }
    }

    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, message)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::internal(error.to_string())
    }
}

impl From<&RunError> for Failure {
    fn from(error: &RunError) -> Self {
        let status = match error {
            RunError::BadRequest(_) | RunError::LimitAboveMaximum { .. } | RunError::RuntimeNotExecutable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            RunError::Busy(_) => StatusCode::CONFLICT,
            RunError::Overloaded { retry_after_secs, .. } => {
                return Self {
                    retry_after: Some(u64::from(*retry_after_secs)),
                    ..Self::new(StatusCode::SERVICE_UNAVAILABLE, error.code(), error.to_string())
                };
            }
            RunError::Engine(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error.code(), error.to_string())
    }
}

impl From<RunError> for Failure {
    fn from(error: RunError) -> Self {
        Self::from(&error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ApiError::new(self.code, self.message))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
