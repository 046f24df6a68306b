//! The one response shape: `{"code": N, "message": "..."}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::http::body::{BodyError, MediaTypeError};

/// Everything that ends a request with something other than 200.
/// The `Display` text is what the client reads, so it never carries internal detail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadBody(#[from] BodyError),
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
    #[error(
        "Idempotency-Key already used for a request with another id: use a new key for a new \
         request"
    )]
    IdempotencyKeyReused,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("invalid or expired code")]
    InvalidCode,
    #[error("{0}")]
    WeakPassword(#[from] crate::reset::PolicyError),
    #[error("Forbidden: this operation requires authentication")]
    Forbidden,
    #[error("Not found: the resource was not found")]
    NotFound,
    #[error("method not allowed: use {0}")]
    MethodNotAllowed(&'static str),
    #[error("request timeout: the body did not arrive within {0} seconds")]
    BodyTimeout(u64),
    #[error("the request body could not be read to its end")]
    BodyIncomplete,
    #[error("payload too large: the body may hold at most {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(#[from] MediaTypeError),
    #[error("request headers too large: they may hold at most {0} bytes")]
    HeadersTooLarge(usize),
    #[error("too many requests: retry in {0} seconds")]
    TooManyRequests(u64),
    #[error("service unavailable: the request was not accepted, retry later")]
    Unavailable,
    #[error(
        "service unavailable: the event stream is full, the request was not accepted; retry later"
    )]
    StreamFull,
    #[error("not ready: {0}")]
    NotReady(&'static str),
    #[error("Error - Server Error")]
    Internal,
}

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_UNAVAILABLE: u64 = 2;

impl ApiError {
    /// What the access line says of the error: the client's text, less anything of the
    /// body it wrote ([`BodyError::log_text`]).
    pub fn log_text(&self) -> String {
        match self {
            Self::BadBody(err) => err.log_text(),
            other => other.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadBody(_)
            | Self::BadIdempotencyKey
            | Self::BodyIncomplete
            | Self::InvalidToken
            | Self::InvalidCode
            | Self::WeakPassword(_) => StatusCode::BAD_REQUEST,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable | Self::StreamFull | Self::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = shared::http::json(self.status(), &self.to_string());
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::TooManyRequests(secs) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Self::Unavailable | Self::StreamFull | Self::NotReady(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(RETRY_AFTER_UNAVAILABLE),
                );
            }
            // The body was not read to its end, so the connection cannot carry another request.
            Self::PayloadTooLarge(_) | Self::BodyTimeout(_) | Self::HeadersTooLarge(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// `{"code":200,"message":"OK"}`, the answer to nearly every request: a constant body, not
/// serialised per request.
pub fn ok() -> Response<Full<Bytes>> {
    const OK: &str = r#"{"code":200,"message":"OK"}"#;
    shared::http::text("application/json", OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn errors_are_code_and_message_json() {
        let response = ApiError::Forbidden.into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_of(response).await,
            serde_json::json!({"code": 403, "message": "Forbidden: this operation requires authentication"})
        );
    }

    #[tokio::test]
    async fn ok_is_the_same_shape_as_every_other_answer() {
        let response = ok();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_of(response).await,
            body_of(shared::http::json(StatusCode::OK, "OK")).await
        );
    }

    #[tokio::test]
    async fn internal_errors_say_nothing_more() {
        assert_eq!(
            body_of(ApiError::Internal.into_response()).await,
            serde_json::json!({"code": 500, "message": "Error - Server Error"})
        );
    }

    #[test]
    fn statuses_that_ask_for_patience_say_how_long() {
        let limited = ApiError::TooManyRequests(7).into_response();
        assert_eq!(limited.headers()[header::RETRY_AFTER], "7");
        let unavailable = ApiError::Unavailable.into_response();
        assert_eq!(unavailable.headers()[header::RETRY_AFTER], "2");
        let not_allowed = ApiError::MethodNotAllowed("POST").into_response();
        assert_eq!(not_allowed.headers()[header::ALLOW], "POST");
    }
}
