//! The one error type of the HTTP API: RFC 6749 section 5.2 JSON errors
//! (`{"error","error_description"}`, `Cache-Control: no-store`), used by the token endpoint, the
//! admin API and every extractor rejection. Internal details are logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The `error` codes we answer with (RFC 6749 5.2, RFC 7591 3.2.2, plus HTTP-ish admin ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    UnsupportedResponseType,
    InvalidClientMetadata,
    NotFound,
    MethodNotAllowed,
    Conflict,
    /// 403: a cross-site request or an unexpected `Host` on the admin API.
    RequestForbidden,
    /// 415: a JSON endpoint was sent another media type.
    UnsupportedMediaType,
    /// 408: the request body did not arrive in time.
    RequestTimeout,
    ServerError,
    TemporarilyUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::InvalidClientMetadata => "invalid_client_metadata",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::RequestForbidden => "request_forbidden",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::RequestForbidden => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Error {
    pub code: ErrorCode,
    pub description: String,
    /// Set when the client authenticated with HTTP Basic: a 401 then carries
    /// `WWW-Authenticate: Basic` (RFC 6749 5.2).
    pub basic_challenge: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl OAuth2Error {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, d)
    }

    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidClient, d)
    }

    pub fn not_found(d: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, d)
    }

    /// Logs `detail` and answers a generic 500: internals never reach the client.
    pub fn server_error(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::ServerError,
            "The authorization server encountered an unexpected condition.",
        )
    }

    /// Logs `detail` and answers 503 (the store is unusable).
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "store unavailable");
        Self::new(
            ErrorCode::TemporarilyUnavailable,
            "The authorization server is temporarily unable to handle the request.",
        )
    }

    pub fn with_basic_challenge(mut self, basic: bool) -> Self {
        self.basic_challenge = basic;
        self
    }
}

impl std::fmt::Display for OAuth2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.description)
    }
}

impl std::error::Error for OAuth2Error {}

impl IntoResponse for OAuth2Error {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let body = serde_json::to_vec(&Body {
            error: self.code.as_str(),
            error_description: &self.description,
        })
        .unwrap_or_default();
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.basic_challenge && status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portcullis\", charset=\"UTF-8\""),
            );
        }
        resp
    }
}

impl From<crate::store::StoreError> for OAuth2Error {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict(what) => {
                Self::new(ErrorCode::Conflict, format!("{what} already exists"))
            }
            other => Self::unavailable(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn parts(e: OAuth2Error) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn invalid_client_with_basic_carries_challenge() {
        let (status, headers, body) =
            parts(OAuth2Error::invalid_client("bad secret").with_basic_challenge(true)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            headers[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Basic realm=")
        );
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_description"], "bad secret");
    }

    #[tokio::test]
    async fn invalid_client_without_basic_has_no_challenge() {
        let (status, headers, _) = parts(OAuth2Error::invalid_client("x")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.get(header::WWW_AUTHENTICATE).is_none());
    }

    #[tokio::test]
    async fn codes_map_to_statuses() {
        for (code, status) in [
            (ErrorCode::InvalidScope, 400),
            (ErrorCode::UnsupportedGrantType, 400),
            (ErrorCode::UnauthorizedClient, 400),
            (ErrorCode::NotFound, 404),
            (ErrorCode::Conflict, 409),
            (ErrorCode::RequestForbidden, 403),
            (ErrorCode::UnsupportedMediaType, 415),
            (ErrorCode::RequestTimeout, 408),
            (ErrorCode::TemporarilyUnavailable, 503),
        ] {
            let (s, _, body) = parts(OAuth2Error::new(code, "d")).await;
            assert_eq!(s.as_u16(), status);
            assert_eq!(body["error"], code.as_str());
        }
    }

    #[tokio::test]
    async fn server_error_hides_details() {
        let (s, _, body) = parts(OAuth2Error::server_error("disk /secret/path failed")).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("/secret/path"));
    }
}
