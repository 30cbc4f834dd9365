//! The app's one error type: every failure becomes a page saying what went wrong (escaped).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::html;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The browser sent something this app cannot use (missing challenge, unknown state).
    #[error("{0}")]
    BadRequest(String),
    /// The token service or the upstream answered something unexpected, or was unreachable.
    #[error("{0}")]
    Upstream(String),
    /// The ID token failed verification: the sign-in is refused.
    #[error("the ID token was refused: {0}")]
    IdToken(String),
}

impl AppError {
    pub fn upstream(what: &str, e: impl std::fmt::Display) -> Self {
        Self::Upstream(format!("{what}: {e}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::IdToken(_) => StatusCode::UNAUTHORIZED,
        };
        let body = format!(
            "<p class=\"bad\" id=\"error\">{}</p><p><a class=\"button\" href=\"/\">Start again</a></p>",
            html::escape(&self.to_string())
        );
        html::page(status, "Something went wrong", &body)
    }
}
