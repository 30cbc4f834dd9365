//! Issue 10, part B in a real Envoy: the `oauth2_client_credentials` authenticator against a
//! recording token endpoint, and the `id_token` and `cookie` mutators, the id_token checked with
//! the public half of its key by an independent JOSE library (josekit, over OpenSSL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use josekit::jwk::Jwk;
use portcullis_e2e::AuthServer;
use portcullis_e2e::keys::keys;
use portcullis_e2e::stack::{Stack, config, rule};
use serde_json::{Value, json};

const ISSUER: &str = "https://oathkeeper.portcullis.test/";

/// The stack's config with the handlers of this suite enabled; id_token keys at `/id-keys`,
/// refreshed every second (Oathkeeper refreshes them on the jwt authenticator's `jwks_ttl`).
fn token_config(auth: &AuthServer, rules: Value) -> Value {
    let mut c = config(auth, rules);
    c["authenticators"]["oauth2_client_credentials"] =
        json!({"enabled": true, "config": {"token_url": auth.url("/oauth2/token")}});
    c["authenticators"]["jwt"]["config"]["jwks_ttl"] = json!("1s");
    c["mutators"]["id_token"] = json!({"enabled": true, "config": {
        "issuer_url": ISSUER, "jwks_url": auth.url("/id-keys")
    }});
    c["mutators"]["cookie"] = json!({"enabled": true});
    c
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn subject_header() -> Value {
    json!([{"handler": "header", "config": {"headers": {"X-User": "{{ print .Subject }}"}}}])
}

/// A GET on a fresh connection (`Connection: close`), so Envoy's workers share the load.
fn get(stack: &Stack, path: &str, authorization: &str) -> portcullis_e2e::stack::Reply {
    stack.raw(&format!(
        "GET {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: {authorization}"
    ))
}

#[test]
fn client_credentials_exchange_cache_and_broken_endpoints() {
    let stack = Stack::start_custom(
        |auth| {
            token_config(
                auth,
                json!([
                    rule(
                        "cached",
                        "http://<[^/]+>/cached",
                        json!([{"handler": "oauth2_client_credentials", "config": {
                            "required_scope": ["read", "write"],
                            "cache": {"enabled": true, "ttl": "1m", "max_tokens": 100}
                        }}]),
                        json!({"handler": "allow"}),
                        subject_header()
                    ),
                    rule(
                        "plain",
                        "http://<[^/]+>/plain",
                        json!([{"handler": "oauth2_client_credentials", "config": {
                            "retry": {"give_up_after": "500ms", "max_delay": "100ms"}
                        }}]),
                        json!({"handler": "allow"}),
                        subject_header()
                    )
                ]),
            )
        },
        |b| b.concurrency(2),
    );
    // The token endpoint decides by client id: a working client, and clients standing for a
    // broken endpoint.
    stack.auth.set_handler("/oauth2/token", |r| {
        let zero = Duration::ZERO;
        let token = json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 3600});
        match r.header("authorization") {
            Some(a) if a == basic("svc", "s3cret") => (200, token, zero),
            Some(a) if a == basic("garbage", "x") => (200, json!("<html>not json</html>"), zero),
            Some(a) if a == basic("empty", "x") => (200, json!({"access_token": ""}), zero),
            Some(a) if a == basic("broken", "x") => (500, json!({"error": "server_error"}), zero),
            Some(a) if a == basic("slow", "x") => (200, token, Duration::from_secs(3)),
            _ => (401, json!({"error": "invalid_client"}), zero),
        }
    });

    let ok = basic("svc", "s3cret");
    let reply = get(&stack, "/cached", &ok);
    stack.expect(&reply, 200, "valid client credentials");
    assert_eq!(reply.echo().header("x-user"), Some("svc"));
    let calls = stack.auth.requests("/oauth2/token");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "POST");
    assert_eq!(
        calls[0].form().get("grant_type").map(String::as_str),
        Some("client_credentials")
    );
    assert_eq!(
        calls[0].form().get("scope").map(String::as_str),
        Some("read write")
    );
    assert_eq!(calls[0].header("authorization"), Some(ok.as_str()));

    // Cached across both workers: fresh connections, no further exchange.
    for _ in 0..8 {
        stack.expect(&get(&stack, "/cached", &ok), 200, "cached credentials");
    }
    assert_eq!(
        stack.auth.hits("/oauth2/token"),
        1,
        "one exchange for nine requests"
    );
    stack.wait_until(Duration::from_secs(10), "cache hit metric", || {
        stack.metric("client_credentials_cache_hits") >= 8
    });

    // A wrong secret is never served from the cache.
    stack.expect(
        &get(&stack, "/cached", &basic("svc", "wrong")),
        401,
        "wrong secret",
    );
    assert_eq!(stack.auth.hits("/oauth2/token"), 2);
    // No Basic credentials: not responsible, and nobody else is.
    stack.expect(
        &get(&stack, "/cached", "Bearer at-1"),
        401,
        "a bearer token",
    );
    assert_eq!(stack.auth.hits("/oauth2/token"), 2);

    // A broken token endpoint never lets a request through.
    for (client, status) in [
        ("garbage", 401),
        ("empty", 401),
        ("broken", 500),
        ("slow", 503),
    ] {
        let reply = get(&stack, "/plain", &basic(client, "x"));
        stack.expect(&reply, status, client);
    }
    stack.auth.down();
    stack.expect(&get(&stack, "/plain", &ok), 503, "token endpoint down");
    // Cached answers survive an outage of the endpoint; uncached rules do not.
    stack.expect(&get(&stack, "/cached", &ok), 200, "cached while down");
    stack.auth.up();
    stack.expect(&get(&stack, "/plain", &ok), 200, "token endpoint back");
}

/// A private JWK (with kid and alg) of the test key for `alg`, through josekit.
fn private_jwk(pem: &str, kid: &str, alg: &str) -> Jwk {
    let mut jwk = match alg {
        "RS256" => josekit::jws::RS256
            .key_pair_from_pem(pem)
            .unwrap()
            .to_jwk_key_pair(),
        "ES256" => josekit::jws::ES256
            .key_pair_from_pem(pem)
            .unwrap()
            .to_jwk_key_pair(),
        _ => josekit::jws::EdDSA
            .key_pair_from_pem(pem)
            .unwrap()
            .to_jwk_key_pair(),
    };
    jwk.set_key_id(kid);
    jwk.set_algorithm(alg);
    jwk.set_key_use("sig");
    jwk
}

fn jwks_of(jwks: &[&Jwk]) -> Value {
    json!({"keys": jwks.iter().map(|j| Value::Object(j.as_ref().clone())).collect::<Vec<_>>()})
}

/// Verifies `token` with the public half of `private` (josekit) and returns its claims.
fn verify(token: &str, private: &Jwk) -> Value {
    let public = private.to_public_key().unwrap();
    let payload = match private.algorithm() {
        Some("RS256") => {
            let v = josekit::jws::RS256.verifier_from_jwk(&public).unwrap();
            josekit::jwt::decode_with_verifier(token, &v)
        }
        Some("ES256") => {
            let v = josekit::jws::ES256.verifier_from_jwk(&public).unwrap();
            josekit::jwt::decode_with_verifier(token, &v)
        }
        _ => {
            let v = josekit::jws::EdDSA.verifier_from_jwk(&public).unwrap();
            josekit::jwt::decode_with_verifier(token, &v)
        }
    };
    let (payload, header) = payload.unwrap_or_else(|e| panic!("{token} does not verify: {e}"));
    assert_eq!(header.key_id(), private.key_id());
    Value::Object(payload.as_ref().clone())
}

fn bearer(reply: &portcullis_e2e::stack::Reply) -> String {
    let echo = reply.echo();
    let auth = echo.header("authorization").unwrap_or_else(|| {
        panic!("no Authorization upstream: {:?}", echo.headers);
    });
    auth.strip_prefix("Bearer ").unwrap().to_string()
}

#[test]
fn id_token_signed_cached_rotated_and_cookies_merged() {
    let k = keys();
    let rsa = private_jwk(&k.rsa.private_pem, "id-rsa", "RS256");
    let ed = private_jwk(&k.ed25519.private_pem, "id-ed", "EdDSA");
    let stack = Stack::start_with(|auth| {
        auth.set_fixed("/id-keys", 200, jwks_of(&[&rsa]));
        auth.set_fixed("/public-only", 200, k.jwks());
        token_config(
            auth,
            json!([
                rule(
                    "id",
                    "http://<[^/]+>/id/<.*>",
                    json!([{"handler": "oauth2_client_credentials"}]),
                    json!({"handler": "allow"}),
                    json!([
                        {"handler": "id_token", "config": {
                            "ttl": "90s",
                            "claims": r#"{"aud": ["backend"], "path": "{{ printIndex .MatchContext.RegexpCaptureGroups 1 }}", "trace": "{{ .MatchContext.Header.Get "X-Trace" }}"}"#
                        }},
                        {"handler": "cookie", "config": {"cookies": {"user": "{{ print .Subject }}", "processedWith": "oathkeeper"}}}
                    ])
                ),
                rule(
                    "no-private-key",
                    "http://<[^/]+>/nokey",
                    json!([{"handler": "oauth2_client_credentials"}]),
                    json!({"handler": "allow"}),
                    json!([{"handler": "id_token", "config": {"jwks_url": auth.url("/public-only")}}])
                ),
                rule(
                    "no-key-set",
                    "http://<[^/]+>/nokeyset",
                    json!([{"handler": "oauth2_client_credentials"}]),
                    json!({"handler": "allow"}),
                    json!([{"handler": "id_token", "config": {"jwks_url": auth.url("/no-such-keys")}}])
                )
            ]),
        )
    });
    stack.auth.set_handler("/oauth2/token", |_| {
        (
            200,
            json!({"access_token": "at", "expires_in": 3600}),
            Duration::ZERO,
        )
    });
    let creds = basic("svc", "s3cret");
    let hostile = r#"x","sub":"admin","y":"z"#;
    let send = |path: &str| {
        stack.get(
            path,
            &[
                ("authorization", creds.as_str()),
                ("x-trace", hostile),
                ("cookie", "session=abc; user=forged"),
            ],
        )
    };
    let reply = send("/id/orders");
    stack.expect(&reply, 200, "id_token");
    let token = bearer(&reply);
    let claims = verify(&token, &rsa);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(
        claims["sub"], "svc",
        "the client's Basic header was replaced by the token"
    );
    assert_eq!(claims["aud"], json!(["backend"]));
    assert_eq!(claims["path"], "orders");
    assert_eq!(
        claims["trace"], hostile,
        "a header cannot add or override claims"
    );
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 90);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!((iat - portcullis_e2e::keys::now()).abs() < 60);
    assert_eq!(claims["jti"].as_str().map(str::len), Some(36));
    assert_eq!(
        reply.echo().header("cookie"),
        Some("session=abc; processedWith=oathkeeper; user=svc")
    );

    // The same session gets the same token from the cache; another session its own.
    assert_eq!(bearer(&send("/id/orders")), token);
    stack.wait_until(Duration::from_secs(10), "id_token cache hit", || {
        stack.metric("id_token_cache_hits") >= 1
    });
    let other = bearer(&send("/id/invoices"));
    assert_ne!(other, token);
    assert_eq!(verify(&other, &rsa)["path"], "invoices");

    // A rotated key set: the cached token is dropped and the new key signs.
    stack.auth.set_fixed("/id-keys", 200, jwks_of(&[&ed, &rsa]));
    let mut rotated = String::new();
    stack.wait_until(Duration::from_secs(15), "a token of the new key", || {
        rotated = bearer(&send("/id/orders"));
        rotated != token
    });
    let claims = verify(&rotated, &ed);
    assert_eq!(claims["sub"], "svc");

    // No private key at jwks_url: never forwarded without a token.
    let reply = stack.get("/nokey", &[("authorization", creds.as_str())]);
    stack.expect(&reply, 500, "a key set without private keys");
    let reply = stack.get("/nokeyset", &[("authorization", creds.as_str())]);
    stack.expect(&reply, 500, "a key set that cannot be fetched");
    // The private keys appear in no log line and no metric.
    let d = rsa
        .parameter("d")
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    assert!(!stack.envoy.log_tail(10_000).contains(&d));
    assert!(!stack.envoy.stats().contains(&d));
}

#[test]
fn token_handler_config_errors_are_rejected_naming_rule_and_field() {
    let stack = Stack::start_with(|auth| token_config(auth, json!([])));
    for (mutators, authenticators, field) in [
        (
            json!([{"handler": "id_token", "config": {"jwks_url": "file:///etc/secrets/jwks.json"}}]),
            json!([{"handler": "noop"}]),
            "mutators[0].config.jwks_url",
        ),
        (
            json!([{"handler": "cookie", "config": {"cookies": {"bad name": "x"}}}]),
            json!([{"handler": "noop"}]),
            "mutators[0].config.cookies.bad name",
        ),
        (
            json!([{"handler": "noop"}]),
            json!([{"handler": "oauth2_client_credentials", "config": {"cache": {"enabled": true, "max_tokens": 0}}}]),
            "authenticators[0].config.cache.max_tokens",
        ),
        (
            json!([{"handler": "noop"}]),
            json!([{"handler": "oauth2_client_credentials", "config": {"token_url": "ftp://x/"}}]),
            "authenticators[0].config.token_url",
        ),
    ] {
        let bad = token_config(
            &stack.auth,
            json!([rule(
                "broken-rule",
                "http://<.*>/x",
                authenticators,
                json!({"handler": "allow"}),
                mutators
            )]),
        );
        assert_eq!(
            stack.envoy.set_filter_json(&bad),
            portcullis_e2e::ConfigUpdate::Rejected,
            "{field}"
        );
        let needle = format!("rule \"broken-rule\": {field}");
        stack.wait_until(Duration::from_secs(10), &needle, || {
            stack.envoy.log_tail(200).contains(&needle)
        });
    }
}
