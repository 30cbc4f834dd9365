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
    // OpenID Connect / browser flows (OIDC Core 3.1.2.6, Hydra's extras).
    AccessDenied,
    LoginRequired,
    ConsentRequired,
    InvalidState,
    InsufficientEntropy,
    RequestNotSupported,
    RequestUriNotSupported,
    /// Answered by `/userinfo` without a usable token (RFC 6750 3.1, with `WWW-Authenticate`).
    InvalidToken,
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
            Self::AccessDenied => "access_denied",
            Self::LoginRequired => "login_required",
            Self::ConsentRequired => "consent_required",
            Self::InvalidState => "invalid_state",
            Self::InsufficientEntropy => "insufficient_entropy",
            Self::RequestNotSupported => "request_not_supported",
            Self::RequestUriNotSupported => "request_uri_not_supported",
            Self::InvalidToken => "invalid_token",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::AccessDenied | Self::RequestForbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
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

/// `uri` with `params` added to its query (form-encoded), keeping any query it has.
pub fn append_query(uri: &str, params: &[(&str, &str)]) -> String {
    let encoded = serde_urlencoded::to_string(params).unwrap_or_default();
    if encoded.is_empty() {
        return uri.to_string();
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{encoded}")
}

/// A redirect the browser follows. A `Location` that is not a valid header value (the URIs are
/// validated before they get here) becomes a 500 instead of a panic.
pub fn redirect(status: StatusCode, location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut resp = status.into_response();
            resp.headers_mut().insert(header::LOCATION, v);
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => OAuth2Error::server_error(format!("bad Location header: {e}")).into_response(),
    }
}

impl OAuth2Error {
    /// The error as OIDC Core 3.1.2.6 sends it: 303 to the client's registered `redirect_uri`
    /// with `error`, `error_description` and `state`. Callers pass only a URI that was matched
    /// against the client's registration: never an open redirect.
    pub fn to_client(&self, registered_redirect_uri: &str, state: &str) -> Response {
        let mut params = vec![
            ("error", self.code.as_str()),
            ("error_description", self.description.as_str()),
        ];
        if !state.is_empty() {
            params.push(("state", state));
        }
        redirect(
            StatusCode::SEE_OTHER,
            &append_query(registered_redirect_uri, &params),
        )
    }

    /// The error for the browser when no client redirect can be trusted (unknown client,
    /// unregistered `redirect_uri`): 302 to the error page (Hydra's `urls.error`).
    pub fn to_error_page(&self, error_url: &str) -> Response {
        redirect(
            StatusCode::FOUND,
            &append_query(
                error_url,
                &[
                    ("error", self.code.as_str()),
                    ("error_description", self.description.as_str()),
                ],
            ),
        )
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
        if self.code == ErrorCode::InvalidToken {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
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
            // The store logged the condition when it began; one line per request would bury
            // everything else while the disk stays full.
            crate::store::StoreError::Unwritable(detail) => {
                tracing::debug!(error = %detail, "write refused by the data directory");
                Self::new(
                    ErrorCode::TemporarilyUnavailable,
                    "The authorization server is temporarily unable to handle the request.",
                )
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

    #[test]
    fn client_redirects_carry_error_and_state_only_to_the_given_uri() {
        let e = OAuth2Error::new(ErrorCode::LoginRequired, "no session & more");
        let resp = e.to_client("https://app.example/cb?x=1", "st4te-123");
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            resp.headers()[header::LOCATION],
            "https://app.example/cb?x=1&error=login_required&error_description=no+session+%26+more&state=st4te-123"
        );
        let resp = e.to_error_page("/oauth2/fallbacks/error");
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert!(
            resp.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .starts_with("/oauth2/fallbacks/error?error=login_required")
        );
        // A location that cannot be a header is refused, not a panic.
        assert_eq!(
            redirect(StatusCode::FOUND, "https://x/\n").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn server_error_hides_details() {
        let (s, _, body) = parts(OAuth2Error::server_error("disk /secret/path failed")).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("/secret/path"));
    }
}
