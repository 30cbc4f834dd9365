//! The token service's request decoding (form, multipart, Basic credentials) and JSON Patch on
//! clients.

use crate::input::selector;
use axum::extract::FromRequest;
use axum::http::{HeaderMap, HeaderValue, Request, header};
use portcullis::client::ClientService;
use portcullis::lifespan;
use portcullis::request::{Form, Params, basic_credentials};
use portcullis::store::sqlite::SqliteStore;
use std::sync::{Arc, LazyLock};

static RUNTIME: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
});

fn block_on<F: Future>(f: F) -> Option<F::Output> {
    RUNTIME.as_ref().map(|rt| rt.block_on(f))
}

/// Selector 0: an urlencoded body; 1: an `Authorization` header value; 2: a multipart body
/// (boundary `B`); 3: an urlencoded body through the extractor. Decoded or refused with an
/// OAuth2 error, never a panic; a parameter given twice is refused.
pub fn token_request(data: &[u8]) {
    let (sel, rest) = selector(data);
    match sel % 4 {
        0 => {
            if let Ok(params) = Params::parse_urlencoded(rest) {
                check_params(&params);
            }
        }
        1 => {
            let Ok(value) = HeaderValue::from_bytes(rest) else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value);
            if let Ok(Some((id, _secret))) = basic_credentials(&headers) {
                assert!(!id.is_empty(), "an empty client id was accepted");
            }
        }
        n => {
            let content_type = if n == 2 {
                "multipart/form-data; boundary=B"
            } else {
                "application/x-www-form-urlencoded"
            };
            let Ok(req) = Request::builder()
                .method("POST")
                .header(header::CONTENT_TYPE, content_type)
                .body(axum::body::Body::from(rest.to_vec()))
            else {
                return;
            };
            if let Some(Ok(Form(params))) = block_on(Form::from_request(req, &())) {
                check_params(&params);
            }
        }
    }
}

fn check_params(params: &Params) {
    for (name, _) in &params.0 {
        let repeated = params.0.iter().filter(|(n, _)| n == name).count() > 1;
        assert_eq!(
            params.get(name).is_err(),
            repeated,
            "repetition of {name:?}"
        );
    }
}

/// One client, patched over and over: a patch applies or is refused, the client id never
/// changes and the client stays readable.
static CLIENTS: LazyLock<Option<ClientService>> = LazyLock::new(|| {
    let store = Arc::new(SqliteStore::in_memory().ok()?);
    let svc = ClientService::load(store, lifespan::DEFAULT_MAX).ok()?;
    let client = serde_json::from_value(serde_json::json!({
        "client_id": "c1", "client_secret": "a-long-enough-secret",
        "grant_types": ["client_credentials"], "scope": "read write",
        "audience": ["https://api"], "redirect_uris": ["https://app/cb"],
    }))
    .ok()?;
    block_on(svc.create(client))?.ok()?;
    Some(svc)
});

/// Any JSON Patch document, applied to the stored client.
pub fn client_patch(data: &[u8]) {
    let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(data) else {
        return;
    };
    let Some(svc) = CLIENTS.as_ref() else {
        panic!("the client store did not open");
    };
    if let Some(Ok(client)) = block_on(svc.patch("c1", &patch)) {
        assert_eq!(client.client_id, "c1", "the patch changed the client id");
    }
    assert!(svc.get("c1").is_some(), "the client is gone after a patch");
}
