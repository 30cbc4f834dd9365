//! Health endpoints served on both ports: `/health/alive` (the process answers) and
//! `/health/ready` (the store answers and, when shared, its change feed is connected; 503
//! otherwise).

use crate::server::Service;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

/// `GET /version` (Hydra answers it too).
pub async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

pub async fn alive() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

pub async fn ready(State(svc): State<Arc<Service>>) -> Response {
    if !svc.is_current() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"errors": {"database": "not following the store's changes"}})),
        )
            .into_response();
    }
    let store = Arc::clone(&svc.store);
    match tokio::task::spawn_blocking(move || store.ping()).await {
        Ok(Ok(())) => axum::Json(json!({"status": "ok"})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store unusable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"errors": {"database": "the store is unusable"}})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check panicked");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
