//! Black-box tests of the public token endpoint of the real `portcullis` binary: the `oauth2`
//! crate's client-credentials flow, OIDC discovery, JWT verification against the JWKS with an
//! independent JOSE library, every client authentication method, and every RFC 6749 5.2 error.
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use harness::{Reply, Server, TestDir, assert_no_store, basic, http, jwt_parts, now, str_field};
use josekit::jwk::KeyPair as _;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{ClientId, ClientSecret, RequestTokenError, Scope, TokenResponse, TokenUrl};
use openidconnect::JsonWebKey as _;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const AUDIENCE: &str = "https://orders.example.com";

/// Checks every claim Hydra puts in a client_credentials JWT.
fn assert_claims(claims: &Value, issuer: &str, client_id: &str, scopes: &[&str], ttl: i64) {
    assert_eq!(claims["iss"], issuer, "iss in {claims}");
    assert_eq!(claims["sub"], client_id, "sub in {claims}");
    assert_eq!(claims["client_id"], client_id, "client_id in {claims}");
    assert_eq!(claims["aud"], json!([AUDIENCE]), "aud in {claims}");
    assert_eq!(claims["scp"], json!(scopes), "scp in {claims}");
    let (iat, nbf, exp) = (
        claims["iat"].as_i64().expect("iat is a number"),
        claims["nbf"].as_i64().expect("nbf is a number"),
        claims["exp"].as_i64().expect("exp is a number"),
    );
    let t = now();
    assert!((t - 60..=t + 5).contains(&iat), "iat {iat} vs now {t}");
    assert!(nbf <= t + 5, "nbf {nbf} in the future (now {t})");
    assert!(
        (exp - iat - ttl).abs() <= 1,
        "exp {exp} - iat {iat} != {ttl}"
    );
    let jti = claims["jti"].as_str().expect("jti is a string");
    assert!(jti.len() >= 16, "jti {jti:?} too short to be unique");
}

#[tokio::test]
async fn oauth2_crate_flow_with_discovery_and_jwks_verification() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let (id, secret) = srv.cc_client("orders.read orders.write", &[AUDIENCE]).await;
    let http_client = oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client");

    // Discovery exactly as an OIDC relying party does it (also fetches and parses the JWKS).
    let issuer = openidconnect::IssuerUrl::new(srv.issuer()).expect("issuer URL");
    let meta = openidconnect::core::CoreProviderMetadata::discover_async(issuer, &http_client)
        .await
        .expect("OIDC discovery");
    assert_eq!(meta.issuer().as_str(), srv.issuer());
    let token_url = meta.token_endpoint().expect("token_endpoint").clone();
    assert_eq!(token_url.as_str(), srv.token_endpoint());
    assert_eq!(
        meta.jwks_uri().as_str(),
        format!("{}/.well-known/jwks.json", srv.public())
    );
    assert!(
        !meta.jwks().keys().is_empty(),
        "discovered JWKS has no keys"
    );

    // RFC 8414 metadata: the same document under the OAuth name, with the fields clients need.
    let rfc8414 = Reply::from(
        http()
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                srv.public()
            ))
            .send()
            .await
            .expect("RFC 8414 metadata"),
    )
    .await;
    assert_eq!(rfc8414.status, 200, "{}", rfc8414.body);
    let m = &rfc8414.json;
    assert_eq!(m["issuer"], srv.issuer());
    assert_eq!(m["token_endpoint"], srv.token_endpoint());
    assert_eq!(
        m["revocation_endpoint"],
        format!("{}/oauth2/revoke", srv.public())
    );
    let list = |k: &str| -> Vec<String> {
        serde_json::from_value(m[k].clone()).unwrap_or_else(|_| panic!("{k} in {m}"))
    };
    assert!(list("grant_types_supported").contains(&"client_credentials".to_string()));
    for method in [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ] {
        assert!(
            list("token_endpoint_auth_methods_supported").contains(&method.to_string()),
            "{method} not advertised"
        );
    }

    // The oauth2 crate's flow (Basic auth, form-encoded credentials).
    let client = BasicClient::new(ClientId::new(id.clone()))
        .set_client_secret(ClientSecret::new(secret.clone()))
        .set_token_uri(TokenUrl::new(token_url.to_string()).expect("token URL"));
    let resp = client
        .exchange_client_credentials()
        .add_scope(Scope::new("orders.read".into()))
        .add_extra_param("audience", AUDIENCE)
        .request_async(&http_client)
        .await
        .expect("client_credentials token");
    assert_eq!(
        format!("{:?}", resp.token_type()).to_ascii_lowercase(),
        "bearer"
    );
    assert_eq!(resp.expires_in(), Some(Duration::from_secs(3600)));
    assert!(
        resp.refresh_token().is_none(),
        "no refresh token for this grant"
    );
    let scopes: Vec<String> = resp
        .scopes()
        .map(|s| s.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(scopes, vec!["orders.read".to_string()]);

    let token = resp.access_token().secret().clone();
    let (header, claims) = srv.verify(&token).await;
    assert_eq!(header["alg"], "RS256", "default algorithm (as Hydra)");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert_claims(&claims, &srv.issuer(), &id, &["orders.read"], 3600);

    // The kid is also in the JWKS the OIDC library fetched.
    let kid = str_field(&header, "kid");
    assert!(
        meta.jwks()
            .keys()
            .iter()
            .any(|k| k.key_id().map(|k| k.as_str()) == Some(kid.as_str())),
        "kid {kid} not in the discovered JWKS"
    );

    // Two tokens never share a jti.
    let second = srv.token(&id, &secret, &[]).await;
    let (_, c2) = srv.verify(&second).await;
    assert_ne!(c2["jti"], claims["jti"]);
    // No scope requested: nothing granted (Hydra grants only what is asked for).
    assert_eq!(c2["scp"], json!([]), "scp without a scope request: {c2}");
}

#[tokio::test]
async fn every_signing_alg_verifies_with_an_independent_library() {
    for (alg, ttl) in [("RS256", 600), ("ES256", 90), ("EdDSA", 3600)] {
        let dir = TestDir::new();
        let ttl_arg = format!("{ttl}s");
        let srv = Server::start(
            &dir.data(),
            &["--signing-alg", alg, "--access-token-ttl", &ttl_arg],
        )
        .await;
        let (id, secret) = srv.cc_client("a b", &[AUDIENCE]).await;
        let r = srv
            .token_basic(
                &id,
                &secret,
                &[
                    ("grant_type", "client_credentials"),
                    ("scope", "b a"),
                    ("audience", AUDIENCE),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{alg}: {}", r.body);
        assert_eq!(
            r.json["expires_in"].as_i64(),
            Some(ttl),
            "{alg}: {}",
            r.body
        );
        let token = str_field(&r.json, "access_token");
        let (header, claims) = srv.verify(&token).await;
        assert_eq!(header["alg"], alg);
        assert_claims(&claims, &srv.issuer(), &id, &["b", "a"], ttl);

        // A flipped signature byte must not verify (the check above is real).
        let mut bad = token.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("ascii");
        let jwks = srv.jwks().await;
        let res = std::panic::catch_unwind(|| harness::verify_with_jwks(&bad, &jwks));
        assert!(res.is_err(), "{alg}: tampered token verified");
    }
}

#[tokio::test]
async fn client_secret_basic_decodes_form_encoded_credentials() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let id = "svc:orders%1+x";
    let secret = "pa:ss%20w+rd/&=?é";
    let c = srv
        .create_client(json!({
            "client_id": id,
            "client_secret": secret,
            "grant_types": ["client_credentials"],
            "scope": "read",
        }))
        .await;
    assert_eq!(c["client_id"], id);
    assert_eq!(c["client_secret"], secret, "a given secret is echoed once");

    let r = srv
        .token_basic(id, secret, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, claims) = srv.verify(&str_field(&r.json, "access_token")).await;
    assert_eq!(claims["sub"], id);

    // Not form-encoding the secret is a different secret ("%20" decodes to a space).
    let raw = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", harness::form_encode(id), "pa%3Ass%20w%2Brd")
        )
    );
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .header("authorization", raw)
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token"),
    )
    .await;
    r.assert_oauth_error(401, "invalid_client");

    // The oauth2 crate encodes the same way.
    let client = BasicClient::new(ClientId::new(id.into()))
        .set_client_secret(ClientSecret::new(secret.into()))
        .set_token_uri(TokenUrl::new(srv.token_endpoint()).expect("url"));
    let http_client = oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = client
        .exchange_client_credentials()
        .add_scope(Scope::new("read".into()))
        .request_async(&http_client)
        .await
        .expect("oauth2 crate with special characters");
    assert!(!resp.access_token().secret().is_empty());

    // Wrong secret through the oauth2 crate: a typed invalid_client.
    let wrong = BasicClient::new(ClientId::new(id.into()))
        .set_client_secret(ClientSecret::new("not-the-secret".into()))
        .set_token_uri(TokenUrl::new(srv.token_endpoint()).expect("url"));
    match wrong
        .exchange_client_credentials()
        .request_async(&http_client)
        .await
    {
        Err(RequestTokenError::ServerResponse(e)) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidClient)
        }
        other => panic!("expected invalid_client, got {other:?}"),
    }
}

#[tokio::test]
async fn client_secret_post_and_multipart_bodies() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let post = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "scope": "read write",
            "token_endpoint_auth_method": "client_secret_post",
        }))
        .await;
    let (pid, psecret) = (
        str_field(&post, "client_id"),
        str_field(&post, "client_secret"),
    );
    assert_eq!(post["token_endpoint_auth_method"], "client_secret_post");

    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &pid),
                ("client_secret", &psecret),
                ("scope", "write"),
            ])
            .send()
            .await
            .expect("token"),
    )
    .await;
    assert_eq!(r.status, 200, "client_secret_post: {}", r.body);
    assert_no_store(&r);
    assert_eq!(r.json["scope"], "write");

    // Wrong secret in the body: invalid_client (401).
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", pid.as_str()),
                ("client_secret", "wrong-secret"),
            ])
            .send()
            .await
            .expect("token"),
    )
    .await;
    r.assert_oauth_error(401, "invalid_client");

    // A client registered for client_secret_post may not use Basic (Hydra refuses it).
    let r = srv
        .token_basic(&pid, &psecret, &[("grant_type", "client_credentials")])
        .await;
    r.assert_oauth_error(401, "invalid_client");

    // multipart/form-data (what `curl -F` sends), with Basic...
    let (bid, bsecret) = srv.cc_client("read write", &[AUDIENCE]).await;
    let form = reqwest::multipart::Form::new()
        .text("grant_type", "client_credentials")
        .text("scope", "read")
        .text("audience", AUDIENCE);
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .header("authorization", basic(&bid, &bsecret))
            .multipart(form)
            .send()
            .await
            .expect("multipart token"),
    )
    .await;
    assert_eq!(r.status, 200, "multipart + Basic: {}", r.body);
    let (_, claims) = srv.verify(&str_field(&r.json, "access_token")).await;
    assert_claims(&claims, &srv.issuer(), &bid, &["read"], 3600);

    // ...and with the credentials in the multipart body.
    let form = reqwest::multipart::Form::new()
        .text("grant_type", "client_credentials")
        .text("client_id", pid.clone())
        .text("client_secret", psecret.clone());
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .multipart(form)
            .send()
            .await
            .expect("multipart token"),
    )
    .await;
    assert_eq!(r.status, 200, "multipart + client_secret_post: {}", r.body);
}

/// A client key pair for private_key_jwt: (public JWK for registration, signer).
enum ClientKey {
    Rsa(josekit::jwk::alg::rsa::RsaKeyPair),
    /// An RSA key used with RSASSA-PSS (PS256).
    Pss(josekit::jwk::alg::rsa::RsaKeyPair),
    Ec(josekit::jwk::alg::ec::EcKeyPair),
}

impl ClientKey {
    fn public_jwk(&self, kid: &str) -> Value {
        let mut jwk = match self {
            ClientKey::Rsa(k) | ClientKey::Pss(k) => k.to_jwk_public_key(),
            ClientKey::Ec(k) => k.to_jwk_public_key(),
        };
        jwk.set_key_id(kid);
        jwk.set_key_use("sig");
        jwk.set_algorithm(self.alg());
        serde_json::to_value(jwk.as_ref()).expect("jwk json")
    }

    fn alg(&self) -> &'static str {
        match self {
            ClientKey::Rsa(_) => "RS256",
            ClientKey::Pss(_) => "PS256",
            ClientKey::Ec(_) => "ES256",
        }
    }

    fn assertion(&self, kid: &str, client_id: &str, aud: &str, jti: &str, exp: i64) -> String {
        let mut header = josekit::jws::JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id(kid);
        let mut payload = josekit::jwt::JwtPayload::new();
        payload.set_issuer(client_id);
        payload.set_subject(client_id);
        payload.set_audience(vec![aud]);
        payload.set_jwt_id(jti);
        let at = |t: i64| std::time::UNIX_EPOCH + Duration::from_secs(t as u64);
        payload.set_issued_at(&at(now()));
        payload.set_expires_at(&at(exp));
        match self {
            ClientKey::Rsa(k) => {
                let signer = josekit::jws::RS256
                    .signer_from_der(k.to_der_private_key())
                    .expect("RS256 signer");
                josekit::jwt::encode_with_signer(&payload, &header, &signer)
            }
            ClientKey::Pss(k) => {
                let signer = josekit::jws::PS256
                    .signer_from_der(k.to_der_private_key())
                    .expect("PS256 signer");
                josekit::jwt::encode_with_signer(&payload, &header, &signer)
            }
            ClientKey::Ec(k) => {
                let signer = josekit::jws::ES256
                    .signer_from_der(k.to_der_private_key())
                    .expect("ES256 signer");
                josekit::jwt::encode_with_signer(&payload, &header, &signer)
            }
        }
        .expect("sign assertion")
    }
}

async fn assertion_request(srv: &Server, assertion: &str, extra: &[(&str, &str)]) -> Reply {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    form.extend_from_slice(extra);
    Reply::from(
        http()
            .post(srv.token_endpoint())
            .form(&form)
            .send()
            .await
            .expect("token"),
    )
    .await
}

#[tokio::test]
async fn private_key_jwt_rfc7523_with_single_use_jti() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let keys = [
        ClientKey::Rsa(
            josekit::jws::RS256
                .generate_key_pair(2048)
                .expect("RSA key"),
        ),
        ClientKey::Ec(josekit::jws::ES256.generate_key_pair().expect("EC key")),
        ClientKey::Pss(
            josekit::jws::RS256
                .generate_key_pair(2048)
                .expect("RSA key"),
        ),
    ];
    for key in &keys {
        let kid = format!("client-key-{}", key.alg());
        let c = srv
            .create_client(json!({
                "grant_types": ["client_credentials"],
                "scope": "read",
                "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_signing_alg": key.alg(),
                "jwks": {"keys": [key.public_jwk(&kid)]},
            }))
            .await;
        let id = str_field(&c, "client_id");
        let aud = srv.token_endpoint();

        let a = key.assertion(
            &kid,
            &id,
            &aud,
            &uuid::Uuid::new_v4().to_string(),
            now() + 120,
        );
        let r = assertion_request(&srv, &a, &[("scope", "read")]).await;
        assert_eq!(r.status, 200, "{}: {}", key.alg(), r.body);
        assert_no_store(&r);
        let (_, claims) = srv.verify(&str_field(&r.json, "access_token")).await;
        assert_eq!(claims["sub"], id);
        assert_eq!(claims["scp"], json!(["read"]));

        // The same assertion (same jti) a second time: refused.
        let r = assertion_request(&srv, &a, &[]).await;
        r.assert_oauth_error(401, "invalid_client");
        // A fresh jti works again.
        let a2 = key.assertion(
            &kid,
            &id,
            &aud,
            &uuid::Uuid::new_v4().to_string(),
            now() + 120,
        );
        let r = assertion_request(&srv, &a2, &[]).await;
        assert_eq!(r.status, 200, "{}: fresh jti: {}", key.alg(), r.body);

        // Expired, wrong audience, signed by another key, iss != sub: all invalid_client.
        let expired = key.assertion(
            &kid,
            &id,
            &aud,
            &uuid::Uuid::new_v4().to_string(),
            now() - 120,
        );
        assertion_request(&srv, &expired, &[])
            .await
            .assert_oauth_error(401, "invalid_client");
        let wrong_aud = key.assertion(
            &kid,
            &id,
            "https://elsewhere.example/token",
            &uuid::Uuid::new_v4().to_string(),
            now() + 120,
        );
        assertion_request(&srv, &wrong_aud, &[])
            .await
            .assert_oauth_error(401, "invalid_client");
        let other = ClientKey::Ec(josekit::jws::ES256.generate_key_pair().expect("EC key"));
        let forged = other.assertion(
            &kid,
            &id,
            &aud,
            &uuid::Uuid::new_v4().to_string(),
            now() + 120,
        );
        assertion_request(&srv, &forged, &[])
            .await
            .assert_oauth_error(401, "invalid_client");
        let garbage = assertion_request(&srv, "not.a.jwt", &[]).await;
        assert!(
            matches!(garbage.status, 400 | 401),
            "garbage assertion: {} {}",
            garbage.status,
            garbage.body
        );
        assert!(
            ["invalid_client", "invalid_request"]
                .contains(&garbage.json["error"].as_str().unwrap_or("")),
            "garbage assertion: {}",
            garbage.body
        );
    }
}

#[tokio::test]
async fn rfc6749_errors() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &["--scope-strategy", "wildcard"]).await;
    let (id, secret) = srv.cc_client("orders.* profile", &[AUDIENCE]).await;
    let cc = ("grant_type", "client_credentials");

    // Success carries no-store and the RFC 6749 5.1 fields.
    let ok = srv
        .token_basic(&id, &secret, &[cc, ("scope", "orders.read profile")])
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_no_store(&ok);
    assert_eq!(
        ok.header("pragma").unwrap_or_default().to_ascii_lowercase(),
        "no-cache"
    );
    assert!(
        ok.json["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
    );
    assert_eq!(ok.json["expires_in"].as_i64(), Some(3600));
    assert_eq!(ok.json["scope"], "orders.read profile");
    assert!(ok.json.get("refresh_token").is_none());

    // invalid_request: no grant_type.
    srv.token_basic(&id, &secret, &[("scope", "profile")])
        .await
        .assert_oauth_error(400, "invalid_request");
    // invalid_request: a parameter repeated (RFC 6749 3.2).
    srv.token_basic(&id, &secret, &[cc, cc])
        .await
        .assert_oauth_error(400, "invalid_request");
    // invalid_request: a body that is not a form.
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .header("authorization", basic(&id, &secret))
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .expect("token"),
    )
    .await;
    r.assert_oauth_error(400, "invalid_request");
    // invalid_request: a GET.
    let r = Reply::from(
        http()
            .get(format!(
                "{}?grant_type=client_credentials",
                srv.token_endpoint()
            ))
            .header("authorization", basic(&id, &secret))
            .send()
            .await
            .expect("token"),
    )
    .await;
    assert!(
        matches!(r.status, 400 | 405),
        "GET /oauth2/token: {} {}",
        r.status,
        r.body
    );

    // invalid_client: wrong secret, unknown client, no credentials. Basic -> WWW-Authenticate.
    for (cid, csecret) in [
        (id.as_str(), "wrong-secret"),
        ("no-such-client", "whatever"),
    ] {
        let r = srv.token_basic(cid, csecret, &[cc]).await;
        r.assert_oauth_error(401, "invalid_client");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Basic"),
            "WWW-Authenticate after Basic: {challenge:?}"
        );
    }
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .form(&[cc])
            .send()
            .await
            .expect("token"),
    )
    .await;
    r.assert_oauth_error(401, "invalid_client");
    // A malformed Authorization header is not a crash.
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .header("authorization", "Basic %%%not-base64")
            .form(&[cc])
            .send()
            .await
            .expect("token"),
    )
    .await;
    assert!(
        matches!(r.status, 400 | 401),
        "malformed Basic: {} {}",
        r.status,
        r.body
    );
    assert_no_store(&r);

    // unsupported_grant_type (authenticated client, unknown or unsupported grants).
    for grant in ["password", "urn:example:nonsense"] {
        srv.token_basic(&id, &secret, &[("grant_type", grant)])
            .await
            .assert_oauth_error(400, "unsupported_grant_type");
    }

    // invalid_scope: outside the allow-list (the wildcard covers orders.*, not users.*).
    for scope in ["users.read", "orders.read admin", "orders"] {
        srv.token_basic(&id, &secret, &[cc, ("scope", scope)])
            .await
            .assert_oauth_error(400, "invalid_scope");
    }
    let r = srv
        .token_basic(
            &id,
            &secret,
            &[cc, ("scope", "orders.write orders.read.own")],
        )
        .await;
    assert_eq!(r.status, 200, "wildcard grants orders.write: {}", r.body);

    // Audience not in the allow-list: invalid_request (as Hydra/fosite answers).
    srv.token_basic(
        &id,
        &secret,
        &[cc, ("audience", "https://not-allowed.example.com")],
    )
    .await
    .assert_oauth_error(400, "invalid_request");
    // Audience as a space-separated list and as a repeated parameter, both allowed.
    let (id2, secret2) = srv
        .cc_client("x", &["https://a.example", "https://b.example"])
        .await;
    for form in [
        vec![cc, ("audience", "https://a.example https://b.example")],
        vec![
            cc,
            ("audience", "https://a.example"),
            ("audience", "https://b.example"),
        ],
    ] {
        let r = srv.token_basic(&id2, &secret2, &form).await;
        assert_eq!(r.status, 200, "audience {form:?}: {}", r.body);
        let (_, claims) = srv.verify(&str_field(&r.json, "access_token")).await;
        assert_eq!(
            claims["aud"],
            json!(["https://a.example", "https://b.example"]),
            "{claims}"
        );
    }

    // unauthorized_client: a client without the client_credentials grant.
    let c = srv
        .create_client(json!({
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": ["https://app.example.com/callback"],
            "scope": "profile",
        }))
        .await;
    srv.token_basic(
        &str_field(&c, "client_id"),
        &str_field(&c, "client_secret"),
        &[cc],
    )
    .await
    .assert_oauth_error(400, "unauthorized_client");
}

#[tokio::test]
async fn exact_scope_strategy_refuses_wildcards() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &["--scope-strategy", "exact"]).await;
    let (id, secret) = srv.cc_client("orders.* profile", &[]).await;
    let cc = ("grant_type", "client_credentials");
    srv.token_basic(&id, &secret, &[cc, ("scope", "orders.read")])
        .await
        .assert_oauth_error(400, "invalid_scope");
    let r = srv
        .token_basic(&id, &secret, &[cc, ("scope", "profile orders.*")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn concurrent_token_requests_all_succeed_with_unique_jtis() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let (id, secret) = srv.cc_client("read", &[]).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, auth) = (srv.token_endpoint(), basic(&id, &secret));
        tasks.push(tokio::spawn(async move {
            let c = http();
            let mut out = Vec::new();
            for _ in 0..25 {
                let r = Reply::from(
                    c.post(&url)
                        .header("authorization", &auth)
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await
                        .expect("token"),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.body);
                out.push(str_field(&r.json, "access_token"));
            }
            out
        }));
    }
    let jwks = srv.jwks().await;
    let mut jtis = HashSet::new();
    for t in tasks {
        for token in t.await.expect("task") {
            let (_, claims) = jwt_parts(&token);
            assert!(jtis.insert(str_field(&claims, "jti")), "duplicate jti");
            harness::verify_with_jwks(&token, &jwks);
        }
    }
    assert_eq!(jtis.len(), 200);
}

/// Serves `jwks` as JSON at any path on loopback (a client's `jwks_uri`); returns the URL.
async fn serve_jwks(jwks: std::sync::Arc<std::sync::Mutex<Value>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = jwks.lock().expect("lock").to_string();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

#[tokio::test]
async fn private_key_jwt_with_jwks_uri_follows_client_key_rotation() {
    let dir = TestDir::new();
    // The test's key server is on loopback.
    let srv = Server::start(&dir.data(), &["--allow-private-jwks-uri"]).await;
    let first = ClientKey::Ec(josekit::jws::ES256.generate_key_pair().expect("EC key"));
    let jwks = std::sync::Arc::new(std::sync::Mutex::new(
        json!({"keys": [first.public_jwk("first")]}),
    ));
    let uri = serve_jwks(std::sync::Arc::clone(&jwks)).await;
    let c = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "jwks_uri": uri,
        }))
        .await;
    let id = str_field(&c, "client_id");
    let aud = srv.token_endpoint();
    let jti = || uuid::Uuid::new_v4().to_string();

    let a = first.assertion("first", &id, &aud, &jti(), now() + 120);
    let r = assertion_request(&srv, &a, &[]).await;
    assert_eq!(r.status, 200, "jwks_uri: {}", r.body);

    // The client publishes a new key at its jwks_uri and signs with it: a kid the server has not
    // seen makes it fetch the key set again (the server may rate-limit refetches per URI, so
    // allow a bounded wait).
    let second = ClientKey::Ec(josekit::jws::ES256.generate_key_pair().expect("EC key"));
    *jwks.lock().expect("lock") = json!({"keys": [second.public_jwk("second")]});
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = second.assertion("second", &id, &aud, &jti(), now() + 120);
        let r = assertion_request(&srv, &a, &[]).await;
        if r.status == 200 {
            break;
        }
        r.assert_oauth_error(401, "invalid_client");
        assert!(
            std::time::Instant::now() < deadline,
            "rotated client key never accepted: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A key the client never published is refused.
    let rogue = ClientKey::Ec(josekit::jws::ES256.generate_key_pair().expect("EC key"));
    let a = rogue.assertion("rogue", &id, &aud, &jti(), now() + 120);
    assertion_request(&srv, &a, &[])
        .await
        .assert_oauth_error(401, "invalid_client");
}

#[tokio::test]
async fn no_token_without_a_secret_and_oversized_bodies_are_refused() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;

    // A public client (`none`) may not use client_credentials: either registration refuses
    // it, or the token endpoint does. Never a token for a bare client_id.
    let r = Reply::from(
        http()
            .post(format!("{}/admin/clients", srv.admin()))
            .json(&json!({
                "client_id": "public-client",
                "grant_types": ["client_credentials"],
                "token_endpoint_auth_method": "none",
            }))
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert!(matches!(r.status, 201 | 400), "{} {}", r.status, r.body);
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "public-client"),
            ])
            .send()
            .await
            .expect("token"),
    )
    .await;
    assert_ne!(
        r.status, 200,
        "token for a client without a secret: {}",
        r.body
    );
    assert!(
        ["invalid_client", "unauthorized_client", "invalid_request"]
            .contains(&r.json["error"].as_str().unwrap_or_default()),
        "{}",
        r.body
    );

    // Credentials in both the header and the body (RFC 6749 2.3: one method only).
    let (id, secret) = srv.cc_client("read", &[]).await;
    let r = Reply::from(
        http()
            .post(srv.token_endpoint())
            .header("authorization", basic(&id, &secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
            ])
            .send()
            .await
            .expect("token"),
    )
    .await;
    assert!(
        matches!(r.status, 400 | 401),
        "two authentication methods at once: {} {}",
        r.status,
        r.body
    );
    assert_no_store(&r);

    // A huge body is refused without taking the server down.
    let big = format!(
        "grant_type=client_credentials&scope={}",
        "a".repeat(8 << 20)
    );
    let resp = http()
        .post(srv.token_endpoint())
        .header("authorization", basic(&id, &secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await;
    if let Ok(resp) = resp {
        assert!(
            resp.status().is_client_error(),
            "8 MiB body: {}",
            resp.status()
        );
    }
    srv.token(&id, &secret, &[("scope", "read")]).await;
}

/// A JWK labelled `alg: RS256` verifies RS256 only: a PS256 signature by the same RSA key is
/// refused (RFC 7517 4.4), as is an assertion not yet valid (`nbf`).
#[tokio::test]
async fn private_key_jwt_requires_the_keys_alg_and_checks_nbf() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let pair = josekit::jws::RS256
        .generate_key_pair(2048)
        .expect("RSA key");
    let labelled = ClientKey::Rsa(pair.clone()).public_jwk("k");
    assert_eq!(labelled["alg"], "RS256");
    let c = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [labelled]},
        }))
        .await;
    let id = str_field(&c, "client_id");
    let aud = srv.token_endpoint();
    let pss = ClientKey::Pss(pair.clone()).assertion("k", &id, &aud, "pss", now() + 120);
    let r = assertion_request(&srv, &pss, &[]).await;
    r.assert_oauth_error(401, "invalid_client");
    let rs = ClientKey::Rsa(pair.clone()).assertion("k", &id, &aud, "rs", now() + 120);
    let r = assertion_request(&srv, &rs, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // nbf ten minutes ahead (beyond the 30 s leeway), signed correctly.
    let mut header = josekit::jws::JwsHeader::new();
    header.set_key_id("k");
    let mut payload = josekit::jwt::JwtPayload::new();
    payload.set_issuer(&id);
    payload.set_subject(&id);
    payload.set_audience(vec![aud.as_str()]);
    payload.set_jwt_id("future");
    let at = |t: i64| std::time::UNIX_EPOCH + Duration::from_secs(t as u64);
    payload.set_not_before(&at(now() + 600));
    payload.set_expires_at(&at(now() + 900));
    let signer = josekit::jws::RS256
        .signer_from_der(pair.to_der_private_key())
        .expect("RS256 signer");
    let future = josekit::jwt::encode_with_signer(&payload, &header, &signer).expect("sign");
    let r = assertion_request(&srv, &future, &[]).await;
    r.assert_oauth_error(401, "invalid_client");
}
