//! Every refusal is JSON `{"error": {"message", "field", "type", "param"}}` with a 4xx or 5xx status:
//! `field` names the request field at fault (null when none is); `type` and `param` repeat it in
//! OpenAI's error shape, so OpenAI's SDKs raise their usual exceptions with the message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: field.map(str::to_string), retry_after: None }
    }

    /// 400: `field` is wrong; `message` says what was given and what is accepted.
    pub fn bad(field: impl AsRef<str>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some(field.as_ref()), message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, None, message)
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        let body = json!({
            "error": {"message": self.message, "field": self.field, "type": kind, "param": self.field}
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
