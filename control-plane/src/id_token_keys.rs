//! The key set the filter's `id_token` mutator signs with, kept by the control plane like its
//! own signing keys (generated, encrypted at rest, rotated with `POST /admin/keys/portcullis.id-token`)
//! so that no private key has to sit in a WasmPlugin, ConfigMap or Secret a reader of the
//! workload's namespace can see. Two documents:
//!
//! - `GET /admin/id-token/private-jwks.json` (admin port): the current key with its private
//!   member, for sidecars. The admin port is on loopback in manifests mode; in a mesh an
//!   AuthorizationPolicy lets only the principals of workloads that mint id tokens fetch it
//!   (`istio/mesh-security.yaml`). Never cached by intermediaries.
//! - `GET /.well-known/id-token/jwks.json` (public port): the public halves, current and retired
//!   until tokens they signed have expired, for upstreams that verify the tokens. Apart from the
//!   access-token JWKS, so an id token is never mistaken for an access token of this issuer.
//!
//! See docs/security.md, "id_token signing keys: delivery and threat model".

use crate::clock;
use crate::keys::{Alg, KeyError, KeyService};
use crate::oauth2_error::OAuth2Error;
use crate::server::Service;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

/// The key set's name in the key store and the admin keys API.
pub const ID_TOKEN_SET: &str = "portcullis.id-token";
/// Admin path of the private key set (also answered without the `/admin` prefix).
pub const PRIVATE_JWKS_PATH: &str = "/admin/id-token/private-jwks.json";
/// Public path of the public halves.
pub const PUBLIC_JWKS_PATH: &str = "/.well-known/id-token/jwks.json";
/// Retired keys stay published at least this long (Oathkeeper's default id_token ttl is 15m).
const MIN_PUBLISHED_SECS: i64 = 3600;

/// Algorithms the filter can be handed as a private JWK (AWS-LC keeps RSA components inside).
pub fn check_alg(alg: Alg) -> Result<(), OAuth2Error> {
    match alg {
        Alg::ES256 | Alg::EdDSA => Ok(()),
        Alg::RS256 => Err(OAuth2Error::invalid_request(format!(
            "keys of set {ID_TOKEN_SET} must be ES256 or EdDSA: sidecars receive them as private JWKs"
        ))),
    }
}

/// How long retired keys of the set stay published.
pub fn published_secs(max_token_ttl: i64) -> i64 {
    max_token_ttl.max(MIN_PUBLISHED_SECS)
}

/// Makes sure the set has a current key (ES256: small, and fast to sign in the sidecar).
pub fn ensure(keys: &KeyService, max_token_ttl: i64) -> Result<(), KeyError> {
    keys.ensure_current(ID_TOKEN_SET, Alg::ES256, published_secs(max_token_ttl))
}

/// `GET /admin/id-token/private-jwks.json`.
pub async fn private_jwks_endpoint(State(svc): State<Arc<Service>>) -> Response {
    let ring = svc.keys.ring();
    let keys: Vec<_> = ring
        .current(ID_TOKEN_SET)
        .and_then(|k| k.private_jwk())
        .into_iter()
        .collect();
    let mut resp = axum::Json(json!({ "keys": keys })).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /.well-known/id-token/jwks.json`.
pub async fn public_jwks_endpoint(State(svc): State<Arc<Service>>) -> Response {
    let jwks = svc.keys.ring().jwks(ID_TOKEN_SET, clock::now());
    let mut resp = axum::Json(jwks).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    resp
}
