//! The PostgreSQL store against the [`Store`] contract the SQLite store's unit tests check
//! (conflicts, paging, single-winner compare-and-sets, purging), plus what only a shared store
//! has: the change feed, the cross-replica lock, and importing a SQLite snapshot.
// A test crate: failing loudly (expect/panic) is how it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/postgres.rs"]
mod pg;

use portcullis::store::postgres::{Options, PostgresStore};
use portcullis::store::sqlite::SqliteStore;
use portcullis::store::{
    ChainKey, Change, ClientFilter, StepRows, Store, StoreError, StoredClient, StoredFlow,
    StoredKey, StoredOpaqueToken, StoredRefreshToken, StoredSession,
};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

fn store() -> PostgresStore {
    store_at(&pg::shared().create_database())
}

fn store_at(dsn: &str) -> PostgresStore {
    let s = PostgresStore::connect(dsn, &Options::default()).unwrap();
    assert_eq!(
        s.migrate().unwrap(),
        (1..=PostgresStore::schema_version()).collect::<Vec<_>>()
    );
    assert!(
        s.migrate().unwrap().is_empty(),
        "migrating twice is a no-op"
    );
    s
}

fn client(id: &str) -> StoredClient {
    StoredClient {
        client_id: id.into(),
        json: format!(r#"{{"client_id":"{id}"}}"#),
        secret_hash: Some("$hash".into()),
        created_at: 1,
        updated_at: 2,
    }
}

fn key(kid: &str) -> StoredKey {
    StoredKey {
        set: "set".into(),
        kid: kid.into(),
        alg: "ES256".into(),
        private_sealed: vec![1, 2, 3],
        created_at: 10,
        expires_at: None,
    }
}

/// A browser grant's opaque access token for the person "s".
fn opaque(b: u8, client: &str, grant: &str) -> StoredOpaqueToken {
    StoredOpaqueToken {
        hash: [b; 32],
        client_id: client.into(),
        subject: "s".into(),
        scopes: vec!["openid".into()],
        audience: vec!["api".into()],
        issued_at: 1,
        expires_at: 100,
        grant_id: Some(grant.into()),
        ext: Some(r#"{"team":"blue"}"#.into()),
    }
}

/// The chain key of [`rt`]'s rows.
fn chain_key(chain: &str) -> ChainKey {
    ChainKey {
        subject: "s".into(),
        client_id: "c".into(),
        chain: chain.into(),
    }
}

fn rt(b: u8, chain: &str) -> StoredRefreshToken {
    StoredRefreshToken {
        hash: [b; 32],
        chain: chain.into(),
        client_id: "c".into(),
        subject: "s".into(),
        active: true,
        used_at: None,
        json: "{}".into(),
        expires_at: 100,
    }
}

#[test]
fn clients_keys_and_pages() {
    let s = store();
    for id in ["c", "a", "e", "b", "d"] {
        s.insert_client(&client(id)).unwrap();
    }
    assert!(matches!(
        s.insert_client(&client("a")),
        Err(StoreError::Conflict(_))
    ));
    let all = ClientFilter::default();
    let ids = |v: Vec<StoredClient>| v.into_iter().map(|c| c.client_id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_clients(None, 2, &all).unwrap()), ["a", "b"]);
    assert_eq!(ids(s.list_clients(Some("b"), 2, &all).unwrap()), ["c", "d"]);
    let mut named = client("f");
    named.json = r#"{"client_id":"f","client_name":"Fox","owner":"team"}"#.into();
    s.insert_client(&named).unwrap();
    let by_name = ClientFilter {
        client_name: Some("Fox".into()),
        owner: Some("team".into()),
    };
    assert_eq!(ids(s.list_clients(None, 10, &by_name).unwrap()), ["f"]);
    let mut c = client("b");
    c.json = "{}".into();
    assert!(s.update_client(&c).unwrap());
    assert!(!s.update_client(&client("zz")).unwrap());
    assert_eq!(s.get_client("b").unwrap().unwrap().json, "{}");
    assert!(s.delete_client("a").unwrap());
    assert!(!s.delete_client("a").unwrap());
    assert_eq!(s.get_client("a").unwrap(), None);

    s.insert_key(&key("k1")).unwrap();
    s.insert_key(&key("k2")).unwrap();
    assert!(matches!(
        s.insert_key(&key("k1")),
        Err(StoreError::Conflict(_))
    ));
    s.retire_keys("set", "k2", 100).unwrap();
    let keys = s.list_keys().unwrap();
    assert_eq!((keys[0].expires_at, keys[1].expires_at), (Some(100), None));
    assert_eq!(keys[0].private_sealed, vec![1, 2, 3]);
    assert_eq!(s.purge_expired(99).unwrap(), 0);
    assert_eq!(s.purge_expired(100).unwrap(), 1);
    assert_eq!(s.list_keys().unwrap().len(), 1);
}

#[test]
fn tokens_revocations_jtis_flows_sessions_and_refresh_chains() {
    let s = store();
    let t = StoredOpaqueToken {
        hash: [7; 32],
        client_id: "c".into(),
        subject: "c".into(),
        scopes: vec!["a".into(), "b".into()],
        audience: vec![],
        issued_at: 1,
        expires_at: 50,
        grant_id: None,
        ext: None,
    };
    s.insert_opaque_token(&t).unwrap();
    assert!(s.insert_opaque_token(&t).is_err(), "a duplicate is refused");
    assert_eq!(s.get_opaque_token(&[7; 32]).unwrap(), Some(t));
    s.delete_client_tokens("c").unwrap();
    assert_eq!(s.get_opaque_token(&[7; 32]).unwrap(), None);

    s.insert_revocation("j1", 50).unwrap();
    s.insert_revocation("j1", 60).unwrap();
    assert_eq!(s.list_revocations(10).unwrap(), vec![("j1".into(), 60)]);
    assert!(s.use_assertion_jti("c", "x", 50).unwrap());
    assert!(!s.use_assertion_jti("c", "x", 50).unwrap(), "a replay");
    assert!(s.use_assertion_jti("d", "x", 50).unwrap());

    let f = StoredFlow {
        id: "f".into(),
        stage: 0,
        json: "{}".into(),
        expires_at: 100,
    };
    s.insert_flow(&f).unwrap();
    let next = StoredFlow {
        stage: 1,
        ..f.clone()
    };
    assert!(s.advance_flow(0, &next).unwrap());
    assert!(!s.advance_flow(0, &next).unwrap(), "a stage is left once");
    assert_eq!(s.get_flow("f").unwrap(), Some(next.clone()));
    // A step's rows commit with its compare-and-set, or (lost) not at all.
    let step = |jti: &str| StepRows {
        refresh_tokens: vec![],
        sessions: vec![(
            "userinfo".into(),
            StoredSession {
                id: jti.into(),
                subject: "alice".into(),
                json: "{}".into(),
                expires_at: 100,
            },
        )],
        revocations: vec![(jti.into(), 100)],
        ..StepRows::default()
    };
    let later = StoredFlow {
        stage: 2,
        ..f.clone()
    };
    assert!(s.advance_flow_with(1, &later, &step("won")).unwrap());
    assert!(!s.advance_flow_with(1, &later, &step("lost")).unwrap());
    assert!(s.get_session("userinfo", "won").unwrap().is_some());
    assert!(s.get_session("userinfo", "lost").unwrap().is_none());
    let revoked = s.list_revocations(10).unwrap();
    assert!(revoked.iter().any(|(j, _)| j == "won"));
    assert!(!revoked.iter().any(|(j, _)| j == "lost"));
    assert!(s.delete_session("userinfo", "won").unwrap());

    let sess = |id: &str| StoredSession {
        id: id.into(),
        subject: "alice".into(),
        json: "{}".into(),
        expires_at: 100,
    };
    s.put_session("login", &sess("s2")).unwrap();
    s.put_session("login", &sess("s1")).unwrap();
    s.put_session("login", &sess("s1")).unwrap();
    let listed = s.list_sessions("login", "alice").unwrap();
    assert_eq!(
        listed.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert!(s.delete_session("login", "s1").unwrap());
    assert_eq!(s.delete_sessions("login", "alice").unwrap(), 1);

    s.insert_refresh_token(&rt(1, "ch")).unwrap();
    // Browser-grant opaque access tokens: one issued with the first refresh token, the
    // successor's in the rotation's transaction (which deletes the first), and one of another
    // grant of the same person.
    s.insert_opaque_token(&opaque(1, "c", "ch")).unwrap();
    s.insert_opaque_token(&opaque(9, "c", "other")).unwrap();
    assert_eq!(
        s.get_opaque_token(&[1; 32]).unwrap(),
        Some(opaque(1, "c", "ch")),
        "the batch insert keeps subject, grant and ext"
    );
    let rotation = StepRows {
        opaque_tokens: vec![opaque(2, "c", "ch")],
        revoked_opaque_tokens: vec![[1; 32]],
        ..StepRows::default()
    };
    assert!(
        s.rotate_refresh_token(&[1; 32], &rt(2, "ch"), 50, &rotation)
            .unwrap()
    );
    assert_eq!(s.get_opaque_token(&[1; 32]).unwrap(), None);
    assert_eq!(
        s.get_opaque_token(&[2; 32]).unwrap(),
        Some(opaque(2, "c", "ch"))
    );
    let late = StepRows {
        opaque_tokens: vec![opaque(3, "c", "ch")],
        revoked_opaque_tokens: vec![[2; 32]],
        ..StepRows::default()
    };
    assert!(
        !s.rotate_refresh_token(&[1; 32], &rt(3, "ch"), 51, &late)
            .unwrap()
    );
    assert!(s.get_opaque_token(&[3; 32]).unwrap().is_none());
    assert!(s.get_opaque_token(&[2; 32]).unwrap().is_some());
    assert!(
        s.get_refresh_token(&[3; 32]).unwrap().is_none(),
        "the loser writes nothing"
    );
    assert_eq!(
        s.get_refresh_token(&[1; 32]).unwrap().unwrap().used_at,
        Some(50)
    );
    let chain = s.revoke_refresh_chain(&chain_key("ch")).unwrap();
    assert_eq!(chain.len(), 2);
    assert!(chain.iter().all(|t| !t.active && t.used_at.is_none()));
    // Any row of a chain, revoked or not, carries its grant; an unknown chain has none.
    let of_chain = s.refresh_token_of_chain(&chain_key("ch")).unwrap().unwrap();
    assert_eq!(of_chain.chain, "ch");
    assert!(
        s.refresh_token_of_chain(&chain_key("nope"))
            .unwrap()
            .is_none()
    );
    let elsewhere = ChainKey {
        subject: "mallory".into(),
        ..chain_key("ch")
    };
    assert!(
        s.refresh_token_of_chain(&elsewhere).unwrap().is_none(),
        "a chain is found only under its own person"
    );
    assert!(
        s.get_opaque_token(&[2; 32]).unwrap().is_none(),
        "the chain's opaque tokens go with it"
    );
    assert!(s.get_opaque_token(&[9; 32]).unwrap().is_some());
    s.insert_refresh_token(&rt(4, "other")).unwrap();
    // A client_credentials token of a client named like the person stays.
    let m2m = StoredOpaqueToken {
        hash: [8; 32],
        client_id: "s".into(),
        subject: "s".into(),
        expires_at: 50,
        ..StoredOpaqueToken::default()
    };
    s.insert_opaque_token(&m2m).unwrap();
    assert!(
        s.revoke_refresh_tokens_of("s", Some("d"))
            .unwrap()
            .is_empty()
    );
    assert!(s.get_opaque_token(&[9; 32]).unwrap().is_some());
    assert_eq!(s.revoke_refresh_tokens_of("s", Some("c")).unwrap().len(), 3);
    assert!(s.get_opaque_token(&[9; 32]).unwrap().is_none());
    assert_eq!(s.get_opaque_token(&[8; 32]).unwrap(), Some(m2m));
    s.delete_opaque_token(&[8; 32]).unwrap();
    // 3 refresh tokens, the flow, 2 revocations, 2 jtis.
    assert_eq!(s.purge_expired(100).unwrap(), 8);
}

/// Opaque tokens are group-committed: the rows queued while a batch is being written go in
/// together as the next one, and each caller still gets its own row's outcome.
#[test]
fn opaque_tokens_queued_meanwhile_commit_as_one_batch() {
    let dsn = pg::shared().create_database();
    let s = Arc::new(store_at(&dsn));
    let token = |b: u8| StoredOpaqueToken {
        hash: [b; 32],
        client_id: "c".into(),
        scopes: vec!["s".into()],
        audience: vec!["a".into(), "b".into()],
        issued_at: 1,
        expires_at: 50,
        ..StoredOpaqueToken::default()
    };
    // Hold the writer inside its first batch: the table is locked by another session.
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let lock_dsn = dsn.clone();
    let holder = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&lock_dsn, postgres::NoTls).unwrap();
        let mut tx = c.transaction().unwrap();
        tx.batch_execute("LOCK TABLE opaque_tokens IN EXCLUSIVE MODE")
            .unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        tx.commit().unwrap();
    });
    locked_rx.recv().unwrap();
    let insert = |b: u8| {
        let s = Arc::clone(&s);
        let t = token(b);
        std::thread::spawn(move || s.insert_opaque_token(&t))
    };
    let first = insert(0);
    wait_for(|| {
        pg::PgServer::query_one_i64(
            &dsn,
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO opaque_tokens%'",
        ) == 1
    });
    // 1..=15, 1 again (a duplicate within the batch), 0 again (already in the first batch).
    let mut rest: Vec<_> = (1..=15).chain([1, 0]).map(insert).collect();
    wait_for(|| s.queued_opaque_tokens() == 17);
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    first.join().unwrap().unwrap();
    let dup_of_first = rest.pop().unwrap().join().unwrap();
    assert!(matches!(dup_of_first, Err(StoreError::Conflict(_))));
    let outcomes: Vec<_> = rest.into_iter().map(|h| h.join().unwrap()).collect();
    let conflicts = outcomes
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
        .count();
    assert_eq!(
        conflicts, 1,
        "one of the two callers of hash 1: {outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 15);
    for b in 0..=15 {
        assert_eq!(s.get_opaque_token(&[b; 32]).unwrap(), Some(token(b)));
    }
    // Two transactions in all: the first token's, and everything queued behind it.
    assert_eq!(
        pg::PgServer::query_one_i64(&dsn, "SELECT COUNT(DISTINCT xmin::text) FROM opaque_tokens"),
        2
    );
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for a condition"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_refresh_rotations_have_one_winner() {
    let s = Arc::new(store());
    s.insert_refresh_token(&rt(1, "race")).unwrap();
    let handles: Vec<_> = (0..8u8)
        .map(|i| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                s.rotate_refresh_token(&[1; 32], &rt(10 + i, "race"), 5, &StepRows::default())
            })
        })
        .collect();
    let winners = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(winners, 1);
    let chain = s.revoke_refresh_chain(&chain_key("race")).unwrap();
    assert_eq!(chain.len(), 2, "the old token and the one successor");
}

#[test]
fn the_change_feed_reports_writes_and_the_lock_excludes() {
    let s = store();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    s.watch(Box::new(move |c| tx.lock().unwrap().send(c).is_ok()))
        .unwrap();
    let next = || rx.recv_timeout(Duration::from_secs(20)).expect("a change");
    assert_eq!(next(), Change::Resync, "connecting reports a full reload");
    s.insert_client(&client("a")).unwrap();
    assert_eq!(next(), Change::Client("a".into()));
    s.delete_client("a").unwrap();
    assert_eq!(next(), Change::Client("a".into()));
    s.insert_key(&key("k")).unwrap();
    assert_eq!(next(), Change::Keys);
    s.insert_revocation("jti 1", 77).unwrap();
    assert_eq!(
        next(),
        Change::Revocation {
            jti: "jti 1".into(),
            expires_at: 77
        }
    );
    // A jti too long for a notification payload still reaches the others, as a full reload.
    s.insert_revocation(&"j".repeat(5000), 77).unwrap();
    assert_eq!(next(), Change::Resync);

    // The lock: a second holder waits until the first lets go.
    let s = Arc::new(s);
    let first = s.lock("keys").unwrap();
    let (got_tx, got_rx) = mpsc::channel();
    let s2 = Arc::clone(&s);
    let waiter = std::thread::spawn(move || {
        let _second = s2.lock("keys").unwrap();
        got_tx.send(()).unwrap();
    });
    // Another name is not excluded meanwhile.
    drop(s.lock("other").unwrap());
    assert!(got_rx.try_recv().is_err(), "the second holder got in early");
    drop(first);
    got_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the second holder gets the lock once the first drops it");
    waiter.join().unwrap();
}

/// Rows written before migration 2 have no subject, grant or ext: client_credentials tokens,
/// whose subject is the client.
#[test]
fn opaque_tokens_from_before_browser_grants_read_as_the_clients() {
    let dsn = pg::shared().create_database();
    let s = store_at(&dsn);
    pg::PgServer::execute(
        &dsn,
        "INSERT INTO opaque_tokens (hash, client_id, scopes, audience, issued_at, expires_at)
         VALUES (decode(repeat('09', 32), 'hex'), 'm2m', 'read write', 'api', 1, 100)",
    );
    assert_eq!(
        s.get_opaque_token(&[9; 32]).unwrap(),
        Some(StoredOpaqueToken {
            hash: [9; 32],
            client_id: "m2m".into(),
            subject: "m2m".into(),
            scopes: vec!["read".into(), "write".into()],
            audience: vec!["api".into()],
            issued_at: 1,
            expires_at: 100,
            grant_id: None,
            ext: None,
        })
    );
}

#[test]
fn a_sqlite_snapshot_imports_once() {
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteStore::open(dir.path()).unwrap();
    lite.insert_client(&client("a")).unwrap();
    lite.insert_key(&key("k")).unwrap();
    lite.insert_revocation("j", 90).unwrap();
    lite.insert_refresh_token(&rt(1, "ch")).unwrap();
    lite.insert_opaque_token(&opaque(2, "a", "ch")).unwrap();
    lite.put_session(
        "consent",
        &StoredSession {
            id: "a alice".into(),
            subject: "alice".into(),
            json: "{}".into(),
            expires_at: 100,
        },
    )
    .unwrap();
    let snap = lite.export().unwrap();
    assert_eq!(snap.rows(), 6);
    let pg = store();
    assert_eq!(pg.import(&snap).unwrap(), 6);
    assert_eq!(
        pg.import(&snap).unwrap(),
        0,
        "a second import keeps what is there"
    );
    assert_eq!(pg.get_client("a").unwrap(), Some(client("a")));
    assert_eq!(pg.list_keys().unwrap(), vec![key("k")]);
    assert_eq!(pg.get_refresh_token(&[1; 32]).unwrap(), Some(rt(1, "ch")));
    assert_eq!(
        pg.get_opaque_token(&[2; 32]).unwrap(),
        Some(opaque(2, "a", "ch")),
        "a browser grant's opaque token keeps its subject, grant and ext"
    );
    assert_eq!(pg.list_revocations(0).unwrap(), vec![("j".into(), 90)]);
}
