//! HTTP behaviour of both apps, driven in-process with `tower::ServiceExt::oneshot`.

use super::*;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    svc: Arc<Service>,
    public: Router,
    admin: Router,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path, alg: Alg) -> Config {
    let mut c = Config::new(dir.to_path_buf());
    c.signing_alg = alg;
    c.secrets_system = Some("unit-test-system-secret".into());
    // The jwks_uri tests serve key sets on loopback.
    c.allow_private_jwks_uri = true;
    c
}

fn harness(alg: Alg) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::open(config(dir.path(), alg)).unwrap();
    Harness {
        public: public_app(Arc::clone(&svc)),
        admin: admin_app(Arc::clone(&svc)),
        svc,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(app: &Router, mut req: Request<Body>) -> Reply {
    // As every HTTP/1.1 client does (the admin API refuses requests without a Host).
    if !req.headers().contains_key(header::HOST) {
        req.headers_mut()
            .insert(header::HOST, header::HeaderValue::from_static("localhost"));
    }
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn json_req(method: &str, uri: &str, body: Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

fn form(uri: &str, body: &str, basic: Option<(&str, &str)>) -> Request<Body> {
    let mut b = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic {
        b = b.header(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        );
    }
    b.body(Body::from(body.to_string())).unwrap()
}

async fn create(h: &Harness, client: Value) -> Value {
    let r = send(&h.admin, json_req("POST", "/admin/clients", client)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body
}

fn cc(id: &str) -> Value {
    json!({
        "client_id": id, "client_secret": "secret-of-".to_string() + id,
        "grant_types": ["client_credentials"], "scope": "read write orders.*",
        "audience": ["https://api.example.com"],
    })
}

async fn token(h: &Harness, id: &str, body: &str) -> Reply {
    let secret = format!("secret-of-{id}");
    send(&h.public, form("/oauth2/token", body, Some((id, &secret)))).await
}

fn jwt_part(jwt: &str, i: usize) -> Value {
    let part = jwt.split('.').nth(i).unwrap();
    serde_json::from_slice(&crate::crypto::b64url_decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn rs256_token_verifies_with_published_jwks() {
    let h = harness(Alg::RS256);
    create(&h, cc("c1")).await;
    let r = token(
        &h,
        "c1",
        "grant_type=client_credentials&scope=read+orders.create&audience=https://api.example.com",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(r.headers[header::PRAGMA], "no-cache");
    assert_eq!(r.body["token_type"], "bearer");
    assert_eq!(r.body["expires_in"], 3600);
    assert_eq!(r.body["scope"], "read orders.create");
    let jwt = r.body["access_token"].as_str().unwrap();

    let jwks = send(&h.public, get("/.well-known/jwks.json")).await.body;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["https://api.example.com"]);
    v.set_issuer(&["http://127.0.0.1:4444"]);
    let data =
        jsonwebtoken::decode::<Value>(jwt, &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(), &v)
            .unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "c1");
    assert_eq!(c["client_id"], "c1");
    assert_eq!(c["scp"], json!(["read", "orders.create"]));
    assert_eq!(c["aud"], json!(["https://api.example.com"]));
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );
    assert!(uuid::Uuid::parse_str(c["jti"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn rfc6749_errors() {
    let h = harness(Alg::ES256);
    create(&h, cc("c1")).await;
    let mut no_cc = cc("ac");
    no_cc["grant_types"] = json!(["authorization_code"]);
    create(&h, no_cc).await;

    // Wrong secret with Basic: 401 + WWW-Authenticate.
    let r = send(
        &h.public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials",
            Some(("c1", "nope-nope")),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "invalid_client");
    assert!(
        r.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );

    // Unknown client via post: 401 without challenge.
    let r = send(
        &h.public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials&client_id=zz&client_secret=abcdef",
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.get(header::WWW_AUTHENTICATE).is_none());

    // client_secret_post refused for a client registered with client_secret_basic.
    let r = send(
        &h.public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials&client_id=c1&client_secret=secret-of-c1",
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "invalid_client");

    // No authentication at all.
    let r = send(
        &h.public,
        form("/oauth2/token", "grant_type=client_credentials", None),
    )
    .await;
    assert_eq!(r.body["error"], "invalid_client");

    let cases = [
        ("c1", "scope=read", "invalid_request"),
        (
            "c1",
            "grant_type=password&username=a&password=b",
            "unsupported_grant_type",
        ),
        (
            "c1",
            "grant_type=client_credentials&scope=admin",
            "invalid_scope",
        ),
        (
            "c1",
            "grant_type=client_credentials&scope=orders",
            "invalid_scope",
        ),
        (
            "c1",
            "grant_type=client_credentials&audience=https://evil.example.com",
            "invalid_request",
        ),
        (
            "c1",
            "grant_type=client_credentials&grant_type=client_credentials",
            "invalid_request",
        ),
        ("ac", "grant_type=client_credentials", "unauthorized_client"),
    ];
    for (id, body, error) in cases {
        let r = token(&h, id, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["error"], error, "{body}: {}", r.body);
        assert!(r.body["error_description"].as_str().unwrap().len() > 5);
        assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    }

    // Wrong content type.
    let req = Request::builder()
        .method("POST")
        .uri("/oauth2/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let r = send(&h.public, req).await;
    assert_eq!(r.body["error"], "invalid_request");

    let metrics = send(&h.admin, get("/admin/metrics/prometheus")).await;
    let text = metrics.body.as_str().unwrap().to_string();
    assert!(
        text.contains("portcullis_token_errors_total{error=\"invalid_scope\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn client_secret_post_and_multipart() {
    let h = harness(Alg::EdDSA);
    let mut c = cc("poster");
    c["token_endpoint_auth_method"] = json!("client_secret_post");
    create(&h, c).await;
    let r = send(
        &h.public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials&client_id=poster&client_secret=secret-of-poster&scope=write",
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        jwt_part(r.body["access_token"].as_str().unwrap(), 0)["alg"],
        "EdDSA"
    );

    // Basic refused for a client_secret_post client, with a challenge.
    let r = send(
        &h.public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials",
            Some(("poster", "secret-of-poster")),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));

    // multipart/form-data, as `curl -F` sends it.
    let boundary = "XyZbOuNdArY";
    let mut body = String::new();
    for (k, v) in [
        ("grant_type", "client_credentials"),
        ("client_id", "poster"),
        ("client_secret", "secret-of-poster"),
        ("scope", "read"),
    ] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let req = Request::builder()
        .method("POST")
        .uri("/oauth2/token")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    let r = send(&h.public, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["scope"], "read");
}

#[tokio::test]
async fn introspection_and_revocation_of_jwts() {
    let h = harness(Alg::ES256);
    create(&h, cc("c1")).await;
    create(&h, cc("c2")).await;
    let jwt = token(&h, "c1", "grant_type=client_credentials&scope=read")
        .await
        .body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let intro = |t: String, extra: &str| {
        let body = format!("token={t}{extra}");
        form("/admin/oauth2/introspect", &body, None)
    };
    let r = send(&h.admin, intro(jwt.clone(), "")).await;
    assert_eq!(r.body["active"], true, "{}", r.body);
    assert_eq!(r.body["client_id"], "c1");
    assert_eq!(r.body["sub"], "c1");
    assert_eq!(r.body["scope"], "read");
    assert_eq!(r.body["iss"], "http://127.0.0.1:4444");
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["token_use"], "access_token");
    assert_eq!(r.body["aud"], json!([]));
    // Hydra v1 path without /admin.
    let r = send(&h.admin, intro(jwt.clone(), "&scope=read")).await;
    assert_eq!(r.body["active"], true);
    let r = send(&h.admin, intro(jwt.clone(), "&scope=write")).await;
    assert_eq!(r.body, json!({"active": false}));
    let r = send(
        &h.admin,
        form("/oauth2/introspect", &format!("token={jwt}"), None),
    )
    .await;
    assert_eq!(r.body["active"], true);
    // Tampered and garbage tokens are inactive.
    let tampered = format!("{}x", &jwt);
    assert_eq!(
        send(&h.admin, intro(tampered, "")).await.body["active"],
        false
    );
    assert_eq!(
        send(&h.admin, intro("garbage".into(), "")).await.body["active"],
        false
    );
    let r = send(&h.admin, form("/admin/oauth2/introspect", "", None)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Another client may not revoke it.
    let r = send(
        &h.public,
        form(
            "/oauth2/revoke",
            &format!("token={jwt}"),
            Some(("c2", "secret-of-c2")),
        ),
    )
    .await;
    assert_eq!(r.body["error"], "unauthorized_client");
    // Its owner may.
    let r = send(
        &h.public,
        form(
            "/oauth2/revoke",
            &format!("token={jwt}"),
            Some(("c1", "secret-of-c1")),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        send(&h.admin, intro(jwt.clone(), "")).await.body["active"],
        false
    );
    // Unknown tokens: 200 as well.
    let r = send(
        &h.public,
        form(
            "/oauth2/revoke",
            "token=unknown",
            Some(("c1", "secret-of-c1")),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Revocation is durable: a restarted service still refuses the token.
    assert!(h.svc.store.list_revocations(clock::now()).unwrap().len() == 1);
}

#[tokio::test]
async fn opaque_tokens() {
    let h = harness(Alg::ES256);
    let mut c = cc("op");
    c["access_token_strategy"] = json!("opaque");
    c["client_credentials_grant_access_token_lifespan"] = json!("5m");
    create(&h, c).await;
    let r = token(&h, "op", "grant_type=client_credentials&scope=write").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["expires_in"], 300);
    let t = r.body["access_token"].as_str().unwrap().to_string();
    assert!(t.starts_with("ptc_at_"));
    let r = send(
        &h.admin,
        form("/admin/oauth2/introspect", &format!("token={t}"), None),
    )
    .await;
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body["scope"], "write");
    assert_eq!(
        r.body["exp"].as_i64().unwrap() - r.body["iat"].as_i64().unwrap(),
        300
    );
    let r = send(
        &h.public,
        form(
            "/oauth2/revoke",
            &format!("token={t}"),
            Some(("op", "secret-of-op")),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(
        &h.admin,
        form("/admin/oauth2/introspect", &format!("token={t}"), None),
    )
    .await;
    assert_eq!(r.body["active"], false);
}

#[tokio::test]
async fn admin_clients_crud_and_pagination() {
    let h = harness(Alg::ES256);
    let created = create(
        &h,
        json!({"grant_types": ["client_credentials"], "client_name": "gen"}),
    )
    .await;
    let id = created["client_id"].as_str().unwrap().to_string();
    assert!(created["client_secret"].as_str().unwrap().len() >= 32);
    assert_eq!(created["token_endpoint_auth_method"], "client_secret_basic");

    let r = send(&h.admin, get(&format!("/admin/clients/{id}"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.get("client_secret").is_none());
    assert_eq!(r.body["client_name"], "gen");
    // Without the /admin prefix too.
    assert_eq!(
        send(&h.admin, get(&format!("/clients/{id}"))).await.status,
        StatusCode::OK
    );

    // Validation: 400 naming the field.
    let r = send(
        &h.admin,
        json_req("POST", "/admin/clients", json!({"client_secret": "abc"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"], "invalid_client_metadata");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("client_secret")
    );
    let r = send(
        &h.admin,
        json_req("POST", "/admin/clients", json!("not an object")),
    )
    .await;
    assert_eq!(r.body["error"], "invalid_request");
    // Duplicate id.
    let r = send(
        &h.admin,
        json_req("POST", "/admin/clients", json!({"client_id": id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // PUT keeps the secret when none is sent; PATCH edits fields.
    let r = send(
        &h.admin,
        json_req(
            "PUT",
            &format!("/admin/clients/{id}"),
            json!({"grant_types": ["client_credentials"], "scope": "a b"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.get("client_secret").is_none());
    let secret = created["client_secret"].as_str().unwrap();
    let ok = send(
        &h.public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials&scope=a",
            Some((&id, secret)),
        ),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let r = send(
        &h.admin,
        json_req(
            "PATCH",
            &format!("/admin/clients/{id}"),
            json!([{"op": "replace", "path": "/client_name", "value": "patched"}]),
        ),
    )
    .await;
    assert_eq!(r.body["client_name"], "patched");
    assert_eq!(r.body["scope"], "a b");

    // Pagination: 5 clients, pages of 2, following Link rel="next".
    for i in 0..4 {
        create(&h, cc(&format!("p{i}"))).await;
    }
    let mut uri = "/admin/clients?page_size=2".to_string();
    let mut seen = Vec::new();
    loop {
        let r = send(&h.admin, get(&uri)).await;
        assert_eq!(r.status, StatusCode::OK);
        for c in r.body.as_array().unwrap() {
            assert!(c.get("client_secret").is_none());
            seen.push(c["client_id"].as_str().unwrap().to_string());
        }
        let link = r.headers[header::LINK].to_str().unwrap().to_string();
        assert!(link.contains("rel=\"first\""));
        match link.split(", ").find(|l| l.ends_with("rel=\"next\"")) {
            Some(next) => uri = next[1..next.find('>').unwrap()].to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5);

    // DELETE: 204, then 404 and the client can no longer get tokens.
    let del = Request::builder()
        .method("DELETE")
        .uri(format!("/admin/clients/{id}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h.admin, del).await.status, StatusCode::NO_CONTENT);
    let r = send(&h.admin, get(&format!("/admin/clients/{id}"))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"], "not_found");
    // A path that does not decode to UTF-8 is an RFC 6749-style error too.
    let r = send(&h.admin, get("/admin/clients/%FF")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"], "invalid_request");
    let r = send(
        &h.public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials",
            Some((&id, secret)),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid() {
    let h = harness(Alg::ES256);
    create(&h, cc("c1")).await;
    let old = token(&h, "c1", "grant_type=client_credentials").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let old_kid = jwt_part(&old, 0)["kid"].as_str().unwrap().to_string();
    let r = send(
        &h.admin,
        json_req(
            "POST",
            "/admin/keys/hydra.jwt.access-token",
            json!({"alg": "EdDSA", "use": "sig", "kid": "new-key"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["keys"][0]["kid"], "new-key");
    assert!(r.body["keys"][0].get("d").is_none());

    let new = token(&h, "c1", "grant_type=client_credentials").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(jwt_part(&new, 0)["kid"], "new-key");
    let jwks = send(&h.public, get("/.well-known/jwks.json")).await.body;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["new-key", old_kid.as_str()]);
    for t in [&old, &new] {
        let r = send(
            &h.admin,
            form("/admin/oauth2/introspect", &format!("token={t}"), None),
        )
        .await;
        assert_eq!(r.body["active"], true);
    }
    let r = send(&h.admin, get("/admin/keys/hydra.jwt.access-token")).await;
    assert_eq!(r.body["keys"].as_array().unwrap().len(), 2);
    let r = send(
        &h.admin,
        json_req("POST", "/admin/keys/x", json!({"alg": "HS256"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(&h.admin, get("/admin/keys/nope")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn private_key_jwt_with_single_use_jti() {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let h = harness(Alg::ES256);
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = kp.public_key().as_ref();
    let b64 = crate::crypto::b64url;
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ck", "alg": "ES256", "use": "sig",
                     "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    let mut c = cc("pk");
    c["client_secret"] = Value::Null;
    c["token_endpoint_auth_method"] = json!("private_key_jwt");
    c["jwks"] = json!({"keys": [jwk]});
    let created = create(&h, c).await;
    assert!(created.get("client_secret").is_none());

    let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ck".into());
    let now = clock::now();
    let assertion = |jti: &str, aud: &str| {
        jsonwebtoken::encode(
            &header,
            &json!({"iss": "pk", "sub": "pk", "aud": aud, "jti": jti, "exp": now + 60, "iat": now}),
            &key,
        )
        .unwrap()
    };
    let body = |a: String| {
        format!(
            "grant_type=client_credentials&scope=read&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}"
        )
    };
    let a1 = assertion("j1", "http://127.0.0.1:4444/oauth2/token");
    let r = send(&h.public, form("/oauth2/token", &body(a1.clone()), None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Replay of the same jti.
    let r = send(&h.public, form("/oauth2/token", &body(a1), None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The reason (a replayed jti) is logged, not sent: one message for every failure.
    assert_eq!(
        r.body["error_description"].as_str().unwrap(),
        crate::token::AUTH_FAILED
    );
    // Wrong audience.
    let r = send(
        &h.public,
        form(
            "/oauth2/token",
            &body(assertion("j2", "https://other")),
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A secret-based client cannot use an assertion.
    create(&h, cc("sb")).await;
    let r = send(
        &h.public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials&client_id=sb&client_secret=secret-of-sb",
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn discovery_health_and_not_found() {
    let h = harness(Alg::ES256);
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let r = send(&h.public, get(path)).await;
        assert_eq!(r.body["issuer"], "http://127.0.0.1:4444");
        assert_eq!(
            r.body["token_endpoint"],
            "http://127.0.0.1:4444/oauth2/token"
        );
        assert_eq!(
            r.body["jwks_uri"],
            "http://127.0.0.1:4444/.well-known/jwks.json"
        );
        assert_eq!(
            r.body["revocation_endpoint"],
            "http://127.0.0.1:4444/oauth2/revoke"
        );
        assert_eq!(
            r.body["authorization_endpoint"],
            "http://127.0.0.1:4444/oauth2/auth"
        );
    }
    for app in [&h.public, &h.admin] {
        assert_eq!(
            send(app, get("/health/alive")).await.body,
            json!({"status": "ok"})
        );
        assert_eq!(send(app, get("/health/ready")).await.status, StatusCode::OK);
        assert!(send(app, get("/version")).await.body["version"].is_string());
        let r = send(app, get("/nope")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.body["error"], "not_found");
    }
    let r = send(
        &h.public,
        get("/oauth2/auth?response_type=code&client_id=x"),
    )
    .await;
    // Without a login app the endpoint says which flag is missing.
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.body["error"], "server_error");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("--login-url"),
        "{}",
        r.body
    );
    let r = send(&h.public, get("/oauth2/token")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body["error"], "method_not_allowed");
}

#[tokio::test]
async fn restart_keeps_clients_keys_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let (jwt, revoked) = {
        let svc = Service::open(config(dir.path(), Alg::ES256)).unwrap();
        let public = public_app(Arc::clone(&svc));
        let admin = admin_app(Arc::clone(&svc));
        let r = send(&admin, json_req("POST", "/admin/clients", cc("c1"))).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let get_token = || {
            form(
                "/oauth2/token",
                "grant_type=client_credentials",
                Some(("c1", "secret-of-c1")),
            )
        };
        let jwt = send(&public, get_token()).await.body["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        let revoked = send(&public, get_token()).await.body["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        let r = send(
            &public,
            form(
                "/oauth2/revoke",
                &format!("token={revoked}"),
                Some(("c1", "secret-of-c1")),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        (jwt, revoked)
    };
    let svc = Service::open(config(dir.path(), Alg::ES256)).unwrap();
    let public = public_app(Arc::clone(&svc));
    let admin = admin_app(Arc::clone(&svc));
    let r = send(
        &public,
        form(
            "/oauth2/token",
            "grant_type=client_credentials",
            Some(("c1", "secret-of-c1")),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let intro = |t: &str| form("/admin/oauth2/introspect", &format!("token={t}"), None);
    assert_eq!(send(&admin, intro(&jwt)).await.body["active"], true);
    assert_eq!(send(&admin, intro(&revoked)).await.body["active"], false);
    assert_eq!(
        svc.keys
            .ring()
            .jwks(crate::keys::ACCESS_TOKEN_SET, clock::now())["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn serves_on_sockets_and_shuts_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::open(config(dir.path(), Alg::ES256)).unwrap();
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut apps = Apps::new(&svc);
    // Embedders can add routes (the reconcilers serve the filter module this way).
    apps.public = apps
        .public
        .merge(Router::new().route("/extra", axum::routing::get(|| async { "extra" })));
    let public_addr = public.local_addr().unwrap();
    let task = tokio::spawn(serve_on(svc, public, admin, apps, async {
        let _ = rx.await;
    }));
    let mut s = tokio::net::TcpStream::connect(public_addr).await.unwrap();
    s.write_all(b"GET /extra HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("extra"),
        "{out}"
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health/alive HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn tokens_die_with_their_client_and_key() {
    let h = harness(Alg::ES256);
    create(&h, cc("c1")).await;
    create(&h, cc("c2")).await;
    let t1 = token(&h, "c1", "grant_type=client_credentials").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let t2 = token(&h, "c2", "grant_type=client_credentials").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let intro = |t: &str| form("/admin/oauth2/introspect", &format!("token={t}"), None);
    // Twice: the second answer comes from the verified-token cache.
    for _ in 0..2 {
        assert_eq!(send(&h.admin, intro(&t1)).await.body["active"], true);
    }
    let del = Request::builder()
        .method("DELETE")
        .uri("/admin/clients/c1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h.admin, del).await.status, StatusCode::NO_CONTENT);
    assert_eq!(send(&h.admin, intro(&t1)).await.body["active"], false);
    assert_eq!(send(&h.admin, intro(&t2)).await.body["active"], true);
    // Deleting the signing key kills its tokens; a fresh key is made so issuing still works.
    let kid = jwt_part(&t2, 0)["kid"].as_str().unwrap().to_string();
    let del = Request::builder()
        .method("DELETE")
        .uri(format!("/admin/keys/hydra.jwt.access-token/{kid}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h.admin, del).await.status, StatusCode::NO_CONTENT);
    assert_eq!(send(&h.admin, intro(&t2)).await.body["active"], false);
    let r = token(&h, "c2", "grant_type=client_credentials").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(
        jwt_part(r.body["access_token"].as_str().unwrap(), 0)["kid"],
        kid.as_str()
    );
}

#[tokio::test]
async fn key_rotation_period_rotates_in_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Alg::ES256);
    c.key_rotation = Some(std::time::Duration::from_secs(1));
    let svc = Service::open(c).unwrap();
    let first = svc
        .keys
        .ring()
        .current(ACCESS_TOKEN_SET)
        .unwrap()
        .kid
        .clone();
    let (tx, rx) = tokio::sync::watch::channel(false);
    svc.spawn_background(rx);
    let mut rotated = false;
    for _ in 0..150 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if svc.keys.ring().current(ACCESS_TOKEN_SET).unwrap().kid != first {
            rotated = true;
            break;
        }
    }
    let _ = tx.send(true);
    assert!(rotated, "no rotation within 15s");
    // The old key is still published.
    let jwks = svc.keys.ring().jwks(ACCESS_TOKEN_SET, clock::now());
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == first.as_str())
    );
}

#[tokio::test]
async fn private_key_jwt_with_jwks_uri() {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let h = harness(Alg::ES256);
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = kp.public_key().as_ref().to_vec();
    let b64 = crate::crypto::b64url;
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "remote", "alg": "ES256",
                                "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    // A tiny JWKS server on loopback.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut c = cc("remote");
    c["client_secret"] = Value::Null;
    c["token_endpoint_auth_method"] = json!("private_key_jwt");
    c["jwks_uri"] = json!(format!("http://{addr}/jwks.json"));
    create(&h, c).await;

    let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let now = clock::now();
    let body = |header: &jsonwebtoken::Header, jti: &str| {
        let a = jsonwebtoken::encode(
            header,
            &json!({"iss": "remote", "sub": "remote", "aud": "http://127.0.0.1:4444/oauth2/token",
                    "jti": jti, "exp": now + 60}),
            &key,
        )
        .unwrap();
        format!(
            "grant_type=client_credentials&client_id=remote&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}"
        )
    };
    header.kid = Some("remote".into());
    let r = send(&h.public, form("/oauth2/token", &body(&header, "a"), None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    header.kid = Some("unknown".into());
    let r = send(&h.public, form("/oauth2/token", &body(&header, "b"), None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.body["error_description"].as_str().unwrap(),
        crate::token::AUTH_FAILED
    );
}

/// Signs a private_key_jwt assertion for client `pk` with a fresh P-256 key; returns the
/// public JWK (labelled `jwk_alg`, when given) and a signer taking the claims.
fn p256_client(jwk_alg: Option<&str>) -> (Value, impl Fn(Value) -> String) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = kp.public_key().as_ref().to_vec();
    let b64 = crate::crypto::b64url;
    let mut jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k",
                         "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    if let Some(alg) = jwk_alg {
        jwk["alg"] = json!(alg);
    }
    let key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let sign = move |claims: Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k".into());
        let a = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        format!(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={a}"
        )
    };
    (json!({"keys": [jwk]}), sign)
}

#[tokio::test]
async fn private_key_jwt_checks_nbf() {
    let h = harness(Alg::ES256);
    let (jwks, sign) = p256_client(Some("ES256"));
    let mut c = cc("pk");
    c["client_secret"] = Value::Null;
    c["token_endpoint_auth_method"] = json!("private_key_jwt");
    c["jwks"] = jwks;
    create(&h, c).await;
    let now = clock::now();
    let aud = "http://127.0.0.1:4444/oauth2/token";
    let claims = |jti: &str, nbf: i64| json!({"iss": "pk", "sub": "pk", "aud": aud, "jti": jti, "exp": now + 600, "nbf": nbf});
    // Not yet valid (beyond the 30 s leeway): refused.
    let r = send(
        &h.public,
        form("/oauth2/token", &sign(claims("a", now + 300)), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = send(
        &h.public,
        form("/oauth2/token", &sign(claims("b", now - 5)), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn private_key_jwt_requires_the_jwks_alg() {
    let h = harness(Alg::ES256);
    // A P-256 key labelled for another algorithm must not verify an ES256 signature.
    let (jwks, sign) = p256_client(Some("ES384"));
    let mut c = cc("pk");
    c["client_secret"] = Value::Null;
    c["token_endpoint_auth_method"] = json!("private_key_jwt");
    c["jwks"] = jwks;
    create(&h, c).await;
    let now = clock::now();
    let claims = json!({"iss": "pk", "sub": "pk", "aud": "http://127.0.0.1:4444/oauth2/token",
                        "jti": "a", "exp": now + 60});
    let r = send(&h.public, form("/oauth2/token", &sign(claims), None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // Unlabelled keys verify whatever their type allows.
    let h = harness(Alg::ES256);
    let (jwks, sign) = p256_client(None);
    let mut c = cc("pk");
    c["client_secret"] = Value::Null;
    c["token_endpoint_auth_method"] = json!("private_key_jwt");
    c["jwks"] = jwks;
    create(&h, c).await;
    let claims = json!({"iss": "pk", "sub": "pk", "aud": "http://127.0.0.1:4444/oauth2/token",
                        "jti": "a", "exp": now + 60});
    let r = send(&h.public, form("/oauth2/token", &sign(claims), None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// A store whose readiness probe fails, everything else delegated.
struct BrokenStore(SqliteStore);

impl Store for BrokenStore {
    fn ping(&self) -> crate::store::StoreResult<()> {
        Err(crate::store::StoreError::Database("disk on fire".into()))
    }
    fn insert_client(&self, c: &crate::store::StoredClient) -> crate::store::StoreResult<()> {
        self.0.insert_client(c)
    }
    fn update_client(&self, c: &crate::store::StoredClient) -> crate::store::StoreResult<bool> {
        self.0.update_client(c)
    }
    fn delete_client(&self, id: &str) -> crate::store::StoreResult<bool> {
        self.0.delete_client(id)
    }
    fn get_client(
        &self,
        id: &str,
    ) -> crate::store::StoreResult<Option<crate::store::StoredClient>> {
        self.0.get_client(id)
    }
    fn list_clients(
        &self,
        after: Option<&str>,
        limit: usize,
        filter: &crate::store::ClientFilter,
    ) -> crate::store::StoreResult<Vec<crate::store::StoredClient>> {
        self.0.list_clients(after, limit, filter)
    }
    fn insert_key(&self, k: &crate::store::StoredKey) -> crate::store::StoreResult<()> {
        self.0.insert_key(k)
    }
    fn retire_keys(&self, set: &str, keep: &str, exp: i64) -> crate::store::StoreResult<()> {
        self.0.retire_keys(set, keep, exp)
    }
    fn delete_key(&self, set: &str, kid: &str) -> crate::store::StoreResult<bool> {
        self.0.delete_key(set, kid)
    }
    fn list_keys(&self) -> crate::store::StoreResult<Vec<crate::store::StoredKey>> {
        self.0.list_keys()
    }
    fn insert_opaque_token(
        &self,
        t: &crate::store::StoredOpaqueToken,
    ) -> crate::store::StoreResult<()> {
        self.0.insert_opaque_token(t)
    }
    fn get_opaque_token(
        &self,
        h: &[u8; 32],
    ) -> crate::store::StoreResult<Option<crate::store::StoredOpaqueToken>> {
        self.0.get_opaque_token(h)
    }
    fn delete_opaque_token(&self, h: &[u8; 32]) -> crate::store::StoreResult<bool> {
        self.0.delete_opaque_token(h)
    }
    fn delete_client_tokens(&self, id: &str) -> crate::store::StoreResult<()> {
        self.0.delete_client_tokens(id)
    }
    fn insert_revocation(&self, jti: &str, exp: i64) -> crate::store::StoreResult<()> {
        self.0.insert_revocation(jti, exp)
    }
    fn list_revocations(&self, now: i64) -> crate::store::StoreResult<Vec<(String, i64)>> {
        self.0.list_revocations(now)
    }
    fn use_assertion_jti(&self, id: &str, jti: &str, exp: i64) -> crate::store::StoreResult<bool> {
        self.0.use_assertion_jti(id, jti, exp)
    }
    fn insert_flow(&self, f: &crate::store::StoredFlow) -> crate::store::StoreResult<()> {
        self.0.insert_flow(f)
    }
    fn get_flow(&self, id: &str) -> crate::store::StoreResult<Option<crate::store::StoredFlow>> {
        self.0.get_flow(id)
    }
    fn advance_flow_with(
        &self,
        from: i64,
        f: &crate::store::StoredFlow,
        rows: &crate::store::StepRows,
    ) -> crate::store::StoreResult<bool> {
        self.0.advance_flow_with(from, f, rows)
    }
    fn put_session(
        &self,
        kind: &str,
        s: &crate::store::StoredSession,
    ) -> crate::store::StoreResult<()> {
        self.0.put_session(kind, s)
    }
    fn get_session(
        &self,
        kind: &str,
        id: &str,
    ) -> crate::store::StoreResult<Option<crate::store::StoredSession>> {
        self.0.get_session(kind, id)
    }
    fn delete_session(&self, kind: &str, id: &str) -> crate::store::StoreResult<bool> {
        self.0.delete_session(kind, id)
    }
    fn insert_refresh_token(
        &self,
        t: &crate::store::StoredRefreshToken,
    ) -> crate::store::StoreResult<()> {
        self.0.insert_refresh_token(t)
    }
    fn get_refresh_token(
        &self,
        h: &[u8; 32],
    ) -> crate::store::StoreResult<Option<crate::store::StoredRefreshToken>> {
        self.0.get_refresh_token(h)
    }
    fn refresh_token_of_chain(
        &self,
        key: &crate::store::ChainKey,
    ) -> crate::store::StoreResult<Option<crate::store::StoredRefreshToken>> {
        self.0.refresh_token_of_chain(key)
    }
    fn rotate_refresh_token(
        &self,
        old: &[u8; 32],
        new: &crate::store::StoredRefreshToken,
        now: i64,
        rows: &crate::store::StepRows,
    ) -> crate::store::StoreResult<bool> {
        self.0.rotate_refresh_token(old, new, now, rows)
    }
    fn revoke_refresh_chain(
        &self,
        key: &crate::store::ChainKey,
    ) -> crate::store::StoreResult<Vec<crate::store::StoredRefreshToken>> {
        self.0.revoke_refresh_chain(key)
    }
    fn revoke_refresh_tokens_of(
        &self,
        subject: &str,
        client_id: Option<&str>,
    ) -> crate::store::StoreResult<Vec<crate::store::StoredRefreshToken>> {
        self.0.revoke_refresh_tokens_of(subject, client_id)
    }
    fn list_sessions(
        &self,
        kind: &str,
        subject: &str,
    ) -> crate::store::StoreResult<Vec<crate::store::StoredSession>> {
        self.0.list_sessions(kind, subject)
    }
    fn delete_sessions(&self, kind: &str, subject: &str) -> crate::store::StoreResult<usize> {
        self.0.delete_sessions(kind, subject)
    }
    fn purge_expired(&self, now: i64) -> crate::store::StoreResult<usize> {
        self.0.purge_expired(now)
    }
}

#[tokio::test]
async fn ready_is_503_when_the_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(BrokenStore(SqliteStore::in_memory().unwrap()));
    let svc = Service::with_store(config(dir.path(), Alg::ES256), store).unwrap();
    for app in [public_app(Arc::clone(&svc)), admin_app(Arc::clone(&svc))] {
        let r = send(&app, get("/health/ready")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!r.body.to_string().contains("fire"));
        assert_eq!(
            send(&app, get("/health/alive")).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn background_purge_drops_expired_rows_of_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Alg::ES256);
    c.purge_interval = std::time::Duration::from_millis(50);
    let svc = Service::open(c).unwrap();
    let now = clock::now();
    svc.store.insert_revocation("old", now - 10).unwrap();
    svc.store.insert_revocation("live", now + 3600).unwrap();
    svc.store.use_assertion_jti("c", "j", now - 1).unwrap();
    // The browser-flow tables: expired flows, sessions and refresh tokens go, live ones stay.
    for (id, exp) in [("old-flow", now - 1), ("live-flow", now + 3600)] {
        let f = crate::store::StoredFlow {
            id: id.into(),
            stage: 0,
            json: "{}".into(),
            expires_at: exp,
        };
        svc.store.insert_flow(&f).unwrap();
    }
    for kind in ["login", "logout_participant"] {
        let row = crate::store::StoredSession {
            id: "old".into(),
            subject: "s".into(),
            json: "{}".into(),
            expires_at: now - 1,
        };
        svc.store.put_session(kind, &row).unwrap();
    }
    let refresh = crate::store::StoredRefreshToken {
        hash: [9; 32],
        chain: "c".into(),
        client_id: "c".into(),
        subject: "s".into(),
        active: true,
        used_at: None,
        json: "{}".into(),
        expires_at: now - 1,
    };
    svc.store.insert_refresh_token(&refresh).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    svc.spawn_background(rx);
    for _ in 0..200 {
        let purged = svc.store.list_revocations(now - 100).unwrap().len() == 1
            && svc.store.get_flow("old-flow").unwrap().is_none()
            && svc.store.get_refresh_token(&[9; 32]).unwrap().is_none()
            && svc
                .store
                .list_sessions("logout_participant", "s")
                .unwrap()
                .is_empty()
            && svc.store.list_sessions("login", "s").unwrap().is_empty();
        if purged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = tx.send(true);
    assert!(svc.store.get_flow("old-flow").unwrap().is_none());
    assert!(svc.store.get_flow("live-flow").unwrap().is_some());
    assert!(svc.store.get_refresh_token(&[9; 32]).unwrap().is_none());
    assert!(
        svc.store
            .list_sessions("logout_participant", "s")
            .unwrap()
            .is_empty()
    );
    assert!(svc.store.list_sessions("login", "s").unwrap().is_empty());
    // The expired jti row is gone, so the same jti is accepted again.
    assert!(svc.store.use_assertion_jti("c", "j", now + 60).unwrap());
    let live: Vec<String> = svc
        .store
        .list_revocations(now - 100)
        .unwrap()
        .into_iter()
        .map(|(j, _)| j)
        .collect();
    assert_eq!(live, ["live"]);
}

#[test]
fn an_existing_key_keeps_its_algorithm_unless_one_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let current_alg = |svc: &Service| {
        svc.keys
            .ring()
            .current(ACCESS_TOKEN_SET)
            .map(|k| k.alg)
            .unwrap()
    };
    // A store from the releases whose default was ES256.
    let svc = Service::open(config(dir.path(), Alg::ES256)).unwrap();
    assert_eq!(current_alg(&svc), Alg::ES256);
    drop(svc);
    // Restarted without --signing-alg: the default (RS256) must not rotate the ES256 key away.
    let mut c = config(dir.path(), DEFAULT_SIGNING_ALG);
    c.keep_existing_alg = true;
    let svc = Service::open(c).unwrap();
    assert_eq!(current_alg(&svc), Alg::ES256);
    assert_eq!(svc.config.signing_alg, Alg::ES256, "rotations keep it too");
    drop(svc);
    // Asked for explicitly: a new RS256 key signs, the ES256 one stays published.
    let svc = Service::open(config(dir.path(), Alg::RS256)).unwrap();
    assert_eq!(current_alg(&svc), Alg::RS256);
    let jwks = svc.keys.ring().jwks(ACCESS_TOKEN_SET, crate::clock::now());
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    drop(svc);
    // A fresh store without --signing-alg gets the default, RS256 (what Hydra, OIDC and
    // Oathkeeper's jwt authenticator expect).
    let fresh = tempfile::tempdir().unwrap();
    let mut c = config(fresh.path(), DEFAULT_SIGNING_ALG);
    c.keep_existing_alg = true;
    assert_eq!(current_alg(&Service::open(c).unwrap()), Alg::RS256);
}

#[tokio::test]
async fn discovery_names_the_algorithm_that_signs_now() {
    let h = harness(Alg::ES256);
    let algs = |r: Reply| r.body["id_token_signing_alg_values_supported"].clone();
    let r = send(&h.public, get("/.well-known/openid-configuration")).await;
    assert_eq!(algs(r), json!(["ES256"]));
    // A key of another algorithm rotated in over the admin API signs from now on.
    let svc = Arc::clone(&h.svc);
    tokio::task::spawn_blocking(move || svc.rotate_signing_key(Alg::RS256, None))
        .await
        .unwrap()
        .unwrap();
    let r = send(&h.public, get("/.well-known/openid-configuration")).await;
    assert_eq!(algs(r), json!(["RS256"]));
}

#[tokio::test]
async fn admin_api_refuses_cross_site_requests_and_foreign_hosts() {
    let h = harness(Alg::ES256);
    let with = |mut req: Request<Body>, headers: &[(&'static str, &'static str)]| {
        for (k, v) in headers {
            req.headers_mut()
                .insert(*k, header::HeaderValue::from_static(v));
        }
        req
    };
    let evil_client = json!({"client_id": "evil", "client_secret": "attacker-chosen",
                             "grant_types": ["client_credentials"]});
    // The cross-site form POST a web page can send without a preflight.
    let req = Request::builder()
        .method("POST")
        .uri("/admin/clients")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(evil_client.to_string()))
        .unwrap();
    let r = send(&h.admin, req).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.body);
    assert_eq!(r.body["error"], "unsupported_media_type");
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "http://evil.example")],
        &[("origin", "null")],
        &[("origin", "http://localhost:9999")],
        &[("host", "evil.example:4445")],
        &[("host", "localhost.evil.example")],
    ] {
        let r = send(
            &h.admin,
            with(
                json_req("POST", "/admin/clients", evil_client.clone()),
                headers,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.body);
        assert_eq!(r.body["error"], "request_forbidden");
        // Reads and form endpoints too: a rebound page must not read clients either.
        let r = send(&h.admin, with(get("/admin/clients"), headers)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.body);
        let r = send(
            &h.admin,
            with(form("/admin/oauth2/introspect", "token=x", None), headers),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.body);
    }
    assert!(h.svc.clients.get("evil").is_none());
    // Hydra SDKs and curl (JSON, no Origin), a same-origin browser and IP-literal hosts pass.
    for headers in [
        &[][..],
        &[
            ("host", "localhost:4445"),
            ("origin", "http://localhost:4445"),
        ],
        &[("sec-fetch-site", "same-origin")],
        &[("host", "10.1.2.3:4445")],
    ] {
        let r = send(&h.admin, with(get("/admin/clients"), headers)).await;
        assert_eq!(r.status, StatusCode::OK, "{headers:?}: {}", r.body);
    }
    let mut c = cc("fine");
    c["client_id"] = json!("fine");
    let r = send(
        &h.admin,
        with(
            json_req("POST", "/admin/clients", c),
            &[("content-type", "application/json; charset=utf-8")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn admin_hosts_adds_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Alg::ES256);
    c.admin_hosts = vec!["portcullis-admin.portcullis-system.svc.cluster.local".into()];
    let admin = admin_app(Service::open(c).unwrap());
    let mut req = get("/health/alive");
    req.headers_mut().insert(
        header::HOST,
        header::HeaderValue::from_static(
            "portcullis-admin.portcullis-system.svc.cluster.local:4445",
        ),
    );
    assert_eq!(send(&admin, req).await.status, StatusCode::OK);
    let mut req = get("/health/alive");
    req.headers_mut().insert(
        header::HOST,
        header::HeaderValue::from_static("portcullis-admin:4445"),
    );
    assert_eq!(send(&admin, req).await.status, StatusCode::FORBIDDEN);
}

mod id_token_keys;

/// A confidential client for people: authorization code and refresh tokens, `openid offline`.
async fn create_person_client(h: &Harness) -> Value {
    create(
        h,
        json!({"grant_types": ["authorization_code", "refresh_token"],
               "scope": "openid offline", "redirect_uris": ["https://rp.example/cb"]}),
    )
    .await
}

/// A JWT issued with a refresh token that outlives it names its grant, so that neither the
/// code exchange nor a refresh writes a `/userinfo` row for it; any other JWT of a person
/// gets its own row, or `/userinfo` could not answer for it once the refresh chain is gone.
#[tokio::test]
async fn userinfo_rows_only_for_access_tokens_the_refresh_chain_does_not_cover() {
    use crate::grant_tokens::{Grant, IssuedAccess, Lifetimes, chain_of_jti, mint};
    let h = harness(Alg::ES256);
    let c = create_person_client(&h).await;
    let client = h
        .svc
        .clients
        .lookup(c["client_id"].as_str().unwrap())
        .unwrap();
    let grant = |scopes: &[&str]| Grant {
        grant_id: "grant-1".into(),
        client_id: client.client.client_id.clone(),
        subject: "alice".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Grant::default()
    };
    let life = |access, refresh| Lifetimes {
        access,
        id: 60,
        refresh,
    };
    let jti = |issued: &crate::grant_tokens::Issued| match &issued.access {
        IssuedAccess::Jwt { jti } => jti.clone(),
        IssuedAccess::Opaque(_) => panic!("a JWT client"),
    };

    let g = grant(&["openid", "offline"]);
    let covered = mint(&h.svc, &client, &g, life(3600, 3600)).unwrap();
    assert_eq!(chain_of_jti(&jti(&covered)), Some("grant-1"));
    assert_eq!(
        covered.access_rows(&g).unwrap(),
        crate::store::StepRows::default()
    );
    let claims = jwt_part(&covered.access_token, 1);
    assert_eq!(
        claims["jti"],
        jti(&covered).as_str(),
        "the signed jti names the grant"
    );

    for (g, l) in [
        // The access token outlives its refresh token.
        (grant(&["openid", "offline"]), life(3600, 60)),
        // No refresh token at all.
        (grant(&["openid"]), life(3600, 3600)),
    ] {
        let issued = mint(&h.svc, &client, &g, l).unwrap();
        let jti = jti(&issued);
        assert_eq!(chain_of_jti(&jti), None, "{jti}");
        let rows = issued.access_rows(&g).unwrap();
        assert_eq!(rows.sessions.len(), 1);
        assert_eq!(rows.sessions[0].0, crate::userinfo::KIND);
        assert_eq!(rows.sessions[0].1.id, jti);
    }
    // Neither a UUID nor a leading separator names a grant.
    assert_eq!(chain_of_jti("8b9a0f1e-4c1d-4f7a-9a57-2f4a1c0b9d11"), None);
    assert_eq!(chain_of_jti(".x"), None);
}

/// A person client's id and secret, and a grant of `openid offline` to alice through it.
async fn person_grant(h: &Harness, grant_id: &str) -> (String, String, crate::grant_tokens::Grant) {
    let c = create_person_client(h).await;
    let id = c["client_id"].as_str().unwrap().to_string();
    let grant = crate::grant_tokens::Grant {
        grant_id: grant_id.into(),
        client_id: id.clone(),
        subject: "alice".into(),
        scopes: vec!["openid".into(), "offline".into()],
        requested_at: crate::clock::now(),
        ..Default::default()
    };
    (id, c["client_secret"].as_str().unwrap().to_string(), grant)
}

/// The tokens of `grant` (an hour's access token, a two-hour refresh token), minted for its client.
fn mint_grant(h: &Harness, grant: &crate::grant_tokens::Grant) -> crate::grant_tokens::Issued {
    let client = h.svc.clients.lookup(&grant.client_id).unwrap();
    let life = crate::grant_tokens::Lifetimes {
        access: 3600,
        id: 60,
        refresh: 7200,
    };
    crate::grant_tokens::mint(&h.svc, &client, grant, life).unwrap()
}

/// `POST /oauth2/token` redeeming `token` as the client `(id, secret)`.
fn refresh_grant(token: &str, client: (&str, &str)) -> Request<Body> {
    form(
        "/oauth2/token",
        &format!("grant_type=refresh_token&refresh_token={token}"),
        Some(client),
    )
}

/// Refresh tokens issued before their store key was led by the issue time (32 random bytes,
/// stored under their plain SHA-256) keep working after an upgrade: they rotate into tokens of
/// the new form, and their reuse still revokes the chain.
#[tokio::test]
async fn refresh_tokens_stored_under_their_plain_hash_still_rotate() {
    use crate::crypto::{b64url, sha256};
    use crate::grant_tokens::{REFRESH_PREFIX, refresh_token_key};
    let h = harness(Alg::ES256);
    let (id, secret, grant) = person_grant(&h, "grant-legacy").await;
    let (id, secret) = (id.as_str(), secret.as_str());
    let mut row = mint_grant(&h, &grant).refresh_row.unwrap();
    let legacy = format!("{REFRESH_PREFIX}{}", b64url(&[5u8; 32]));
    row.hash = sha256(legacy.as_bytes());
    assert_eq!(refresh_token_key(&legacy), row.hash);
    h.svc.store.insert_refresh_token(&row).unwrap();

    let refresh = |token: &str| refresh_grant(token, (id, secret));
    let r = send(&h.public, refresh(&legacy)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let next = r.body["refresh_token"].as_str().unwrap().to_string();
    let next_key = refresh_token_key(&next);
    assert_ne!(next_key, sha256(next.as_bytes()), "a token of the new form");
    assert!(h.svc.store.get_refresh_token(&next_key).unwrap().is_some());

    // The rotated-out legacy token is reuse: the chain, with its new token, is revoked.
    let r = send(&h.public, refresh(&legacy)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["error"], "invalid_grant");
    let r = send(&h.public, refresh(&next)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}

/// Hydra introspects refresh tokens too (`token_use: refresh_token`, no `token_type`): active
/// while redeemable, inactive once rotated out, and filtered by `scope` as access tokens are.
#[tokio::test]
async fn refresh_tokens_introspect_as_hydra_does() {
    use crate::grant_tokens::Grant;
    let h = harness(Alg::ES256);
    let (id, secret, grant) = person_grant(&h, "grant-introspected").await;
    let (id, secret) = (id.as_str(), secret.as_str());
    let grant = Grant {
        audience: vec!["api".into()],
        access_token_claims: json!({"tier": "gold"}),
        ..grant
    };
    let issued = mint_grant(&h, &grant);
    let row = issued.refresh_row.clone().unwrap();
    h.svc.store.insert_refresh_token(&row).unwrap();
    let token = issued.refresh_token.unwrap();
    let introspect = |body: String| form("/admin/oauth2/introspect", &body, None);

    let before = crate::clock::now();
    let r = send(&h.admin, introspect(format!("token={token}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let i = &r.body;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["token_use"], "refresh_token");
    assert!(i.get("token_type").is_none(), "{i}");
    assert_eq!(i["sub"], "alice");
    assert_eq!(i["client_id"], id);
    assert_eq!(i["scope"], "openid offline");
    assert_eq!(i["aud"], json!(["api"]));
    assert_eq!(i["ext"], json!({"tier": "gold"}));
    assert_eq!(i["exp"], row.expires_at);
    let iat = i["iat"].as_i64().unwrap();
    assert!((before - 60..=before + 60).contains(&iat), "{i}");

    let r = send(&h.admin, introspect(format!("token={token}&scope=openid"))).await;
    assert_eq!(r.body["active"], true);
    let r = send(&h.admin, introspect(format!("token={token}&scope=admin"))).await;
    assert_eq!(r.body, json!({"active": false}));
    // The access token of the same grant is still an access token.
    let r = send(
        &h.admin,
        introspect(format!("token={}", issued.access_token)),
    )
    .await;
    assert_eq!(r.body["token_use"], "access_token");
    assert_eq!(r.body["token_type"], "Bearer");

    // Rotated out: inactive; its successor is active.
    let r = send(&h.public, refresh_grant(&token, (id, secret))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let next = r.body["refresh_token"].as_str().unwrap().to_string();
    let r = send(&h.admin, introspect(format!("token={token}"))).await;
    assert_eq!(r.body, json!({"active": false}));
    let r = send(&h.admin, introspect(format!("token={next}"))).await;
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body["token_use"], "refresh_token");
    for unknown in ["ory_rt_", "ory_rt_nope", &format!("{next}x")] {
        let r = send(&h.admin, introspect(format!("token={unknown}"))).await;
        assert_eq!(r.body, json!({"active": false}), "{unknown}");
    }
}
