//! `private_key_jwt` client authentication (RFC 7523 section 2.2 / OpenID Connect Core 9): the
//! client signs a JWT with `iss` = `sub` = its id, `aud` = our token endpoint, `exp` and a
//! single-use `jti`, verified against the client's registered `jwks` or the key set at its
//! `jwks_uri` (fetched over HTTP(S), cached, refetched when an unknown `kid` shows up).

use crate::client::{AuthMethod, ClientRecord};
use crate::clock;
use crate::crypto::b64url_decode;
use crate::oauth2_error::OAuth2Error;
use crate::server::Service;
use crate::token::JWT_BEARER_ASSERTION;
use axum::body::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a fetched key set is trusted before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers a refetch, but not more often than this per URI.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_MAX_BYTES: usize = 256 * 1024;

/// Fetches and caches clients' `jwks_uri` key sets.
pub struct JwksFetcher {
    client: Option<HttpClient<HttpsConnector<HttpConnector>, Empty<Bytes>>>,
    cache: Mutex<HashMap<String, (Arc<JwkSet>, Instant)>>,
}

impl Default for JwksFetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl JwksFetcher {
    pub fn new() -> Self {
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map(|b| {
                let connector = b.https_or_http().enable_http1().build();
                HttpClient::builder(TokioExecutor::new()).build(connector)
            })
            .map_err(|e| tracing::error!(error = %e, "TLS setup failed: jwks_uri disabled"))
            .ok();
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The key set at `uri`, from cache unless stale (or `refresh` and the entry is not brand new).
    pub async fn get(&self, uri: &str, refresh: bool) -> Result<Arc<JwkSet>, String> {
        let cached = self.cache.lock().ok().and_then(|c| c.get(uri).cloned());
        if let Some((set, at)) = &cached {
            let age = at.elapsed();
            if age < JWKS_TTL && !(refresh && age >= JWKS_MIN_REFRESH) {
                return Ok(Arc::clone(set));
            }
        }
        match self.fetch(uri).await {
            Ok(set) => {
                let set = Arc::new(set);
                if let Ok(mut c) = self.cache.lock() {
                    c.insert(uri.to_string(), (Arc::clone(&set), Instant::now()));
                }
                Ok(set)
            }
            // A stale set beats none while the URI is briefly unreachable.
            Err(e) => match cached {
                Some((set, _)) => {
                    tracing::warn!(uri, error = %e, "jwks_uri refetch failed; using cached set");
                    Ok(set)
                }
                None => Err(e),
            },
        }
    }

    async fn fetch(&self, uri: &str) -> Result<JwkSet, String> {
        let client = self.client.as_ref().ok_or("no HTTP client")?;
        let uri: hyper::Uri = uri.parse().map_err(|e| format!("bad jwks_uri: {e}"))?;
        let resp = tokio::time::timeout(JWKS_TIMEOUT, client.get(uri))
            .await
            .map_err(|_| "fetching jwks_uri timed out".to_string())?
            .map_err(|e| format!("fetching jwks_uri failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("jwks_uri answered {}", resp.status()));
        }
        let body = tokio::time::timeout(
            JWKS_TIMEOUT,
            Limited::new(resp.into_body(), JWKS_MAX_BYTES).collect(),
        )
        .await
        .map_err(|_| "reading jwks_uri timed out".to_string())?
        .map_err(|e| format!("reading jwks_uri failed: {e}"))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("jwks_uri is not a JWK set: {e}"))
    }
}

enum VerifyFailure {
    /// No key of the set matches the assertion's `kid` (a refetch may help).
    NoKey,
    Invalid(String),
}

fn verify_with(
    jwks: &JwkSet,
    header: &Header,
    assertion: &str,
    validation: &Validation,
) -> Result<VerifiedClaims, VerifyFailure> {
    let mut last_error = None;
    for jwk in jwks
        .keys
        .iter()
        .filter(|k| match (&header.kid, &k.common.key_id) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        })
    {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<VerifiedClaims>(assertion, &key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    Err(last_error.map_or(VerifyFailure::NoKey, VerifyFailure::Invalid))
}

/// An assertion may not live longer than this (bounds the replay table).
const MAX_ASSERTION_LIFETIME: i64 = 24 * 3600;

#[derive(Deserialize)]
struct UnverifiedClaims {
    iss: Option<String>,
    sub: Option<String>,
}

#[derive(Deserialize)]
struct VerifiedClaims {
    sub: String,
    exp: i64,
    jti: Option<String>,
}

fn invalid(reason: impl Into<String>) -> OAuth2Error {
    OAuth2Error::invalid_client(format!(
        "The client assertion is invalid: {}",
        reason.into()
    ))
}

pub async fn authenticate(
    svc: &Service,
    assertion_type: Option<&str>,
    assertion: Option<&str>,
    client_id_param: Option<&str>,
) -> Result<Arc<ClientRecord>, OAuth2Error> {
    if assertion_type != Some(JWT_BEARER_ASSERTION) {
        return Err(OAuth2Error::invalid_request(format!(
            "client_assertion_type must be {JWT_BEARER_ASSERTION:?}."
        )));
    }
    let assertion = assertion.ok_or_else(|| {
        OAuth2Error::invalid_request("The client_assertion parameter is missing.")
    })?;
    let payload = assertion
        .split('.')
        .nth(1)
        .and_then(b64url_decode)
        .ok_or_else(|| invalid("not a compact JWS"))?;
    let unverified: UnverifiedClaims = serde_json::from_slice(&payload)
        .map_err(|_| invalid("the claims are not a JSON object"))?;
    let client_id = unverified.sub.ok_or_else(|| invalid("sub is missing"))?;
    if unverified.iss.as_deref() != Some(client_id.as_str()) {
        return Err(invalid("iss must equal sub (the client id)"));
    }
    if client_id_param.is_some_and(|p| p != client_id) {
        return Err(invalid("client_id does not match the assertion's subject"));
    }
    let rec = svc
        .clients
        .lookup(&client_id)
        .ok_or_else(|| invalid("unknown client"))?;
    if rec.auth_method != AuthMethod::PrivateKeyJwt {
        return Err(OAuth2Error::invalid_client(format!(
            "The OAuth 2.0 Client supports client authentication method {:?}, but method \"private_key_jwt\" was requested.",
            rec.auth_method.as_str()
        )));
    }
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| invalid(e.to_string()))?;
    if matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(invalid("symmetric algorithms are not accepted"));
    }
    let audiences = [svc.config.token_endpoint(), svc.config.issuer.clone()];
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&audiences);
    validation.set_issuer(&[client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = 30;

    let claims = match &rec.client.jwks {
        Some(v) => {
            let jwks: JwkSet = serde_json::from_value(v.clone())
                .map_err(|_| invalid("the client's jwks is unusable"))?;
            verify_with(&jwks, &header, assertion, &validation)
        }
        None => {
            let uri = &rec.client.jwks_uri;
            let jwks = svc.jwks_fetcher.get(uri, false).await.map_err(invalid)?;
            match verify_with(&jwks, &header, assertion, &validation) {
                Err(VerifyFailure::NoKey) => {
                    let jwks = svc.jwks_fetcher.get(uri, true).await.map_err(invalid)?;
                    verify_with(&jwks, &header, assertion, &validation)
                }
                other => other,
            }
        }
    };
    let claims = claims.map_err(|e| match e {
        VerifyFailure::NoKey => invalid("no registered key matches the assertion's kid"),
        VerifyFailure::Invalid(e) => invalid(e),
    })?;
    if claims.sub != client_id {
        return Err(invalid("sub must equal the client id"));
    }
    let now = clock::now();
    if claims.exp - now > MAX_ASSERTION_LIFETIME {
        return Err(invalid("exp is too far in the future"));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty())
        .ok_or_else(|| invalid("jti is missing"))?;
    let store = Arc::clone(&svc.store);
    let id = client_id.clone();
    let first_use = tokio::task::spawn_blocking(move || {
        store.use_assertion_jti(&id, &jti, claims.exp.max(now) + 60)
    })
    .await
    .map_err(OAuth2Error::server_error)??;
    if !first_use {
        return Err(invalid("jti has already been used"));
    }
    Ok(rec)
}
