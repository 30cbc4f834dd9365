//! TLS to PostgreSQL as libpq spells it, against a test server with `ssl=on` and a CA made by
//! the test: `verify-full` with the right host name works; a wrong name, an untrusted CA or a
//! server without TLS is refused with one line (never a plaintext fallback); `verify-ca` skips
//! only the name; `require` still works; client certificates in `sslcert`/`sslkey`; and a
//! certificate that goes bad while serving gives 503 and readiness false until it is right.
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use harness::postgres::{self, PgServer};
use harness::{Server, TestDir, http};
use serde_json::json;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SECRET: &str = "test-system-secret-shared-by-replicas";
/// Generous: the machine is shared; the condition is usually met within milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

fn tls_server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start_tls)
}

/// A new database on `pg`: its name.
fn database(pg: &PgServer) -> String {
    let dsn = pg.create_database();
    let tail = dsn.rsplit('/').next().unwrap();
    tail.split('?').next().unwrap().to_string()
}

fn dsn(pg: &PgServer, host: &str, db: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/{db}?{params}", pg.port)
}

fn file(pg: &PgServer, name: &str) -> String {
    pg.tls_file(name).display().to_string()
}

fn portcullis(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("PORTCULLIS_DSN")
        .env_remove("DSN")
        .output()
        .expect("run portcullis")
}

fn migrate(dsn: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["migrate", "--dsn", dsn, "--dsn-statement-timeout", "2s"];
    args.extend_from_slice(extra);
    portcullis(&args)
}

fn migrates(dsn: &str, extra: &[&str]) {
    let out = migrate(dsn, extra);
    assert!(
        out.status.success(),
        "{dsn} {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails with one `portcullis: ...` line naming `why`; `serve` as well as `migrate`.
fn refused(dsn: &str, extra: &[&str], why: &str) {
    let serve = [
        "serve",
        "--dsn",
        dsn,
        "--dsn-statement-timeout",
        "2s",
        "--secrets-system",
        SECRET,
        "--public-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    for out in [
        migrate(dsn, extra),
        portcullis(&[&serve[..], extra].concat()),
    ] {
        assert!(!out.status.success(), "{dsn} {extra:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("portcullis: ") && last.contains(why),
            "{dsn} {extra:?}: want one line with {why:?}, got: {err}"
        );
    }
}

#[test]
fn verify_full_needs_the_right_name_and_a_trusted_ca() {
    let pg = tls_server();
    let db = database(pg);
    let ca = format!("sslrootcert={}", file(pg, "ca.pem"));
    migrates(
        &dsn(pg, "localhost", &db, &format!("sslmode=verify-full&{ca}")),
        &[],
    );
    // The certificate names localhost only.
    refused(
        &dsn(pg, "127.0.0.1", &db, &format!("sslmode=verify-full&{ca}")),
        &[],
        "certificate not valid for name",
    );
    // Signed by a CA we were not told to trust.
    let other = format!("sslrootcert={}", file(pg, "other-ca.pem"));
    refused(
        &dsn(
            pg,
            "localhost",
            &db,
            &format!("sslmode=verify-full&{other}"),
        ),
        &[],
        "UnknownIssuer",
    );
    // No CA given: only the web PKI, which did not sign the test CA.
    refused(
        &dsn(pg, "localhost", &db, "sslmode=verify-full"),
        &[],
        "UnknownIssuer",
    );
    // The key=value spelling says the same.
    migrates(
        &format!(
            "host=localhost port={} user=postgres dbname={db} sslmode=verify-full sslrootcert='{}'",
            pg.port,
            file(pg, "ca.pem")
        ),
        &[],
    );
}

#[test]
fn a_server_without_tls_is_never_used_in_plaintext() {
    let plain = postgres::shared();
    let db = database(plain);
    for mode in ["verify-full", "verify-ca", "require"] {
        refused(
            &dsn(
                plain,
                "localhost",
                &db,
                &format!(
                    "sslmode={mode}&sslrootcert={}",
                    file(tls_server(), "ca.pem")
                ),
            ),
            &[],
            "TLS",
        );
    }
}

#[test]
fn verify_ca_skips_only_the_name_and_require_still_works() {
    let pg = tls_server();
    let db = database(pg);
    let ca = file(pg, "ca.pem");
    migrates(
        &dsn(
            pg,
            "127.0.0.1",
            &db,
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        &[],
    );
    migrates(
        &dsn(pg, "127.0.0.1", &db, "sslmode=verify-ca"),
        &["--dsn-ca-file", &ca],
    );
    refused(
        &dsn(
            pg,
            "127.0.0.1",
            &db,
            &format!("sslmode=verify-ca&sslrootcert={}", file(pg, "other-ca.pem")),
        ),
        &[],
        "UnknownIssuer",
    );
    // Without a CA of its own, verify-ca would accept any public certificate: refused at once.
    refused(
        &dsn(pg, "127.0.0.1", &db, "sslmode=verify-ca"),
        &[],
        "sslmode=verify-ca needs sslrootcert",
    );
    migrates(
        &dsn(pg, "localhost", &db, "sslmode=require"),
        &["--dsn-ca-file", &ca],
    );
}

#[test]
fn client_certificates_come_from_sslcert_and_sslkey() {
    let pg = tls_server();
    let base = format!("sslmode=verify-full&sslrootcert={}", file(pg, "ca.pem"));
    // `certonly` admits the user only with the CA's client certificate for it.
    refused(&dsn(pg, "localhost", "certonly", &base), &[], "certificate");
    migrates(
        &dsn(
            pg,
            "localhost",
            "certonly",
            &format!(
                "{base}&sslcert={}&sslkey={}",
                file(pg, "client.pem"),
                file(pg, "client.key")
            ),
        ),
        &[],
    );
    refused(
        &dsn(
            pg,
            "localhost",
            "certonly",
            &format!("{base}&sslcert={}", file(pg, "client.pem")),
        ),
        &[],
        "sslcert and sslkey go together",
    );
}

#[tokio::test]
async fn a_certificate_gone_wrong_while_serving_answers_503_until_it_is_right() {
    let pg = PgServer::start_tls();
    let db = database(&pg);
    let url = dsn(
        &pg,
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={}", file(&pg, "ca.pem")),
    );
    let dir = TestDir::new();
    let srv = Server::start(
        &dir.data(),
        &[
            "--dsn",
            &url,
            "--secrets-system",
            SECRET,
            "--dsn-statement-timeout",
            "2s",
        ],
    )
    .await;
    srv.create_client(
        json!({"client_id": "o", "client_secret": "tls-secret-0123456789",
        "grant_types": ["client_credentials"], "access_token_strategy": "opaque"}),
    )
    .await;
    let token = srv.token("o", "tls-secret-0123456789", &[]).await;
    assert_eq!(srv.introspect(&token).await["active"], json!(true));

    let status = |path: &'static str| {
        let url = format!("{}{path}", srv.admin());
        async move { http().get(url).send().await.unwrap().status().as_u16() }
    };
    let start = Instant::now();
    pg.swap_certificate("elsewhere.pem", "elsewhere.key");
    while status("/health/ready").await != 503 {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out: readiness false with a certificate for another name"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = srv
        .token_basic(
            "o",
            "tls-secret-0123456789",
            &[("grant_type", "client_credentials")],
        )
        .await;
    r.assert_oauth_error(503, "temporarily_unavailable");

    let start = Instant::now();
    pg.swap_certificate("localhost.pem", "localhost.key");
    while status("/health/ready").await != 200 {
        assert!(start.elapsed() < DEADLINE, "timed out: readiness back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Opaque tokens use the writer's own connection, dropped when the certificate went bad.
    loop {
        let r = srv
            .token_basic(
                "o",
                "tls-secret-0123456789",
                &[("grant_type", "client_credentials")],
            )
            .await;
        if r.status == 200 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "tokens again: {}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
