//! The tokens of a person's grant (authorization code or refresh): an access token for the
//! subject (a JWT, or an opaque token when the client's `access_token_strategy` is `opaque`,
//! with the consent's `session.access_token` as `ext` either way), an ID token with `openid`,
//! and a rotating refresh token with `offline`/`offline_access`. Shared by
//! [`crate::code_grant`] and [`crate::refresh`], along with revoking everything a grant issued.
//!
//! A JWT is revoked by its `jti` (the revocation list); an opaque token only ever by deleting
//! its row, which carries the grant's id so that the store deletes a grant's tokens with its
//! refresh chain.

use crate::client::ClientRecord;
use crate::clock;
use crate::crypto::{b64url, b64url_decode, random_bytes, sha256};
use crate::keys::ACCESS_TOKEN_SET;
use crate::oauth2_error::OAuth2Error;
use crate::server::Service;
use crate::store::{ChainKey, StepRows, StoredOpaqueToken, StoredRefreshToken};
use crate::token::{AccessClaims, OPAQUE_PREFIX};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

pub const REFRESH_PREFIX: &str = "ory_rt_";

/// Bytes of issue order that open a refresh token's random part and its store key.
const ISSUE_ORDER_LEN: usize = 8;

/// A new refresh token: [`REFRESH_PREFIX`], then base64url of the time it was made (8 bytes,
/// big-endian microseconds) and 32 random bytes.
fn new_refresh_token() -> Result<String, OAuth2Error> {
    new_refresh_token_at(clock::now_micros())
}

fn new_refresh_token_at(micros: u64) -> Result<String, OAuth2Error> {
    let secret = random_bytes::<32>().map_err(OAuth2Error::server_error)?;
    let mut raw = [0u8; ISSUE_ORDER_LEN + 32];
    raw[..ISSUE_ORDER_LEN].copy_from_slice(&micros.to_be_bytes());
    raw[ISSUE_ORDER_LEN..].copy_from_slice(&secret);
    Ok(format!("{REFRESH_PREFIX}{}", b64url(&raw)))
}

/// The store key of a refresh token: its SHA-256, whose first 8 bytes are replaced by the
/// token's issue order when it has one. Every refresh inserts a token, and a key that grows
/// with time lands on the index's last page, shared by the whole batch, where a hash would
/// land on a random page (one page write and, once the index outgrows the cache, one read
/// more per refresh). The 24 bytes of hash left are what makes a key unguessable. Tokens
/// issued before the order was added (32 random bytes) keep their plain hash.
pub fn refresh_token_key(token: &str) -> [u8; 32] {
    let mut key = sha256(token.as_bytes());
    if let Some(order) = issue_order(token) {
        key[..ISSUE_ORDER_LEN].copy_from_slice(&order);
    }
    key
}

/// When a refresh token was issued (Unix seconds), for tokens that say so.
pub fn refresh_token_issued_at(token: &str) -> Option<i64> {
    let micros = u64::from_be_bytes(issue_order(token)?);
    i64::try_from(micros / 1_000_000).ok()
}

fn issue_order(token: &str) -> Option<[u8; ISSUE_ORDER_LEN]> {
    let raw = b64url_decode(token.strip_prefix(REFRESH_PREFIX)?)?;
    if raw.len() != ISSUE_ORDER_LEN + 32 {
        return None;
    }
    raw[..ISSUE_ORDER_LEN].try_into().ok()
}

/// Separates the grant's id from the random part in the `jti` of a JWT access token backed
/// by a refresh chain (a UUID has none).
const CHAIN_JTI_SEPARATOR: char = '.';

/// The grant (refresh chain) a JWT access token's `jti` names, when it names one: the token
/// was issued with a refresh token that outlives it, so every row of the chain, which all
/// carry the same [`Grant`], says whom it speaks for. Only meaningful for a `jti` taken from
/// a token whose signature was verified.
pub fn chain_of_jti(jti: &str) -> Option<&str> {
    jti.split_once(CHAIN_JTI_SEPARATOR)
        .map(|(chain, _)| chain)
        .filter(|c| !c.is_empty())
}

/// What the user granted to one client: everything a token of the grant is built from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Grant {
    /// Hydra's `consent_request_id`: names the token chain.
    pub grant_id: String,
    pub client_id: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    pub access_token_claims: Value,
    pub id_token_claims: Value,
    pub auth_time: i64,
    pub requested_at: i64,
    pub nonce: Option<String>,
    pub sid: String,
    pub acr: String,
    pub amr: Vec<String>,
}

impl Grant {
    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|g| g == s)
    }

    /// The refresh chain of this grant, as the store finds it.
    pub fn chain_key(&self) -> ChainKey {
        ChainKey {
            subject: self.subject.clone(),
            client_id: self.client_id.clone(),
            chain: self.grant_id.clone(),
        }
    }

    /// Refresh tokens need `offline` or `offline_access` granted and the client's grant type.
    pub fn wants_refresh(&self, client: &ClientRecord) -> bool {
        (self.has_scope("offline") || self.has_scope("offline_access"))
            && client.has_grant("refresh_token")
    }
}

/// A refresh token row's JSON: the grant and the access token issued with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshState {
    pub grant: Grant,
    /// The access token's `jti` when it is a JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_jti: Option<String>,
    /// The access token's SHA-256 (base64url) when it is opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_hash: Option<String>,
    pub access_exp: i64,
}

impl RefreshState {
    /// The JWT issued with this refresh token, as `(jti, exp)`.
    pub fn access_jwt(&self) -> Option<(String, i64)> {
        self.access_jti.clone().map(|j| (j, self.access_exp))
    }

    /// Adds to `rows` what ends the access token issued with this refresh token (strict
    /// rotation); returns the JWT revocation to apply in memory once `rows` committed.
    pub fn end_access(&self, rows: &mut StepRows, now: i64) -> Option<(String, i64)> {
        if self.access_exp <= now {
            return None;
        }
        let hash = self.access_hash.as_deref().and_then(b64url_decode);
        if let Some(hash) = hash.and_then(|h| <[u8; 32]>::try_from(h).ok()) {
            rows.revoked_opaque_tokens.push(hash);
        }
        let jwt = self.access_jwt();
        rows.revocations.extend(jwt.clone());
        jwt
    }
}

/// Lifetimes (seconds) of one issuance.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub access: i64,
    pub id: i64,
    pub refresh: i64,
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
}

/// The access token of one issuance, as what revokes it.
#[derive(Debug, Clone, PartialEq)]
pub enum IssuedAccess {
    /// Revoked by its `jti`.
    Jwt { jti: String },
    /// Revoked by deleting this row, which the issuing step stores.
    Opaque(StoredOpaqueToken),
}

pub struct Issued {
    pub access_token: String,
    pub access: IssuedAccess,
    pub access_exp: i64,
    pub expires_in: i64,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub refresh_row: Option<StoredRefreshToken>,
}

impl Issued {
    /// The access token as `(jti, exp)` when it is a JWT.
    pub fn access_jwt(&self) -> Option<(String, i64)> {
        match &self.access {
            IssuedAccess::Jwt { jti } => Some((jti.clone(), self.access_exp)),
            IssuedAccess::Opaque(_) => None,
        }
    }

    /// The rows that record the access token, for the issuing step's transaction: an opaque
    /// token's own row and, with `openid`, the row `/userinfo` answers from, unless the JWT
    /// names its grant (then `/userinfo` reads the grant from the refresh chain this step
    /// stores, see [`chain_of_jti`]).
    pub fn access_rows(&self, grant: &Grant) -> Result<StepRows, OAuth2Error> {
        let mut rows = StepRows::default();
        let userinfo_key = match &self.access {
            IssuedAccess::Jwt { jti } if chain_of_jti(jti).is_some() => return Ok(rows),
            IssuedAccess::Jwt { jti } => jti.clone(),
            IssuedAccess::Opaque(row) => {
                rows.opaque_tokens.push(row.clone());
                crate::userinfo::opaque_key(&row.hash)
            }
        };
        if grant.has_scope("openid") {
            rows.sessions
                .push(crate::userinfo::row(&userinfo_key, self.access_exp, grant)?);
        }
        Ok(rows)
    }
}

/// An opaque access token for the person of `grant`, with the row that makes it one.
fn opaque_access(
    client: &ClientRecord,
    grant: &Grant,
    now: i64,
    exp: i64,
) -> Result<(String, StoredOpaqueToken), OAuth2Error> {
    let raw = random_bytes::<32>().map_err(OAuth2Error::server_error)?;
    let token = format!("{OPAQUE_PREFIX}{}", b64url(&raw));
    let ext = if is_empty(&grant.access_token_claims) {
        None
    } else {
        Some(serde_json::to_string(&grant.access_token_claims).map_err(OAuth2Error::server_error)?)
    };
    let row = StoredOpaqueToken {
        hash: sha256(token.as_bytes()),
        client_id: client.client.client_id.clone(),
        subject: grant.subject.clone(),
        scopes: grant.scopes.clone(),
        audience: grant.audience.clone(),
        issued_at: now,
        expires_at: exp,
        grant_id: Some(grant.grant_id.clone()),
        ext,
    };
    Ok((token, row))
}

/// Issues the tokens of `grant` (no I/O; the caller persists `refresh_row` and
/// [`Issued::access_rows`]).
pub fn mint(
    svc: &Service,
    client: &ClientRecord,
    grant: &Grant,
    life: Lifetimes,
) -> Result<Issued, OAuth2Error> {
    let now = clock::now();
    let ring = svc.keys.ring();
    let key = ring
        .current(ACCESS_TOKEN_SET)
        .ok_or_else(|| OAuth2Error::server_error("no signing key"))?;
    let access_exp = now.saturating_add(life.access);
    let refresh_exp = now.saturating_add(life.refresh);
    let wants_refresh = grant.wants_refresh(client);
    // A JWT whose refresh token outlives it names its grant in its `jti`: `/userinfo` then
    // reads the grant from the refresh chain, and a refresh writes no row of its own for it.
    let by_chain = wants_refresh && !client.opaque && refresh_exp >= access_exp;
    let (access_token, access) = if client.opaque {
        let (token, row) = opaque_access(client, grant, now, access_exp)?;
        svc.metrics.token_issued("opaque");
        (token, IssuedAccess::Opaque(row))
    } else {
        let claims = AccessClaims {
            iss: svc.config.issuer.clone(),
            sub: grant.subject.clone(),
            aud: grant.audience.clone(),
            exp: access_exp,
            iat: now,
            nbf: now,
            jti: if by_chain {
                format!(
                    "{}{CHAIN_JTI_SEPARATOR}{}",
                    grant.grant_id,
                    uuid::Uuid::new_v4()
                )
            } else {
                uuid::Uuid::new_v4().to_string()
            },
            client_id: client.client.client_id.clone(),
            scp: grant.scopes.clone(),
            ext: if is_empty(&grant.access_token_claims) {
                Value::Null
            } else {
                grant.access_token_claims.clone()
            },
        };
        let token = key
            .sign_jwt(&claims, &svc.keys.rng)
            .map_err(OAuth2Error::server_error)?;
        svc.metrics.token_issued(key.alg.as_str());
        (token, IssuedAccess::Jwt { jti: claims.jti })
    };
    let id_token = if grant.has_scope("openid") {
        let claims =
            crate::id_token::claims(&svc.config.issuer, grant, &access_token, now, life.id);
        Some(
            key.sign_jwt(&claims, &svc.keys.rng)
                .map_err(OAuth2Error::server_error)?,
        )
    } else {
        None
    };
    let (refresh_token, refresh_row) = if wants_refresh {
        let token = new_refresh_token()?;
        let state = RefreshState {
            grant: grant.clone(),
            access_jti: match &access {
                IssuedAccess::Jwt { jti } => Some(jti.clone()),
                IssuedAccess::Opaque(_) => None,
            },
            access_hash: match &access {
                IssuedAccess::Jwt { .. } => None,
                IssuedAccess::Opaque(row) => Some(b64url(&row.hash)),
            },
            access_exp,
        };
        let row = StoredRefreshToken {
            hash: refresh_token_key(&token),
            chain: grant.grant_id.clone(),
            client_id: client.client.client_id.clone(),
            subject: grant.subject.clone(),
            active: true,
            used_at: None,
            json: serde_json::to_string(&state).map_err(OAuth2Error::server_error)?,
            expires_at: refresh_exp,
        };
        (Some(token), Some(row))
    } else {
        (None, None)
    };
    Ok(Issued {
        access_token,
        access,
        access_exp,
        expires_in: life.access,
        id_token,
        refresh_token,
        refresh_row,
    })
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<&'a str>,
}

pub fn response(issued: &Issued, grant: &Grant) -> Response {
    let mut resp = axum::Json(TokenResponse {
        access_token: &issued.access_token,
        token_type: "bearer",
        expires_in: issued.expires_in,
        scope: grant.scopes.join(" "),
        refresh_token: issued.refresh_token.as_deref(),
        id_token: issued.id_token.as_deref(),
    })
    .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Revokes every token of a grant: the given JWT access tokens, every refresh token of the
/// chain with the JWT each was issued with, and (in the store, with the chain) every opaque
/// access token of the grant.
pub async fn revoke_grant(
    svc: &Service,
    grant: ChainKey,
    access: &[(String, i64)],
) -> Result<(), OAuth2Error> {
    let store = Arc::clone(&svc.store);
    let grant_id = grant.chain.clone();
    let rows = crate::store::on_blocking_pool(move || store.revoke_refresh_chain(&grant)).await?;
    let mut jtis: Vec<(String, i64)> = access.to_vec();
    for row in rows {
        if let Some(jwt) = serde_json::from_str::<RefreshState>(&row.json)
            .ok()
            .and_then(|s| s.access_jwt())
        {
            jtis.push(jwt);
        }
    }
    let now = clock::now();
    for (jti, exp) in jtis {
        if exp > now {
            svc.revoke_jti(jti, exp).await?;
        }
    }
    tracing::info!(grant_id, "revoked every token of a grant");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_token_key_is_its_hash_led_by_its_issue_order() {
        let token = new_refresh_token().unwrap();
        let raw = b64url_decode(token.strip_prefix(REFRESH_PREFIX).unwrap()).unwrap();
        assert_eq!(raw.len(), ISSUE_ORDER_LEN + 32);
        let key = refresh_token_key(&token);
        assert_eq!(key[..ISSUE_ORDER_LEN], raw[..ISSUE_ORDER_LEN]);
        assert_eq!(
            key[ISSUE_ORDER_LEN..],
            sha256(token.as_bytes())[ISSUE_ORDER_LEN..]
        );
    }

    #[test]
    fn refresh_token_keys_grow_with_issue_time() {
        let keys: Vec<_> = [
            1_796_000_000_000_000u64,
            1_796_000_000_000_001,
            1_796_000_001_000_000,
        ]
        .into_iter()
        .map(|t| refresh_token_key(&new_refresh_token_at(t).unwrap()))
        .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    }

    #[test]
    fn tokens_without_an_issue_order_keep_their_plain_hash() {
        // As issued before the order was added: 32 random bytes.
        let legacy = format!("{REFRESH_PREFIX}{}", b64url(&[7u8; 32]));
        assert_eq!(refresh_token_key(&legacy), sha256(legacy.as_bytes()));
        assert_eq!(refresh_token_issued_at(&legacy), None);
        // Anything else that is not a token of ours is only hashed too.
        for other in [
            "",
            "ory_rt_",
            "ory_rt_!!!",
            "ory_at_abc",
            &legacy[..legacy.len() - 1],
        ] {
            assert_eq!(refresh_token_key(other), sha256(other.as_bytes()));
        }
    }

    #[test]
    fn a_refresh_token_says_when_it_was_issued() {
        let token = new_refresh_token_at(1_796_000_001_999_999).unwrap();
        assert_eq!(refresh_token_issued_at(&token), Some(1_796_000_001));
    }

    #[test]
    fn tokens_with_the_same_issue_order_get_different_keys() {
        let mut raw = [0u8; ISSUE_ORDER_LEN + 32];
        raw[..ISSUE_ORDER_LEN].copy_from_slice(&42u64.to_be_bytes());
        let a = format!("{REFRESH_PREFIX}{}", b64url(&raw));
        raw[ISSUE_ORDER_LEN] = 1;
        let b = format!("{REFRESH_PREFIX}{}", b64url(&raw));
        let (ka, kb) = (refresh_token_key(&a), refresh_token_key(&b));
        assert_eq!(ka[..ISSUE_ORDER_LEN], kb[..ISSUE_ORDER_LEN]);
        assert_ne!(ka, kb);
    }
}
