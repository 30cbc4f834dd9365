//! Opaque tokens are written by group commit: concurrent requests' rows go to PostgreSQL as one
//! multi-row `INSERT` (one statement, one transaction, one WAL flush), on a connection of the
//! writer's own with the statement prepared once. Every caller is answered only after that
//! statement's commit returned, so with `synchronous_commit` at its default (`on`) no token is
//! acknowledged before it is durable.
//!
//! Each row keeps its own outcome: `ON CONFLICT DO NOTHING RETURNING hash` reports which rows
//! went in, and a caller whose row did not gets `Conflict`, as a single-row insert would.
//! When the statement fails (connection lost, timeout), the batch is rolled back and every
//! caller in it gets the error; the connection is dropped and the next batch opens a new one.

use super::super::group_commit::GroupCommit;
use super::super::{StoreError, StoreResult, StoredOpaqueToken};
use postgres::{Client, Statement};
use std::collections::HashSet;
use std::sync::mpsc::{SyncSender, sync_channel};
use tokio_postgres_rustls::MakeRustlsConnect;

/// One statement for any batch size: the rows travel as nine arrays.
const INSERT: &str = "INSERT INTO opaque_tokens
     (hash, client_id, subject, scopes, audience, issued_at, expires_at, grant_id, ext)
     SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[],
                          $6::bigint[], $7::bigint[], $8::text[], $9::text[])
     ON CONFLICT (hash) DO NOTHING
     RETURNING hash";

struct Job {
    row: StoredOpaqueToken,
    done: SyncSender<StoreResult<()>>,
}

/// The writer's connection with its prepared statement.
pub(super) struct Conn {
    client: Client,
    insert: Statement,
}

pub(super) struct TokenBatches {
    queue: GroupCommit<Option<Conn>, Job>,
    config: postgres::Config,
    tls: MakeRustlsConnect,
}

impl TokenBatches {
    /// Connects on the first write.
    pub(super) fn new(config: postgres::Config, tls: MakeRustlsConnect) -> Self {
        Self {
            queue: GroupCommit::new(None),
            config,
            tls,
        }
    }

    /// Returns once `row` is committed, with `Conflict` if its hash was already stored.
    pub(super) fn insert(&self, row: StoredOpaqueToken) -> StoreResult<()> {
        let (done, answer) = sync_channel(1);
        self.queue
            .submit(Job { row, done }, &answer, |conn, batch| {
                self.commit(conn, batch);
            })
    }

    pub(super) fn queued(&self) -> usize {
        self.queue.queued()
    }

    /// Takes the connection out (the store drops it off the async runtime).
    pub(super) fn close(&self) -> Option<Conn> {
        self.queue.with(Option::take).ok().flatten()
    }

    fn commit(&self, conn: &mut Option<Conn>, batch: Vec<Job>) {
        match self.run(conn, &batch) {
            Ok(mut inserted) => {
                for job in batch {
                    // A hash twice in one batch goes in once: the first caller has it.
                    let result = if inserted.remove(&job.row.hash[..]) {
                        Ok(())
                    } else {
                        Err(StoreError::Conflict("opaque token".into()))
                    };
                    // A receiver that went away only means its caller gave up.
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                // Whatever state it is in, the next batch starts on a fresh connection.
                *conn = None;
                let msg = match e {
                    StoreError::Database(m) => m,
                    other => other.to_string(),
                };
                for job in batch {
                    let _ = job.done.send(Err(StoreError::Database(msg.clone())));
                }
            }
        }
    }

    /// Inserts the batch's rows; returns the hashes that went in.
    fn run(&self, conn: &mut Option<Conn>, batch: &[Job]) -> StoreResult<HashSet<Vec<u8>>> {
        let c = match conn {
            Some(c) => c,
            None => {
                let mut client = self.config.connect(self.tls.clone()).map_err(super::db)?;
                let insert = client.prepare(INSERT).map_err(super::db)?;
                conn.insert(Conn { client, insert })
            }
        };
        let rows: Vec<&StoredOpaqueToken> = batch.iter().map(|j| &j.row).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.hash[..]).collect();
        let clients: Vec<&str> = rows.iter().map(|r| r.client_id.as_str()).collect();
        let subjects: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
        let grants: Vec<Option<&str>> = rows.iter().map(|r| r.grant_id.as_deref()).collect();
        let exts: Vec<Option<&str>> = rows.iter().map(|r| r.ext.as_deref()).collect();
        let scopes: Vec<String> = rows.iter().map(|r| r.scopes.join(" ")).collect();
        let audience: Vec<String> = rows.iter().map(|r| r.audience.join(" ")).collect();
        let issued: Vec<i64> = rows.iter().map(|r| r.issued_at).collect();
        let expires: Vec<i64> = rows.iter().map(|r| r.expires_at).collect();
        let returned = c
            .client
            .query(
                &c.insert,
                &[
                    &hashes, &clients, &subjects, &scopes, &audience, &issued, &expires, &grants,
                    &exts,
                ],
            )
            .map_err(super::db)?;
        Ok(returned.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect())
    }
}
