//! The id-token key set: private document on the admin port only, public halves on the public
//! port, and a key the filter's own signer accepts and an independent library verifies.

use super::*;

async fn private_doc(h: &Harness) -> Value {
    let r = send(&h.admin, get("/admin/id-token/private-jwks.json")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    r.body
}

fn verify_with(public: &Value, token: &str) {
    let jwk = josekit::jwk::Jwk::from_map(public.as_object().unwrap().clone()).unwrap();
    let verifier = match public["alg"].as_str() {
        Some("ES256") => josekit::jws::ES256.verifier_from_jwk(&jwk).unwrap(),
        other => panic!("unexpected alg {other:?}"),
    };
    josekit::jwt::decode_with_verifier(token, &*verifier).unwrap();
}

#[tokio::test]
async fn private_set_on_admin_only_public_halves_published() {
    let h = harness(Alg::RS256);
    let doc = private_doc(&h).await;
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let private = &keys[0];
    assert_eq!(
        (private["kty"].as_str(), private["alg"].as_str()),
        (Some("EC"), Some("ES256"))
    );
    assert!(private["d"].is_string());
    let kid = private["kid"].as_str().unwrap().to_string();

    // The filter's signer takes the document as served; its tokens verify with the public half.
    let set = portcullis_core::jwks::KeySet::parse(doc.to_string().as_bytes()).unwrap();
    let token = set.signer().unwrap().sign(br#"{"sub":"alice"}"#).unwrap();
    let public = send(&h.public, get("/.well-known/id-token/jwks.json")).await;
    assert_eq!(public.status, StatusCode::OK);
    let published = public.body["keys"].as_array().unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["kid"], kid.as_str());
    assert!(published[0].get("d").is_none());
    verify_with(&published[0], &token);

    // Not on the public port; not among the access-token keys.
    let r = send(&h.public, get("/admin/id-token/private-jwks.json")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let access = send(&h.public, get("/.well-known/jwks.json")).await;
    assert!(!access.body.to_string().contains(&kid));
}

#[tokio::test]
async fn rotation_serves_the_new_private_key_and_keeps_the_old_public_one() {
    let h = harness(Alg::ES256);
    let old = private_doc(&h).await["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = send(
        &h.admin,
        json_req(
            "POST",
            "/admin/keys/portcullis.id-token",
            json!({"alg": "RS256"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(r.body.to_string().contains("ES256 or EdDSA"));
    let r = send(
        &h.admin,
        json_req(
            "POST",
            "/admin/keys/portcullis.id-token",
            json!({"alg": "EdDSA"}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let doc = private_doc(&h).await;
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "only the current key is handed out");
    assert_eq!(
        (keys[0]["crv"].as_str(), keys[0]["alg"].as_str()),
        (Some("Ed25519"), Some("EdDSA"))
    );
    assert_ne!(keys[0]["kid"], old.as_str());
    let set = portcullis_core::jwks::KeySet::parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(
        set.signer().unwrap().kid(),
        keys[0]["kid"].as_str().unwrap()
    );
    let public = send(&h.public, get("/.well-known/id-token/jwks.json"))
        .await
        .body;
    let kids: Vec<&str> = public["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&old.as_str()),
        "tokens of the old key still verify: {kids:?}"
    );
    assert_eq!(
        h.svc
            .keys
            .ring()
            .current(crate::id_token_keys::ID_TOKEN_SET)
            .map(|k| k.kid.clone()),
        keys[0]["kid"].as_str().map(String::from)
    );
}
