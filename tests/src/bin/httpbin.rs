//! A small httpbin-like sample upstream for `make run`: `GET /headers` answers
//! `{"headers": {...}}`, `POST /post` answers `{"headers", "data", "json"}`, `GET /get` and
//! anything else answer `{"method", "url", "headers"}`, the shapes httpbin users know.
//!
//! usage: httpbin [ADDR] (default 127.0.0.1:8000)

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Json;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

fn headers(h: &HeaderMap) -> Value {
    let mut m = Map::new();
    for (k, v) in h {
        m.insert(
            k.as_str().to_string(),
            Value::from(v.to_str().unwrap_or_default()),
        );
    }
    Value::Object(m)
}

async fn show_headers(h: HeaderMap) -> Json<Value> {
    Json(json!({"headers": headers(&h)}))
}

async fn show_post(h: HeaderMap, body: Bytes) -> Json<Value> {
    let data = String::from_utf8_lossy(&body).into_owned();
    let parsed = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    Json(json!({"headers": headers(&h), "data": data, "json": parsed}))
}

async fn anything(method: Method, uri: Uri, h: HeaderMap) -> Json<Value> {
    Json(json!({"method": method.as_str(), "url": uri.to_string(), "headers": headers(&h)}))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".to_string());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("httpbin: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let app = axum::Router::new()
        .route("/headers", get(show_headers))
        .route("/post", post(show_post))
        .fallback(anything);
    eprintln!("httpbin: listening on http://{addr}");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("httpbin: {e}");
        std::process::exit(1);
    }
}
