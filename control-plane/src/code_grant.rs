//! `grant_type=authorization_code` at the token endpoint: the code, its `redirect_uri`, PKCE,
//! and single use. A second exchange of a code revokes everything the first one issued (RFC 6749
//! 4.1.2), because it means the code leaked.

use crate::client::ClientRecord;
use crate::clock;
use crate::crypto::{b64url, sha256};
use crate::flow::{self, Flow, Stage, secs};
use crate::grant_tokens::{self, Grant, Lifetimes};
use crate::oauth2_error::{ErrorCode, OAuth2Error};
use crate::request::Params;
use crate::server::Service;
use axum::response::Response;
use subtle::ConstantTimeEq;

/// How long a used code's flow is kept to recognise a replay (Hydra: 30 minutes), at least.
const REPLAY_WINDOW: i64 = 1800;

fn invalid_grant(d: impl Into<String>) -> OAuth2Error {
    OAuth2Error::new(ErrorCode::InvalidGrant, d)
}

/// RFC 7636 4.1: 43-128 characters of `[A-Za-z0-9-._~]`.
fn verifier_well_formed(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn check_pkce(flow: &Flow, verifier: Option<&str>) -> Result<(), OAuth2Error> {
    match (&flow.code_challenge, verifier) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(invalid_grant(
            "A code_verifier was sent, but the authorization request had no code_challenge.",
        )),
        (Some(_), None) => Err(invalid_grant("The code_verifier is missing.")),
        (Some(challenge), Some(v)) => {
            if !verifier_well_formed(v) {
                return Err(invalid_grant(
                    "The code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~].",
                ));
            }
            let computed = b64url(&sha256(v.as_bytes()));
            if bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                Ok(())
            } else {
                Err(invalid_grant(
                    "The code_verifier does not match the code_challenge.",
                ))
            }
        }
    }
}

pub fn grant_of(flow: &Flow) -> Grant {
    let login = flow.login.clone().unwrap_or_default();
    let consent = flow.consent.clone().unwrap_or_default();
    Grant {
        grant_id: flow.grant_id.clone(),
        client_id: flow.client_id.clone(),
        subject: login.subject,
        scopes: consent.grant_scope,
        audience: consent.grant_access_token_audience,
        access_token_claims: consent.access_token_claims,
        id_token_claims: consent.id_token_claims,
        auth_time: login.auth_time,
        requested_at: flow.requested_at,
        nonce: flow.nonce.clone(),
        sid: login.sid,
        // Hydra: a client that asked for acr_values learns "0" when the login app set none.
        acr: if login.acr.is_empty() && !flow.acr_values.is_empty() {
            "0".to_string()
        } else {
            login.acr
        },
        amr: login.amr,
    }
}

async fn replayed(svc: &Service, flow_id: &str) -> Result<OAuth2Error, OAuth2Error> {
    if let Some((flow, _)) = flow::load(svc, flow_id).await? {
        grant_tokens::revoke_grant(svc, grant_of(&flow).chain_key(), &flow.issued).await?;
    }
    Ok(invalid_grant(
        "The authorization code has already been used; every token issued from it is revoked.",
    ))
}

pub async fn exchange(
    svc: &Service,
    client: &ClientRecord,
    params: &Params,
) -> Result<Response, OAuth2Error> {
    if !client.has_grant("authorization_code") {
        return Err(OAuth2Error::new(
            ErrorCode::UnauthorizedClient,
            "The OAuth 2.0 Client is not allowed to use the authorization_code grant.",
        ));
    }
    let code = params
        .get("code")?
        .ok_or_else(|| OAuth2Error::invalid_request("The request is missing the code."))?;
    let unknown = || invalid_grant("The authorization code is invalid or has expired.");
    let (id, secret) = code
        .strip_prefix("ory_ac_")
        .and_then(flow::parse_artifact)
        .ok_or_else(unknown)?;
    let (mut flow, stage) = flow::load(svc, id).await?.ok_or_else(unknown)?;
    if !flow::secret_matches(flow.code_hash.as_deref(), secret) {
        return Err(unknown());
    }
    if flow.client_id != client.client.client_id {
        return Err(invalid_grant(
            "The authorization code was issued to another client.",
        ));
    }
    match stage {
        Stage::CodeIssued => {}
        Stage::CodeUsed => return Err(replayed(svc, id).await?),
        _ => return Err(unknown()),
    }
    let now = clock::now();
    if flow.code_expires_at <= now {
        return Err(unknown());
    }
    let sent_redirect = params.get("redirect_uri")?;
    if (flow.redirect_uri_sent || sent_redirect.is_some())
        && sent_redirect != Some(flow.redirect_uri.as_str())
    {
        return Err(invalid_grant(
            "The redirect_uri does not match the one of the authorization request.",
        ));
    }
    check_pkce(&flow, params.get("code_verifier")?)?;

    let grant = grant_of(&flow);
    let life = client.lifespans;
    let issued = grant_tokens::mint(
        svc,
        client,
        &grant,
        Lifetimes {
            access: life
                .code_access
                .unwrap_or(svc.config.access_token_ttl_secs()),
            id: life.code_id.unwrap_or(secs(svc.config.flows.id_token_ttl)),
            refresh: life
                .code_refresh
                .unwrap_or(secs(svc.config.flows.refresh_token_ttl)),
        },
    )?;
    // The code is spent in the transaction that stores the refresh token and the access
    // token's userinfo row: all of it commits, or (a concurrent exchange spent it first)
    // nothing does, and that exchange's tokens are revoked as a replay's.
    let mut rows = issued.access_rows(&grant)?;
    rows.refresh_tokens.extend(issued.refresh_row.clone());
    // An opaque access token needs no entry: a replay deletes the grant's opaque tokens.
    flow.issued.extend(issued.access_jwt());
    let keep = issued.access_exp.max(now + REPLAY_WINDOW);
    if !flow::advance_with(svc, &flow, Stage::CodeIssued, Stage::CodeUsed, keep, rows).await? {
        grant_tokens::revoke_grant(svc, grant_of(&flow).chain_key(), &flow.issued).await?;
        return Err(replayed(svc, id).await?);
    }
    Ok(grant_tokens::response(&issued, &grant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_only_with_well_formed_verifiers() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let flow = Flow {
            code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            ..Flow::default()
        };
        assert!(check_pkce(&flow, Some(verifier)).is_ok());
        let wrong = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXx";
        assert_eq!(
            check_pkce(&flow, Some(wrong)).unwrap_err().code,
            ErrorCode::InvalidGrant
        );
        assert!(check_pkce(&flow, None).is_err());
        // The challenge itself (what `plain` would accept) is not a verifier of itself.
        assert!(check_pkce(&flow, flow.code_challenge.as_deref()).is_err());
        assert!(check_pkce(&flow, Some("short")).is_err());
        assert!(check_pkce(&Flow::default(), Some(verifier)).is_err());
        assert!(check_pkce(&Flow::default(), None).is_ok());
    }
}
