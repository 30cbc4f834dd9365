//! The relying party, the browser and the login/consent app of one authorization-code flow,
//! every HTTP step of it, checking each answer (a wrong redirect or a missing token is an error,
//! not a fast result).

use crate::http::{Client, Jar, query_param};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

pub const CALLBACK: &str = "https://rp.bench.invalid/callback";
pub const LOGIN_APP: &str = "https://login.bench.invalid/login";
pub const CONSENT_APP: &str = "https://login.bench.invalid/consent";

pub struct Target {
    pub public: String,
    pub admin: String,
    pub client_id: String,
    basic: HeaderValue,
    /// The scopes every flow requests and the consent grants (`openid offline` or `offline`).
    pub scope: String,
    /// The client's access tokens are opaque (`ptc_at_…`), not JWTs.
    opaque: bool,
}

impl Target {
    /// Registers a confidential web client (authorization code + refresh, `client_secret_basic`)
    /// with the given `access_token_strategy`.
    pub async fn register(
        http: &mut Client,
        public: &str,
        admin: &str,
        scope: &str,
        strategy: &str,
    ) -> Result<Self> {
        let reply = http
            .json(
                Method::POST,
                &format!("{admin}/admin/clients"),
                &json!({
                    "client_name": "oidc-load",
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "scope": "openid offline",
                    "redirect_uris": [CALLBACK],
                    "access_token_strategy": strategy,
                }),
            )
            .await?
            .expect(StatusCode::CREATED, "registering the client")?;
        let client = reply.json()?;
        let field = |k: &str| {
            client[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("client without {k}: {client}"))
        };
        let (client_id, secret) = (field("client_id")?, field("client_secret")?);
        // Client ids and secrets are URL-safe, so Basic needs no form-encoding first.
        let basic = HeaderValue::from_str(&format!(
            "Basic {}",
            STANDARD.encode(format!("{client_id}:{secret}"))
        ))?;
        Ok(Self {
            public: public.trim_end_matches('/').to_string(),
            admin: admin.trim_end_matches('/').to_string(),
            client_id,
            basic,
            scope: scope.to_string(),
            opaque: strategy == "opaque",
        })
    }

    /// One complete flow in a fresh browser, for `subject`; returns the refresh token.
    pub async fn flow(&self, http: &mut Client, subject: &str) -> Result<String> {
        let mut browser = Jar::default();
        let state = uuid::Uuid::new_v4().simple().to_string();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let verifier = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", &self.client_id),
            ("redirect_uri", CALLBACK),
            ("scope", &self.scope),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])?;
        let to_login = browser
            .get(http, &format!("{}/oauth2/auth?{query}", self.public))
            .await?
            .redirect("authorization request")?;
        let to_login = to_login.location()?;
        if !to_login.starts_with(LOGIN_APP) {
            bail!("authorization request redirected to {to_login}, not the login app");
        }
        let login_challenge = query_param(to_login, "login_challenge")?;

        // The login app: reads the request, authenticates the user, accepts.
        let q = serde_urlencoded::to_string([("login_challenge", &login_challenge)])?;
        let requests = format!("{}/admin/oauth2/auth/requests", self.admin);
        let request = http
            .get(&format!("{requests}/login?{q}"))
            .await?
            .expect(StatusCode::OK, "login request")?
            .json()?;
        if request["client"]["client_id"] != self.client_id.as_str() {
            bail!("login request for another client: {request}");
        }
        let accepted = http
            .json(
                Method::PUT,
                &format!("{requests}/login/accept?{q}"),
                &json!({"subject": subject, "remember": false, "acr": "1", "amr": ["pwd"]}),
            )
            .await?
            .expect(StatusCode::OK, "login accept")?
            .json()?;
        let back = redirect_to(&accepted)?;
        let to_consent = browser.get(http, &back).await?.redirect("login verifier")?;
        let to_consent = to_consent.location()?;
        if !to_consent.starts_with(CONSENT_APP) {
            bail!("login verifier redirected to {to_consent}, not the consent app");
        }
        let consent_challenge = query_param(to_consent, "consent_challenge")?;

        // The consent app: reads the request, grants what was asked.
        let q = serde_urlencoded::to_string([("consent_challenge", &consent_challenge)])?;
        let request = http
            .get(&format!("{requests}/consent?{q}"))
            .await?
            .expect(StatusCode::OK, "consent request")?
            .json()?;
        if request["subject"] != subject {
            bail!("consent request for another subject: {request}");
        }
        let scopes: Vec<&str> = self.scope.split(' ').collect();
        let accepted = http
            .json(
                Method::PUT,
                &format!("{requests}/consent/accept?{q}"),
                &json!({
                    "grant_scope": scopes,
                    "remember": false,
                    "session": {"id_token": {"email": format!("{subject}@bench.invalid")}},
                }),
            )
            .await?
            .expect(StatusCode::OK, "consent accept")?
            .json()?;
        let back = redirect_to(&accepted)?;
        let to_client = browser
            .get(http, &back)
            .await?
            .redirect("consent verifier")?;
        let to_client = to_client.location()?;
        if !to_client.starts_with(CALLBACK) {
            bail!("consent verifier redirected to {to_client}, not the client");
        }
        if query_param(to_client, "state")? != state {
            bail!("callback with another state: {to_client}");
        }
        let code = query_param(to_client, "code")?;

        // The relying party redeems the code.
        let tokens = http
            .form(
                &format!("{}/oauth2/token", self.public),
                &self.basic,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", CALLBACK),
                    ("code_verifier", &verifier),
                ],
            )
            .await?
            .expect(StatusCode::OK, "code exchange")?
            .json()?;
        self.check_tokens(&tokens)
    }

    /// One request to a trivial endpoint (no store, no crypto).
    pub async fn ping(&self, http: &mut Client) -> Result<()> {
        http.get(&format!("{}/health/alive", self.public))
            .await?
            .expect(StatusCode::OK, "health")?;
        Ok(())
    }

    /// One refresh-token rotation; returns the new refresh token.
    pub async fn refresh(&self, http: &mut Client, token: &str) -> Result<String> {
        let tokens = http
            .form(
                &format!("{}/oauth2/token", self.public),
                &self.basic,
                &[("grant_type", "refresh_token"), ("refresh_token", token)],
            )
            .await?
            .expect(StatusCode::OK, "refresh")?
            .json()?;
        let next = self.check_tokens(&tokens)?;
        if next == token {
            bail!("the refresh token was not rotated");
        }
        Ok(next)
    }

    /// An access token (a JWT or an opaque token, whichever the client's strategy gives), an
    /// ID token exactly when `openid` was granted, and a refresh token. Shapes only: signatures
    /// and claims are the black-box tests' business, not the load's.
    fn check_tokens(&self, tokens: &serde_json::Value) -> Result<String> {
        let jwt = |k: &str| {
            tokens[k]
                .as_str()
                .is_some_and(|t| t.split('.').count() == 3)
        };
        let opaque_access = tokens["access_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("ptc_at_") && !t.contains('.'));
        if !(if self.opaque {
            opaque_access
        } else {
            jwt("access_token")
        }) {
            bail!("no access token of the client's strategy: {tokens}");
        }
        let openid = self.scope.split(' ').any(|s| s == "openid");
        if jwt("id_token") != openid {
            bail!(
                "ID token {} with scope {:?}: {tokens}",
                if openid { "missing" } else { "present" },
                self.scope
            );
        }
        tokens["refresh_token"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no refresh token: {tokens}"))
    }
}

fn redirect_to(accepted: &serde_json::Value) -> Result<String> {
    accepted["redirect_to"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("accept without redirect_to: {accepted}"))
}
