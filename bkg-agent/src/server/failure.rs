//! The one shape of every API error, `{"error":{"code","message"}}`, with its HTTP status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bkg_schema::{ApiError, ErrorCode};

use crate::service::{OpError, Refusal};

/// What a 401 asks for: an API key, sent as `Authorization: Bearer KEY`.
const BEARER_CHALLENGE: &str = "Bearer realm=\"bkg\"";

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
            format!(
                "the request body is over the limit of {}: send less at once (a file upload is streamed, not bounded by this)",
                bkg_schema::units::format_size(limit_bytes as u64)
            ),
        )
    }

    /// `who`: `this key`, or for requests without a valid key `this address`.
    pub fn rate_limited(who: &str, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("{who} is over its request rate; retry in {retry_after} s"),
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

impl From<OpError> for Failure {
    fn from(error: OpError) -> Self {
        let status = match error.refusal() {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::Conflict => StatusCode::CONFLICT,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { retry_after: error.retry_after_secs(), ..Self::new(status, error.code(), error.to_string()) }
    }
}

impl Failure {
    /// The whole HTTP/1.1 answer, for a connection no router serves (a socket peer the agent
    /// refuses): it asks the client to close, the connection serving nothing more.
    pub fn http1_closing(&self) -> Vec<u8> {
        let body = serde_json::to_string(&ApiError::new(self.code, self.message.clone()))
            .unwrap_or_else(|_| String::from("{}"));
        let reason = self.status.canonical_reason().unwrap_or("");
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status.as_u16(),
            body.len()
        )
        .into_bytes()
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ApiError::new(self.code, self.message))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // RFC 9110 asks a 401 to name the scheme that would be taken: an API key as a bearer
        // token (docs/api.md). Clients that go by it (the MCP SDKs) learn why they were refused.
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
        }
        response
    }
}
