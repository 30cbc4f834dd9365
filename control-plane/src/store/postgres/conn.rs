//! A pooled connection that prepares each SQL text once. The driver's string-taking calls
//! prepare an unnamed statement first (Parse/Describe, one round trip) and then run it (a
//! second); a statement prepared once per connection runs in one round trip, and the server
//! plans it once instead of on every call. The statements are a fixed set of constants, so the
//! map stays small. (Server-side prepared statements need a session-pooling proxy, as the
//! token writer's already does.)

use postgres::types::ToSql;
use postgres::{Client, Row, Statement, Transaction};
use std::collections::HashMap;

pub(in crate::store) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(in crate::store) struct Conn {
    client: Client,
    prepared: HashMap<String, Statement>,
}

fn statement(
    prepared: &mut HashMap<String, Statement>,
    sql: &str,
    prepare: impl FnOnce(&str) -> Result<Statement, postgres::Error>,
) -> Result<Statement, postgres::Error> {
    if let Some(s) = prepared.get(sql) {
        return Ok(s.clone());
    }
    let s = prepare(sql)?;
    prepared.insert(sql.to_string(), s.clone());
    Ok(s)
}

/// Running statements through their prepared form, on a connection or in a transaction.
pub(in crate::store) trait Statements {
    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error>;
    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error>;
}

impl Conn {
    pub(in crate::store) fn new(client: Client) -> Self {
        Self {
            client,
            prepared: HashMap::new(),
        }
    }

    /// The driver's connection, for what is not a prepared statement.
    pub(in crate::store) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub(in crate::store) fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        let s = statement(&mut self.prepared, sql, |q| self.client.prepare(q))?;
        self.client.query_opt(&s, params)
    }

    /// A transaction whose statements share this connection's prepared ones.
    pub(in crate::store) fn transaction(&mut self) -> Result<PreparedTx<'_>, postgres::Error> {
        Ok(PreparedTx {
            tx: self.client.transaction()?,
            prepared: &mut self.prepared,
        })
    }
}

impl Statements for Conn {
    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let s = statement(&mut self.prepared, sql, |q| self.client.prepare(q))?;
        self.client.execute(&s, params)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let s = statement(&mut self.prepared, sql, |q| self.client.prepare(q))?;
        self.client.query(&s, params)
    }
}

pub(in crate::store) struct PreparedTx<'a> {
    tx: Transaction<'a>,
    prepared: &'a mut HashMap<String, Statement>,
}

impl PreparedTx<'_> {
    pub(in crate::store) fn commit(self) -> Result<(), postgres::Error> {
        self.tx.commit()
    }
}

impl Statements for PreparedTx<'_> {
    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let s = statement(self.prepared, sql, |q| self.tx.prepare(q))?;
        self.tx.execute(&s, params)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let s = statement(self.prepared, sql, |q| self.tx.prepare(q))?;
        self.tx.query(&s, params)
    }
}
