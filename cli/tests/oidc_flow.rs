//! Black-box tests of the OpenID Connect authorization code flow of the real `portcullis`
//! binary. The relying party is the independent `openidconnect` crate; the test plays the
//! browser (carrying cookies by hand, following no redirect it did not choose to) and the
//! login/consent app (over the Hydra v2 admin API).
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use harness::{Reply, Server, TestDir, http, str_field};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde_json::{Value, json};
use std::collections::HashMap;

const CALLBACK: &str = "https://rp.example/cb";
const LOGIN_APP: &str = "https://login.example/login";
const CONSENT_APP: &str = "https://login.example/consent";

async fn start(dir: &TestDir) -> Server {
    Server::start(
        &dir.data(),
        &["--login-url", LOGIN_APP, "--consent-url", CONSENT_APP],
    )
    .await
}

/// A browser: keeps cookies per name (one host is enough here), follows nothing by itself.
#[derive(Default, Clone)]
struct Browser {
    cookies: HashMap<String, String>,
}

impl Browser {
    async fn get(&mut self, url: &str) -> Reply {
        let mut req = http().get(url);
        if !self.cookies.is_empty() {
            let header: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", header.join("; "));
        }
        let r = Reply::from(req.send().await.expect("browser GET")).await;
        for c in r.headers.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            assert!(attrs.contains("HttpOnly"), "cookie {c} without HttpOnly");
            assert!(
                attrs.contains("SameSite=Lax"),
                "cookie {c} without SameSite"
            );
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        r
    }
}

fn location(r: &Reply) -> String {
    r.header("location")
        .unwrap_or_else(|| panic!("no Location on {} {}", r.status, r.body))
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Exchanges `code` at the token endpoint with HTTP Basic, for the registered [`CALLBACK`].
async fn redeem(srv: &Server, id: &str, secret: &str, code: &str) -> Reply {
    srv.token_basic(
        id,
        secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
        ],
    )
    .await
}

async fn admin(srv: &Server, method: &str, path: &str, body: Option<Value>) -> Reply {
    let url = format!("{}/admin/oauth2/auth/requests/{path}", srv.admin());
    let req = match method {
        "GET" => http().get(url),
        _ => http().put(url).json(&body.unwrap_or(json!({}))),
    };
    Reply::from(req.send().await.expect("admin request")).await
}

async fn rp_client(
    srv: &Server,
    id: &str,
    secret: Option<&str>,
) -> CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
> {
    let meta =
        CoreProviderMetadata::discover_async(IssuerUrl::new(srv.issuer()).unwrap(), &rp_http())
            .await
            .expect("OIDC discovery");
    CoreClient::from_provider_metadata(
        meta,
        ClientId::new(id.to_string()),
        secret.map(|s| ClientSecret::new(s.to_string())),
    )
    .set_redirect_uri(RedirectUrl::new(CALLBACK.to_string()).unwrap())
}

fn rp_http() -> openidconnect::reqwest::Client {
    openidconnect::reqwest::Client::builder()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn web_client(srv: &Server) -> (String, String) {
    let c = srv
        .create_client(json!({
            "client_name": "rp",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": "openid offline profile",
            "redirect_uris": [CALLBACK],
            "audience": ["https://api.example"],
        }))
        .await;
    (str_field(&c, "client_id"), str_field(&c, "client_secret"))
}

/// Drives one flow from the authorization URL to the callback, accepting login and consent.
/// Returns the final redirect (to the client).
async fn authorize(
    srv: &Server,
    browser: &mut Browser,
    auth_url: &str,
    subject: &str,
    grant_scope: &[&str],
) -> String {
    let r = browser.get(auth_url).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let to_login = location(&r);
    assert!(to_login.starts_with(LOGIN_APP), "{to_login}");
    let challenge = query_param(&to_login, "login_challenge").unwrap();
    let q = format!("login_challenge={challenge}");
    let lr = admin(srv, "GET", &format!("login?{q}"), None).await;
    assert_eq!(lr.status, 200, "{}", lr.body);
    let accepted = admin(
        srv,
        "PUT",
        &format!("login/accept?{q}"),
        Some(
            json!({"subject": subject, "remember": true, "remember_for": 3600,
                    "acr": "1", "amr": ["pwd"]}),
        ),
    )
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let r = browser.get(&str_field(&accepted.json, "redirect_to")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let to_consent = location(&r);
    assert!(to_consent.starts_with(CONSENT_APP), "{to_consent}");
    let cq = format!(
        "consent_challenge={}",
        query_param(&to_consent, "consent_challenge").unwrap()
    );
    let cr = admin(srv, "GET", &format!("consent?{cq}"), None).await;
    assert_eq!(cr.status, 200, "{}", cr.body);
    assert_eq!(cr.json["subject"], subject);
    let accepted = admin(
        srv,
        "PUT",
        &format!("consent/accept?{cq}"),
        Some(json!({
            "grant_scope": grant_scope,
            "grant_access_token_audience": ["https://api.example"],
            "remember": true,
            "session": {"id_token": {"email": format!("{subject}@example.com")},
                        "access_token": {"team": "blue"}},
        })),
    )
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let r = browser.get(&str_field(&accepted.json, "redirect_to")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    location(&r)
}

#[tokio::test]
async fn code_flow_with_an_independent_relying_party() {
    let dir = TestDir::new();
    let mut srv = start(&dir).await;
    let (id, secret) = web_client(&srv).await;
    let rp = rp_client(&srv, &id, Some(&secret)).await;
    let (auth_url, csrf, nonce, verifier) = rp_authorize_url(&rp);
    let mut browser = Browser::default();

    // Walk the login step by hand once, to check the admin API's shapes and single use.
    let r = browser.get(auth_url.as_str()).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let challenge = query_param(&location(&r), "login_challenge").unwrap();
    let q = format!("login_challenge={challenge}");
    let lr = admin(&srv, "GET", &format!("login?{q}"), None).await;
    assert_eq!(lr.status, 200, "{}", lr.body);
    assert_eq!(lr.json["skip"], false);
    assert_eq!(lr.json["client"]["client_id"], id.as_str());
    assert!(lr.json["client"].get("client_secret").is_none());
    assert_eq!(lr.json["requested_scope"], json!(["openid", "offline"]));
    // The same admin path without the /admin prefix, as Hydra serves it.
    let bare = Reply::from(
        http()
            .get(format!("{}/oauth2/auth/requests/login?{q}", srv.admin()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bare.status, 200, "{}", bare.body);
    let accepted = admin(
        &srv,
        "PUT",
        &format!("login/accept?{q}"),
        Some(
            json!({"subject": "alice", "remember": true, "remember_for": 3600,
                    "acr": "1", "amr": ["pwd"]}),
        ),
    )
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    // A handled challenge is gone (410), for reads and for a second accept.
    let again = admin(&srv, "GET", &format!("login?{q}"), None).await;
    assert_eq!(again.status, 410, "{}", again.body);
    assert!(again.json["redirect_to"].is_string());
    let again = admin(
        &srv,
        "PUT",
        &format!("login/accept?{q}"),
        Some(json!({"subject": "mallory"})),
    )
    .await;
    assert_eq!(again.status, 410, "{}", again.body);

    // A browser without the login CSRF cookie cannot use the verifier (login CSRF).
    let login_verifier_url = str_field(&accepted.json, "redirect_to");
    let mut stranger = Browser::default();
    let r = stranger.get(&login_verifier_url).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json["error"], "request_forbidden");

    let r = browser.get(&login_verifier_url).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let to_consent = location(&r);
    assert!(to_consent.starts_with(CONSENT_APP), "{to_consent}");
    assert!(
        browser.cookies.contains_key("ory_hydra_session_dev"),
        "remembered login sets the session cookie: {:?}",
        browser.cookies
    );
    // The login verifier is single-use: back to the client with access_denied and state.
    let r = browser.get(&login_verifier_url).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let back = location(&r);
    assert!(back.starts_with(CALLBACK), "{back}");
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("access_denied")
    );
    assert_eq!(
        query_param(&back, "state").as_deref(),
        Some(csrf.secret().as_str())
    );

    let cq = format!(
        "consent_challenge={}",
        query_param(&to_consent, "consent_challenge").unwrap()
    );
    let cr = admin(&srv, "GET", &format!("consent?{cq}"), None).await;
    assert_eq!(cr.status, 200, "{}", cr.body);
    assert_eq!(cr.json["subject"], "alice");
    assert_eq!(cr.json["login_challenge"], challenge.as_str());
    assert_eq!(cr.json["amr"], json!(["pwd"]));
    // The consent app may not grant what the client may not hold.
    let too_much = admin(
        &srv,
        "PUT",
        &format!("consent/accept?{cq}"),
        Some(json!({"grant_scope": ["openid", "admin"]})),
    )
    .await;
    too_much.assert_oauth_error(400, "invalid_scope");
    let accepted = admin(
        &srv,
        "PUT",
        &format!("consent/accept?{cq}"),
        Some(json!({
            "grant_scope": ["openid", "offline"],
            "grant_access_token_audience": ["https://api.example"],
            "remember": true,
            "session": {"id_token": {"email": "alice@example.com", "sub": "mallory"},
                        "access_token": {"team": "blue"}},
        })),
    )
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let r = browser.get(&str_field(&accepted.json, "redirect_to")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let callback = location(&r);
    assert!(callback.starts_with(&format!("{CALLBACK}?")), "{callback}");
    assert_eq!(
        query_param(&callback, "state").as_deref(),
        Some(csrf.secret().as_str())
    );
    assert_eq!(
        query_param(&callback, "scope").as_deref(),
        Some("openid offline")
    );
    let code = query_param(&callback, "code").unwrap();
    assert!(code.starts_with("ory_ac_"), "{code}");

    // A wrong PKCE verifier is refused and does not spend the code.
    let wrong = rp
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(PkceCodeVerifier::new("x".repeat(43)))
        .request_async(&rp_http())
        .await;
    let err = format!("{:?}", wrong.expect_err("wrong verifier must fail"));
    assert!(err.contains("invalid_grant"), "{err}");

    let tokens = rp
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&rp_http())
        .await
        .expect("code exchange");
    let id_token = tokens.id_token().expect("id_token with scope openid");
    let id_verifier = rp.id_token_verifier();
    let claims = id_token
        .claims(&id_verifier, &nonce)
        .expect("ID token verifies (signature, iss, aud, exp, nonce)");
    assert_eq!(claims.subject().as_str(), "alice");
    assert_eq!(claims.issuer().as_str(), srv.issuer());
    assert!(claims.auth_time().is_some());
    let expected_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&id_verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&expected_hash));
    // Raw claims: Hydra's extras and the consent's session claims (which cannot override sub).
    let (header, raw) = srv.verify(&id_token.to_string()).await;
    assert_eq!(header["alg"], "RS256", "OIDC's default ID token algorithm");
    assert_eq!(raw["email"], "alice@example.com");
    assert_eq!(raw["sub"], "alice");
    assert_eq!(raw["acr"], "1");
    assert_eq!(raw["amr"], json!(["pwd"]));
    let sid = str_field(&raw, "sid");
    // Every client learns the sid from ID tokens: as a cookie it must not resume the session.
    let mut forger = Browser::default();
    forger
        .cookies
        .insert("ory_hydra_session_dev".into(), sid.clone());
    let r = forger.get(auth_url.as_str()).await;
    let forged = query_param(&location(&r), "login_challenge").unwrap();
    let lr = admin(
        &srv,
        "GET",
        &format!("login?login_challenge={forged}"),
        None,
    )
    .await;
    assert_eq!(lr.json["skip"], false, "sid as cookie: {}", lr.body);
    let real = browser.cookies["ory_hydra_session_dev"].clone();
    let tampered = format!("{sid}.{}", "A".repeat(43));
    assert_ne!(real, tampered);
    forger
        .cookies
        .insert("ory_hydra_session_dev".into(), tampered);
    let r = forger.get(auth_url.as_str()).await;
    let forged = query_param(&location(&r), "login_challenge").unwrap();
    let lr = admin(
        &srv,
        "GET",
        &format!("login?login_challenge={forged}"),
        None,
    )
    .await;
    assert_eq!(lr.json["skip"], false, "guessed cookie secret: {}", lr.body);
    assert!(raw["jti"].is_string());
    let (_, access) = srv.verify(tokens.access_token().secret()).await;
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["client_id"], id.as_str());
    assert_eq!(access["aud"], json!(["https://api.example"]));
    assert_eq!(access["scp"], json!(["openid", "offline"]));
    assert_eq!(access["ext"], json!({"team": "blue"}));
    let info = srv.introspect(tokens.access_token().secret()).await;
    assert_eq!(info["active"], true);
    assert_eq!(
        info["sub"], "alice",
        "introspection names the person, not the client"
    );
    assert_eq!(info["client_id"], id.as_str());
    // /userinfo: the person's claims, by Bearer header or (POST) form parameter.
    let ui = Reply::from(
        http()
            .get(format!("{}/userinfo", srv.public()))
            .bearer_auth(tokens.access_token().secret())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ui.status, 200, "{}", ui.body);
    assert_eq!(ui.json["sub"], "alice");
    assert_eq!(ui.json["email"], "alice@example.com");
    assert!(ui.json.get("nonce").is_none() && ui.json.get("sid").is_none());
    let ui = Reply::from(
        http()
            .post(format!("{}/userinfo", srv.public()))
            .form(&[("access_token", tokens.access_token().secret().as_str())])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ui.json["sub"], "alice", "{}", ui.body);
    for auth in [None, Some("Bearer not-a-token".to_string())] {
        let mut req = http().get(format!("{}/userinfo", srv.public()));
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let r = Reply::from(req.send().await.unwrap()).await;
        r.assert_oauth_error(401, "invalid_token");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    // An ID token is no access token.
    assert_eq!(
        srv.introspect(&id_token.to_string()).await,
        json!({"active": false})
    );
    let r = Reply::from(
        http()
            .get(format!("{}/userinfo", srv.public()))
            .bearer_auth(id_token.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_oauth_error(401, "invalid_token");
    // A client_credentials token speaks for no person.
    let (cc, cc_secret) = srv.cc_client("", &[]).await;
    let m2m = srv.token(&cc, &cc_secret, &[]).await;
    let r = Reply::from(
        http()
            .get(format!("{}/userinfo", srv.public()))
            .bearer_auth(&m2m)
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_oauth_error(401, "invalid_token");
    let refresh = tokens
        .refresh_token()
        .expect("refresh token with offline")
        .clone();

    // Everything the flow stored survives kill -9.
    srv.restart().await;

    // Refresh rotates: a new refresh token, a new ID token with the same sid and auth_time.
    let rp = rp_client(&srv, &id, Some(&secret)).await;
    let refreshed = rp
        .exchange_refresh_token(&refresh)
        .unwrap()
        .request_async(&rp_http())
        .await
        .expect("refresh");
    let new_refresh = refreshed
        .refresh_token()
        .expect("rotated refresh token")
        .clone();
    assert_ne!(new_refresh.secret(), refresh.secret());
    let (_, raw2) = srv
        .verify(
            &refreshed
                .id_token()
                .expect("id token on refresh")
                .to_string(),
        )
        .await;
    assert_eq!(raw2["sid"], sid.as_str());
    assert_eq!(raw2["auth_time"], raw["auth_time"]);
    assert_eq!(raw2["nonce"], raw["nonce"]);
    assert_ne!(raw2["jti"], raw["jti"]);
    // Strict rotation: the access token issued with the old refresh token ends.
    assert_eq!(
        srv.introspect(tokens.access_token().secret()).await["active"],
        false
    );
    let live = refreshed.access_token().secret().clone();
    assert_eq!(srv.introspect(&live).await["active"], true);
    // /userinfo follows the rotation: the new access token speaks for the person (read from
    // the refresh chain, after a restart too), the old one no longer does.
    let ui = userinfo_status(&srv, &live).await;
    assert_eq!(ui.status, 200, "{}", ui.body);
    assert_eq!(ui.json["sub"], "alice");
    assert_eq!(ui.json["email"], "alice@example.com");
    userinfo_status(&srv, tokens.access_token().secret())
        .await
        .assert_oauth_error(401, "invalid_token");

    // Reusing the rotated-out refresh token revokes the whole chain.
    let reuse = srv
        .token_basic(
            &id,
            &secret,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.secret()),
            ],
        )
        .await;
    reuse.assert_oauth_error(400, "invalid_grant");
    assert_eq!(srv.introspect(&live).await["active"], false);
    userinfo_status(&srv, &live)
        .await
        .assert_oauth_error(401, "invalid_token");
    let after = srv
        .token_basic(
            &id,
            &secret,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", new_refresh.secret()),
            ],
        )
        .await;
    after.assert_oauth_error(400, "invalid_grant");

    // The code is single-use.
    let replay = redeem(&srv, &id, &secret, &code).await;
    replay.assert_oauth_error(400, "invalid_grant");
}

#[tokio::test]
async fn a_replayed_code_revokes_what_it_issued() {
    let dir = TestDir::new();
    let srv = start(&dir).await;
    let (id, secret) = web_client(&srv).await;
    let mut browser = Browser::default();
    let url = format!(
        "{}/oauth2/auth?client_id={id}&response_type=code&scope=openid+offline&state=state-1234&redirect_uri={}",
        srv.public(),
        form(CALLBACK)
    );
    let back = authorize(&srv, &mut browser, &url, "bob", &["openid", "offline"]).await;
    let code = query_param(&back, "code").unwrap();
    let exchange = |code: String| {
        let (id, secret) = (id.clone(), secret.clone());
        let srv = &srv;
        async move { redeem(srv, &id, &secret, &code).await }
    };
    // The redirect_uri of the token request must be the authorization request's.
    let r = srv
        .token_basic(
            &id,
            &secret,
            &[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", "https://rp.example/other"),
            ],
        )
        .await;
    r.assert_oauth_error(400, "invalid_grant");
    let first = exchange(code.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let access = str_field(&first.json, "access_token");
    let refresh = str_field(&first.json, "refresh_token");
    assert_eq!(srv.introspect(&access).await["active"], true);
    exchange(code.clone())
        .await
        .assert_oauth_error(400, "invalid_grant");
    assert_eq!(
        srv.introspect(&access).await["active"],
        false,
        "replay revokes the access token"
    );
    srv.token_basic(
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ],
    )
    .await
    .assert_oauth_error(400, "invalid_grant");

    // RFC 7009 on a refresh token revokes its grant.
    let back = authorize(&srv, &mut browser, &url, "bob", &["openid", "offline"]).await;
    let t = exchange(query_param(&back, "code").unwrap()).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let (access2, refresh2) = (
        str_field(&t.json, "access_token"),
        str_field(&t.json, "refresh_token"),
    );
    let revoke = |who: (String, String), token: String| {
        let url = format!("{}/oauth2/revoke", srv.public());
        async move {
            Reply::from(
                http()
                    .post(url)
                    .header("authorization", harness::basic(&who.0, &who.1))
                    .form(&[("token", token.as_str())])
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let (other, other_secret) = web_client(&srv).await;
    let r = revoke((other, other_secret), refresh2.clone()).await;
    assert_eq!(r.status, 400, "another client cannot revoke it: {}", r.body);
    assert_eq!(srv.introspect(&access2).await["active"], true);
    let r = revoke((id.clone(), secret.clone()), refresh2.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(srv.introspect(&access2).await["active"], false);
    srv.token_basic(
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh2.as_str()),
        ],
    )
    .await
    .assert_oauth_error(400, "invalid_grant");
}

type Rp = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// The relying party's authorization request (PKCE S256, `openid offline`), with the state,
/// nonce and PKCE verifier it will need for the answer.
fn rp_authorize_url(rp: &Rp) -> (url::Url, CsrfToken, Nonce, PkceCodeVerifier) {
    let (pkce, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("offline".into()))
        .set_pkce_challenge(pkce)
        .url();
    (url, csrf, nonce, verifier)
}

/// Signs `subject` in through `rp` (PKCE, `openid offline`) and redeems the code; returns the
/// token response (its ID token verified, `at_hash` included) and the code.
async fn rp_sign_in(
    srv: &Server,
    rp: &Rp,
    browser: &mut Browser,
    subject: &str,
) -> (openidconnect::core::CoreTokenResponse, String) {
    let (auth_url, _, nonce, verifier) = rp_authorize_url(rp);
    let back = authorize(
        srv,
        browser,
        auth_url.as_str(),
        subject,
        &["openid", "offline"],
    )
    .await;
    let code = query_param(&back, "code").unwrap();
    let tokens = rp
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&rp_http())
        .await
        .expect("code exchange");
    let id_token = tokens.id_token().expect("id_token with scope openid");
    let id_verifier = rp.id_token_verifier();
    let claims = id_token.claims(&id_verifier, &nonce).expect("ID token");
    assert_eq!(claims.subject().as_str(), subject);
    let at_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&id_verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&at_hash));
    (tokens, code)
}

async fn userinfo_status(srv: &Server, token: &str) -> Reply {
    Reply::from(
        http()
            .get(format!("{}/userinfo", srv.public()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Hydra issues opaque access tokens to a client with `access_token_strategy: opaque` from
/// every grant, the browser ones included; they answer introspection and `/userinfo` as the
/// JWTs do, and die with their grant the same ways.
#[tokio::test]
async fn opaque_strategy_browser_grants_issue_opaque_tokens_that_live_and_die_like_jwts() {
    let dir = TestDir::new();
    let mut srv = start(&dir).await;
    let (jwt_id, jwt_secret) = web_client(&srv).await;
    let c = srv
        .create_client(json!({
            "client_name": "opaque rp",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": "openid offline profile",
            "redirect_uris": [CALLBACK],
            "audience": ["https://api.example"],
            "access_token_strategy": "opaque",
        }))
        .await;
    let (id, secret) = (str_field(&c, "client_id"), str_field(&c, "client_secret"));
    let jwt_rp = rp_client(&srv, &jwt_id, Some(&jwt_secret)).await;
    let rp = rp_client(&srv, &id, Some(&secret)).await;
    let mut browser = Browser::default();
    let (jwt_tokens, _) = rp_sign_in(&srv, &jwt_rp, &mut browser, "olivia").await;
    let (tokens, code) = rp_sign_in(&srv, &rp, &mut browser, "olivia").await;
    let access = tokens.access_token().secret().clone();
    assert!(
        access.starts_with("ptc_at_") && !access.contains('.'),
        "an opaque access token: {access}"
    );
    let refresh = tokens.refresh_token().expect("refresh token").clone();

    // Introspection answers the same fields as for the JWT of the same person and consent.
    let jwt_info = srv.introspect(jwt_tokens.access_token().secret()).await;
    let info = srv.introspect(&access).await;
    let fields = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(fields(&info), fields(&jwt_info), "{info} vs {jwt_info}");
    for f in fields(&jwt_info) {
        match f.as_str() {
            "client_id" => assert_eq!(info[&f], id.as_str()),
            "exp" | "iat" | "nbf" => {}
            _ => assert_eq!(info[&f], jwt_info[&f], "field {f}"),
        }
    }
    let secs = |v: &Value, f: &str| v[f].as_i64().unwrap();
    assert_eq!(
        secs(&info, "exp") - secs(&info, "iat"),
        secs(&jwt_info, "exp") - secs(&jwt_info, "iat")
    );
    assert_eq!(secs(&info, "nbf"), secs(&info, "iat"));
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], "olivia", "the person, not the client");
    assert_eq!(info["ext"], json!({"team": "blue"}));
    assert_eq!(info["token_use"], "access_token");
    assert_eq!(info["scope"], "openid offline");
    assert_eq!(info["aud"], json!(["https://api.example"]));
    let ui = userinfo_status(&srv, &access).await;
    assert_eq!(ui.status, 200, "{}", ui.body);
    assert_eq!(ui.json["sub"], "olivia");
    assert_eq!(ui.json["email"], "olivia@example.com");
    // A guessed token of the right shape is nobody's.
    let guess = format!("ptc_at_{}", "A".repeat(43));
    userinfo_status(&srv, &guess)
        .await
        .assert_oauth_error(401, "invalid_token");

    // Ending the login sessions leaves tokens alone, as for JWTs.
    let sessions = format!("{}/admin/oauth2/auth/sessions", srv.admin());
    let r = Reply::from(
        http()
            .delete(format!("{sessions}/login?subject=olivia"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(srv.introspect(&access).await["active"], true);

    // Everything survives kill -9.
    srv.restart().await;
    assert_eq!(srv.introspect(&access).await, info);
    assert_eq!(userinfo_status(&srv, &access).await.status, 200);

    // Refresh rotates: a new opaque access token; strict rotation ends the old one.
    let rp = rp_client(&srv, &id, Some(&secret)).await;
    let refreshed = rp
        .exchange_refresh_token(&refresh)
        .unwrap()
        .request_async(&rp_http())
        .await
        .expect("refresh");
    let live = refreshed.access_token().secret().clone();
    assert!(live.starts_with("ptc_at_") && live != access, "{live}");
    let new_refresh = refreshed.refresh_token().expect("rotated").clone();
    assert_eq!(srv.introspect(&access).await, json!({"active": false}));
    userinfo_status(&srv, &access)
        .await
        .assert_oauth_error(401, "invalid_token");
    let live_info = srv.introspect(&live).await;
    assert_eq!(live_info["sub"], "olivia");
    assert_eq!(live_info["ext"], json!({"team": "blue"}));
    assert_eq!(userinfo_status(&srv, &live).await.status, 200);

    // Reusing the rotated-out refresh token revokes every token of the chain.
    srv.token_basic(
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.secret()),
        ],
    )
    .await
    .assert_oauth_error(400, "invalid_grant");
    assert_eq!(srv.introspect(&live).await, json!({"active": false}));
    srv.token_basic(
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", new_refresh.secret()),
        ],
    )
    .await
    .assert_oauth_error(400, "invalid_grant");
    // So does replaying the code.
    redeem(&srv, &id, &secret, &code)
        .await
        .assert_oauth_error(400, "invalid_grant");

    // A second grant, then a replay of its code: its tokens end.
    let (second, code) = rp_sign_in(&srv, &rp, &mut browser, "olivia").await;
    let second = second.access_token().secret().clone();
    assert_eq!(srv.introspect(&second).await["active"], true);
    redeem(&srv, &id, &secret, &code)
        .await
        .assert_oauth_error(400, "invalid_grant");
    assert_eq!(srv.introspect(&second).await["active"], false);

    // Revoking the person's consent to this client ends a third grant's tokens, and only
    // this client's.
    let (third, _) = rp_sign_in(&srv, &rp, &mut browser, "olivia").await;
    let third_refresh = third.refresh_token().unwrap().clone();
    let third = third.access_token().secret().clone();
    assert_eq!(srv.introspect(&third).await["active"], true);
    let r = Reply::from(
        http()
            .delete(format!("{sessions}/consent?subject=olivia&client={id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(srv.introspect(&third).await, json!({"active": false}));
    userinfo_status(&srv, &third)
        .await
        .assert_oauth_error(401, "invalid_token");
    srv.token_basic(
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", third_refresh.secret()),
        ],
    )
    .await
    .assert_oauth_error(400, "invalid_grant");
    assert_eq!(
        srv.introspect(jwt_tokens.access_token().secret()).await["active"],
        true,
        "another client's grant stays"
    );
}

fn form(s: &str) -> String {
    harness::form_encode(s)
}

#[tokio::test]
async fn authorization_errors_never_redirect_anywhere_unregistered() {
    let dir = TestDir::new();
    let srv = start(&dir).await;
    let (id, _) = web_client(&srv).await;
    let mut browser = Browser::default();
    let base = format!("{}/oauth2/auth", srv.public());
    let fallback = format!("{}/oauth2/fallbacks/error", srv.public());

    // Unknown client and unregistered redirect: to the error page, never to the given URI.
    for (query, error) in [
        (
            format!(
                "client_id=nope&response_type=code&state=abcdefgh&redirect_uri={}",
                form(CALLBACK)
            ),
            "invalid_client",
        ),
        (
            format!(
                "client_id={id}&response_type=code&state=abcdefgh&redirect_uri={}",
                form("https://evil.example/cb")
            ),
            "invalid_request",
        ),
        (
            format!(
                "client_id={id}&response_type=code&state=abcdefgh&redirect_uri={}",
                form("https://rp.example/cb/../evil")
            ),
            "invalid_request",
        ),
        (
            format!(
                "client_id={id}&response_type=code&state=abcdefgh&redirect_uri={}",
                form("https://rp.example/cb?x=1")
            ),
            "invalid_request",
        ),
        // Without redirect_uri, openid requires one.
        (
            format!("client_id={id}&response_type=code&state=abcdefgh&scope=openid"),
            "invalid_request",
        ),
    ] {
        let r = browser.get(&format!("{base}?{query}")).await;
        assert_eq!(r.status, 302, "{query}: {}", r.body);
        let to = location(&r);
        assert!(to.starts_with(&fallback), "{query}: {to}");
        assert_eq!(query_param(&to, "error").as_deref(), Some(error), "{to}");
        let page = browser.get(&to).await;
        assert_eq!(page.json["error"], error);
    }

    // After the client and redirect check: to the registered URI, with state.
    let ok = format!("client_id={id}&redirect_uri={}", form(CALLBACK));
    for (query, error, state) in [
        (
            format!("{ok}&response_type=code&state=short"),
            "invalid_state",
            "short",
        ),
        (format!("{ok}&response_type=code"), "invalid_state", ""),
        (
            format!("{ok}&response_type=token&state=abcdefgh"),
            "unsupported_response_type",
            "abcdefgh",
        ),
        (
            format!(
                "{ok}&response_type=code&state=abcdefgh&code_challenge={}&code_challenge_method=plain",
                "a".repeat(43)
            ),
            "invalid_request",
            "abcdefgh",
        ),
        (
            format!(
                "{ok}&response_type=code&state=abcdefgh&code_challenge={}",
                "a".repeat(43)
            ),
            "invalid_request",
            "abcdefgh",
        ),
        (
            format!("{ok}&response_type=code&state=abcdefgh&prompt=none"),
            "login_required",
            "abcdefgh",
        ),
        (
            format!("{ok}&response_type=code&state=abcdefgh&prompt=none+login"),
            "invalid_request",
            "abcdefgh",
        ),
        (
            format!("{ok}&response_type=code&state=abcdefgh&scope=admin"),
            "invalid_scope",
            "abcdefgh",
        ),
        (
            format!("{ok}&response_type=code&state=abcdefgh&nonce=short"),
            "insufficient_entropy",
            "abcdefgh",
        ),
        (
            format!("{ok}&response_type=code&state=abcdefgh&max_age=-1"),
            "invalid_request",
            "abcdefgh",
        ),
        (
            format!("{ok}&response_type=code&state=abcdefgh&request=eyJ"),
            "request_not_supported",
            "abcdefgh",
        ),
    ] {
        let r = browser.get(&format!("{base}?{query}")).await;
        assert_eq!(r.status, 303, "{query}: {}", r.body);
        let to = location(&r);
        assert!(to.starts_with(&format!("{CALLBACK}?")), "{query}: {to}");
        assert_eq!(
            query_param(&to, "error").as_deref(),
            Some(error),
            "{query}: {to}"
        );
        assert_eq!(
            query_param(&to, "state").as_deref().unwrap_or(""),
            state,
            "{to}"
        );
        assert!(query_param(&to, "code").is_none());
    }

    // The login app rejects: access_denied with state.
    let r = browser
        .get(&format!("{base}?{ok}&response_type=code&state=abcdefgh"))
        .await;
    let challenge = query_param(&location(&r), "login_challenge").unwrap();
    let rej = admin(
        &srv,
        "PUT",
        &format!("login/reject?login_challenge={challenge}"),
        Some(json!({"error": "access_denied", "error_description": "wrong password"})),
    )
    .await;
    assert_eq!(rej.status, 200, "{}", rej.body);
    let r = browser.get(&str_field(&rej.json, "redirect_to")).await;
    let to = location(&r);
    assert!(to.starts_with(CALLBACK), "{to}");
    assert_eq!(query_param(&to, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_param(&to, "state").as_deref(), Some("abcdefgh"));

    // Unknown challenges are 404.
    let r = admin(&srv, "GET", "login?login_challenge=nope", None).await;
    r.assert_oauth_error(404, "not_found");
    let r = admin(&srv, "GET", "consent?consent_challenge=nope.nope", None).await;
    r.assert_oauth_error(404, "not_found");
}

#[tokio::test]
async fn remembered_sessions_skip_and_prompt_none_succeeds() {
    let dir = TestDir::new();
    let srv = start(&dir).await;
    let (id, secret) = web_client(&srv).await;
    let mut browser = Browser::default();
    let url = |extra: &str| {
        format!(
            "{}/oauth2/auth?client_id={id}&response_type=code&scope=openid&state=state-5678&redirect_uri={}{extra}",
            srv.public(),
            form(CALLBACK)
        )
    };
    let back = authorize(&srv, &mut browser, &url(""), "carol", &["openid"]).await;
    assert!(query_param(&back, "code").is_some(), "{back}");

    // Same browser, but prompt=login, prompt=consent or max_age=0: the apps must ask again.
    for (extra, login_skip) in [
        ("&prompt=login", false),
        ("&max_age=0", false),
        ("&max_age=3600", true),
    ] {
        let r = browser.get(&url(extra)).await;
        let challenge = query_param(&location(&r), "login_challenge").unwrap();
        let lr = admin(
            &srv,
            "GET",
            &format!("login?login_challenge={challenge}"),
            None,
        )
        .await;
        assert_eq!(lr.json["skip"], login_skip, "{extra}: {}", lr.body);
    }
    let r = browser.get(&url("&prompt=consent")).await;
    let challenge = query_param(&location(&r), "login_challenge").unwrap();
    let q = format!("login_challenge={challenge}");
    let acc = admin(
        &srv,
        "PUT",
        &format!("login/accept?{q}"),
        Some(json!({"subject": "carol"})),
    )
    .await;
    let r = browser.get(&str_field(&acc.json, "redirect_to")).await;
    let to_consent = location(&r);
    let cq = format!(
        "consent_challenge={}",
        query_param(&to_consent, "consent_challenge").unwrap()
    );
    let cr = admin(&srv, "GET", &format!("consent?{cq}"), None).await;
    assert_eq!(cr.json["skip"], false, "prompt=consent: {}", cr.body);
    // The consent step is bound to the browser too.
    let rej = admin(
        &srv,
        "PUT",
        &format!("consent/reject?{cq}"),
        Some(json!({})),
    )
    .await;
    let verifier_url = str_field(&rej.json, "redirect_to");
    let r = Browser::default().get(&verifier_url).await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A rejection without an error code reaches the client as access_denied.
    let r = browser.get(&verifier_url).await;
    let to = location(&r);
    assert!(to.starts_with(CALLBACK), "{to}");
    assert_eq!(query_param(&to, "error").as_deref(), Some("access_denied"));

    // Same browser, prompt=none: login and consent are remembered; the apps see skip=true.
    let r = browser.get(&url("&prompt=none")).await;
    assert_eq!(r.status, 302, "{}", r.body);
    let challenge = query_param(&location(&r), "login_challenge").unwrap();
    let q = format!("login_challenge={challenge}");
    let lr = admin(&srv, "GET", &format!("login?{q}"), None).await;
    assert_eq!(lr.json["skip"], true, "{}", lr.body);
    assert_eq!(lr.json["subject"], "carol");
    // A skipped login cannot switch subject.
    let switch = admin(
        &srv,
        "PUT",
        &format!("login/accept?{q}"),
        Some(json!({"subject": "mallory"})),
    )
    .await;
    switch.assert_oauth_error(400, "invalid_request");
    let acc = admin(
        &srv,
        "PUT",
        &format!("login/accept?{q}"),
        Some(json!({"subject": "carol"})),
    )
    .await;
    assert_eq!(acc.status, 200, "{}", acc.body);
    let r = browser.get(&str_field(&acc.json, "redirect_to")).await;
    let to_consent = location(&r);
    let cq = format!(
        "consent_challenge={}",
        query_param(&to_consent, "consent_challenge").unwrap()
    );
    let cr = admin(&srv, "GET", &format!("consent?{cq}"), None).await;
    assert_eq!(cr.json["skip"], true, "{}", cr.body);
    let acc = admin(
        &srv,
        "PUT",
        &format!("consent/accept?{cq}"),
        Some(json!({"grant_scope": ["openid"]})),
    )
    .await;
    let r = browser.get(&str_field(&acc.json, "redirect_to")).await;
    let back = location(&r);
    let code = query_param(&back, "code").expect("prompt=none with a session succeeds");
    // Consent challenge and verifier are single-use too.
    assert_eq!(
        admin(&srv, "GET", &format!("consent?{cq}"), None)
            .await
            .status,
        410
    );
    let r = browser.get(&str_field(&acc.json, "redirect_to")).await;
    assert_eq!(
        query_param(&location(&r), "error").as_deref(),
        Some("access_denied")
    );

    // No refresh token without offline; an ID token with openid.
    let t = redeem(&srv, &id, &secret, &code).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert!(t.json.get("refresh_token").is_none(), "{}", t.body);
    assert!(t.json["id_token"].is_string());

    // id_token_hint: a hint for the session's subject lets login be skipped (the login app sees
    // its claims); a hint for someone else does not; a forged hint is refused.
    let hint = str_field(&t.json, "id_token");
    let r = browser
        .get(&url(&format!("&prompt=none&id_token_hint={hint}")))
        .await;
    let challenge = query_param(&location(&r), "login_challenge").unwrap();
    let lr = admin(
        &srv,
        "GET",
        &format!("login?login_challenge={challenge}"),
        None,
    )
    .await;
    assert_eq!(lr.json["skip"], true, "{}", lr.body);
    assert_eq!(
        lr.json["oidc_context"]["id_token_hint_claims"]["sub"],
        "carol"
    );
    let mut other = Browser::default();
    let _ = authorize(&srv, &mut other, &url(""), "dan", &["openid"]).await;
    let r = other
        .get(&url(&format!("&prompt=none&id_token_hint={hint}")))
        .await;
    assert_eq!(
        query_param(&location(&r), "error").as_deref(),
        Some("login_required")
    );
    let (h, c, _) = {
        let mut parts = hint.split('.');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            (),
        )
    };
    let forged = format!("{h}.{c}.AAAA");
    let r = browser.get(&url(&format!("&id_token_hint={forged}"))).await;
    assert_eq!(
        query_param(&location(&r), "error").as_deref(),
        Some("invalid_request")
    );

    // A fresh browser has no session: prompt=none fails with login_required.
    let r = Browser::default().get(&url("&prompt=none")).await;
    assert_eq!(
        query_param(&location(&r), "error").as_deref(),
        Some("login_required")
    );
}

#[tokio::test]
async fn public_client_with_pkce_and_concurrent_refresh_has_one_winner() {
    let dir = TestDir::new();
    let srv = start(&dir).await;
    let c = srv
        .create_client(json!({
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            "scope": "openid offline_access",
            "redirect_uris": ["http://127.0.0.1/cb"],
            "audience": ["https://api.example"],
        }))
        .await;
    let id = str_field(&c, "client_id");
    assert!(
        c.get("client_secret").is_none(),
        "public clients get no secret: {c}"
    );
    let (pkce, verifier) = PkceCodeChallenge::new_random_sha256();
    // Loopback redirect: any port matches the registered port-less URI.
    let url = format!(
        "{}/oauth2/auth?client_id={id}&response_type=code&scope=openid+offline_access&state=state-9012&redirect_uri={}&code_challenge={}&code_challenge_method=S256",
        srv.public(),
        form("http://127.0.0.1:53123/cb"),
        pkce.as_str()
    );
    let mut browser = Browser::default();
    let back = authorize(
        &srv,
        &mut browser,
        &url,
        "dave",
        &["openid", "offline_access"],
    )
    .await;
    assert!(back.starts_with("http://127.0.0.1:53123/cb?"), "{back}");
    let code = query_param(&back, "code").unwrap();
    let exchange = |extra: Vec<(&'static str, String)>| {
        let mut form: Vec<(String, String)> = vec![
            ("grant_type".into(), "authorization_code".into()),
            ("client_id".into(), id.clone()),
            ("code".into(), code.clone()),
            ("redirect_uri".into(), "http://127.0.0.1:53123/cb".into()),
        ];
        form.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        let url = srv.token_endpoint();
        async move { Reply::from(http().post(url).form(&form).send().await.unwrap()).await }
    };
    // A public client must prove possession with PKCE.
    exchange(vec![])
        .await
        .assert_oauth_error(400, "invalid_grant");
    let t = exchange(vec![("code_verifier", verifier.secret().clone())]).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let refresh = str_field(&t.json, "refresh_token");

    // Eight concurrent refreshes of one token: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, id, refresh) = (srv.token_endpoint(), id.clone(), refresh.clone());
        tasks.push(tokio::spawn(async move {
            let r = http()
                .post(url)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", id.as_str()),
                    ("refresh_token", refresh.as_str()),
                ])
                .send()
                .await
                .unwrap();
            Reply::from(r).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 200 {
            winners += 1;
        } else {
            assert_eq!(r.status, 400, "{}", r.body);
        }
    }
    assert_eq!(winners, 1, "concurrent refreshes of one token");

    // A confidential client's secret is required: another client's refresh token is refused.
    let (other, other_secret) = web_client(&srv).await;
    srv.token_basic(
        &other,
        &other_secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ],
    )
    .await
    .assert_oauth_error(400, "invalid_grant");
}

#[tokio::test]
async fn rp_initiated_logout_through_the_logout_app() {
    const LOGOUT_APP: &str = "https://login.example/logout";
    const BYE: &str = "https://rp.example/bye";
    let dir = TestDir::new();
    let srv = Server::start(
        &dir.data(),
        &[
            "--login-url",
            LOGIN_APP,
            "--consent-url",
            CONSENT_APP,
            "--logout-url",
            LOGOUT_APP,
        ],
    )
    .await;
    let c = srv
        .create_client(json!({
            "grant_types": ["authorization_code"],
            "scope": "openid",
            "redirect_uris": [CALLBACK],
            "post_logout_redirect_uris": [BYE],
            "audience": ["https://api.example"],
        }))
        .await;
    let (id, secret) = (str_field(&c, "client_id"), str_field(&c, "client_secret"));
    let mut browser = Browser::default();
    let url = format!(
        "{}/oauth2/auth?client_id={id}&response_type=code&scope=openid&state=state-4242&redirect_uri={}",
        srv.public(),
        form(CALLBACK)
    );
    let back = authorize(&srv, &mut browser, &url, "erin", &["openid"]).await;
    let code = query_param(&back, "code").unwrap();
    let t = redeem(&srv, &id, &secret, &code).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let id_token = str_field(&t.json, "id_token");
    let access = str_field(&t.json, "access_token");
    let logout = format!("{}/oauth2/sessions/logout", srv.public());

    // An unregistered post_logout_redirect_uri, or an access token as hint: the error page.
    for query in [
        format!(
            "id_token_hint={id_token}&post_logout_redirect_uri={}",
            form("https://evil.example/")
        ),
        format!(
            "id_token_hint={access}&post_logout_redirect_uri={}",
            form(BYE)
        ),
        format!("post_logout_redirect_uri={}", form(BYE)),
    ] {
        let r = browser.get(&format!("{logout}?{query}")).await;
        assert_eq!(r.status, 302, "{query}: {}", r.body);
        let to = location(&r);
        assert!(to.contains("/oauth2/fallbacks/error"), "{query}: {to}");
    }

    let r = browser
        .get(&format!(
            "{logout}?id_token_hint={id_token}&post_logout_redirect_uri={}&state=bye-state",
            form(BYE)
        ))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    let to_app = location(&r);
    assert!(to_app.starts_with(LOGOUT_APP), "{to_app}");
    let q = format!(
        "logout_challenge={}",
        query_param(&to_app, "logout_challenge").unwrap()
    );
    let lr = admin(&srv, "GET", &format!("logout?{q}"), None).await;
    assert_eq!(lr.status, 200, "{}", lr.body);
    assert_eq!(lr.json["subject"], "erin");
    assert_eq!(lr.json["rp_initiated"], true);
    assert_eq!(lr.json["client"]["client_id"], id.as_str());
    let acc = admin(&srv, "PUT", &format!("logout/accept?{q}"), None).await;
    assert_eq!(acc.status, 200, "{}", acc.body);
    assert_eq!(
        admin(&srv, "GET", &format!("logout?{q}"), None)
            .await
            .status,
        410
    );
    let verifier_url = str_field(&acc.json, "redirect_to");
    let r = browser.get(&verifier_url).await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(location(&r), format!("{BYE}?state=bye-state"));
    assert!(
        !browser.cookies.contains_key("ory_hydra_session_dev"),
        "session cookie cleared"
    );
    // The verifier works once.
    let r = browser.get(&verifier_url).await;
    assert!(location(&r).contains("/oauth2/fallbacks/error"));

    // The session is gone server-side too: prompt=none now needs a login.
    let r = browser.get(&format!("{url}&prompt=none")).await;
    assert_eq!(
        query_param(&location(&r), "error").as_deref(),
        Some("login_required")
    );
}

#[tokio::test]
async fn revoking_consent_revokes_its_tokens_and_ending_logins_needs_a_new_login() {
    let dir = TestDir::new();
    let srv = start(&dir).await;
    let (id, secret) = web_client(&srv).await;
    let mut browser = Browser::default();
    let url = format!(
        "{}/oauth2/auth?client_id={id}&response_type=code&scope=openid+offline&state=state-7777&redirect_uri={}",
        srv.public(),
        form(CALLBACK)
    );
    let back = authorize(&srv, &mut browser, &url, "frank", &["openid", "offline"]).await;
    let code = query_param(&back, "code").unwrap();
    let t = redeem(&srv, &id, &secret, &code).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let (access, refresh) = (
        str_field(&t.json, "access_token"),
        str_field(&t.json, "refresh_token"),
    );
    let sessions = format!("{}/admin/oauth2/auth/sessions", srv.admin());

    let list = Reply::from(
        http()
            .get(format!("{sessions}/consent?subject=frank"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.json.as_array().unwrap().len(), 1, "{}", list.body);
    assert_eq!(list.json[0]["grant_scope"], json!(["openid", "offline"]));
    assert_eq!(
        list.json[0]["consent_request"]["client"]["client_id"],
        id.as_str()
    );
    let none = Reply::from(
        http()
            .get(format!("{sessions}/consent?subject=nobody"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(none.json, json!([]));

    // Ending the login sessions: prompt=none needs a login again.
    let r = Reply::from(
        http()
            .delete(format!("{sessions}/login"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_oauth_error(400, "invalid_request");
    let r = Reply::from(
        http()
            .delete(format!("{sessions}/login?subject=frank"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = browser.get(&format!("{url}&prompt=none")).await;
    assert_eq!(
        query_param(&location(&r), "error").as_deref(),
        Some("login_required")
    );
    assert_eq!(
        srv.introspect(&access).await["active"],
        true,
        "tokens survive a logout"
    );

    // Revoking the consent revokes the grant's tokens.
    let r = Reply::from(
        http()
            .delete(format!("{sessions}/consent?subject=frank"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_oauth_error(400, "invalid_request");
    let r = Reply::from(
        http()
            .delete(format!("{sessions}/consent?subject=frank&client={id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(srv.introspect(&access).await["active"], false);
    srv.token_basic(
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ],
    )
    .await
    .assert_oauth_error(400, "invalid_grant");
    let list = Reply::from(
        http()
            .get(format!("{sessions}/consent?subject=frank"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list.json, json!([]));
}

#[tokio::test]
async fn a_grace_period_lets_a_rotated_refresh_token_work_again() {
    let dir = TestDir::new();
    let srv = Server::start(
        &dir.data(),
        &[
            "--login-url",
            LOGIN_APP,
            "--consent-url",
            CONSENT_APP,
            "--refresh-token-rotation-grace-period",
            "5m",
        ],
    )
    .await;
    let (id, secret) = web_client(&srv).await;
    let mut browser = Browser::default();
    let url = format!(
        "{}/oauth2/auth?client_id={id}&response_type=code&scope=offline&state=state-3333&redirect_uri={}",
        srv.public(),
        form(CALLBACK)
    );
    let back = authorize(&srv, &mut browser, &url, "gina", &["offline"]).await;
    let code = query_param(&back, "code").unwrap();
    let t = redeem(&srv, &id, &secret, &code).await;
    let refresh = str_field(&t.json, "refresh_token");
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    let first = srv.token_basic(&id, &secret, &form).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // A lost response (the client retries with the same token): still fine within the grace.
    let second = srv.token_basic(&id, &secret, &form).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_ne!(first.json["refresh_token"], second.json["refresh_token"]);
    assert_eq!(
        srv.introspect(&str_field(&first.json, "access_token"))
            .await["active"],
        true,
        "no reuse revocation within the grace period"
    );
}

/// A relying party's logout endpoints: records every request it gets (path, body).
#[derive(Clone, Default)]
struct Recorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Recorder {
    /// Serves on loopback: `/bc` answers 200, `/redirect` 307 to `/stolen`, `/hang` never
    /// answers. Returns the base URL.
    async fn start(&self) -> String {
        use axum::routing::post;
        let rec = self.clone();
        let record = move |path: &'static str| {
            let rec = rec.clone();
            move |body: String| {
                let rec = rec.clone();
                async move {
                    rec.seen.lock().unwrap().push((path.to_string(), body));
                }
            }
        };
        let app = axum::Router::new()
            .route("/bc", post(record("/bc")))
            .route("/stolen", post(record("/stolen")))
            .route(
                "/redirect",
                post({
                    let r = record("/redirect");
                    move |body: String| async move {
                        r(body).await;
                        (
                            axum::http::StatusCode::TEMPORARY_REDIRECT,
                            [("location", "/stolen")],
                        )
                    }
                }),
            )
            .route(
                "/hang",
                post({
                    let r = record("/hang");
                    move |body: String| async move {
                        r(body).await;
                        std::future::pending::<()>().await;
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn bodies(&self, path: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// Polls `cond` until it holds (generous deadline: a condition, never a fixed sleep).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The `logout_token` a relying party received, verified with the JWKS: its claims.
async fn logout_claims(srv: &Server, body: &str) -> Value {
    let form: HashMap<String, String> = serde_urlencoded::from_str(body).unwrap();
    let (_, claims) = srv.verify(&form["logout_token"]).await;
    claims
}

fn flow_url(srv: &Server, id: &str) -> String {
    format!(
        "{}/oauth2/auth?client_id={id}&response_type=code&scope=openid&state=state-9999&redirect_uri={}",
        srv.public(),
        form(CALLBACK)
    )
}

/// Signs in at `id` with `browser` and returns the ID token's `sid` and the ID token.
async fn sign_in(
    srv: &Server,
    browser: &mut Browser,
    id: &str,
    secret: &str,
    who: &str,
) -> (String, String) {
    let back = authorize(srv, browser, &flow_url(srv, id), who, &["openid"]).await;
    let t = redeem(srv, id, secret, &query_param(&back, "code").unwrap()).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let id_token = str_field(&t.json, "id_token");
    let (_, claims) = srv.verify(&id_token).await;
    (str_field(&claims, "sid"), id_token)
}

#[tokio::test]
async fn logout_notifies_clients_over_the_back_and_front_channel() {
    const LOGOUT_APP: &str = "https://login.example/logout";
    const BYE: &str = "https://rp.example/bye";
    let rp = Recorder::default();
    let rp_url = rp.start().await;
    let dir = TestDir::new();
    let srv = Server::start(
        &dir.data(),
        &[
            "--login-url",
            LOGIN_APP,
            "--consent-url",
            CONSENT_APP,
            "--logout-url",
            LOGOUT_APP,
        ],
    )
    .await;
    let meta = Reply::from(
        http()
            .get(format!("{}/.well-known/openid-configuration", srv.public()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    for flag in [
        "backchannel_logout_supported",
        "backchannel_logout_session_supported",
        "frontchannel_logout_supported",
        "frontchannel_logout_session_supported",
    ] {
        assert_eq!(meta.json[flag], true, "{flag}");
    }
    let client = |extra: Value| {
        let srv = &srv;
        async move {
            let mut body = json!({
                "grant_types": ["authorization_code"],
                "scope": "openid",
                "redirect_uris": [CALLBACK],
                "post_logout_redirect_uris": [BYE],
                "audience": ["https://api.example"],
            });
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let c = srv.create_client(body).await;
            (str_field(&c, "client_id"), str_field(&c, "client_secret"))
        }
    };
    let a = client(json!({
        "backchannel_logout_uri": format!("{rp_url}/bc"),
        "backchannel_logout_session_required": true,
        "frontchannel_logout_uri": "https://a.example/fc?tenant=a&x=%3Cb%3E",
        "frontchannel_logout_session_required": true,
    }))
    .await;
    let b = client(json!({
        "backchannel_logout_uri": format!("{rp_url}/hang"),
        "frontchannel_logout_uri": "https://b.example/fc",
    }))
    .await;
    let c = client(json!({})).await;
    let d = client(json!({"backchannel_logout_uri": format!("{rp_url}/redirect")})).await;

    // One login session, four clients signed in through it.
    let mut browser = Browser::default();
    let (sid, id_token) = sign_in(&srv, &mut browser, &a.0, &a.1, "gina").await;
    for (id, secret) in [&b, &c, &d] {
        let (other_sid, _) = sign_in(&srv, &mut browser, id, secret, "gina").await;
        assert_eq!(other_sid, sid, "one login session");
    }

    let r = browser
        .get(&format!(
            "{}/oauth2/sessions/logout?id_token_hint={id_token}&post_logout_redirect_uri={}&state=bye-state",
            srv.public(),
            form(BYE)
        ))
        .await;
    let q = format!(
        "logout_challenge={}",
        query_param(&location(&r), "logout_challenge").unwrap()
    );
    let acc = admin(&srv, "PUT", &format!("logout/accept?{q}"), None).await;
    assert_eq!(acc.status, 200, "{}", acc.body);
    // The page comes back while b's endpoint is still hanging: delivery does not block it.
    let page = browser.get(&str_field(&acc.json, "redirect_to")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !browser.cookies.contains_key("ory_hydra_session_dev"),
        "session cookie cleared"
    );
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.header("content-type")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(
        page.body
            .contains(&format!("href=\"{BYE}?state=bye-state\"")),
        "{}",
        page.body
    );
    // Only registered front-channel URIs, HTML-escaped, with iss and sid where required.
    let frames: Vec<String> = page
        .body
        .split("data-src=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().replace("&amp;", "&"))
        .collect();
    assert_eq!(frames.len(), 2, "{}", page.body);
    assert!(
        !page.body.contains("tenant=a&x"),
        "unescaped & in attribute"
    );
    let fa = frames
        .iter()
        .find(|f| f.starts_with("https://a.example/fc?tenant=a&x=%3Cb%3E&"))
        .unwrap_or_else(|| panic!("{frames:?}"));
    assert_eq!(query_param(fa, "iss").unwrap(), srv.issuer());
    assert_eq!(query_param(fa, "sid").unwrap(), sid);
    assert!(
        frames.iter().any(|f| f == "https://b.example/fc"),
        "{frames:?}"
    );

    // Back channel: a's token arrives and verifies; b hangs; d's redirect is not followed.
    eventually("the back-channel deliveries", || {
        rp.bodies("/bc").len() == 1
            && rp.bodies("/hang").len() == 1
            && srv.log().contains("answered 307")
    })
    .await;
    assert!(rp.bodies("/stolen").is_empty(), "a redirect was followed");
    let claims = logout_claims(&srv, &rp.bodies("/bc")[0]).await;
    // Explicitly typed, and no access token: introspection refuses it.
    let form: HashMap<String, String> = serde_urlencoded::from_str(&rp.bodies("/bc")[0]).unwrap();
    let (header, _) = harness::jwt_parts(&form["logout_token"]);
    assert_eq!(header["typ"], "logout+jwt");
    assert_eq!(srv.introspect(&form["logout_token"]).await["active"], false);
    assert_eq!(claims["iss"], srv.issuer());
    assert_eq!(claims["aud"], json!([a.0]));
    assert_eq!(claims["sub"], "gina");
    assert_eq!(claims["sid"], sid.as_str());
    assert_eq!(
        claims["events"],
        json!({"http://schemas.openid.net/event/backchannel-logout": {}})
    );
    assert!(claims.get("nonce").is_none(), "{claims}");
    assert!(!str_field(&claims, "jti").is_empty());
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    let r = browser
        .get(&format!("{}&prompt=none", flow_url(&srv, &a.0)))
        .await;
    assert_eq!(
        query_param(&location(&r), "error").as_deref(),
        Some("login_required")
    );

    // Ending a session over the admin API notifies too, by sid and by subject.
    let sessions = format!("{}/admin/oauth2/auth/sessions/login", srv.admin());
    let (sid2, _) = sign_in(&srv, &mut Browser::default(), &a.0, &a.1, "gina").await;
    let r = Reply::from(
        http()
            .delete(format!("{sessions}?sid={sid2}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    eventually("the token for the deleted sid", || {
        rp.bodies("/bc").len() == 2
    })
    .await;
    assert_eq!(
        logout_claims(&srv, &rp.bodies("/bc")[1]).await["sid"],
        sid2.as_str()
    );
    let (sid3, _) = sign_in(&srv, &mut Browser::default(), &a.0, &a.1, "gina").await;
    let r = Reply::from(
        http()
            .delete(format!("{sessions}?subject=gina"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    eventually("the token for the subject's session", || {
        rp.bodies("/bc").len() == 3
    })
    .await;
    assert_eq!(
        logout_claims(&srv, &rp.bodies("/bc")[2]).await["sid"],
        sid3.as_str()
    );
}

#[tokio::test]
async fn consent_sessions_are_listed_in_pages() {
    let dir = TestDir::new();
    let srv = start(&dir).await;
    let mut browser = Browser::default();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, secret) = web_client(&srv).await;
        sign_in(&srv, &mut browser, &id, &secret, "hana").await;
        ids.push(id);
    }
    let list = |query: String| {
        let url = format!("{}{query}", srv.admin());
        async move { Reply::from(http().get(url).send().await.unwrap()).await }
    };
    let path = "/admin/oauth2/auth/sessions/consent";
    let first = list(format!("{path}?subject=hana&page_size=2")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json.as_array().unwrap().len(), 2, "{}", first.body);
    let link = first.header("link").unwrap();
    let next = link
        .split(", ")
        .find(|l| l.ends_with("rel=\"next\""))
        .and_then(|l| l.strip_prefix('<')?.split('>').next())
        .unwrap_or_else(|| panic!("no next page in {link}"));
    assert!(
        next.starts_with(path) && next.contains("subject=hana"),
        "{next}"
    );
    let second = list(next.to_string()).await;
    assert_eq!(second.json.as_array().unwrap().len(), 1, "{}", second.body);
    assert!(
        !second.header("link").unwrap().contains("rel=\"next\""),
        "last page"
    );
    let mut listed: Vec<String> = first
        .json
        .as_array()
        .unwrap()
        .iter()
        .chain(second.json.as_array().unwrap())
        .map(|c| str_field(&c["consent_request"]["client"], "client_id"))
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    let sid = str_field(&first.json[0]["consent_request"], "login_session_id");
    assert!(!sid.is_empty() && !str_field(&first.json[0], "consent_request_id").is_empty());

    let all = list(format!("{path}?subject=hana&login_session_id={sid}")).await;
    assert_eq!(all.json.as_array().unwrap().len(), 3, "{}", all.body);
    let none = list(format!("{path}?subject=hana&login_session_id=other")).await;
    assert_eq!(none.json, json!([]));
    // Page size is bounded; a bad size or token is the client's error.
    let big = list(format!("{path}?subject=hana&page_size=100000")).await;
    assert!(big.header("link").unwrap().contains("page_size=500"));
    list(format!("{path}?subject=hana&page_size=0"))
        .await
        .assert_oauth_error(400, "invalid_request");
    list(format!("{path}?subject=hana&page_size=-1"))
        .await
        .assert_oauth_error(400, "invalid_request");
    list(format!("{path}?subject=hana&page_token=%FF%FE"))
        .await
        .assert_oauth_error(400, "invalid_request");
}

#[tokio::test]
async fn the_login_app_sees_the_hints_and_client_lifespans_apply() {
    let dir = TestDir::new();
    let srv = start(&dir).await;
    let c = srv
        .create_client(json!({
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": "openid offline",
            "redirect_uris": [CALLBACK],
            "skip_consent": true,
            "authorization_code_grant_access_token_lifespan": "5m",
            "authorization_code_grant_id_token_lifespan": "2m",
            "refresh_token_grant_access_token_lifespan": "3m",
            "refresh_token_grant_id_token_lifespan": "90s",
            "refresh_token_grant_refresh_token_lifespan": "1m",
        }))
        .await;
    let (id, secret) = (str_field(&c, "client_id"), str_field(&c, "client_secret"));
    let mut browser = Browser::default();
    let url = format!(
        "{}&scope=openid+offline&login_hint={}&acr_values=urn%3Aa+urn%3Ab&ui_locales=de+en&display=popup",
        flow_url(&srv, &id).replace("&scope=openid", ""),
        form("alice@example.com")
    );
    let r = browser.get(&url).await;
    let q = format!(
        "login_challenge={}",
        query_param(&location(&r), "login_challenge").unwrap()
    );
    let lr = admin(&srv, "GET", &format!("login?{q}"), None).await;
    let ctx = &lr.json["oidc_context"];
    assert_eq!(ctx["login_hint"], "alice@example.com", "{}", lr.body);
    assert_eq!(ctx["acr_values"], json!(["urn:a", "urn:b"]));
    assert_eq!(ctx["ui_locales"], json!(["de", "en"]));
    assert_eq!(ctx["display"], "popup");
    // No acr from the login app although the client asked for acr_values: "0", as Hydra.
    let acc = admin(
        &srv,
        "PUT",
        &format!("login/accept?{q}"),
        Some(json!({"subject": "ivy", "remember": true})),
    )
    .await;
    let r = browser.get(&str_field(&acc.json, "redirect_to")).await;
    let cq = format!(
        "consent_challenge={}",
        query_param(&location(&r), "consent_challenge").unwrap()
    );
    let cr = admin(&srv, "GET", &format!("consent?{cq}"), None).await;
    // skip_consent is the consent app's hint (Hydra), carried in the client.
    assert_eq!(cr.json["client"]["skip_consent"], true, "{}", cr.body);
    let acc = admin(
        &srv,
        "PUT",
        &format!("consent/accept?{cq}"),
        Some(json!({"grant_scope": ["openid", "offline"]})),
    )
    .await;
    let r = browser.get(&str_field(&acc.json, "redirect_to")).await;
    let t = redeem(
        &srv,
        &id,
        &secret,
        &query_param(&location(&r), "code").unwrap(),
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.body);
    let life = |claims: &Value| claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    let (_, access) = srv.verify(&str_field(&t.json, "access_token")).await;
    let (_, idt) = srv.verify(&str_field(&t.json, "id_token")).await;
    assert_eq!(
        (life(&access), t.json["expires_in"].as_i64().unwrap()),
        (300, 300)
    );
    assert_eq!(life(&idt), 120);
    assert_eq!(idt["acr"], "0");
    let t = srv
        .token_basic(
            &id,
            &secret,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &str_field(&t.json, "refresh_token")),
            ],
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.body);
    let (_, access) = srv.verify(&str_field(&t.json, "access_token")).await;
    let (_, idt) = srv.verify(&str_field(&t.json, "id_token")).await;
    assert_eq!((life(&access), life(&idt)), (180, 90));
    // That access token outlives its refresh token (3 minutes against 1): `/userinfo` does
    // not lean on the refresh chain for it, and answers for the person all the same.
    let ui = userinfo_status(&srv, &str_field(&t.json, "access_token")).await;
    assert_eq!(
        (ui.status, &ui.json["sub"]),
        (200, &json!("ivy")),
        "{}",
        ui.body
    );

    // A remembered login but no remembered consent: prompt=none ends in consent_required.
    let r = browser.get(&format!("{url}&prompt=none")).await;
    let q = format!(
        "login_challenge={}",
        query_param(&location(&r), "login_challenge").unwrap()
    );
    assert_eq!(
        admin(&srv, "GET", &format!("login?{q}"), None).await.json["skip"],
        true
    );
    let acc = admin(
        &srv,
        "PUT",
        &format!("login/accept?{q}"),
        Some(json!({"subject": "ivy"})),
    )
    .await;
    let r = browser.get(&str_field(&acc.json, "redirect_to")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let back = location(&r);
    assert!(back.starts_with(CALLBACK), "{back}");
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("consent_required")
    );
    assert_eq!(query_param(&back, "state").as_deref(), Some("state-9999"));
}

#[tokio::test]
async fn pkce_can_be_enforced_and_errors_can_go_to_the_error_url() {
    let dir = TestDir::new();
    let mut srv = Server::start(
        &dir.data(),
        &[
            "--login-url",
            LOGIN_APP,
            "--consent-url",
            CONSENT_APP,
            "--pkce-enforced-for-public-clients",
        ],
    )
    .await;
    let public = srv
        .create_client(json!({
            "grant_types": ["authorization_code"],
            "scope": "openid",
            "redirect_uris": [CALLBACK],
            "token_endpoint_auth_method": "none",
        }))
        .await;
    let (confidential, _) = web_client(&srv).await;
    let public = str_field(&public, "client_id");
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let outcome = |srv: &Server, id: &str, pkce: bool| {
        let mut url = flow_url(srv, id);
        if pkce {
            url.push_str(&format!(
                "&code_challenge={challenge}&code_challenge_method=S256"
            ));
        }
        async move {
            let r = Browser::default().get(&url).await;
            let to = location(&r);
            if to.starts_with(LOGIN_APP) {
                "login".to_string()
            } else {
                assert!(to.starts_with(CALLBACK), "{to}");
                assert_eq!(query_param(&to, "state").as_deref(), Some("state-9999"));
                query_param(&to, "error").unwrap()
            }
        }
    };
    assert_eq!(outcome(&srv, &public, false).await, "invalid_request");
    assert_eq!(outcome(&srv, &public, true).await, "login");
    assert_eq!(outcome(&srv, &confidential, false).await, "login");

    // --pkce-enforced: every client.
    srv.stop().await;
    let srv = Server::start(
        &dir.data(),
        &[
            "--login-url",
            LOGIN_APP,
            "--consent-url",
            CONSENT_APP,
            "--pkce-enforced",
            "--error-url",
            "https://login.example/error",
        ],
    )
    .await;
    assert_eq!(outcome(&srv, &confidential, false).await, "invalid_request");
    assert_eq!(outcome(&srv, &confidential, true).await, "login");
    // --error-url: what cannot go to a client goes there instead of /oauth2/fallbacks/error.
    let r = Browser::default()
        .get(&flow_url(&srv, "no-such-client"))
        .await;
    let to = location(&r);
    assert!(to.starts_with("https://login.example/error?"), "{to}");
    assert_eq!(query_param(&to, "error").as_deref(), Some("invalid_client"));
}

#[tokio::test]
async fn hostile_input_to_every_oidc_endpoint_never_gets_a_500() {
    const LOGOUT_APP: &str = "https://login.example/logout";
    let dir = TestDir::new();
    let srv = Server::start(
        &dir.data(),
        &[
            "--login-url",
            LOGIN_APP,
            "--consent-url",
            CONSENT_APP,
            "--logout-url",
            LOGOUT_APP,
        ],
    )
    .await;
    let (id, secret) = web_client(&srv).await;
    let (p, a) = (srv.public(), srv.admin());
    let requests = [
        ("GET", format!("{p}/oauth2/auth?%ZZ=1"), ""),
        ("GET", format!("{p}/oauth2/auth?client_id=%FF%FE"), ""),
        (
            "GET",
            format!("{p}/oauth2/auth?client_id={id}&client_id=x"),
            "",
        ),
        ("GET", format!("{p}/oauth2/auth?login_verifier=..."), ""),
        ("GET", format!("{p}/oauth2/auth?consent_verifier=a.b"), ""),
        ("POST", format!("{p}/oauth2/auth"), "%%%&&=="),
        (
            "GET",
            format!("{p}/oauth2/sessions/logout?id_token_hint=a.b.c"),
            "",
        ),
        (
            "GET",
            format!("{p}/oauth2/sessions/logout?id_token_hint=%FF"),
            "",
        ),
        (
            "GET",
            format!("{p}/oauth2/sessions/logout?logout_verifier=x.y"),
            "",
        ),
        ("POST", format!("{p}/oauth2/sessions/logout"), "state=%ZZ"),
        ("POST", format!("{p}/userinfo"), "access_token=a.b.c"),
        (
            "GET",
            format!("{a}/admin/oauth2/auth/requests/login?login_challenge=%FF"),
            "",
        ),
        (
            "PUT",
            format!("{a}/admin/oauth2/auth/requests/login/accept?login_challenge=x"),
            "not json",
        ),
        (
            "PUT",
            format!("{a}/admin/oauth2/auth/requests/login/accept?login_challenge=x"),
            "{\"subject\":5}",
        ),
        (
            "PUT",
            format!("{a}/admin/oauth2/auth/requests/consent/accept?consent_challenge=x.y"),
            "{\"grant_scope\":\"x\"}",
        ),
        (
            "PUT",
            format!("{a}/admin/oauth2/auth/requests/logout/accept?logout_challenge="),
            "",
        ),
        (
            "GET",
            format!("{a}/admin/oauth2/auth/sessions/consent?subject=%FF"),
            "",
        ),
        (
            "GET",
            format!("{a}/admin/oauth2/auth/sessions/consent?subject=x&page_token=%25%25"),
            "",
        ),
        (
            "DELETE",
            format!("{a}/admin/oauth2/auth/sessions/login?sid=x&subject=y"),
            "",
        ),
        (
            "DELETE",
            format!("{a}/admin/oauth2/auth/sessions/login?sid=no-such-session"),
            "",
        ),
    ];
    for (method, url, body) in requests {
        let req = http()
            .request(method.parse().unwrap(), &url)
            .header(
                "content-type",
                if body.starts_with('{') || body.starts_with('n') {
                    "application/json"
                } else {
                    "application/x-www-form-urlencoded"
                },
            )
            .body(body.to_string());
        let r = Reply::from(req.send().await.unwrap()).await;
        assert!(
            r.status < 500,
            "{method} {url} {body}: {} {}",
            r.status,
            r.body
        );
        // A refusal is always a JSON error the client can read.
        assert!(
            r.status < 400 || r.json.get("error").is_some(),
            "{method} {url}: {} {}",
            r.status,
            r.body
        );
    }
    for form in [
        vec![("grant_type", "authorization_code"), ("code", "ory_ac_x.y")],
        vec![("grant_type", "authorization_code"), ("code", "")],
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", "ory_rt_%%"),
        ],
        vec![("grant_type", "refresh_token")],
    ] {
        let r = srv.token_basic(&id, &secret, &form).await;
        assert!(
            r.status < 500 && r.json.get("error").is_some(),
            "{form:?}: {} {}",
            r.status,
            r.body
        );
    }
}
