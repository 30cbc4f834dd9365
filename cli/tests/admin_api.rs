//! Black-box tests of the admin API of the real `portcullis` binary (Hydra v2 shapes): client
//! CRUD, pagination, validation, the v1 paths without `/admin`, RFC 7662 introspection, RFC 7009
//! revocation, opaque tokens, key rotation, health and metrics.
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use harness::{ACCESS_TOKEN_SET, Reply, Server, TestDir, basic, http, jwt_parts, str_field};
use serde_json::{Value, json};
use std::collections::HashSet;

async fn get(url: String) -> Reply {
    Reply::from(http().get(&url).send().await.expect("GET")).await
}

async fn send_json(method: reqwest::Method, url: String, body: &Value, ct: &str) -> Reply {
    Reply::from(
        http()
            .request(method, &url)
            .header("content-type", ct)
            .body(body.to_string())
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// The `rel="next"` target of an RFC 8288 Link header, resolved against `base`.
fn next_link(link: &str, base: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let part = part.trim();
        let (uri, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().eq_ignore_ascii_case("rel=\"next\"") || p.trim() == "rel=next");
        if !is_next {
            return None;
        }
        let uri = uri.trim().trim_start_matches('<').trim_end_matches('>');
        Some(if uri.starts_with('/') {
            format!("{base}{uri}")
        } else {
            uri.to_string()
        })
    })
}

#[tokio::test]
async fn client_crud_with_secrets_returned_once() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let admin = srv.admin();

    // Generated id (UUID) and secret, returned once with 201.
    let c = srv
        .create_client(json!({
            "client_name": "orders",
            "grant_types": ["client_credentials"],
            "scope": "read write",
            "audience": ["https://orders.example.com"],
            "metadata": {"team": "a"},
        }))
        .await;
    let id = str_field(&c, "client_id");
    let secret = str_field(&c, "client_secret");
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "generated id {id}");
    assert!(secret.len() >= 16, "generated secret too short: {secret}");
    assert_eq!(c["client_name"], "orders");
    assert_eq!(c["scope"], "read write");
    assert_eq!(c["audience"], json!(["https://orders.example.com"]));
    assert_eq!(c["metadata"], json!({"team": "a"}));
    assert_eq!(c["token_endpoint_auth_method"], "client_secret_basic");
    assert!(c["created_at"].is_string(), "created_at in {c}");

    // GET one: the same client, never the secret.
    let r = get(format!("{admin}/admin/clients/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["client_id"], id);
    assert_eq!(r.json["scope"], "read write");
    assert!(
        !r.body.contains(&secret),
        "secret leaked by GET: {}",
        r.body
    );
    let s = r.json.get("client_secret").cloned().unwrap_or(Value::Null);
    assert!(s.is_null() || s == "", "client_secret in GET: {s}");

    // A second POST with the same id: conflict.
    let r = send_json(
        reqwest::Method::POST,
        format!("{admin}/admin/clients"),
        &json!({"client_id": id, "grant_types": ["client_credentials"]}),
        "application/json",
    )
    .await;
    assert_eq!(r.status, 409, "duplicate client_id: {}", r.body);

    // PUT replaces (no secret given: the old one stays valid).
    let r = send_json(
        reqwest::Method::PUT,
        format!("{admin}/admin/clients/{id}"),
        &json!({
            "client_name": "orders-v2",
            "grant_types": ["client_credentials"],
            "scope": "read write admin",
            "audience": ["https://orders.example.com"],
        }),
        "application/json",
    )
    .await;
    assert_eq!(r.status, 200, "PUT: {}", r.body);
    assert_eq!(r.json["client_name"], "orders-v2");
    assert!(
        !r.body.contains(&secret),
        "secret leaked by PUT: {}",
        r.body
    );
    let token = srv.token(&id, &secret, &[("scope", "admin")]).await;
    assert!(!token.is_empty());

    // PATCH (RFC 6902 JSON Patch).
    let r = send_json(
        reqwest::Method::PATCH,
        format!("{admin}/admin/clients/{id}"),
        &json!([
            {"op": "replace", "path": "/scope", "value": "read"},
            {"op": "add", "path": "/audience/-", "value": "https://billing.example.com"},
        ]),
        "application/json-patch+json",
    )
    .await;
    assert_eq!(r.status, 200, "PATCH: {}", r.body);
    assert_eq!(r.json["scope"], "read");
    assert_eq!(
        r.json["audience"],
        json!(["https://orders.example.com", "https://billing.example.com"])
    );
    // The change applies to the token endpoint at once.
    srv.token_basic(
        &id,
        &secret,
        &[("grant_type", "client_credentials"), ("scope", "admin")],
    )
    .await
    .assert_oauth_error(400, "invalid_scope");
    srv.token(&id, &secret, &[("audience", "https://billing.example.com")])
        .await;

    // PUT with a new secret: the old one stops working at once (no stale verification cache).
    let r = send_json(
        reqwest::Method::PUT,
        format!("{admin}/admin/clients/{id}"),
        &json!({
            "client_name": "orders-v2",
            "client_secret": "a-brand-new-secret",
            "grant_types": ["client_credentials"],
            "scope": "read",
            "audience": ["https://orders.example.com", "https://billing.example.com"],
        }),
        "application/json",
    )
    .await;
    assert_eq!(r.status, 200, "PUT secret: {}", r.body);
    srv.token_basic(&id, &secret, &[("grant_type", "client_credentials")])
        .await
        .assert_oauth_error(401, "invalid_client");
    srv.token(&id, "a-brand-new-secret", &[]).await;

    // A patch that makes the client invalid is refused, the client unchanged.
    let r = send_json(
        reqwest::Method::PATCH,
        format!("{admin}/admin/clients/{id}"),
        &json!([{"op": "replace", "path": "/grant_types", "value": ["bogus_grant"]}]),
        "application/json-patch+json",
    )
    .await;
    assert_eq!(r.status, 400, "invalid PATCH: {}", r.body);

    // DELETE: 204, then 404, and the client can no longer get tokens.
    let r = Reply::from(
        http()
            .delete(format!("{admin}/admin/clients/{id}"))
            .send()
            .await
            .expect("DELETE"),
    )
    .await;
    assert_eq!(r.status, 204, "DELETE: {}", r.body);
    let r = get(format!("{admin}/admin/clients/{id}")).await;
    assert_eq!(r.status, 404, "GET after DELETE: {}", r.body);
    assert!(r.json["error"].is_string(), "404 body {}", r.body);
    srv.token_basic(
        &id,
        "a-brand-new-secret",
        &[("grant_type", "client_credentials")],
    )
    .await
    .assert_oauth_error(401, "invalid_client");
    let r = Reply::from(
        http()
            .delete(format!("{admin}/admin/clients/{id}"))
            .send()
            .await
            .expect("DELETE"),
    )
    .await;
    assert_eq!(r.status, 404, "second DELETE: {}", r.body);
    let r = send_json(
        reqwest::Method::PUT,
        format!("{admin}/admin/clients/{id}"),
        &json!({"grant_types": ["client_credentials"]}),
        "application/json",
    )
    .await;
    assert_eq!(r.status, 404, "PUT of a deleted client: {}", r.body);
}

/// Hydra's documented way to rotate a secret, used by many Hydra clients:
/// `[{"op":"replace","path":"/client_secret","value":...}]`. Hydra applies the patch to the
/// stored client (whose secret field is set), so `replace` succeeds there.
#[tokio::test]
async fn patch_replace_client_secret_rotates_the_secret() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let (id, secret) = srv.cc_client("read", &[]).await;
    srv.token(&id, &secret, &[]).await; // warm the verification cache
    let r = send_json(
        reqwest::Method::PATCH,
        format!("{}/admin/clients/{id}", srv.admin()),
        &json!([{"op": "replace", "path": "/client_secret", "value": "a-brand-new-secret"}]),
        "application/json-patch+json",
    )
    .await;
    assert_eq!(r.status, 200, "PATCH replace /client_secret: {}", r.body);
    srv.token_basic(&id, &secret, &[("grant_type", "client_credentials")])
        .await
        .assert_oauth_error(401, "invalid_client");
    srv.token(&id, "a-brand-new-secret", &[]).await;
}

#[tokio::test]
async fn list_paginates_with_link_header_and_hides_secrets() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let admin = srv.admin();
    let mut ids = HashSet::new();
    let mut secrets = Vec::new();
    for i in 0..7 {
        let c = srv
            .create_client(json!({
                "client_name": format!("c{i}"),
                "grant_types": ["client_credentials"],
            }))
            .await;
        ids.insert(str_field(&c, "client_id"));
        secrets.push(str_field(&c, "client_secret"));
    }

    let mut seen = Vec::new();
    let mut url = Some(format!("{admin}/admin/clients?page_size=3"));
    let mut pages = 0;
    while let Some(u) = url {
        let r = get(u.clone()).await;
        assert_eq!(r.status, 200, "{u}: {}", r.body);
        for s in &secrets {
            assert!(!r.body.contains(s.as_str()), "secret in list: {}", r.body);
        }
        let items = r.json.as_array().expect("list is a JSON array");
        assert!(items.len() <= 3, "page_size ignored: {} items", items.len());
        for it in items {
            seen.push(str_field(it, "client_id"));
        }
        let link = r.header("link").unwrap_or_default();
        url = next_link(&link, &admin);
        if url.is_some() {
            assert_eq!(items.len(), 3, "a non-last page is full");
        }
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
    }
    assert_eq!(pages, 3, "7 clients at 3 per page");
    assert_eq!(seen.len(), 7, "every client exactly once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), ids);

    // Default page: all 7; a bad page_size or page_token is a 400, not a crash.
    let r = get(format!("{admin}/admin/clients")).await;
    assert_eq!(r.json.as_array().map(Vec::len), Some(7));
    let r = get(format!("{admin}/admin/clients?page_size=abc")).await;
    assert_eq!(r.status, 400, "page_size=abc: {}", r.body);
    let r = get(format!("{admin}/admin/clients?page_token=%%%garbage")).await;
    assert_eq!(r.status, 400, "garbage page_token: {}", r.body);
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let url = format!("{}/admin/clients", srv.admin());
    let cases = [
        (json!({"grant_types": ["bogus_grant"]}), "grant_types"),
        (
            json!({"grant_types": ["client_credentials"], "client_secret": "abc"}),
            "client_secret",
        ),
        (
            json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "magic"}),
            "token_endpoint_auth_method",
        ),
        (
            json!({"grant_types": ["client_credentials"], "access_token_strategy": "sometimes"}),
            "access_token_strategy",
        ),
        (
            json!({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "private_key_jwt"}),
            "jwks",
        ),
        (
            json!({"grant_types": ["client_credentials"], "jwks_uri": "not a url"}),
            "jwks_uri",
        ),
    ];
    for (body, field) in cases {
        let r = send_json(
            reqwest::Method::POST,
            url.clone(),
            &body,
            "application/json",
        )
        .await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.json["error"].is_string(), "{body}: {}", r.body);
        let desc = r.json["error_description"].as_str().unwrap_or_default();
        assert!(
            desc.contains(field),
            "error_description for {body} should name {field}: {desc:?}"
        );
    }
    // Not JSON at all.
    let r = Reply::from(
        http()
            .post(&url)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json["error"].is_string(), "{}", r.body);
    // Nothing was created by any of the above.
    let r = get(url).await;
    assert_eq!(r.json, json!([]), "{}", r.body);
}

/// A body of the wrong JSON type is a validation error too: it must name the field at fault.
#[tokio::test]
async fn type_errors_name_the_field() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    for (body, field) in [
        (
            json!({"grant_types": ["client_credentials"], "audience": "not-an-array"}),
            "audience",
        ),
        (json!({"grant_types": "client_credentials"}), "grant_types"),
        (
            json!({"grant_types": ["client_credentials"], "scope": ["a", "b"]}),
            "scope",
        ),
    ] {
        let r = send_json(
            reqwest::Method::POST,
            format!("{}/admin/clients", srv.admin()),
            &body,
            "application/json",
        )
        .await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let desc = r.json["error_description"].as_str().unwrap_or_default();
        assert!(
            desc.contains(field),
            "error_description for {body} should name {field}: {desc:?}"
        );
    }
}

#[tokio::test]
async fn paths_without_admin_prefix_work_like_hydra_v1() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let admin = srv.admin();
    let r = send_json(
        reqwest::Method::POST,
        format!("{admin}/clients"),
        &json!({"grant_types": ["client_credentials"], "scope": "read"}),
        "application/json",
    )
    .await;
    assert_eq!(r.status, 201, "POST /clients: {}", r.body);
    let id = str_field(&r.json, "client_id");
    let secret = str_field(&r.json, "client_secret");
    let r = get(format!("{admin}/clients/{id}")).await;
    assert_eq!(r.status, 200, "GET /clients/id: {}", r.body);
    let r = get(format!("{admin}/admin/clients/{id}")).await;
    assert_eq!(r.status, 200, "same client under /admin: {}", r.body);
    let r = get(format!("{admin}/clients")).await;
    assert_eq!(r.json.as_array().map(Vec::len), Some(1), "{}", r.body);

    let token = srv.token(&id, &secret, &[("scope", "read")]).await;
    let r = Reply::from(
        http()
            .post(format!("{admin}/oauth2/introspect"))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .expect("introspect"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["active"], true, "{}", r.body);

    let r = get(format!("{admin}/keys/{ACCESS_TOKEN_SET}")).await;
    assert_eq!(r.status, 200, "GET /keys/set: {}", r.body);
    assert!(r.json["keys"].as_array().is_some_and(|k| !k.is_empty()));

    let r = Reply::from(
        http()
            .delete(format!("{admin}/clients/{id}"))
            .send()
            .await
            .expect("DELETE"),
    )
    .await;
    assert_eq!(r.status, 204, "DELETE /clients/id: {}", r.body);

    let r = get(format!("{admin}/metrics/prometheus")).await;
    assert_eq!(r.status, 200, "GET /metrics/prometheus: {}", r.body);
    assert!(r.body.contains("# TYPE "), "{}", r.body);

    // The admin API is not on the public port.
    let r = get(format!("{}/admin/clients", srv.public())).await;
    assert_eq!(r.status, 404, "admin API exposed on the public port");
}

async fn revoke(srv: &Server, id: &str, secret: &str, token: &str) -> Reply {
    Reply::from(
        http()
            .post(format!("{}/oauth2/revoke", srv.public()))
            .header("authorization", basic(id, secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("revoke"),
    )
    .await
}

#[tokio::test]
async fn introspection_and_revocation_of_jwt_and_opaque_tokens() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let (id, secret) = srv
        .cc_client("read write", &["https://orders.example.com"])
        .await;
    let (other_id, other_secret) = srv.cc_client("read", &[]).await;
    let opaque = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "scope": "read",
            "access_token_strategy": "opaque",
        }))
        .await;
    let (oid, osecret) = (
        str_field(&opaque, "client_id"),
        str_field(&opaque, "client_secret"),
    );

    // RFC 7662 for a JWT.
    let jwt = srv
        .token(
            &id,
            &secret,
            &[
                ("scope", "read"),
                ("audience", "https://orders.example.com"),
            ],
        )
        .await;
    let (_, claims) = jwt_parts(&jwt);
    let i = srv.introspect(&jwt).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["client_id"], id);
    assert_eq!(i["sub"], id);
    assert_eq!(i["scope"], "read");
    assert_eq!(i["aud"], json!(["https://orders.example.com"]));
    assert_eq!(i["iss"], srv.issuer());
    assert_eq!(i["exp"], claims["exp"]);
    assert_eq!(i["iat"], claims["iat"]);
    assert_eq!(i["nbf"], claims["nbf"]);
    assert_eq!(i["token_use"], "access_token");
    assert!(
        i["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "{i}"
    );

    // Unknown, garbage, tampered and empty tokens: 200 {"active": false}.
    let mut tampered = jwt.clone();
    tampered.pop();
    tampered.push(if jwt.ends_with('A') { 'B' } else { 'A' });
    for t in ["nope", "a.b.c", tampered.as_str()] {
        let i = srv.introspect(t).await;
        assert_eq!(i, json!({"active": false}), "introspecting {t:?}");
    }
    let r = Reply::from(
        http()
            .post(format!("{}/admin/oauth2/introspect", srv.admin()))
            .form(&[("scope", "read")])
            .send()
            .await
            .expect("introspect"),
    )
    .await;
    assert_eq!(r.status, 400, "introspection without token: {}", r.body);
    // Introspection is an admin API, not on the public port.
    let r = Reply::from(
        http()
            .post(format!("{}/admin/oauth2/introspect", srv.public()))
            .form(&[("token", jwt.as_str())])
            .send()
            .await
            .expect("introspect"),
    )
    .await;
    assert_eq!(r.status, 404, "introspection on the public port");

    // Revocation needs client authentication.
    let r = Reply::from(
        http()
            .post(format!("{}/oauth2/revoke", srv.public()))
            .form(&[("token", jwt.as_str())])
            .send()
            .await
            .expect("revoke"),
    )
    .await;
    r.assert_oauth_error(401, "invalid_client");
    let r = revoke(&srv, &id, "wrong-secret", &jwt).await;
    r.assert_oauth_error(401, "invalid_client");
    // Another client cannot revoke it (RFC 7009 2.1): the token stays active.
    let r = revoke(&srv, &other_id, &other_secret, &jwt).await;
    assert!(
        matches!(r.status, 200 | 400 | 401 | 403),
        "foreign revoke: {} {}",
        r.status,
        r.body
    );
    assert_eq!(
        srv.introspect(&jwt).await["active"],
        true,
        "revoked by another client"
    );
    // The owner revokes: 200, then inactive.
    let r = revoke(&srv, &id, &secret, &jwt).await;
    assert_eq!(r.status, 200, "revoke: {}", r.body);
    assert_eq!(srv.introspect(&jwt).await, json!({"active": false}));
    // Unknown tokens are fine (RFC 7009 2.2).
    let r = revoke(&srv, &id, &secret, "never-issued").await;
    assert_eq!(r.status, 200, "revoke unknown: {}", r.body);
    // Another token of the same client is unaffected.
    let jwt2 = srv.token(&id, &secret, &[]).await;
    assert_eq!(srv.introspect(&jwt2).await["active"], true);

    // Opaque tokens: not JWTs, introspectable, revocable.
    let r = srv
        .token_basic(
            &oid,
            &osecret,
            &[("grant_type", "client_credentials"), ("scope", "read")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    harness::assert_no_store(&r);
    let token = str_field(&r.json, "access_token");
    assert_ne!(
        token.split('.').count(),
        3,
        "opaque token looks like a JWT: {token}"
    );
    assert!(token.len() >= 32, "opaque token too short: {token}");
    let i = srv.introspect(&token).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["client_id"], oid);
    assert_eq!(i["sub"], oid);
    assert_eq!(i["iss"], srv.issuer());
    assert_eq!(i["token_use"], "access_token");
    assert_eq!(i["scope"], "read");
    assert!(i["exp"].as_i64().is_some_and(|e| e > harness::now()), "{i}");
    // A prefix or a changed character of an opaque token is not the token.
    let mut wrong = token.clone();
    wrong.pop();
    assert_eq!(srv.introspect(&wrong).await, json!({"active": false}));
    let r = revoke(&srv, &oid, &osecret, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(srv.introspect(&token).await, json!({"active": false}));
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let admin = srv.admin();
    let (id, secret) = srv.cc_client("read", &[]).await;

    let r = get(format!("{admin}/admin/keys/{ACCESS_TOKEN_SET}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let keys = r.json["keys"].as_array().expect("keys").clone();
    assert_eq!(keys.len(), 1, "one key at first start: {}", r.body);
    let k1 = str_field(&keys[0], "kid");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(
            keys[0].get(private).is_none(),
            "private part {private} exposed"
        );
    }

    let before = srv.token(&id, &secret, &[("scope", "read")]).await;
    let (h, _) = srv.verify(&before).await;
    assert_eq!(h["kid"], k1.as_str());

    // Token requests keep running while the key rotates: none fails, all verify.
    let (url, auth) = (srv.token_endpoint(), basic(&id, &secret));
    let load = tokio::spawn(async move {
        let c = http();
        let mut out = Vec::new();
        for _ in 0..60 {
            let r = Reply::from(
                c.post(&url)
                    .header("authorization", &auth)
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await
                    .expect("token"),
            )
            .await;
            assert_eq!(r.status, 200, "token during rotation: {}", r.body);
            out.push(str_field(&r.json, "access_token"));
        }
        out
    });
    let r = send_json(
        reqwest::Method::POST,
        format!("{admin}/admin/keys/{ACCESS_TOKEN_SET}"),
        &json!({"alg": "ES256", "use": "sig", "kid": "rotated-es256"}),
        "application/json",
    )
    .await;
    assert!(
        matches!(r.status, 200 | 201),
        "rotate: {} {}",
        r.status,
        r.body
    );
    let during = load.await.expect("load task");

    let after = srv.token(&id, &secret, &[("scope", "read")]).await;
    let (h2, _) = srv.verify(&after).await;
    assert_eq!(h2["kid"], "rotated-es256", "the newest key signs");
    assert_eq!(h2["alg"], "ES256");

    // The old key stays published; the old token verifies and introspects as active.
    let jwks = srv.jwks().await;
    let kids: HashSet<String> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| str_field(k, "kid"))
        .collect();
    assert!(
        kids.contains(&k1) && kids.contains("rotated-es256"),
        "{kids:?}"
    );
    harness::verify_with_jwks(&before, &jwks);
    for t in &during {
        harness::verify_with_jwks(t, &jwks);
    }
    assert_eq!(srv.introspect(&before).await["active"], true);
    assert_eq!(srv.introspect(&after).await["active"], true);

    // Rotating again with RS256 and no kid: a generated kid, another new signer.
    let r = send_json(
        reqwest::Method::POST,
        format!("{admin}/admin/keys/{ACCESS_TOKEN_SET}"),
        &json!({"alg": "RS256", "use": "sig"}),
        "application/json",
    )
    .await;
    assert!(
        matches!(r.status, 200 | 201),
        "rotate: {} {}",
        r.status,
        r.body
    );
    let third = srv.token(&id, &secret, &[]).await;
    let (h3, _) = srv.verify(&third).await;
    assert_eq!(h3["alg"], "RS256");
    assert_ne!(h3["kid"], k1.as_str());
    assert_ne!(h3["kid"], "rotated-es256");
    let r = get(format!("{admin}/admin/keys/{ACCESS_TOKEN_SET}")).await;
    assert_eq!(
        r.json["keys"].as_array().map(Vec::len),
        Some(3),
        "{}",
        r.body
    );
    harness::verify_with_jwks(&before, &srv.jwks().await);

    // An unsupported algorithm is a 400.
    let r = send_json(
        reqwest::Method::POST,
        format!("{admin}/admin/keys/{ACCESS_TOKEN_SET}"),
        &json!({"alg": "HS256", "use": "sig"}),
        "application/json",
    )
    .await;
    assert_eq!(r.status, 400, "HS256 key: {}", r.body);
}

#[tokio::test]
async fn health_and_metrics() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    for base in [srv.public(), srv.admin()] {
        for path in ["/health/alive", "/health/ready"] {
            let r = get(format!("{base}{path}")).await;
            assert_eq!(r.status, 200, "{base}{path}: {}", r.body);
            assert_eq!(r.json["status"], "ok", "{base}{path}: {}", r.body);
        }
    }
    let (id, secret) = srv.cc_client("read", &[]).await;
    srv.token(&id, &secret, &[]).await;
    srv.token_basic(&id, "wrong-secret", &[("grant_type", "client_credentials")])
        .await
        .assert_oauth_error(401, "invalid_client");

    let r = get(format!("{}/admin/metrics/prometheus", srv.admin())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"),
        "metrics content-type {ct}"
    );
    assert!(
        r.body.contains("# TYPE "),
        "not Prometheus text: {}",
        r.body
    );
    // Every sample line is `name{labels} value`, the value a number.
    let mut samples = 0;
    for line in r
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad sample line {line:?}"
        );
        samples += 1;
    }
    assert!(samples > 0, "no samples: {}", r.body);
    // Metrics are for operators only, not on the public port.
    let r = get(format!("{}/admin/metrics/prometheus", srv.public())).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn expiry_lifespans_and_introspection_scope() {
    let dir = TestDir::new();
    // Long enough that a busy machine still sees the tokens active before they expire.
    let srv = Server::start(&dir.data(), &["--access-token-ttl", "5s"]).await;
    let (id, secret) = srv.cc_client("read write", &[]).await;
    let opaque = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "scope": "read",
            "access_token_strategy": "opaque",
        }))
        .await;
    let long = srv
        .create_client(json!({
            "grant_types": ["client_credentials"],
            "client_credentials_grant_access_token_lifespan": "2m",
        }))
        .await;

    // A per-client lifespan overrides the default.
    let r = srv
        .token_basic(
            &str_field(&long, "client_id"),
            &str_field(&long, "client_secret"),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["expires_in"], 120, "{}", r.body);
    let long_token = str_field(&r.json, "access_token");
    let (_, claims) = jwt_parts(&long_token);
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        120
    );

    let jwt = srv.token(&id, &secret, &[("scope", "read")]).await;
    let opaque_token = srv
        .token(
            &str_field(&opaque, "client_id"),
            &str_field(&opaque, "client_secret"),
            &[],
        )
        .await;

    // RFC 7662 `scope`: active only when the token carries the asked scopes (Hydra).
    let with_scope = |token: String, scope: &'static str| {
        let url = format!("{}/admin/oauth2/introspect", srv.admin());
        async move {
            Reply::from(
                http()
                    .post(url)
                    .form(&[("token", token.as_str()), ("scope", scope)])
                    .send()
                    .await
                    .expect("introspect"),
            )
            .await
        }
    };
    let r = with_scope(jwt.clone(), "read").await;
    assert_eq!(r.json["active"], true, "{}", r.body);
    let r = with_scope(jwt.clone(), "write").await;
    assert_eq!(r.json["active"], false, "scope not granted: {}", r.body);

    let live = [
        srv.introspect(&jwt).await,
        srv.introspect(&opaque_token).await,
    ];
    assert!(live.iter().all(|i| i["active"] == true), "{live:?}");
    // Wait for the tokens' own `exp` to pass on the server's clock, however slow the machine.
    let exp = live
        .iter()
        .filter_map(|i| i["exp"].as_i64())
        .max()
        .expect("exp");
    harness::wait_until_past(exp).await;
    assert_eq!(
        srv.introspect(&jwt).await,
        json!({"active": false}),
        "expired JWT"
    );
    assert_eq!(
        srv.introspect(&opaque_token).await,
        json!({"active": false}),
        "expired opaque token"
    );
    assert_eq!(srv.introspect(&long_token).await["active"], true);
}

#[tokio::test]
async fn concurrent_registrations_of_one_id_create_it_once() {
    let dir = TestDir::new();
    let srv = Server::start(&dir.data(), &[]).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = format!("{}/admin/clients", srv.admin());
        tasks.push(tokio::spawn(async move {
            let r = http()
                .post(url)
                .json(&json!({
                    "client_id": "contested",
                    "client_secret": format!("secret-number-{i}"),
                    "grant_types": ["client_credentials"],
                }))
                .send()
                .await
                .expect("POST");
            (i, r.status().as_u16())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, status) = t.await.expect("task");
        match status {
            201 => winners.push(i),
            409 => {}
            other => panic!("registration {i}: unexpected {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creation wins: {winners:?}");
    // The winner's secret is the one stored.
    srv.token("contested", &format!("secret-number-{}", winners[0]), &[])
        .await;
    for i in (0..8).filter(|i| *i != winners[0]) {
        srv.token_basic(
            "contested",
            &format!("secret-number-{i}"),
            &[("grant_type", "client_credentials")],
        )
        .await
        .assert_oauth_error(401, "invalid_client");
    }
}
