//! Several replicas of the real `portcullis` binary on one throwaway PostgreSQL: what one
//! replica writes, the others serve at once; two starts racing on an empty database create one
//! key; a replica killed under load loses no acknowledged token; a database outage answers 503
//! and heals by itself; an embedded SQLite store migrates with every client and key usable.
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use harness::postgres::{self, PgServer};
use harness::{Reply, Server, TestDir, basic, http, str_field};
use serde_json::{Value, json};
use std::future::Future;
use std::time::{Duration, Instant};

const SECRET: &str = "test-system-secret-shared-by-replicas";
const ISSUER: &str = "http://issuer.test";
/// Generous: the machine is shared; the condition is usually met within milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

async fn replica(dir: &TestDir, dsn: &str) -> Server {
    Server::start(
        &dir.data(),
        &[
            "--dsn",
            dsn,
            "--secrets-system",
            SECRET,
            "--issuer",
            ISSUER,
            "--signing-alg",
            "ES256",
        ],
    )
    .await
}

/// Polls `check` until it holds; returns how long that took. Panics after [`DEADLINE`].
async fn wait_for<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

async fn token_status(srv: &Server, id: &str, secret: &str) -> u16 {
    srv.token_basic(id, secret, &[("grant_type", "client_credentials")])
        .await
        .status
}

async fn active(srv: &Server, token: &str) -> bool {
    srv.introspect(token).await["active"] == json!(true)
}

async fn put_client(srv: &Server, id: &str, body: Value) {
    let r = Reply::from(
        http()
            .put(format!("{}/admin/clients/{id}", srv.admin()))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "PUT client: {}", r.body);
}

#[tokio::test]
async fn what_one_replica_writes_the_other_serves() {
    let dsn = postgres::shared().create_database();
    let (da, db) = (TestDir::new(), TestDir::new());
    let (a, b) = tokio::join!(replica(&da, &dsn), replica(&db, &dsn));
    assert_eq!(a.jwks().await, b.jwks().await, "one key set, same JWKS");

    // Created at A: B authenticates it at once (no waiting for the change feed).
    let c = a
        .create_client(
            json!({"client_id": "svc", "client_secret": "first-secret-0123456789",
            "grant_types": ["client_credentials"], "scope": "read"}),
        )
        .await;
    let id = str_field(&c, "client_id");
    let jwt = b.token(&id, "first-secret-0123456789", &[]).await;
    assert!(active(&a, &jwt).await, "a JWT issued at B introspects at A");
    b.verify(&jwt).await;
    a.verify(&jwt).await;

    // Opaque tokens live in the database: issued at A, active at B.
    a.create_client(
        json!({"client_id": "opaque", "client_secret": "opaque-secret-0123456789",
        "grant_types": ["client_credentials"], "access_token_strategy": "opaque"}),
    )
    .await;
    let opaque = a.token("opaque", "opaque-secret-0123456789", &[]).await;
    assert!(
        active(&b, &opaque).await,
        "an opaque token issued at A introspects at B"
    );

    // Both replicas have verified (and cached) the first secret; rotate it at A.
    assert_eq!(token_status(&a, &id, "first-secret-0123456789").await, 200);
    put_client(
        &a,
        &id,
        json!({"client_secret": "second-secret-0123456789",
            "grant_types": ["client_credentials"], "scope": "read"}),
    )
    .await;
    let took = wait_for("the rotated-out secret fails at B", || async {
        token_status(&b, &id, "first-secret-0123456789").await == 401
    })
    .await;
    eprintln!("rotated-out secret refused at B after {took:?}");
    assert_eq!(token_status(&b, &id, "second-secret-0123456789").await, 200);

    // Revoked at A: inactive at B.
    let r = http()
        .post(format!("{}/oauth2/revoke", a.public()))
        .header("authorization", basic(&id, "second-secret-0123456789"))
        .form(&[("token", jwt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let took = wait_for("the revoked JWT is inactive at B", || async {
        !active(&b, &jwt).await
    })
    .await;
    eprintln!("revocation effective at B after {took:?}");

    // Rotating the signing key at A publishes it at B.
    let r = http()
        .post(format!(
            "{}/admin/keys/{}",
            a.admin(),
            harness::ACCESS_TOKEN_SET
        ))
        .json(&json!({"alg": "ES256", "use": "sig", "kid": "rotated-at-a"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create key: {}", r.status());
    wait_for("the key rotated at A is in B's JWKS", || async {
        b.jwks().await.to_string().contains("rotated-at-a")
    })
    .await;
    assert_eq!(a.jwks().await, b.jwks().await);
    let signed_by_new = b.token(&id, "second-secret-0123456789", &[]).await;
    assert_eq!(harness::jwt_parts(&signed_by_new).0["kid"], "rotated-at-a");
    assert!(active(&a, &signed_by_new).await);

    // Deleted at A: refused at B, and its opaque token is gone too.
    let r = http()
        .delete(format!("{}/admin/clients/{id}", a.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_for("the deleted client is refused at B", || async {
        token_status(&b, &id, "second-secret-0123456789").await == 401
    })
    .await;
    assert!(!active(&b, &signed_by_new).await);
}

#[tokio::test]
async fn replicas_racing_on_an_empty_database_create_one_key() {
    let dsn = postgres::shared().create_database();
    let dirs: Vec<TestDir> = (0..3).map(|_| TestDir::new()).collect();
    let (a, b, c) = tokio::join!(
        replica(&dirs[0], &dsn),
        replica(&dirs[1], &dsn),
        replica(&dirs[2], &dsn)
    );
    let jwks = a.jwks().await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(b.jwks().await, jwks);
    assert_eq!(c.jwks().await, jwks);
    // One key per set: the access-token set and the id_token mutator's set, each made once.
    for set in ["hydra.jwt.access-token", "portcullis.id-token"] {
        assert_eq!(
            PgServer::query_one_i64(
                &dsn,
                &format!("SELECT count(*) FROM keys WHERE set_name = '{set}'")
            ),
            1,
            "{set}"
        );
    }
    // Private keys are sealed at rest: the stored bytes are not a PKCS#8 document.
    assert_eq!(
        PgServer::query_one_i64(
            &dsn,
            "SELECT count(*) FROM keys WHERE position('\\x3081'::bytea in private_sealed) = 1"
        ),
        0
    );
}

#[tokio::test]
async fn a_replica_killed_under_load_loses_no_acknowledged_token() {
    let dsn = postgres::shared().create_database();
    let (da, db) = (TestDir::new(), TestDir::new());
    let (mut a, b) = tokio::join!(replica(&da, &dsn), replica(&db, &dsn));
    a.create_client(
        json!({"client_id": "load", "client_secret": "load-secret-0123456789",
        "grant_types": ["client_credentials"], "access_token_strategy": "opaque"}),
    )
    .await;
    let endpoints = [a.token_endpoint(), b.token_endpoint()];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let url = endpoints[w % 2].clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let client = http();
                let (mut acknowledged, mut failures) = (Vec::new(), 0u32);
                while !*stop.borrow() {
                    let r = client
                        .post(&url)
                        .header("authorization", basic("load", "load-secret-0123456789"))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            let v: Value = r.json().await.unwrap();
                            acknowledged.push(str_field(&v, "access_token"));
                        }
                        _ => failures += 1,
                    }
                }
                (w % 2, acknowledged, failures)
            })
        })
        .collect();
    let issued = || PgServer::query_one_i64(&dsn, "SELECT count(*) FROM opaque_tokens");
    wait_for("load is flowing", || async { issued() >= 50 }).await;
    a.kill();
    let at_kill = issued();
    wait_for("B keeps issuing after A died", || async {
        issued() >= at_kill + 100
    })
    .await;
    stop_tx.send(true).unwrap();
    let mut all = Vec::new();
    for w in workers {
        let (replica, acknowledged, failures) = w.await.unwrap();
        if replica == 1 {
            assert_eq!(failures, 0, "B must not fail while A dies");
        }
        all.extend(acknowledged);
    }
    assert!(all.len() >= 150, "only {} tokens", all.len());
    for t in &all {
        assert!(active(&b, t).await, "acknowledged token {t} lost");
    }
}

#[tokio::test]
async fn a_database_outage_answers_503_and_heals() {
    let pg = PgServer::start();
    let dsn = pg.create_database();
    let dir = TestDir::new();
    let srv = replica(&dir, &dsn).await;
    srv.create_client(
        json!({"client_id": "c", "client_secret": "outage-secret-0123456789",
        "grant_types": ["client_credentials"]}),
    )
    .await;
    assert_eq!(
        token_status(&srv, "c", "outage-secret-0123456789").await,
        200
    );

    // Load during the whole outage: every answer is 200 or a 503 JSON error, nothing else.
    let url = srv.token_endpoint();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let client = http();
        let mut seen = std::collections::BTreeMap::<u16, u32>::new();
        while !*stop_rx.borrow() {
            let r = Reply::from(
                client
                    .post(&url)
                    .header("authorization", basic("c", "outage-secret-0123456789"))
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await
                    .expect("the service answers during the outage"),
            )
            .await;
            if r.status == 503 {
                r.assert_oauth_error(503, "temporarily_unavailable");
            }
            *seen.entry(r.status).or_default() += 1;
        }
        seen
    });

    pg.stop();
    let ready = |want: u16| {
        let url = format!("{}/health/ready", srv.admin());
        async move { http().get(url).send().await.unwrap().status() == want }
    };
    wait_for("readiness false while PostgreSQL is down", || ready(503)).await;
    wait_for("tokens answer 503 while PostgreSQL is down", || async {
        token_status(&srv, "c", "outage-secret-0123456789").await == 503
    })
    .await;
    let r = srv
        .token_basic(
            "c",
            "outage-secret-0123456789",
            &[("grant_type", "client_credentials")],
        )
        .await;
    r.assert_oauth_error(503, "temporarily_unavailable");
    let i = Reply::from(
        http()
            .post(format!("{}/admin/oauth2/introspect", srv.admin()))
            .form(&[("token", "ptc_at_whatever")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    i.assert_oauth_error(503, "temporarily_unavailable");

    pg.restart();
    wait_for("readiness back after PostgreSQL returns", || ready(200)).await;
    wait_for("tokens issued again", || async {
        token_status(&srv, "c", "outage-secret-0123456789").await == 200
    })
    .await;
    stop_tx.send(true).unwrap();
    let seen = load.await.unwrap();
    assert!(
        seen.keys().all(|s| *s == 200 || *s == 503),
        "statuses under load: {seen:?}"
    );
    assert!(
        seen.contains_key(&503) && seen.contains_key(&200),
        "{seen:?}"
    );
}

fn portcullis(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("PORTCULLIS_DSN")
        .env_remove("DSN")
        .output()
        .expect("run portcullis")
}

#[tokio::test]
async fn an_embedded_store_migrates_with_every_client_and_key_usable() {
    let dir = TestDir::new();
    let mut embedded =
        Server::start(&dir.data(), &["--issuer", ISSUER, "--signing-alg", "ES256"]).await;
    // The generated secret of a `make run` install: the replicas are given the same one.
    let secret_file = dir.data().join("secrets.key");
    let (jwt_id, jwt_secret) = embedded.cc_client("read", &[]).await;
    embedded
        .create_client(
            json!({"client_id": "opaque", "client_secret": "opaque-secret-0123456789",
            "grant_types": ["client_credentials"], "access_token_strategy": "opaque"}),
        )
        .await;
    let jwt = embedded.token(&jwt_id, &jwt_secret, &[]).await;
    let opaque = embedded
        .token("opaque", "opaque-secret-0123456789", &[])
        .await;
    let jwks = embedded.jwks().await;
    embedded.stop().await;

    let dsn = postgres::shared().create_database();
    let data = dir.data().display().to_string();
    let out = portcullis(&["migrate", "--dsn", &dsn, "--from-sqlite", &data]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    // Both key sets: access tokens and the id_token mutator's.
    assert!(said.contains("2 clients, 2 keys"), "{said}");
    // Again: nothing new, nothing lost.
    let out = portcullis(&["migrate", "--dsn", &dsn, "--from-sqlite", &data]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied 0 of"));

    let other = TestDir::new();
    let secret_path = secret_file.display().to_string();
    let srv = Server::start(
        &other.data(),
        &[
            "--dsn",
            &dsn,
            "--secrets-file",
            &secret_path,
            "--issuer",
            ISSUER,
        ],
    )
    .await;
    assert_eq!(
        srv.jwks().await,
        jwks,
        "the same key, unsealed with the same secret"
    );
    assert!(active(&srv, &jwt).await, "a JWT issued before the move");
    assert!(
        active(&srv, &opaque).await,
        "an opaque token issued before the move"
    );
    let fresh = srv.token(&jwt_id, &jwt_secret, &[]).await;
    srv.verify(&fresh).await;
    assert_eq!(harness::jwt_parts(&fresh).0["kid"], jwks["keys"][0]["kid"]);
    srv.token("opaque", "opaque-secret-0123456789", &[]).await;
}

#[test]
fn a_newer_schema_is_refused_with_one_line() {
    let dsn = postgres::shared().create_database();
    let out = portcullis(&["migrate", "--dsn", &dsn]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = portcullis(&["migrate", "--dsn", &dsn]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already current"));
    PgServer::execute(&dsn, "INSERT INTO portcullis_schema VALUES (999, 0)");
    for args in [
        vec!["migrate", "--dsn", dsn.as_str()],
        vec![
            "serve",
            "--dsn",
            dsn.as_str(),
            "--secrets-system",
            SECRET,
            "--public-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ],
    ] {
        let out = portcullis(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("portcullis: ") && last.contains("schema is version 999"),
            "{args:?}: {err}"
        );
    }
    // Without the shared secret a replica refuses to start (each would seal keys differently).
    let out = portcullis(&[
        "serve",
        "--dsn",
        &dsn,
        "--public-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("system secret"));
    // A DSN that is not one: one clear line.
    let out = portcullis(&["migrate", "--dsn", "postgres://x@h/db?sslmode=sometimes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --dsn"));
}

async fn revoke(srv: &Server, id: &str, secret: &str, token: &str) {
    let r = http()
        .post(format!("{}/oauth2/revoke", srv.public()))
        .header("authorization", basic(id, secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn introspect_status(srv: &Server, token: &str) -> (u16, Value) {
    let r = Reply::from(
        http()
            .post(format!("{}/admin/oauth2/introspect", srv.admin()))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

/// Active at `srv` twice: the second answer comes from its cache of opaque tokens.
async fn active_twice(srv: &Server, token: &str) {
    assert!(active(srv, token).await, "active (read from the database)");
    assert!(active(srv, token).await, "active (from the cache)");
}

/// Hashes as the store keeps them, for deleting rows behind the replicas' backs.
fn hash_hex(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

const OPAQUE_SECRET: &str = "opaque-secret-0123456789";

async fn opaque_client(srv: &Server, id: &str) {
    srv.create_client(json!({"client_id": id, "client_secret": OPAQUE_SECRET,
        "grant_types": ["client_credentials"], "access_token_strategy": "opaque"}))
        .await;
}

#[tokio::test]
async fn opaque_tokens_cached_at_one_replica_follow_deletions_at_another() {
    let dsn = postgres::shared().create_database();
    let (da, db) = (TestDir::new(), TestDir::new());
    let (a, b) = tokio::join!(replica(&da, &dsn), replica(&db, &dsn));
    opaque_client(&a, "opaque").await;
    opaque_client(&a, "doomed").await;

    // Revoked at A: B, which has the token cached, stops answering active.
    let revoked = a.token("opaque", OPAQUE_SECRET, &[]).await;
    let kept = a.token("opaque", OPAQUE_SECRET, &[]).await;
    active_twice(&b, &revoked).await;
    active_twice(&b, &kept).await;
    revoke(&a, "opaque", OPAQUE_SECRET, &revoked).await;
    assert!(
        !active(&a, &revoked).await,
        "inactive at once where revoked"
    );
    let took = wait_for("the revoked opaque token is inactive at B", || async {
        !active(&b, &revoked).await
    })
    .await;
    eprintln!("opaque revocation effective at B after {took:?}");
    assert!(active(&b, &kept).await, "only the revoked token went");

    // Revoked at B itself: inactive there at once (evicted locally, not by the feed).
    active_twice(&b, &kept).await;
    revoke(&b, "opaque", OPAQUE_SECRET, &kept).await;
    assert!(!active(&b, &kept).await);

    // The client deleted at A: its tokens cached at B go.
    let orphan = a.token("doomed", OPAQUE_SECRET, &[]).await;
    active_twice(&b, &orphan).await;
    let r = http()
        .delete(format!("{}/admin/clients/doomed", a.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_for(
        "the deleted client's opaque token is inactive at B",
        || async { !active(&b, &orphan).await },
    )
    .await;

    // Many rows deleted in one statement (too many to name in a notification): B forgets its
    // whole cache.
    let bulk = a.token("opaque", OPAQUE_SECRET, &[]).await;
    active_twice(&b, &bulk).await;
    PgServer::execute(
        &dsn,
        "INSERT INTO opaque_tokens (hash, client_id, scopes, audience, issued_at, expires_at)
         SELECT sha256(i::text::bytea), 'opaque', '', '', 0, 4102444800
         FROM generate_series(1, 300) i;
         DELETE FROM opaque_tokens WHERE client_id = 'opaque';",
    );
    assert_eq!(
        PgServer::query_one_i64(
            &dsn,
            &format!(
                "SELECT count(*) FROM opaque_tokens WHERE hash = '\\x{}'",
                hash_hex(&bulk)
            )
        ),
        0
    );
    wait_for("a token deleted in bulk is inactive at B", || async {
        !active(&b, &bulk).await
    })
    .await;
}

#[tokio::test]
async fn a_replica_cut_off_from_the_change_feed_answers_nothing_from_its_cache() {
    let pg = postgres::shared();
    let dsn = pg.create_database();
    let name = dsn
        .rsplit('/')
        .next()
        .and_then(|s| s.split('?').next())
        .unwrap()
        .to_string();
    let (da, db) = (TestDir::new(), TestDir::new());
    let (a, b) = tokio::join!(replica(&da, &dsn), replica(&db, &dsn));
    opaque_client(&a, "opaque").await;
    let token = a.token("opaque", OPAQUE_SECRET, &[]).await;
    active_twice(&b, &token).await;

    // Cut every replica off from the feed (its connection killed, new connections refused),
    // then delete the token: the notification reaches nobody.
    let (admin, target, db_name) = (pg.dsn("postgres"), dsn.clone(), name.clone());
    let hash = hash_hex(&token);
    std::thread::spawn(move || {
        let mut c = ::postgres::Client::connect(&target, ::postgres::NoTls).unwrap();
        let mut adm = ::postgres::Client::connect(&admin, ::postgres::NoTls).unwrap();
        adm.batch_execute(&format!("ALTER DATABASE {db_name} ALLOW_CONNECTIONS false"))
            .unwrap();
        // This database's feeds only: other tests share the server.
        let feeds = "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = 'portcullis-change-feed' \
                     AND datname = current_database()";
        c.batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'portcullis-change-feed'
             AND datname = current_database()",
        )
        .unwrap();
        let start = Instant::now();
        while c.query_one(feeds, &[]).unwrap().get::<_, i64>(0) > 0 {
            assert!(
                start.elapsed() < DEADLINE,
                "the feeds' backends did not exit"
            );
            std::thread::yield_now();
        }
        let n = c
            .execute(
                &format!("DELETE FROM opaque_tokens WHERE hash = '\\x{hash}'"),
                &[],
            )
            .unwrap();
        assert_eq!(n, 1);
    })
    .join()
    .unwrap();

    // While cut off, B answers 503 rather than from what it cached.
    wait_for("B answers 503 while its feed is down", || async {
        introspect_status(&b, &token).await.0 == 503
    })
    .await;
    let (status, body) = introspect_status(&b, &token).await;
    assert_eq!(status, 503, "{body}");
    assert_ne!(body["active"], json!(true));

    // Back: B serves again, and not the row deleted while it was away.
    PgServer::execute(
        &pg.dsn("postgres"),
        &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
    );
    wait_for("B serves again once its feed is back", || async {
        introspect_status(&b, &token).await.0 == 200
    })
    .await;
    assert!(!active(&b, &token).await, "B answered from a stale cache");
    wait_for("A serves again once its feed is back", || async {
        introspect_status(&a, &token).await.0 == 200
    })
    .await;
    let fresh = a.token("opaque", OPAQUE_SECRET, &[]).await;
    active_twice(&b, &fresh).await;
}
