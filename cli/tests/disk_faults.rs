//! The data directory on a full disk and on a disk that turns read-only under the running
//! server (a small ext4 filesystem in a private mount namespace, see `support/small_disk.rs`):
//! writes fail with 503 and an RFC 6749 JSON error, the log says so once (not once per request),
//! reads keep working, and once space is back (or the disk repaired) writes work again and the
//! database passes `PRAGMA integrity_check` with every acknowledged write in it.
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;
#[path = "support/small_disk.rs"]
mod small_disk;

use harness::{Reply, Server, TestDir, basic, http, str_field};
use serde_json::json;
use small_disk::SmallDisk;
use std::path::Path;

/// The line the server logs when the data directory stops taking writes.
const UNWRITABLE_LINE: &str = "data directory refuses writes";
/// The line it logs once writes work again.
const WRITABLE_LINE: &str = "data directory takes writes again";

async fn register(srv: &Server) -> Reply {
    Reply::from(
        http()
            .post(format!("{}/admin/clients", srv.admin()))
            .json(
                &json!({"grant_types": ["client_credentials"], "access_token_strategy": "opaque"}),
            )
            .send()
            .await
            .expect("POST /admin/clients"),
    )
    .await
}

async fn opaque_token(srv: &Server, id: &str, secret: &str) -> Reply {
    srv.token_basic(id, secret, &[("grant_type", "client_credentials")])
        .await
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

async fn rotate_key(srv: &Server) -> Reply {
    Reply::from(
        http()
            .post(format!("{}/admin/keys/hydra.jwt.access-token", srv.admin()))
            .json(&json!({"alg": "RS256", "use": "sig"}))
            .send()
            .await
            .expect("POST /admin/keys"),
    )
    .await
}

async fn get_client(srv: &Server, id: &str) -> Reply {
    Reply::from(
        http()
            .get(format!("{}/admin/clients/{id}", srv.admin()))
            .send()
            .await
            .expect("GET client"),
    )
    .await
}

/// Writes of every kind, against a disk that takes none: 503 with `temporarily_unavailable`.
async fn writes_are_refused(srv: &Server, id: &str, secret: &str, token: &str) {
    for (what, r) in [
        ("registration", register(srv).await),
        ("opaque token", opaque_token(srv, id, secret).await),
        ("revocation", revoke(srv, id, secret, token).await),
        ("key rotation", rotate_key(srv).await),
        ("registration again", register(srv).await),
    ] {
        assert_eq!(r.status, 503, "{what}: {}", r.body);
        assert_eq!(
            r.json["error"], "temporarily_unavailable",
            "{what}: {}",
            r.body
        );
        assert!(
            r.json["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}: {}",
            r.body
        );
    }
}

/// Introspection of a token issued before, the JWKS and a client's GET.
async fn reads_work(srv: &Server, id: &str, token: &str) {
    assert_eq!(srv.introspect(token).await["active"], true);
    let keys = srv.jwks().await;
    assert!(!keys["keys"].as_array().expect("keys").is_empty());
    let r = get_client(srv, id).await;
    assert_eq!(r.status, 200, "client GET: {}", r.body);
}

fn count(log: &str, line: &str) -> usize {
    log.lines().filter(|l| l.contains(line)).count()
}

/// Fills the disk, then registers until the disk refuses: a commit that fits in space SQLite
/// already holds (its write-ahead log keeps what it grew to) may still succeed, and must then
/// be kept like any acknowledged write.
async fn fill_until_refused(srv: &Server, disk: &SmallDisk, acked: &mut Vec<String>) {
    disk.fill();
    for _ in 0..64 {
        let r = register(srv).await;
        match r.status {
            201 => acked.push(str_field(&r.json, "client_id")),
            503 => return,
            s => panic!("registration on a full disk: {s} {}", r.body),
        }
    }
    panic!("64 registrations fit on a full disk");
}

/// A copy of the database (taken inside the namespace, server stopped), checked by SQLite
/// itself, with the ids of the clients it holds.
fn checked_copy(disk: &SmallDisk, to: &Path) -> Vec<String> {
    std::fs::create_dir_all(to).expect("copy dir");
    let out = disk.sh(&format!(
        "cp \"$1\"/data/portcullis.sqlite* '{}'/",
        to.display()
    ));
    assert!(out.status.success(), "copy: {out:?}");
    let db = rusqlite::Connection::open(to.join("portcullis.sqlite")).expect("open copy");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok", "database damaged");
    let mut stmt = db.prepare("SELECT client_id FROM clients").expect("select");
    stmt.query_map([], |r| r.get::<_, String>(0))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect()
}

#[tokio::test]
async fn full_then_read_only_data_dir_refuses_writes_keeps_reads_and_loses_nothing() {
    let dir = TestDir::new();
    let mut disk = SmallDisk::new(dir.tmp.path(), 8);
    let data = disk.mount.join("data");
    let mut srv = Server::start_under(&disk.launcher(), &data, &[], &[]).await;
    let client = srv
        .create_client(
            json!({"grant_types": ["client_credentials"], "access_token_strategy": "opaque"}),
        )
        .await;
    let (id, secret) = (
        str_field(&client, "client_id"),
        str_field(&client, "client_secret"),
    );
    let token = str_field(&opaque_token(&srv, &id, &secret).await.json, "access_token");
    let mut acked = vec![id.clone()];

    // Full.
    fill_until_refused(&srv, &disk, &mut acked).await;
    writes_are_refused(&srv, &id, &secret, &token).await;
    reads_work(&srv, &id, &token).await;
    assert_eq!(count(&srv.log(), UNWRITABLE_LINE), 1, "log:\n{}", srv.log());
    disk.free();
    let r = register(&srv).await;
    assert_eq!(r.status, 201, "registration once space is back: {}", r.body);
    acked.push(str_field(&r.json, "client_id"));
    assert_eq!(count(&srv.log(), WRITABLE_LINE), 1, "log:\n{}", srv.log());
    let again = opaque_token(&srv, &id, &secret).await;
    assert_eq!(
        again.status, 200,
        "token once space is back: {}",
        again.body
    );

    // Read-only under the running server (a disk error, ext4 `errors=remount-ro`).
    disk.fail_read_only();
    writes_are_refused(&srv, &id, &secret, &token).await;
    reads_work(&srv, &id, &token).await;
    assert_eq!(count(&srv.log(), UNWRITABLE_LINE), 2, "log:\n{}", srv.log());
    let first_log = srv.log();

    // Repaired (server stopped, fsck, mounted again): everything acknowledged is there, the
    // database is sound, and the restarted server writes.
    srv.kill();
    disk.repair();
    let mut stored = checked_copy(&disk, &dir.tmp.path().join("copy"));
    stored.sort();
    acked.sort();
    for a in &acked {
        assert!(stored.contains(a), "acknowledged client {a} lost");
    }
    srv.restart().await;
    reads_work(&srv, &id, &token).await;
    let r = register(&srv).await;
    assert_eq!(r.status, 201, "registration after the repair: {}", r.body);
    assert_eq!(count(&srv.log(), UNWRITABLE_LINE), 0, "log:\n{}", srv.log());
    for line in first_log.lines() {
        assert!(!line.contains("panicked"), "panic: {line}");
    }
}
